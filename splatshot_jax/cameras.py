"""Pinhole cameras in the OpenCV convention (x right, y down, z forward), and their loaders.

Conventions: viewmat is world-to-camera; K is in pixels with pixel centres at integer + 0.5
(COLMAP's convention), so resizing scales K without half-pixel shifts. Loaders read SplatShot
view folders, nerfstudio transforms.json and COLMAP binary models into `MultiviewData`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct as binstruct  # stdlib; `struct` below is flax.struct
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from splatshot_jax import errors


@struct.dataclass
class Camera:
  """One camera, or a batch of V cameras sharing an image size.

  Attributes:
    viewmat: (..., 4, 4) float32 world-to-camera, OpenCV axes.
    K: (..., 3, 3) float32 intrinsics in pixels (pixel centres at integer + 0.5).
    width, height: static image size in pixels.
  """

  viewmat: jax.Array
  K: jax.Array
  width: int = struct.field(pytree_node=False)
  height: int = struct.field(pytree_node=False)

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return self.viewmat.shape[:-2]

  def __len__(self) -> int:
    return self.viewmat.shape[0]

  def __getitem__(self, idx) -> "Camera":
    return Camera(self.viewmat[idx], self.K[idx], self.width, self.height)

  @property
  def camtoworld(self) -> jax.Array:
    return jnp.linalg.inv(self.viewmat)

  @property
  def center(self) -> jax.Array:
    """(..., 3) camera centre in world space."""
    R = self.viewmat[..., :3, :3]
    t = self.viewmat[..., :3, 3]
    return -jnp.einsum("...ji,...j->...i", R, t)


class CameraFormatError(errors.UserError, ValueError):
  """A camera file (transforms.json, COLMAP .bin, view_NNN.npz, meta.json) is malformed."""


# ----------------------------------------------------------------------------------------------
# Rotations and geometry. Quaternions are (w, x, y, z), as in Gaussians.quats and COLMAP.


def quat_to_rotmat(q: jax.Array) -> jax.Array:
  """(..., 4) quaternion (w, x, y, z), any norm -> (..., 3, 3) rotation matrix."""
  q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
  w, x, y, z = jnp.moveaxis(q, -1, 0)
  return jnp.stack([
      jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
      jnp.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
      jnp.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
  ], -2)


def rotmat_to_quat(R: jax.Array) -> jax.Array:
  """(..., 3, 3) rotation -> (..., 4) unit quaternion (w, x, y, z) with w >= 0.

  Shepperd's method: of the four algebraically equal formulas, use the one whose pivot
  (4 q_i^2) is largest, which keeps the division well conditioned for every rotation.
  """
  m = R
  m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
  m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
  m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
  cands = jnp.stack([
      jnp.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
      jnp.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
      jnp.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
      jnp.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
  ], -2)  # (..., 4, 4); row i is 4 q_i q
  pivot = jnp.argmax(jnp.stack([cands[..., i, i] for i in range(4)], -1), axis=-1)
  q = jnp.take_along_axis(cands, pivot[..., None, None], axis=-2)[..., 0, :]
  q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
  return jnp.where(q[..., :1] < 0, -q, q)


def look_at(eye: jax.Array, target: jax.Array, up=(0.0, 1.0, 0.0)) -> jax.Array:
  """World-to-camera matrices (OpenCV axes) of cameras at `eye` looking at `target`.

  Args:
    eye: (..., 3) camera centres, world space.
    target: (..., 3) points the optical axis passes through.
    up: (3,) world up; the camera's -y axis (image up) is the projection of `up` onto the image
      plane. Must not be parallel to the viewing direction.

  Returns:
    (..., 4, 4) float32 viewmat.
  """
  eye = jnp.asarray(eye, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  up = jnp.broadcast_to(jnp.asarray(up, jnp.float32), eye.shape)
  z = target - eye
  z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
  # OpenCV: x right, y down, z forward; x = z cross up gives "right" for a y-down image.
  x = jnp.cross(z, up)
  x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  y = jnp.cross(z, x)
  R = jnp.stack([x, y, z], axis=-2)
  return _compose(R, -jnp.einsum("...ij,...j->...i", R, eye))


def _compose(R: jax.Array, t: jax.Array) -> jax.Array:
  """(..., 3, 3), (..., 3) -> (..., 4, 4) [[R, t], [0, 1]]."""
  top = jnp.concatenate([R, t[..., None]], axis=-1)
  bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], R.dtype), top.shape[:-2] + (1, 4))
  return jnp.concatenate([top, bottom], axis=-2)


def intrinsics(fx, fy, cx, cy) -> jax.Array:
  """(...,) focal lengths and principal point in pixels -> (..., 3, 3) float32 K."""
  fx, fy, cx, cy = jnp.broadcast_arrays(*[jnp.asarray(v, jnp.float32) for v in (fx, fy, cx, cy)])
  z, o = jnp.zeros_like(fx), jnp.ones_like(fx)
  return jnp.stack([jnp.stack([fx, z, cx], -1), jnp.stack([z, fy, cy], -1),
                    jnp.stack([z, z, o], -1)], -2)


def fov_to_focal(fov_deg: float, size: int) -> float:
  """Focal length in pixels for a field of view (degrees) spanning `size` pixels."""
  return 0.5 * size / float(np.tan(0.5 * np.radians(fov_deg)))


def project_points(camera: Camera, points: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pinhole projection of world points.

  Args:
    camera: Camera with batch shape B (possibly ()).
    points: (N, 3) world space.

  Returns:
    uv: (*B, N, 2) pixel coordinates (x right, y down; pixel (i, j) covers [i, i+1) x [j, j+1),
      so its centre is at integer + 0.5 and `floor(uv)` indexes the image).
    depth: (*B, N) camera-space z (positive in front of the camera).
  """
  R = camera.viewmat[..., :3, :3]
  t = camera.viewmat[..., :3, 3]
  pc = jnp.einsum("...ij,nj->...ni", R, points) + t[..., None, :]
  z = pc[..., 2]
  K = camera.K
  u = K[..., None, 0, 0] * pc[..., 0] / z + K[..., None, 0, 2]
  v = K[..., None, 1, 1] * pc[..., 1] / z + K[..., None, 1, 2]
  return jnp.stack([u, v], -1), z


