"""Exports other 3DGS tools open: `.splat` Gaussians, COLMAP text cameras, nerfstudio transforms.json.

  write_splat(path, gaussians)                          # web viewers (antimatter15-style .splat)
  write_colmap_text(folder, cameras, names, points)     # cameras.txt, images.txt, points3D.txt
  write_transforms_json(path, cameras, file_paths)      # nerfstudio / instant-ngp / gsplat
  write_run_exports(out_dir, gaussians, cameras, views) # all three next to a run's views/

.splat: 32 bytes per Gaussian, little-endian, no header, no SH:
  position 3 x f32 | scale 3 x f32 (linear, exp(log_scales)) | RGBA 4 x u8 | rotation 4 x u8
  RGB = round(255 clip(0.5 + C0 f_dc, 0, 1)) (SH band 0 only), A = round(255 sigmoid(opacity logit)),
  rotation = clip(round(128 q + 128), 0, 255) of the unit quaternion, w first;
  sorted by descending exp(Σ log_scales) · opacity, the order web viewers expect (big, opaque first).

Cameras: ours are OpenCV world-to-camera with K in pixels, pixel centres at integer + 0.5, which
is COLMAP's convention as is (PINHOLE fx fy cx cy; images.txt holds the world-to-camera rotation as
a quaternion qw qx qy qz and the translation). nerfstudio's transform_matrix is camera-to-world in
OpenGL axes: inv(viewmat) @ diag(1, -1, -1, 1), the inverse of what `cameras.load_transforms_json`
reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from splatshot_jax.cameras import Camera, rotmat_to_quat
from splatshot_jax.gaussians import SH_C0, Gaussians
from splatshot_jax.io.atomic import atomic_path

SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4),
                        ("rotation", "u1", 4)])  # 32 bytes, no padding
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


def splat_records(g: Gaussians) -> np.ndarray:
  """Gaussians -> (N,) SPLAT_DTYPE records, sorted as web viewers expect (module docstring)."""
  means = np.asarray(g.means, np.float64)
  log_scales = np.asarray(g.log_scales, np.float64)
  logits = np.asarray(g.opacity_logits, np.float64).reshape(-1)
  dc = np.asarray(g.sh, np.float64)[:, 0]
  q = np.asarray(g.quats, np.float64)
  for name, a in (("means", means), ("log_scales", log_scales), ("opacity_logits", logits),
                  ("sh", dc), ("quats", q)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f".splat export: Gaussians field '{name}' has non-finite values")
  norm = np.linalg.norm(q, axis=-1, keepdims=True)
  if np.any(norm == 0):
    raise ValueError(".splat export: Gaussians field 'quats' has zero quaternions")
  opacity = 0.5 * (1.0 + np.tanh(0.5 * logits))  # sigmoid without overflow
  rec = np.empty(means.shape[0], SPLAT_DTYPE)
  rec["position"] = means
  rec["scale"] = np.exp(log_scales)
  rgb = np.clip(0.5 + SH_C0 * dc, 0.0, 1.0)
  rec["rgba"] = np.round(255.0 * np.concatenate([rgb, opacity[:, None]], -1)).astype(np.uint8)
  rec["rotation"] = np.clip(np.round(128.0 * q / norm + 128.0), 0, 255).astype(np.uint8)
  order = np.argsort(-np.exp(log_scales.sum(-1)) * opacity, kind="stable")
  return rec[order]


def write_splat(path: str | os.PathLike, g: Gaussians) -> Path:
  """Writes the .splat file (atomically); returns its path."""
  data = splat_records(g).tobytes()
  with atomic_path(path) as tmp:
    Path(tmp).write_bytes(data)
  return Path(path)


def _as_numpy_cameras(cameras: Camera) -> tuple[np.ndarray, np.ndarray]:
  vm = np.asarray(cameras.viewmat, np.float64).reshape(-1, 4, 4)
  K = np.asarray(cameras.K, np.float64).reshape(-1, 3, 3)
  if not (np.all(np.isfinite(vm)) and np.all(np.isfinite(K))):
    raise ValueError("camera export: non-finite viewmat or K")
  return vm, K


def colmap_pose(viewmat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(4, 4) world-to-camera -> (qvec (w, x, y, z) with w ≥ 0, tvec (3,)) as COLMAP stores them."""
  q = np.asarray(rotmat_to_quat(np.asarray(viewmat[:3, :3], np.float32)), np.float64)
  return q / np.linalg.norm(q), np.asarray(viewmat[:3, 3], np.float64)


