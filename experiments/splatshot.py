"""The SplatShot job: photo + base template + weights -> 3DGS avatar.

  python -m experiments.run --config=configs/splatshot_sd15.py --config.photo=photo.jpg --config.weights=/ckpt
  python -m experiments.run --config=configs/splatshot_sd15.py:smoke    # install check (random tiny weights)

Writes to config.out_dir: avatar.ply, base.ply (standard 3DGS), views/ + views_grid.png, x0_grid.png (decoded x0
per step), renders_grid.png, turntable.mp4, cameras.json, config.json and metrics.json.
"""

from __future__ import annotations

import time

import jax

from splatshot_jax import fit as fit_lib
from splatshot_jax import guidance, outputs, pipeline, sampler, sharding
from splatshot_jax.render import RenderOverflowError, check_overflow, render_views


def run(config) -> dict:
  t_start = time.time()
  install_check = config.weights == pipeline.RANDOM_TINY
  if install_check:
    print("install check: random tiny denoiser weights and a synthetic template; the avatar is noise-like by "
          "design (give --config.weights and --config.photo for a real run)")
    photo = None
  else:
    pipeline.resolve_weights(config.sd, config.weights)  # fail fast, listing every missing file
    photo = pipeline.load_photo(config.photo)
  template, choice = pipeline.load_base_template(config, photo)
  num_views, height, width = template.renders.shape[:3]
  print(f"template {template.name}: {num_views} views of {width}x{height}, {template.gaussians.num} Gaussians")

  prior, conditioner = pipeline.load_prior(config)
  cond_photo, cond_template = pipeline.make_conditions(config, prior, conditioner, template, photo)
  cfg = sampler.sampler_config(config)
  # Views over devices (config.mesh.views; None on one device) and the refit's settings (config.refit).
  mesh = sharding.make_mesh(config.mesh.views) if "mesh" in config else None
  sharding.check_divisible(num_views, mesh, f"template {template.name}")
  refit = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.refit.items()}
  scene = guidance.gaussian_scene(fit_lib.FitConfig(**refit, mesh=mesh), background=tuple(config.refit.background))
  prior = sharding.shard_prior(prior, mesh)
  cond_photo, cond_template = sharding.put_views(cond_photo, mesh), sharding.put_views(cond_template, mesh)
  schedule = getattr(prior, "schedule", None)

  t_setup = time.time()
  result = sampler.run_splatshot(prior, template, cond_photo, cfg, jax.random.PRNGKey(config.seed), scene=scene,
                                 template_cond=cond_template, schedule=schedule)
  t_run = time.time()

  metrics = {"install_check": install_check, "template_choice": choice, "num_views": int(num_views),
             "seconds": {"setup": round(t_setup - t_start, 1), "sampling": round(t_run - t_setup, 1)}}
  try:  # the refits inside the jitted steps cannot raise: check the avatar's budgets on the host
    check_overflow(render_views(result.gaussians, template.cameras,
                                background=jax.numpy.asarray(config.refit.background, jax.numpy.float32)))
  except RenderOverflowError as e:
    print(f"warning: {e}")
    metrics["render_overflow"] = str(e)
  if photo is not None:
    frontal = template.info.frontal_view if template.info.frontal_view < num_views else 0
    metrics["identity_distance"] = pipeline.identity_report(photo, result.final_images, template.cameras, frontal)
  written = outputs.write_outputs(result, config.out_dir, cameras=template.cameras, config=config,
                                  extra_metrics=metrics, render=scene.render,
                                  turntable_frames=config.outputs.turntable_frames,
                                  turntable_fps=config.outputs.turntable_fps)
  print(f"wrote {len(written)} outputs to {config.out_dir} in {time.time() - t_start:.0f} s")
  return metrics



if __name__ == "__main__":
  from experiments import run as _run
  _run.launch("configs/splatshot_sd15.py")