# ----------------------------------------------------------------------------------------------
# Camera transforms: batching, resizing, cropping / padding, interpolation, orbit rigs.


def stack_cameras(cameras) -> Camera:
  """Sequence of single cameras of one image size -> batched Camera (V,)."""
  cameras = list(cameras)
  sizes = {(c.width, c.height) for c in cameras}
  if len(sizes) != 1:
    raise ValueError(f"stack_cameras: all cameras need one image size, got {sorted(sizes)}")
  return Camera(jnp.stack([c.viewmat for c in cameras]), jnp.stack([c.K for c in cameras]),
                cameras[0].width, cameras[0].height)


def resize(camera: Camera, scale_or_size) -> Camera:
  """The camera of the image resized by a factor or to (width, height).

  With pixel centres at integer + 0.5, resizing the image by (sx, sy) maps every continuous pixel
  coordinate u to sx * u, so fx, cx scale by sx and fy, cy by sy (no half-pixel shift).

  Args:
    camera: Camera, any batch shape.
    scale_or_size: float s (new size round(s * width) x round(s * height)) or (width, height).
      K is scaled by the exact ratio new_size / old_size, i.e. what an image resize does.

  Returns:
    Camera with the new static width/height.
  """
  if isinstance(scale_or_size, (tuple, list)):
    new_w, new_h = (int(v) for v in scale_or_size)
  else:
    new_w = int(round(camera.width * float(scale_or_size)))
    new_h = int(round(camera.height * float(scale_or_size)))
  if new_w < 1 or new_h < 1:
    raise ValueError(f"resize: new size must be positive, got {new_w}x{new_h}")
  s = jnp.asarray([new_w / camera.width, new_h / camera.height, 1.0], camera.K.dtype)
  return Camera(camera.viewmat, camera.K * s[:, None], new_w, new_h)


def crop(camera: Camera, left: int, top: int, width: int, height: int) -> Camera:
  """The camera of image[top:top + height, left:left + width]; negative left/top mean padding."""
  shift = jnp.asarray([[0.0, 0.0, -left], [0.0, 0.0, -top], [0.0, 0.0, 0.0]], camera.K.dtype)
  return Camera(camera.viewmat, camera.K + shift, int(width), int(height))


