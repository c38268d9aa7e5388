"""Writing a SplatShot run to disk: `write_outputs(result, out_dir, cameras=...)`.

  out_dir/avatar.ply            the avatar (3DGS PLY, SuperSplat/3DGS layout)
  out_dir/base.ply              the base template's Gaussians
  out_dir/viewer.html           the avatar in a self-contained WebGL2 viewer page (splatshot_jax.viewer)
  out_dir/base_viewer.html      the same for base.ply
  out_dir/views/view_NNN.png    final views (decode of the final latents)
  out_dir/views_grid.png        the same, tiled
  out_dir/x0_grid.png           decoded x0 per step (rows: steps, columns: views), thumbnails
  out_dir/renders_grid.png      renders of the refit model per step (when feedback was on)
  out_dir/turntable.mp4         the avatar on a 360-degree orbit around the template's look-at point
  out_dir/cameras.json          the V cameras (viewmat world-to-camera OpenCV, K, width, height)
  out_dir/avatar.splat          the avatar for web viewers (.splat, SH band 0 only; io.exports)
  out_dir/transforms.json       the views + cameras for nerfstudio / gsplat (camera-to-world, OpenGL axes)
  out_dir/sparse/0/*.txt        the same as a COLMAP text model (image names in views/, points = the means)
  out_dir/config.json           the resolved config (when given)
  out_dir/metrics.json          per-step discrepancy / eps correction, view weights, timesteps, extra metrics
Every file is written atomically (io.atomic), so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from splatshot_jax.cameras import Camera, orbit_rig
from splatshot_jax.datasets import scene_frame
from splatshot_jax.io import images as image_io
from splatshot_jax.io import exports, ply
from splatshot_jax.io.atomic import atomic_path
from splatshot_jax.viewer import run_alpha_max, write_viewer


def cameras_to_json(cameras: Camera) -> dict:
  """{"width", "height", "views": [{"viewmat": 4x4 world-to-camera (OpenCV), "K": 3x3}, ...]}."""
  vm, K = np.asarray(cameras.viewmat), np.asarray(cameras.K)
  return {"width": int(cameras.width), "height": int(cameras.height), "convention": "opencv world-to-camera",
          "views": [{"viewmat": vm[i].tolist(), "K": K[i].tolist()} for i in range(vm.shape[0])]}


def cameras_from_json(obj: dict) -> Camera:
  """Inverse of `cameras_to_json` (a parsed cameras.json)."""
  try:
    vm = np.asarray([v["viewmat"] for v in obj["views"]], np.float32)
    K = np.asarray([v["K"] for v in obj["views"]], np.float32)
    w, h = int(obj["width"]), int(obj["height"])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"cameras.json: expected width, height and views[].viewmat/K ({e!r})") from None
  if vm.ndim != 3 or vm.shape[1:] != (4, 4) or K.shape != (len(vm), 3, 3):
    raise ValueError(f"cameras.json: views need viewmat 4x4 and K 3x3, got {vm.shape} and {K.shape}")
  return Camera(jnp.asarray(vm), jnp.asarray(K), w, h)


def turntable_cameras(cameras: Camera, num_frames: int, front_camera: Camera | None = None) -> Camera:
  """A 360-degree orbit at the rig's mean distance around the point its optical axes pass closest to.

  Up is the mean image-up direction (-y of the cameras) (`datasets.scene_frame`). The orbit starts at
  `front_camera` and uses its intrinsics; by default it starts at the mean camera direction with the
  first camera's intrinsics.
  """
  target, up, radius = scene_frame(cameras)
  if front_camera is None:
    front = (np.asarray(cameras.center, np.float64) - target).mean(0)
    K = np.asarray(cameras.K)[0]
  else:
    front, K = np.asarray(front_camera.center, np.float64) - target, front_camera.K
  yaws = np.linspace(0.0, 360.0, num_frames, endpoint=False)
  return orbit_rig(target, radius, yaws, [0.0], width=cameras.width, height=cameras.height, K=K, up=up,
                   front=front)


def _json_default(x):
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  return str(x)


def write_json(path: str | os.PathLike, obj: Any) -> None:
  with atomic_path(path) as tmp:
    Path(tmp).write_text(json.dumps(obj, indent=2, default=_json_default))


def write_step_grids(out: Path, x0_images: np.ndarray, renders: np.ndarray, timesteps) -> dict[str, Path]:
  """x0_grid.png (and renders_grid.png when feedback rendered anything): rows steps, columns views.

  Args:
    x0_images, renders: (S, V, h, w, 3) uint8 per-step thumbnails; timesteps: (S,) the steps' t.
  """
  out = Path(out)
  steps, num_views = x0_images.shape[:2]
  step_labels = [f"t={int(timesteps[s])}" if v == 0 else "" for s in range(steps) for v in range(num_views)]
  image_io.save_grid(list(x0_images.reshape((-1,) + x0_images.shape[2:])), out / "x0_grid.png",
                     ncols=num_views, labels=step_labels)
  written = {"x0_grid": out / "x0_grid.png"}
  if np.any(renders):
    image_io.save_grid(list(renders.reshape((-1,) + renders.shape[2:])), out / "renders_grid.png",
                       ncols=num_views, labels=step_labels)
    written["renders_grid"] = out / "renders_grid.png"
  return written


def write_outputs(
    result,
    out_dir: str | os.PathLike,
    *,
    cameras: Camera,
    config: Any = None,
    extra_metrics: dict | None = None,
    render: Callable[[Any, Camera], jax.Array] | None = None,
    turntable_frames: int = 60,
    turntable_fps: float = 30.0,
    video_ext: str = ".mp4",
    viewer: bool = True,
    export: bool = True,
) -> dict[str, Path]:
  """Writes a `sampler.SplatShotResult` (see the module docstring for the layout).

  Args:
    result: SplatShotResult.
    out_dir: folder (created).
    cameras: the V cameras the run used (Camera batch).
    config: the resolved config (ml_collections.ConfigDict or dict), written as config.json.
    extra_metrics: merged into metrics.json (e.g. timings, PSNRs).
    render: (gaussians, cameras) -> (F, H, W, 3) renders for the turntable; None skips the video.
      (e.g. `guidance.gaussian_scene().render`.)
    turntable_frames, turntable_fps: the orbit video.
    video_ext: ".mp4" or ".gif".
    viewer: write viewer.html / base_viewer.html (the run's cameras to jump to).
    export: write avatar.splat, transforms.json and sparse/0 (io.exports).
  Returns:
    {name: path} of what was written.
  """
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  written = {}

  ply.write_gaussians(out / "avatar.ply", jax.tree.map(np.asarray, result.gaussians))
  ply.write_gaussians(out / "base.ply", jax.tree.map(np.asarray, result.base))
  written.update(avatar=out / "avatar.ply", base=out / "base.ply")
  if viewer and hasattr(result.gaussians, "sh"):
    # The avatar page's title and panel say when it came from the install check's random weights (the base is the
    # template's own head either way); the pages draw with the α clamp the avatar was fitted with (config.refit.alpha_max).
    note = " (install check: random weights)" if (extra_metrics or {}).get("install_check") else ""
    for key, label, g in (("viewer", "avatar" + note, result.gaussians), ("base_viewer", "base", result.base)):
      written[key] = write_viewer(out / f"{key}.html", jax.tree.map(np.asarray, g), cameras, name=label,
                                  alpha_max=run_alpha_max(config))

  views = np.asarray(result.final_images)
  view_files = [out / "views" / f"view_{i:03d}.png" for i in range(len(views))]
  for path, im in zip(view_files, views):
    image_io.save_image(path, im)
  labels = [f"{i} w={w:.2f}" for i, w in enumerate(np.asarray(result.view_weights))]
  image_io.save_grid(list(views), out / "views_grid.png", labels=labels)
  written.update(views=out / "views", views_grid=out / "views_grid.png")

  written.update(write_step_grids(out, result.x0_images, result.renders, result.timesteps))

  if render is not None and turntable_frames > 0:
    orbit = turntable_cameras(cameras, turntable_frames)
    frames = np.asarray(render(result.gaussians, orbit))  # the rasterizer is jitted inside
    image_io.save_video(np.clip(frames, 0, 1), out / f"turntable{video_ext}", fps=turntable_fps)
    written["turntable"] = out / f"turntable{video_ext}"

  write_json(out / "cameras.json", cameras_to_json(cameras))
  written["cameras"] = out / "cameras.json"
  if export and hasattr(result.gaussians, "sh"):
    written.update(exports.write_run_exports(out, jax.tree.map(np.asarray, result.gaussians), cameras,
                                             view_files))
  if config is not None:
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    write_json(out / "config.json", cfg)
    written["config"] = out / "config.json"
  m = {
      "timesteps": result.timesteps,
      "discrepancy_per_step": result.discrepancy,
      "eps_correction_rms_per_step": result.eps_correction,
      "final_view_weights": result.view_weights,
      "num_gaussians": int(np.asarray(result.gaussians.means).shape[0]) if hasattr(result.gaussians, "means") else None,
  }
  m.update(extra_metrics or {})
  write_json(out / "metrics.json", m)
  written["metrics"] = out / "metrics.json"
  return written
