"""Fit 3D Gaussians to a calibrated multi-view set; report PSNR/SSIM on train and held-out views.

  python -m experiments.run --config=configs/fit_multiview.py --config.data=PATH

Writes to config.out_dir: renders beside ground truth (`views.png`), a turntable (`turntable.mp4`),
the Gaussians (`gaussians.ply`, standard 3DGS layout), `metrics.json` and the resolved `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from splatshot_jax import cameras as cam_lib
from splatshot_jax import datasets, fit as fit_lib, metrics, synthetic
from splatshot_jax.gaussians import init_from_points
from splatshot_jax.io import atomic, images as image_io, ply
from splatshot_jax.render import check_overflow, render_views


def load_scene(config, rng: np.random.Generator):
  """(train Views, held-out Views, init points, init colours, a description of the source)."""
  if config.data:
    data = cam_lib.load_multiview(config.data)
    views = datasets.load_views(data, config.scale, background=tuple(config.background))
    points, colors, source = datasets.initial_points(data, views, config.data,
                                                      config.init.hull_points, rng)
  else:
    size = max(16, int(256 * config.scale))
    scene = synthetic.make_head_scene(width=size, height=size, render_images=True,
                                      background=tuple(config.background), seed=config.seed)
    views = datasets.Views(scene.cameras, scene.images, None,
                           tuple(f"view_{i:02d}" for i in range(len(scene.cameras))))
    points, colors = scene.points, None
    source = "synthetic head (splatshot_jax.synthetic)"
  holdout = [i for i in config.holdout if i < len(views)]
  train = [i for i in range(len(views)) if i not in holdout]
  return views.subset(train), views.subset(holdout) if holdout else None, points, colors, source


def evaluate(g, views: datasets.Views, background) -> dict:
  """Mean PSNR / SSIM of renders vs images, plus the renders (V, H, W, 3)."""
  out = render_views(g, views.cameras, background=jnp.asarray(background, jnp.float32))
  check_overflow(out)
  rgb = jnp.clip(out.rgb, 0.0, 1.0)
  target = jnp.asarray(views.images)
  psnr = jax.vmap(metrics.psnr)(rgb, target)
  ssim = jax.vmap(metrics.ssim)(rgb, target)
  return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean()),
          "psnr_per_view": [round(float(p), 3) for p in psnr]}, np.asarray(rgb)


def turntable(g, rig_cameras, front_cam, frames: int, background) -> np.ndarray:
  """(frames, H, W, 3) renders on a full yaw circle around the rig's target, starting at front_cam.

  rig_cameras (a batch of ≥ 2) give the target, up and distance; front_cam its intrinsics.
  """
  target, up, radius = datasets.scene_frame(rig_cameras)
  front = np.asarray(front_cam.center) - target
  rig = cam_lib.orbit_rig(target, radius, np.linspace(0.0, 360.0, frames, endpoint=False), [0.0],
                          width=front_cam.width, height=front_cam.height,
                          K=front_cam.K, up=up, front=front)
  out = render_views(g, rig, background=jnp.asarray(background, jnp.float32))
  return np.asarray(jnp.clip(out.rgb, 0.0, 1.0))


def run(config) -> dict:
  out_dir = Path(config.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(config.seed)
  train, test, points, colors, source = load_scene(config, rng)
  print(f"{len(train)} train / {0 if test is None else len(test)} held-out views at "
        f"{train.cameras.width}x{train.cameras.height}; init: {len(points)} points from {source}")

  g = init_from_points(points, colors, sh_degree=config.init.sh_degree,
                       init_opacity=config.init.opacity, rng=jax.random.PRNGKey(config.seed))
  _, _, radius = datasets.scene_frame(train.cameras)
  centers = np.asarray(train.cameras.center)
  # gsplat's scene scale: 1.1 × the largest camera distance from the cameras' mean.
  scene_scale = 1.1 * float(np.linalg.norm(centers - centers.mean(0), axis=-1).max())
  fit_cfg = fit_lib.FitConfig(num_iters=config.fit.num_iters, scene_scale=scene_scale,
                              background=tuple(config.background),
                              sh_degree_interval=config.fit.sh_degree_interval)
  densify = fit_lib.DensifyConfig(
      refine_start_iter=config.fit.refine_start_iter, refine_stop_iter=config.fit.refine_stop_iter,
      refine_every=config.fit.refine_every, reset_every=config.fit.reset_every,
      max_gaussians=config.fit.max_gaussians)
  if not config.fit.densify:
    densify = dataclasses.replace(densify, refine_start_iter=config.fit.num_iters + 1)

  t0 = time.time()
  with tqdm(total=config.fit.num_iters, desc="fit", unit="it") as bar:
    def progress(n, stats):
      bar.update(n)
      bar.set_postfix(num=stats["num"], loss=f"{stats['loss']:.4f}")
    g, losses, overflow = fit_lib.fit_with_densification(
        g, train.cameras, jnp.asarray(train.images), fit_cfg, densify,
        rng=jax.random.PRNGKey(config.seed), scene_scale=scene_scale, progress=progress)
  fit_seconds = time.time() - t0
  if overflow:
    print(f"warning: the rasterizer dropped {overflow} tile entries during the fit")

  results = {"source": source, "num_gaussians": int(g.num), "fit_seconds": round(fit_seconds, 1),
             "iterations": int(config.fit.num_iters), "final_loss": float(np.mean(losses[-50:])),
             "resolution": [train.cameras.width, train.cameras.height]}
  results["train"], train_rgb = evaluate(g, train, config.background)
  panels = [train.images, train_rgb]
  names = list(train.names)
  if test is not None:
    results["test"], test_rgb = evaluate(g, test, config.background)
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
  print(f"wrote {out_dir}")
  return results
