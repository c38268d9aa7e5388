"""The SplatShot job: photo + base template + weights -> 3DGS avatar.

  python -m experiments.run --config=configs/splatshot_sd15.py --config.photo=photo.jpg --config.weights=/ckpt
  python -m experiments.run --config=configs/splatshot_sd15.py:smoke    # install check (random tiny weights)

Writes to config.out_dir: avatar.ply, base.ply (standard 3DGS), views/ + views_grid.png, x0_grid.png (decoded x0
per step), renders_grid.png, turntable.mp4, cameras.json, config.json, metrics.json and RUN.json. Every input is
checked first (`preflight.check_splatshot`); the run writes a hidden sibling folder renamed to out_dir when it
completes (`io.atomic.run_folder`); a failed run (e.g. values that became NaN) leaves what it had in OUT.failed/.
"""

from __future__ import annotations

import time

import jax

from configs import splatshot_sd15
from splatshot_jax import errors, guidance, outputs, pipeline, preflight, sampler
from splatshot_jax.io import atomic
from splatshot_jax.render import RenderOverflowError, check_overflow, render_views


def run(config) -> dict:
  t_start = time.time()
  # Every input (weights, photo, template, values, out_dir) before any model is built: all problems at once.
  errors.raise_if_problems(preflight.check_splatshot(config, reference=splatshot_sd15.get_config()),
                           "cannot start the splatshot job")
  with atomic.run_folder(config.out_dir, job="splatshot") as out:
    return _run(config, out, t_start)


def _run(config, out, t_start: float) -> dict:
  install_check = config.weights == pipeline.RANDOM_TINY
  if install_check:
    print("install check: random tiny denoiser weights and a synthetic template; the avatar is noise-like by "
          "design (give --config.weights and --config.photo for a real run)")
    photo = None
  else:
    photo = pipeline.load_photo(config.photo)
  template, choice = pipeline.load_base_template(config, photo)
  num_views, height, width = template.renders.shape[:3]
  print(f"template {template.name}: {num_views} views of {width}x{height}, {template.gaussians.num} Gaussians")

  prior, conditioner = pipeline.load_prior(config)
  cond_photo, cond_template = pipeline.make_conditions(config, prior, conditioner, template, photo)
  cfg = sampler.sampler_config(config)
  scene = guidance.gaussian_scene(background=tuple(config.refit.background),
                                  render_kwargs=(("backend", config.refit.get("backend", "auto")),))
  schedule = getattr(prior, "schedule", None)

  t_setup = time.time()
  try:
    result = sampler.run_splatshot(prior, template, cond_photo, cfg, jax.random.PRNGKey(config.seed), scene=scene,
                                   template_cond=cond_template, schedule=schedule)
  except errors.NonFiniteError as e:
    if e.partial is not None:  # keep the steps that were fine (the folder is moved to OUT.failed)
      outputs.write_step_grids(out, e.partial["x0_images"], e.partial["renders"], e.partial["timesteps"])
    raise
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
  written = outputs.write_outputs(result, out, cameras=template.cameras, config=config,
                                  extra_metrics=metrics, render=scene.render,
                                  turntable_frames=config.outputs.turntable_frames,
                                  turntable_fps=config.outputs.turntable_fps)
  print(f"wrote {len(written)} outputs to {config.out_dir} in {time.time() - t_start:.0f} s")
  return metrics



if __name__ == "__main__":
  from experiments import run as _run
  _run.launch("configs/splatshot_sd15.py")
