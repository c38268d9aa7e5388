"""The SplatShot job: photo + base template + weights -> 3DGS avatar.

  python -m experiments.run --config=configs/splatshot_sd15.py --config.photo=photo.jpg --config.weights=/ckpt
  python -m experiments.run --config=configs/splatshot_sd15.py:smoke    # install check (random tiny weights)

Writes to config.out_dir: avatar.ply, base.ply (standard 3DGS), views/ + views_grid.png, x0_grid.png (decoded x0
per step), renders_grid.png, turntable.mp4, cameras.json, config.json and metrics.json.
"""

from __future__ import annotations

from splatshot_jax import pipeline


def run(config) -> dict:
  if config.weights == pipeline.RANDOM_TINY:
    print("install check: random tiny denoiser weights and a synthetic template; the avatar is noise-like by "
          "design (give --config.weights and --config.photo for a real run)")
  photo = pipeline.check_inputs(config)  # fail fast, listing every missing file
  session = pipeline.load_session(config)
  return pipeline.run_photo(session, config, photo, config.out_dir)


if __name__ == "__main__":
  from experiments import run as _run
  _run.launch("configs/splatshot_sd15.py")
