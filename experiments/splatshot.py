"""The SplatShot job: photo + base template + weights -> 3DGS avatar.

  python -m experiments.run --config=configs/splatshot_sd15.py --config.photo=photo.jpg --config.weights=/ckpt
  python -m experiments.run --config=configs/splatshot_sd15.py:smoke    # install check (random tiny weights)

Writes to config.out_dir: avatar.ply, base.ply (standard 3DGS), views/ + views_grid.png, x0_grid.png (decoded x0
per step), renders_grid.png, turntable.mp4, cameras.json, config.json, metrics.json and RUN.json. Every input is
checked first (`preflight.check_splatshot`); the run writes a hidden sibling folder renamed to out_dir when it
completes (`io.atomic.run_folder`); a failed run (e.g. values that became NaN) leaves what it had in OUT.failed/.
"""

from __future__ import annotations

from configs import splatshot_sd15
from splatshot_jax.jobs import inputs, pipeline
from splatshot_jax.io import atomic


def run(config) -> dict:
  if config.weights == pipeline.RANDOM_TINY:
    print("install check: random tiny denoiser weights and a synthetic template. Expect noise in the diffusion "
          "views (views/, x0_grid.png) and, as the avatar, the synthetic head slightly degraded by the refits to "
          "them; a --config.photo conditions it through the real identity path (CLIP image encoder -> IP-Adapter). "
          "Give --config.weights and --config.photo for a real run.")
  # Every input (weights, photo, template, values, out_dir) before any model is built: all problems at once.
  photo = pipeline.check_inputs(config, reference=splatshot_sd15.get_config())
  info = {"photo": config.photo, "photo_sha256": inputs.photo_digest(config.photo)} if config.photo else {}
  with atomic.run_lock(config.out_dir):  # one writer per out_dir, taken before the models load
    session = pipeline.load_session(config)
    with atomic.run_folder(config.out_dir, job="splatshot", info=info) as out:
      return pipeline.run_photo(session, config, photo, out)


if __name__ == "__main__":
  from experiments import run as _run
  _run.launch("configs/splatshot_sd15.py")
