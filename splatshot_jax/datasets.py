"""From a calibrated multi-view set on disk to arrays a fit can use.

`load_views` reads the images (and foreground masks) at a chosen scale next to the cameras that
describe them; `scene_frame` recovers where the cameras look and which way is up; and
`initial_points` gives a 3DGS initialisation: the set's own point cloud when it ships one,
otherwise a visual hull carved from the foreground masks (or from non-background pixels).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from splatshot_jax import cameras as cam_lib
from splatshot_jax.cameras import Camera, MultiviewData
from splatshot_jax.io import images as image_io
from splatshot_jax.io import ply


@dataclasses.dataclass(frozen=True)
class Views:
  """Images with their cameras, at one resolution.

  Attributes:
    cameras: Camera with batch shape (V,).
    images: (V, H, W, 3) float32 in [0, 1].
    masks: (V, H, W) float32 in [0, 1] foreground, or None.
    names: V view names.
  """

  cameras: Camera
  images: np.ndarray
  masks: np.ndarray | None
  names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.names)

  def subset(self, idx) -> "Views":
    idx = np.asarray(idx)
    return Views(self.cameras[idx], self.images[idx],
                 None if self.masks is None else self.masks[idx],
                 tuple(self.names[i] for i in idx))


def load_views(data: MultiviewData, scale: float = 1.0, *, background=(1.0, 1.0, 1.0)) -> Views:
  """Reads every view of `data` resized by `scale` (cameras resized to match).

  Args:
    data: from `cameras.load_multiview`.
    scale: resize factor (0.5 = half resolution); sizes are rounded to whole pixels.
    background: RGB used where stored images carry alpha.
  """
  width, height = data.cameras.width, data.cameras.height
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  cameras = cam_lib.resize(data.cameras, size) if scale != 1.0 else data.cameras
  imgs, masks = [], []
  for i in range(len(data)):
    if data.images is not None:
      img = data.images[i].astype(np.float32) / 255.0
    else:
      img = image_io.load_image(data.image_paths[i], background=background)
    if img.shape[:2] != (height, width):
      raise ValueError(f"{data.image_paths[i] if data.image_paths else data.names[i]}: image is "
                       f"{img.shape[1]}x{img.shape[0]} but its camera says {width}x{height}")
    imgs.append(image_io.resize_image(img, size) if scale != 1.0 else img)
    mask_path = data.mask_paths[i] if data.mask_paths else None
    if mask_path is not None:
      m = image_io.load_mask(mask_path)
      masks.append(image_io.resize_image(m[..., None], size)[..., 0] if scale != 1.0 else m)
  have_masks = len(masks) == len(data)
  return Views(cameras, np.stack(imgs).astype(np.float32),
               np.stack(masks).astype(np.float32) if have_masks else None, tuple(data.names))


def scene_frame(cameras: Camera) -> tuple[np.ndarray, np.ndarray, float]:
  """Where a rig looks: (target (3,), up (3,), mean distance of the cameras from target).

  target is the least-squares point nearest to every optical axis; up is the mean of the cameras'
  image-up directions (−y in OpenCV axes), which for a head capture rig is the head's up.
  """
  viewmat = np.asarray(cameras.viewmat, np.float64)
  R = viewmat[:, :3, :3]
  centers = -np.einsum("vji,vj->vi", R, viewmat[:, :3, 3])
  dirs = R[:, 2, :]  # optical axes in world space
  # Σ (I − d dᵀ) p = Σ (I − d dᵀ) c: the point minimising the squared distance to all axes.
  proj = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]
  target = np.linalg.lstsq(proj.sum(0), np.einsum("vij,vj->i", proj, centers), rcond=None)[0]
  up = -R[:, 1, :].mean(0)
  up /= np.linalg.norm(up)
  radius = float(np.linalg.norm(centers - target, axis=-1).mean())
  return target, up, radius


def foreground(views: Views, threshold: float = 0.5) -> np.ndarray:
  """(V, H, W) bool foreground: the masks when present, else pixels far from the border colour."""
  if views.masks is not None:
    return views.masks > threshold
  # No masks (e.g. SplatShot renders on black): background = the colour of the image corners.
  corners = np.concatenate([views.images[:, :4, :4], views.images[:, -4:, -4:]], axis=1)
  bg = np.median(corners.reshape(len(views), -1, 3), axis=1)
  return np.abs(views.images - bg[:, None, None]).max(-1) > 0.05


def visual_hull_points(views: Views, num_points: int, rng: np.random.Generator,
                       min_view_fraction: float = 0.9) -> np.ndarray:
  """Random points inside the visual hull of the foreground (a 3DGS init when no cloud exists).

  Points are drawn in a cube around the rig's target and kept when they project onto foreground
  in at least `min_view_fraction` of the views that see them (robust to a few bad masks).
  Returns (num_points, 3) float32 (fewer if the hull is tiny).
  """
  fg = foreground(views)
  target, _, radius = scene_frame(views.cameras)
  # Half-extent: the largest object that fits the narrowest field of view at the rig's distance.
  K = np.asarray(views.cameras.K)
  half_fov = np.arctan(0.5 * min(views.cameras.width / K[:, 0, 0].max(),
                                 views.cameras.height / K[:, 1, 1].max()))
  half = radius * np.tan(half_fov) * 1.5
  kept = []
  total = 0
  while total < num_points:
    pts = target + rng.uniform(-half, half, size=(max(num_points * 4, 4096), 3))
    uv, depth = cam_lib.project_points(views.cameras, pts)
    uv, depth = np.asarray(uv), np.asarray(depth)
    x = np.floor(uv[..., 0]).astype(int)
    y = np.floor(uv[..., 1]).astype(int)
    inside = (depth > 0) & (x >= 0) & (y >= 0) & (x < views.cameras.width) & (y < views.cameras.height)
    hit = np.zeros_like(inside)
    for v in range(len(views)):
      hit[v, inside[v]] = fg[v, y[v, inside[v]], x[v, inside[v]]]
    seen = inside.sum(0)
    ok = (seen > 0) & (hit.sum(0) >= min_view_fraction * seen) & (seen >= 0.5 * len(views))
    kept.append(pts[ok])
    total += int(ok.sum())
    if len(kept) > 50:
      break
  if total == 0:
    raise ValueError("visual hull is empty: the foreground masks do not agree on any 3D point "
                     "(wrong cameras for these images?)")
  return np.concatenate(kept)[:num_points].astype(np.float32)


def initial_points(data: MultiviewData, views: Views, root: str | Path, num_hull_points: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, str]:
  """(points (N, 3), colours (N, 3) or None, where they came from) for initialising a fit."""
  cloud = Path(root) / "points3d.ply"
  if cloud.exists():
    points, colors = ply.read_points(cloud)
    return points, colors, str(cloud)
  return visual_hull_points(views, num_hull_points, rng), None, "visual hull of the foreground"