def pad(camera: Camera, top: int, bottom: int, left: int, right: int) -> Camera:
  """The camera of an image padded by the given numbers of pixels (principal point shifts)."""
  return crop(camera, -left, -top, camera.width + left + right, camera.height + top + bottom)


def centered_padding(width: int, height: int, multiple: int = 16) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) padding to the next multiple, centred (extra pixel at the end).

  SplatShot pads 550x802 renders to 560x816 this way: (7, 7, 5, 5).
  """
  ph = -height % multiple
  pw = -width % multiple
  return ph // 2, ph - ph // 2, pw // 2, pw - pw // 2


def interpolate_cameras(a: Camera, b: Camera, ts) -> Camera:
  """Cameras between two single cameras: slerp of rotation, lerp of centre and intrinsics.

  Args:
    a, b: single cameras (viewmat (4, 4)) of the same image size.
    ts: (T,) interpolation weights; 0 gives a, 1 gives b.

  Returns:
    Camera with batch shape (T,).
  """
  if (a.width, a.height) != (b.width, b.height):
    raise ValueError(f"interpolate_cameras: sizes differ, {a.width}x{a.height} vs {b.width}x{b.height}")
  ts = jnp.asarray(ts, jnp.float32)[:, None]
  qa = rotmat_to_quat(a.viewmat[:3, :3])
  qb = rotmat_to_quat(b.viewmat[:3, :3])
  dot = jnp.sum(qa * qb)
  qb = jnp.where(dot < 0, -qb, qb)  # shortest arc
  omega = jnp.arccos(jnp.clip(jnp.abs(dot), -1.0, 1.0))
  so = jnp.sin(omega)
  # Near-identical rotations: slerp weights -> lerp weights (limit omega -> 0).
  wa = jnp.where(so > 1e-6, jnp.sin((1 - ts) * omega) / jnp.where(so > 1e-6, so, 1.0), 1 - ts)
  wb = jnp.where(so > 1e-6, jnp.sin(ts * omega) / jnp.where(so > 1e-6, so, 1.0), ts)
  R = quat_to_rotmat(wa * qa + wb * qb)
  c = (1 - ts) * a.center + ts * b.center
  K = (1 - ts[..., None]) * a.K + ts[..., None] * b.K
  return Camera(_compose(R, -jnp.einsum("tij,tj->ti", R, c)), K, a.width, a.height)


def orbit_rig(target, radius: float, yaws, pitches, *, width: int, height: int,
              fov_deg: float | None = None, K=None, up=(0.0, 1.0, 0.0), front=(0.0, 0.0, 1.0),
              grid: bool = True) -> Camera:
  """Look-at cameras on a sphere around `target`, e.g. a yaw x pitch grid of views of a head.

  Yaw 0, pitch 0 puts the camera at target + radius * front (NeRSemble heads face +z with +y up,
  hence the defaults); positive yaw turns right-handedly about `up`, positive pitch lifts the
  camera towards `up`. The viewing direction must not be parallel to `up` (|pitch| < 90).

  Args:
    target: (3,) point every optical axis passes through (it projects to the principal point).
    radius: distance of the camera centres from `target`.
    yaws: (Y,) degrees.
    pitches: (P,) degrees.
    width, height: image size in pixels.
    fov_deg: vertical field of view in degrees (square pixels, principal point at the centre).
    K: (3, 3) intrinsics instead of fov_deg.
    up: (3,) world up.
    front: (3,) direction of the yaw-0, pitch-0 camera from the target (orthogonalised to up).
    grid: True: all P * Y combinations, pitch-major (views[p * Y + y]); False: zip(yaws, pitches).

  Returns:
    Camera with batch shape (P * Y,) or (Y,).

  For reference, the 48 SplatShot views of NeRSemble subject 333 (16 real cameras plus 32
  interpolated) span yaw -49..49 deg, pitch -19..17 deg at 0.75..1.2 m with fx = 2047 px for
  550x802 images (vertical fov ~22 deg), e.g.
  `orbit_rig(c, 1.1, np.linspace(-48, 48, 12), [-16, -5, 5, 16], K=K, width=550, height=802)`.
  """
  if (fov_deg is None) == (K is None):
    raise ValueError("orbit_rig: give exactly one of fov_deg and K")
  yaws = np.atleast_1d(np.asarray(yaws, np.float64))
  pitches = np.atleast_1d(np.asarray(pitches, np.float64))
  if grid:
    pitches, yaws = (a.ravel() for a in np.meshgrid(pitches, yaws, indexing="ij"))
  elif yaws.shape != pitches.shape:
    raise ValueError(f"orbit_rig: grid=False needs as many yaws as pitches, "
                     f"got {yaws.shape} and {pitches.shape}")
  u = np.asarray(up, np.float64)
  u = u / np.linalg.norm(u)
  f = np.asarray(front, np.float64)
  f = f - f.dot(u) * u
  f = f / np.linalg.norm(f)
  s = np.cross(u, f)  # where yaw +90 deg points
  y, p = np.radians(yaws)[:, None], np.radians(pitches)[:, None]
  dirs = np.cos(p) * (np.cos(y) * f + np.sin(y) * s) + np.sin(p) * u
  tgt = np.asarray(target, np.float64)
  eye = tgt + radius * dirs
  viewmat = look_at(jnp.asarray(eye), jnp.broadcast_to(jnp.asarray(tgt, jnp.float32), eye.shape),
                    u)
  if K is None:
    focal = fov_to_focal(fov_deg, height)
    K = intrinsics(focal, focal, width / 2.0, height / 2.0)
  K = jnp.broadcast_to(jnp.asarray(K, jnp.float32), (len(eye), 3, 3))
  return Camera(viewmat, K, int(width), int(height))


# ----------------------------------------------------------------------------------------------
# Loaders. All return MultiviewData; errors name the file and the field.


@dataclasses.dataclass(frozen=True)
class MultiviewData:
  """Calibrated views of one scene.

  Attributes:
    cameras: Camera with batch shape (V,), for images of cameras.width x cameras.height.
    names: V view names (image file stem, or view_NNN).
    image_paths: V image files, or None when pixels are stored inline (`images`).
    mask_paths: V foreground-mask files (entries None where absent), or None.
    images: (V, H, W, 3) uint8, or None when they live in image_paths.
    controls: per-view arrays such as heatmap_control / parsing_control, (V, H, W, 3) uint8.
    valid: (V,) bool.
    padding: (top, bottom, left, right) of stored padded images (SplatShot views), else None;
      `pad(cameras, *padding)` gives the cameras of the padded images.
  """

  cameras: Camera
  names: tuple[str, ...]
  image_paths: tuple[Path, ...] | None = None
  mask_paths: tuple[Path | None, ...] | None = None
  images: np.ndarray | None = None
  controls: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  valid: np.ndarray | None = None
  padding: tuple[int, int, int, int] | None = None

  def __len__(self) -> int:
    return len(self.names)

  def load_images(self, background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """(V, H, W, 3) float32 in [0, 1]: the inline images, or the files read with io.images."""
    if self.images is not None:
      return self.images.astype(np.float32) / 255.0
    from splatshot_jax.io.images import load_image  # pylint: disable=import-outside-toplevel
    out = np.stack([load_image(p, background=background) for p in self.image_paths])
    if out.shape[1:3] != (self.cameras.height, self.cameras.width):
      raise CameraFormatError(f"{self.image_paths[0].parent}: images are {out.shape[2]}x"
                              f"{out.shape[1]}, cameras expect {self.cameras.width}x"
                              f"{self.cameras.height}")
    return out

  def load_masks(self, threshold: float | None = 0.5) -> np.ndarray:
    """(V, H, W) float32 foreground masks (binarised at `threshold` unless it is None)."""
    if self.mask_paths is None or any(p is None for p in self.mask_paths):
      raise CameraFormatError(f"views {self.names[:3]}...: no mask file for every view")
    from splatshot_jax.io.images import load_mask  # pylint: disable=import-outside-toplevel
    return np.stack([load_mask(p, threshold) for p in self.mask_paths])

  def select(self, idx) -> "MultiviewData":
    """The subset of views idx (ints or bool mask), keeping every field aligned."""
    idx = np.arange(len(self))[np.asarray(idx)]
    pick = lambda seq: None if seq is None else tuple(seq[i] for i in idx)
    return dataclasses.replace(
        self, cameras=self.cameras[jnp.asarray(idx)], names=pick(self.names),
        image_paths=pick(self.image_paths), mask_paths=pick(self.mask_paths),
        images=None if self.images is None else self.images[idx],
        controls={k: v[idx] for k, v in self.controls.items()},
        valid=None if self.valid is None else self.valid[idx])


def _err(path, msg) -> CameraFormatError:
  return CameraFormatError(f"{path}: {msg}")


def load_splatshot_views(folder: str | os.PathLike, *, only_valid: bool = False) -> MultiviewData:
  """Loads a SplatShot view folder (meta.json + view_NNN.npz), removing the padding.

  Each npz holds `padded_image` (Hp, Wp, 3) uint8: the H x W render padded centred by mirror
  reflection (OpenCV BORDER_REFLECT = numpy 'symmetric') to multiples of 16, plus `viewmat`,
  `K` (for the unpadded image), `heatmap_control` and `parsing_control` (H, W, 3), `valid`.
  For 550x802 renders padded to 560x816, padding = (7, 7, 5, 5) and the padded principal point is
  (cx + 5, cy + 7).

  Args:
    folder: directory with meta.json and view_000.npz ... view_{num_views-1}.npz.
    only_valid: drop views whose `valid` flag is False.

  Returns:
    MultiviewData with cameras (V,) for the unpadded W x H images, images (V, H, W, 3) uint8
    unpadded, controls {'heatmap_control', 'parsing_control'}, valid (V,), padding.
  """
  folder = Path(folder)
  meta_path = folder / "meta.json"
  try:
    meta = json.loads(meta_path.read_text())
  except OSError as e:
    raise _err(meta_path, f"cannot read ({e.strerror})") from None
  except json.JSONDecodeError as e:
    raise _err(meta_path, f"invalid JSON ({e})") from None
  for key in ("num_views", "padded_width", "padded_height"):
    if not isinstance(meta.get(key), int):
      raise _err(meta_path, f"field '{key}' must be an integer, got {meta.get(key)!r}")
  pw, ph = meta["padded_width"], meta["padded_height"]
  fields = {"padded_image": (ph, pw, 3), "viewmat": (4, 4), "K": (3, 3), "valid": (),
            "heatmap_control": None, "parsing_control": None}
  views = []
  for i in range(meta["num_views"]):
    path = folder / f"view_{i:03d}.npz"
    try:
      with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
      raise _err(path, f"cannot read npz ({e})") from None
    for key, shape in fields.items():
      if key not in d:
        raise _err(path, f"missing field '{key}' (has {sorted(d)})")
      if shape is not None and d[key].shape != shape:
        raise _err(path, f"field '{key}' has shape {d[key].shape}, expected {shape}")
    views.append(d)
  if not views:
    raise _err(meta_path, "num_views is 0")
  h, w = views[0]["heatmap_control"].shape[:2]
  for i, d in enumerate(views):
    for key in ("heatmap_control", "parsing_control"):
      if d[key].shape != (h, w, 3):
        raise _err(folder / f"view_{i:03d}.npz",
                   f"field '{key}' has shape {d[key].shape}, expected {(h, w, 3)}")
  top, bottom, left, right = padding = ((ph - h) // 2, ph - h - (ph - h) // 2,
                                        (pw - w) // 2, pw - w - (pw - w) // 2)
  if min(padding) < 0:
    raise _err(meta_path, f"padded size {pw}x{ph} is smaller than the controls' {w}x{h}")
  valid = np.array([bool(d["valid"]) for d in views])
  data = MultiviewData(
      cameras=Camera(jnp.asarray(np.stack([d["viewmat"] for d in views]), jnp.float32),
                     jnp.asarray(np.stack([d["K"] for d in views]), jnp.float32), int(w), int(h)),
      names=tuple(f"view_{i:03d}" for i in range(len(views))),
      images=np.stack([d["padded_image"][top:top + h, left:left + w] for d in views]),
      controls={k: np.stack([d[k] for d in views]) for k in ("heatmap_control", "parsing_control")},
      valid=valid,
      padding=padding,
  )
  return data.select(valid) if only_valid else data


def _json_number(path, where, value, name):
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise _err(path, f"{where}: field '{name}' must be a number, got {value!r}")
  return float(value)


def load_transforms_json(path: str | os.PathLike, split: str | None = None) -> MultiviewData:
  """Loads a nerfstudio / instant-ngp transforms.json.

  `transform_matrix` is camera-to-world in OpenGL axes (x right, y up, z back); OpenCV
  world-to-camera is inv(c2w @ diag(1, -1, -1, 1)). Intrinsics fl_x, fl_y, cx, cy, w, h are read
  per frame, falling back to the top level; fl_x may come from camera_angle_x. Distortion
  coefficients (k1, k2, k3, k4, p1, p2) are ignored with a warning when non-zero.

  Args:
    path: a transforms*.json file or the directory holding it.
    split: with a directory, read transforms_{split}.json (e.g. 'train', 'val', 'test').

  Returns:
    MultiviewData with cameras (V,) in file order, image_paths (file_path relative to the json),
    mask_paths (mask_path or fg_mask_path, if given).
  """
  path = Path(path)
  if path.is_dir():
    path = path / ("transforms.json" if split is None else f"transforms_{split}.json")
  try:
    meta = json.loads(path.read_text())
  except OSError as e:
    raise _err(path, f"cannot read ({e.strerror})") from None
  except json.JSONDecodeError as e:
    raise _err(path, f"invalid JSON ({e})") from None
  frames = meta.get("frames") if isinstance(meta, dict) else None
  if not isinstance(frames, list):
    raise _err(path, "field 'frames' must be a list of frames")
  if not frames:
    raise _err(path, "field 'frames' is empty")
  viewmats, Ks, names, images, masks, sizes = [], [], [], [], [], set()
  distorted = False
  for i, fr in enumerate(frames):
    where = f"frames[{i}]"
    if not isinstance(fr, dict):
      raise _err(path, f"{where} must be an object")
    get = lambda k: fr[k] if k in fr else meta.get(k)
    for key in ("w", "h", "file_path", "transform_matrix"):
      if get(key) is None:
        raise _err(path, f"{where}: missing field '{key}' (per frame or top level)")
    w = int(_json_number(path, where, get("w"), "w"))
    h = int(_json_number(path, where, get("h"), "h"))
    if get("fl_x") is not None:
      fx = _json_number(path, where, get("fl_x"), "fl_x")
    elif get("camera_angle_x") is not None:
      fx = 0.5 * w / np.tan(0.5 * _json_number(path, where, get("camera_angle_x"), "camera_angle_x"))
    else:
      raise _err(path, f"{where}: missing field 'fl_x' (or 'camera_angle_x')")
    fy = _json_number(path, where, get("fl_y"), "fl_y") if get("fl_y") is not None else fx
    cx = _json_number(path, where, get("cx"), "cx") if get("cx") is not None else w / 2.0
    cy = _json_number(path, where, get("cy"), "cy") if get("cy") is not None else h / 2.0
    distorted |= any(abs(float(get(k) or 0.0)) > 0 for k in ("k1", "k2", "k3", "k4", "p1", "p2"))
    try:
      c2w = np.asarray(fr["transform_matrix"], np.float64)
    except (ValueError, TypeError):
      c2w = np.zeros(0)
    if c2w.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(c2w)):
      raise _err(path, f"{where}: field 'transform_matrix' must be a finite 4x4 (or 3x4) "
                       f"matrix, got {fr['transform_matrix']!r:.80}")
    c2w = np.concatenate([c2w[:3], [[0.0, 0.0, 0.0, 1.0]]])
    viewmats.append(np.linalg.inv(c2w @ np.diag([1.0, -1.0, -1.0, 1.0])))
    Ks.append([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    sizes.add((w, h))
    img = path.parent / fr["file_path"]
    if not img.suffix and not img.exists() and img.with_suffix(".png").exists():
      img = img.with_suffix(".png")  # NeRF-synthetic style paths without extension
    images.append(img)
    names.append(img.stem)
    m = fr.get("mask_path", fr.get("fg_mask_path"))
    masks.append(None if m is None else path.parent / m)
  if len(sizes) != 1:
    raise _err(path, f"frames have different image sizes {sorted(sizes)}; a Camera batch "
                     f"needs one size (load subsets separately)")
  if distorted:
    warnings.warn(f"{path}: non-zero distortion coefficients ignored (pinhole model used)")
  w, h = sizes.pop()
  return MultiviewData(
      cameras=Camera(jnp.asarray(np.stack(viewmats), jnp.float32),
                     jnp.asarray(np.asarray(Ks), jnp.float32), w, h),
      names=tuple(names), image_paths=tuple(images),
      mask_paths=tuple(masks) if any(m is not None for m in masks) else None,
      valid=np.ones(len(names), bool))


# COLMAP camera models: id -> (name, number of params). Pinhole-family models keep their first
# parameters as f or (fx, fy), cx, cy; the rest are distortion, which we drop with a warning.
_COLMAP_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
}
_PINHOLE_FAMILY = {"SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV"}


class _Reader:
  """Sequential little-endian reader that turns running off the end into CameraFormatError."""

  def __init__(self, path: Path):
    self.path = path
    try:
      self.data = path.read_bytes()
    except OSError as e:
      raise _err(path, f"cannot read ({e.strerror})") from None
    self.pos = 0

  def read(self, fmt: str, what: str):
    size = binstruct.calcsize("<" + fmt)
    if self.pos + size > len(self.data):
      raise _err(self.path, f"truncated while reading {what} at byte {self.pos}")
    out = binstruct.unpack_from("<" + fmt, self.data, self.pos)
    self.pos += size
    return out

  def cstring(self, what: str) -> str:
    end = self.data.find(b"\0", self.pos)
    if end < 0:
      raise _err(self.path, f"truncated while reading {what} at byte {self.pos}")
    s = self.data[self.pos:end].decode("utf-8", errors="replace")
    self.pos = end + 1
    return s


def read_colmap_cameras(path: str | os.PathLike) -> dict[int, tuple[str, int, int, np.ndarray]]:
  """cameras.bin -> {camera_id: (model name, width, height, params float64)}."""
  r = _Reader(Path(path))
  (n,) = r.read("Q", "num_cameras")
  cams = {}
  for i in range(n):
    cid, model, w, h = r.read("iiQQ", f"camera {i} header")
    if model not in _COLMAP_MODELS:
      raise _err(path, f"camera {cid}: unknown model id {model}")
    name, num = _COLMAP_MODELS[model]
    cams[cid] = (name, int(w), int(h), np.asarray(r.read(f"{num}d", f"camera {cid} params")))
  return cams


def read_colmap_images(path: str | os.PathLike) -> list[tuple[int, np.ndarray, np.ndarray, int, str]]:
  """images.bin -> [(image_id, qvec (w,x,y,z), tvec, camera_id, name)], world-to-camera."""
  r = _Reader(Path(path))
  (n,) = r.read("Q", "num_images")
  out = []
  for i in range(n):
    iid, *qt, cid = r.read("i7di", f"image {i} pose")
    name = r.cstring(f"image {iid} name")
    (npts,) = r.read("Q", f"image {iid} num_points2D")
    r.read(f"{24 * npts}x", f"image {iid} points2D")  # (x, y, point3D_id) each, unused
    out.append((iid, np.asarray(qt[:4]), np.asarray(qt[4:]), cid, name))
  return out


def read_colmap_points(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """points3D.bin -> (points (N, 3) float32, colors (N, 3) float32 in [0, 1])."""
  r = _Reader(Path(path))
  (n,) = r.read("Q", "num_points")
  pts = np.empty((n, 3), np.float32)
  cols = np.empty((n, 3), np.float32)
  for i in range(n):
    _, x, y, z, cr, cg, cb, _, track = r.read("Q3d3BdQ", f"point {i}")
    r.read(f"{8 * track}x", f"point {i} track")
    pts[i] = x, y, z
    cols[i] = cr / 255.0, cg / 255.0, cb / 255.0
  return pts, cols


def load_colmap(path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> MultiviewData:
  """Loads a COLMAP binary model (cameras.bin, images.bin).

  Args:
    path: the model directory (e.g. scene/sparse/0) or the scene directory holding sparse/0.
    images_dir: where image files live; default <scene>/images with scene = model dir's
      grandparent (scene/sparse/0) or the given scene directory. Masks are looked up by image
      name in <scene>/fg_masks or <scene>/masks.

  Returns:
    MultiviewData with cameras (V,) sorted by image name. Only pinhole-family models are
    supported; distortion parameters are dropped with a warning when non-zero.
  """
  path = Path(path)
  if (path / "sparse" / "0" / "cameras.bin").exists():
    model_dir, scene = path / "sparse" / "0", path
  else:
    model_dir = path
    scene = path.parent.parent if path.parent.name == "sparse" else path.parent
  cams = read_colmap_cameras(model_dir / "cameras.bin")
  imgs = sorted(read_colmap_images(model_dir / "images.bin"), key=lambda t: t[4])
  if not imgs:
    raise _err(model_dir / "images.bin", "no registered images")
  images_dir = Path(images_dir) if images_dir is not None else scene / "images"
  viewmats, Ks, sizes, names, paths, masks = [], [], set(), [], [], []
  distorted = []
  for iid, q, t, cid, name in imgs:
    if cid not in cams:
      raise _err(model_dir / "images.bin", f"image {iid} ({name}) uses camera_id {cid}, "
                                           f"absent from cameras.bin")
    model, w, h, p = cams[cid]
    if model not in _PINHOLE_FAMILY:
      raise _err(model_dir / "cameras.bin", f"camera {cid}: model {model} is not supported "
                                            f"(expected one of {sorted(_PINHOLE_FAMILY)})")
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
      fx = fy = p[0]
      cx, cy, dist = p[1], p[2], p[3:]
    else:
      fx, fy, cx, cy, dist = p[0], p[1], p[2], p[3], p[4:]
    if np.any(dist != 0):
      distorted.append(cid)
    R = _quat_to_rotmat_np(q)
    vm = np.eye(4)
    vm[:3, :3], vm[:3, 3] = R, t
    viewmats.append(vm)
    Ks.append([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    sizes.add((w, h))
    names.append(Path(name).stem)
    paths.append(images_dir / name)
    mask = next((d / name for d in (scene / "fg_masks", scene / "masks") if (d / name).exists()),
                None)
    masks.append(mask)
  if distorted:
    warnings.warn(f"{model_dir / 'cameras.bin'}: non-zero distortion of cameras "
                  f"{sorted(set(distorted))} ignored (pinhole model used)")
  if len(sizes) != 1:
    raise _err(model_dir / "cameras.bin", f"cameras have different image sizes {sorted(sizes)}; "
                                          f"a Camera batch needs one size")
  w, h = sizes.pop()
  return MultiviewData(
      cameras=Camera(jnp.asarray(np.stack(viewmats), jnp.float32),
                     jnp.asarray(np.asarray(Ks), jnp.float32), w, h),
      names=tuple(names), image_paths=tuple(paths),
      mask_paths=tuple(masks) if any(m is not None for m in masks) else None,
      valid=np.ones(len(names), bool))


def _quat_to_rotmat_np(q: np.ndarray) -> np.ndarray:
  """float64 twin of quat_to_rotmat for loaders (jax defaults to float32)."""
  w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
  return np.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
  ])


def load_multiview(path: str | os.PathLike, split: str | None = None) -> MultiviewData:
  """Loads calibrated views, detecting the format from what `path` holds.

  - meta.json + view_NNN.npz: SplatShot views (`load_splatshot_views`);
  - a *.json file, or a directory with transforms.json: nerfstudio (`load_transforms_json`,
    `split` picks transforms_{split}.json);
  - cameras.bin + images.bin, or a directory with sparse/0/: COLMAP (`load_colmap`).

  Raises:
    CameraFormatError: nothing recognisable at `path` (or the loader's own errors).
  """
  path = Path(path)
  if path.is_file() and path.suffix == ".json":
    return load_transforms_json(path)
  if not path.is_dir():
    raise _err(path, "not a directory or transforms .json file")
  if (path / "meta.json").exists() and (path / "view_000.npz").exists():
    if split is not None:
      raise _err(path, f"SplatShot view folders have no splits (got split={split!r})")
    return load_splatshot_views(path)
  if (path / "transforms.json").exists() or (split and (path / f"transforms_{split}.json").exists()):
    return load_transforms_json(path, split)
  if split is not None:
    raise _err(path, f"split {split!r} needs transforms_{split}.json, which is absent")
  if (path / "cameras.bin").exists() or (path / "sparse" / "0" / "cameras.bin").exists():
    return load_colmap(path)
  raise _err(path, "no recognised camera format (expected meta.json + view_NNN.npz, "
                   "transforms.json, or COLMAP cameras.bin/images.bin in . or sparse/0)")
