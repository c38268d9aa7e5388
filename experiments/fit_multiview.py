"""Fit 3D Gaussians to a calibrated multi-view set; report PSNR/SSIM on train and held-out views.

  python -m experiments.run --config=configs/fit_multiview.py --config.data=PATH

Writes to config.out_dir: renders beside ground truth (`views.png`), a turntable (`turntable.mp4`),
the Gaussians (`gaussians.ply`, standard 3DGS layout), `metrics.json` and the resolved `config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from configs import fit_multiview as fit_multiview_config
from splatshot_jax import templates
from splatshot_jax.jobs import outputs, preflight
from splatshot_jax.io import atomic, images as image_io, ply
from splatshot_jax.render import render_views


def turntable(g, rig_cameras, front_cam, frames: int, background) -> np.ndarray:
  """(frames, H, W, 3) renders on a full yaw circle around the rig's target, starting at front_cam."""
  rig = outputs.turntable_cameras(rig_cameras, frames, front_camera=front_cam)
  out = render_views(g, rig, background=jnp.asarray(background, jnp.float32))
  return np.asarray(jnp.clip(out.rgb, 0.0, 1.0))


def run(config) -> dict:
  preflight.require(config, reference=fit_multiview_config.get_config())
  with atomic.run_folder(config.out_dir, job="fit_multiview") as out_dir:
    return _run(config, out_dir)


def _run(config, out_dir: Path) -> dict:
  scene = templates.load_scene(config.data, scale=config.scale, holdout=config.holdout,
                               background=tuple(config.background), hull_points=config.init.hull_points,
                               seed=config.seed)
  train, test = scene.train, scene.test
  print(f"{len(train)} train / {0 if test is None else len(test)} held-out views at "
        f"{train.cameras.width}x{train.cameras.height}; init: {len(scene.points)} points from {scene.source}")

  with tqdm(total=config.fit.num_iters, desc="fit", unit="it") as bar:
    def progress(n, stats):
      bar.update(n)
      bar.set_postfix(num=stats["num"], loss=f"{stats['loss']:.4f}")
    g, info = templates.fit_scene(train, scene.points, scene.colors, fit=config.fit, init=config.init,
                                  background=tuple(config.background), seed=config.seed, progress=progress)
  overflow = info.pop("overflow")
  if overflow:
    print(f"warning: the rasterizer dropped {overflow} tile entries during the fit")

  results = {"source": scene.source, **info}
  results["train"], train_rgb = templates.evaluate_views(g, train, config.background)
  panels = [train.images, train_rgb]
  names = list(train.names)
  if test is not None:
    results["test"], test_rgb = templates.evaluate_views(g, test, config.background)
    panels = [np.concatenate([test.images, train.images]), np.concatenate([test_rgb, train_rgb])]
    names = [f"held-out {n}" for n in test.names] + names
  print(json.dumps({k: v for k, v in results.items()}, indent=1))

  # Ground truth above, render below, one column per view.
  image_io.save_grid(list(panels[0]) + list(panels[1]), out_dir / "views.png", ncols=len(names),
                     labels=names + ["render"] * len(names))
  front_cam = (train if test is None else test).cameras[0]
  frames = turntable(g, train.cameras, front_cam, config.turntable_frames, config.background)
  image_io.save_video(frames, out_dir / "turntable.mp4", fps=20)
  ply.write_gaussians(out_dir / "gaussians.ply", g)
  with atomic.atomic_path(out_dir / "metrics.json") as tmp:
    tmp.write_text(json.dumps(results, indent=2))
  with atomic.atomic_path(out_dir / "config.json") as tmp:
    tmp.write_text(config.to_json_best_effort(indent=2))
  print(f"wrote {config.out_dir}")
  return results


if __name__ == "__main__":
  from experiments import run as _run
  _run.launch("configs/fit_multiview.py")