def write_colmap_text(folder: str | os.PathLike, cameras: Camera, names: Sequence[str],
                      points=None, colors=None) -> dict[str, Path]:
  """Writes a COLMAP text model: one PINHOLE camera per image (ids 1..V), images.txt, points3D.txt.

  Args:
    folder: destination (e.g. run/sparse/0), created.
    cameras: V cameras (Camera batch).
    names: V image file names as COLMAP should look them up in its image folder.
    points: optional (P, 3) world points for points3D.txt (with empty tracks), e.g. the means.
    colors: optional (P, 3) float RGB in [0, 1] of the points (default grey).
  Returns:
    {"cameras", "images", "points3D"}: paths written.
  """
  vm, K = _as_numpy_cameras(cameras)
  if len(names) != len(vm):
    raise ValueError(f"COLMAP export: {len(names)} names for {len(vm)} cameras")
  folder = Path(folder)
  cams = [f"# Camera list with one line of data per camera:",
          f"#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(vm)}"]
  imgs = ["# Image list with two lines of data per image:",
          "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
          "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {len(vm)}"]
  for i, (v, k, name) in enumerate(zip(vm, K, names), start=1):
    cams.append(f"{i} PINHOLE {cameras.width} {cameras.height} "
                f"{k[0, 0]:.17g} {k[1, 1]:.17g} {k[0, 2]:.17g} {k[1, 2]:.17g}")
    q, t = colmap_pose(v)
    imgs.append(f"{i} " + " ".join(f"{x:.17g}" for x in (*q, *t)) + f" {i} {name}")
    imgs.append("")  # no 2D points
  pts = ["# 3D point list with one line of data per point:",
         "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
  if points is not None:
    p = np.asarray(points, np.float64).reshape(-1, 3)
    c = np.full_like(p, 0.5) if colors is None else np.asarray(colors, np.float64).reshape(-1, 3)
    rgb = np.round(255.0 * np.clip(c, 0.0, 1.0)).astype(int)
    pts.append(f"# Number of points: {len(p)}")
    pts += [f"{i} {x:.9g} {y:.9g} {z:.9g} {r} {g} {b} 0"
            for i, ((x, y, z), (r, g, b)) in enumerate(zip(p, rgb), start=1)]
  out = {}
  for key, lines in (("cameras", cams), ("images", imgs), ("points3D", pts)):
    out[key] = folder / f"{key}.txt"
    with atomic_path(out[key]) as tmp:
      Path(tmp).write_text("\n".join(lines) + "\n")
  return out


def transforms_dict(cameras: Camera, file_paths: Sequence[str]) -> dict:
  """The nerfstudio transforms.json content: per-frame camera-to-world (OpenGL) and intrinsics."""
  vm, K = _as_numpy_cameras(cameras)
  if len(file_paths) != len(vm):
    raise ValueError(f"transforms.json export: {len(file_paths)} file paths for {len(vm)} cameras")
  frames = []
  for v, k, fp in zip(vm, K, file_paths):
    c2w = np.linalg.inv(v) @ OPENCV_TO_OPENGL
    frames.append({"file_path": str(fp), "transform_matrix": c2w.tolist(),
                   "fl_x": k[0, 0], "fl_y": k[1, 1], "cx": k[0, 2], "cy": k[1, 2],
                   "w": int(cameras.width), "h": int(cameras.height)})
  return {"camera_model": "OPENCV", "w": int(cameras.width), "h": int(cameras.height),
          "frames": frames}


def write_transforms_json(path: str | os.PathLike, cameras: Camera, file_paths: Sequence[str]) -> Path:
  """Writes transforms.json (atomically); file_paths are relative to its folder."""
  with atomic_path(path) as tmp:
    Path(tmp).write_text(json.dumps(transforms_dict(cameras, file_paths), indent=2))
  return Path(path)


def write_run_exports(out_dir: str | os.PathLike, gaussians: Gaussians, cameras: Camera,
                      view_files: Sequence[str | os.PathLike]) -> dict[str, Path]:
  """A run's exports: avatar.splat, transforms.json and sparse/0/*.txt for the final views.

  Args:
    out_dir: the run folder; view_files are inside it (e.g. views/view_000.png).
    gaussians: the avatar.
    cameras: the V cameras of the views.
    view_files: V image paths.
  Returns:
    {"splat", "transforms", "colmap"}: paths written (colmap: the sparse/0 folder, whose image
    names are relative to the views' folder: point COLMAP / gsplat's image directory there).
  """
  out = Path(out_dir)
  views = [Path(v) for v in view_files]
  means = np.asarray(gaussians.means)
  rgb = 0.5 + SH_C0 * np.asarray(gaussians.sh)[:, 0]
  colmap = write_colmap_text(out / "sparse" / "0", cameras, [v.name for v in views], means, rgb)
  return {
      "splat": write_splat(out / "avatar.splat", gaussians),
      "transforms": write_transforms_json(out / "transforms.json", cameras,
                                          [v.relative_to(out).as_posix() for v in views]),
      "colmap": colmap["images"].parent,
  }
