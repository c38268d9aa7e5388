"""Control maps of a template: 3D landmarks and their heatmaps, and parsing labels
lifted onto the Gaussians (rendered as extra channels, so any view gets its parsing map).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from splatshot_jax.cameras import Camera
from splatshot_jax.face import controls
from splatshot_jax.face.landmarks3d import (Landmarks3D, detect_landmarks_views, project_landmarks,
                                            triangulate_camera_landmarks)
from splatshot_jax.gaussians import Gaussians
from splatshot_jax.io import images as image_io
from splatshot_jax.render import check_overflow, render_views
from splatshot_jax.templates.folder import BACKGROUND, NUM_CLASSES, TemplateError, frontal_view  # noqa: F401


def render_chunked(g: Gaussians, cameras: Camera, *, background=(0.0, 0.0, 0.0),
                   features: Optional[jax.Array] = None, render_rgb: bool = True,
                   chunk: int = 4) -> dict[str, np.ndarray]:
  """Renders V views a few at a time (a 48-view vmap of a large head does not fit in CPU memory).

  Args:
    g: Gaussians; cameras: Camera (V,); features: optional (N, C) extra channels.
    render_rgb: also render colour (one pass gives colour and features together).
    chunk: views per `render_views` call.

  Returns:
    {"rgb": (V, H, W, 3) float32 clipped to [0, 1] (when render_rgb), "alpha": (V, H, W) float32,
     "features": (V, H, W, C) float32 (when features are given)}.
  """
  outs = {"alpha": [], "rgb": [], "features": []}
  for s in range(0, len(cameras), chunk):
    o = render_views(g, cameras[s:s + chunk], background=jnp.asarray(background, jnp.float32),
                     features=features, render_rgb=render_rgb)
    check_overflow(o)
    outs["alpha"].append(np.asarray(o.alpha))
    if render_rgb:
      outs["rgb"].append(np.clip(np.asarray(o.rgb), 0.0, 1.0))
    if features is not None:
      outs["features"].append(np.asarray(o.features))
  return {k: np.concatenate(v).astype(np.float32) for k, v in outs.items() if v}


# ----------------------------------------------------------------------------------------------
# Landmarks and heatmaps.


def triangulate_template_landmarks(images: np.ndarray, cameras: Camera, *, min_face_px: float = 40.0,
                                   detector: str = "hog", inlier_px: Optional[float] = None) -> Landmarks3D:
  """dlib's 68 landmarks on each image, triangulated robustly in 3D.

  Args:
    images: (V, H, W, 3) uint8 or float in [0, 1], renders (or photos) of the cameras.
    cameras: Camera (V,).
    min_face_px: smallest face accepted per view (lower than the photo default: renders are small).
    detector: "hog" or "cnn".
    inlier_px: RANSAC threshold; default 8 px per 250 px of median face size (the triangulation's
      default is tuned on ~250 px faces).

  Raises:
    TemplateError: fewer than 2 views have a detected face.
  """
  imgs = [image_io.to_uint8(im) for im in np.asarray(images)]
  lms, ok = detect_landmarks_views(imgs, detector=detector, min_face_px=min_face_px)
  if ok.sum() < 2:
    raise TemplateError(f"landmarks: a face was detected in {int(ok.sum())} of {len(imgs)} views "
                        f"({imgs[0].shape[1]}x{imgs[0].shape[0]} px); need 2 to triangulate (render at "
                        "a higher resolution, or lower min_face_px)")
  if inlier_px is None:
    ext = lms[ok].max(1) - lms[ok].min(1)
    inlier_px = max(2.0, 8.0 * float(np.median(np.sqrt(ext[:, 0] * ext[:, 1]))) / 250.0)
  return triangulate_camera_landmarks(lms, ok, cameras, inlier_px=inlier_px)


def landmark_heatmaps(points3d: np.ndarray, cameras: Camera, *, drop_jaw: bool = False,
                      min_inside: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """Official-style heatmaps (face.controls.landmark_heatmap) of 3D landmarks in every view.

  Args:
    points3d: (68, 3) world-space landmarks (NaN rows skipped).
    cameras: Camera (V,).
    drop_jaw: leave out the jaw points (closer to the official jawless maps).
    min_inside: a view is valid when this fraction of the finite landmarks projects in front of the
      camera and inside the image; invalid views get the all-black map, as in the official data.

  Returns:
    heatmaps (V, H, W, 3) uint8, valid (V,) bool.
  """
  uv, depth = project_landmarks(jnp.asarray(points3d), cameras, return_depth=True)
  uv, depth = np.asarray(uv), np.asarray(depth)
  W, H = cameras.width, cameras.height
  finite = np.isfinite(np.asarray(points3d)).all(-1)
  inside = (depth > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < W) & (uv[..., 1] >= 0) & (uv[..., 1] < H)
  valid = (inside & finite).sum(-1) >= max(1, min_inside * finite.sum())
  uv = np.where(finite[None, :, None], uv, np.nan)
  heat = np.stack([controls.landmark_heatmap(uv[v], H, W, valid=bool(valid[v]), drop_jaw=drop_jaw)
                   for v in range(len(cameras))])
  return heat, valid


# ----------------------------------------------------------------------------------------------
# Parsing: per-view labels lifted onto the Gaussians.


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(..., H, W) integer labels -> (..., h, w) by nearest pixel centre; size = (w, h)."""
  labels = np.asarray(labels)
  H, W = labels.shape[-2:]
  w, h = size
  ys = np.minimum(((np.arange(h) + 0.5) * H / h).astype(int), H - 1)
  xs = np.minimum(((np.arange(w) + 0.5) * W / w).astype(int), W - 1)
  return labels[..., ys[:, None], xs[None, :]]


def _pixel_probs(out_features: jax.Array, alpha: jax.Array) -> jax.Array:
  """Per-pixel class probabilities: composited Gaussian probabilities + transparency as background.

  The composite of per-Gaussian probabilities sums to alpha; the remaining 1 - alpha is what shows
  through to the (background) class, so the result sums to 1.
  """
  return out_features.at[..., BACKGROUND].add(1.0 - alpha)


def _render_probs(g: Gaussians, cam: Camera, probs: jax.Array, render_kwargs) -> jax.Array:
  from splatshot_jax.render import render  # pylint: disable=import-outside-toplevel
  out = render(g, cam, features=probs, render_rgb=False, **dict(render_kwargs))
  return _pixel_probs(out.features, out.alpha)


@functools.partial(jax.jit, static_argnames=("num_iters", "views_per_iter", "render_kwargs"))
def lift_labels(gaussians: Gaussians, cameras: Camera, labels: jax.Array, *, num_iters: int = 300,
                lr: float = 0.1, views_per_iter: int = 2, rng: jax.Array,
                render_kwargs: tuple = ()) -> tuple[jax.Array, jax.Array]:
  """Per-Gaussian class logits that reproduce per-view parsing labels (Gaussians frozen).

  Each iteration renders softmax(logits) as extra channels in `views_per_iter` random views and
  minimises the pixel-wise cross-entropy against the labels (Adam, one `lax.scan`).

  Args:
    gaussians: N frozen Gaussians.
    cameras: Camera (V,) of the labelled views.
    labels: (V, H, W) int32 class ids in [0, NUM_CLASSES).
    num_iters, lr, views_per_iter: optimisation settings (static num_iters / views_per_iter).
    rng: PRNG key for view sampling.
    render_kwargs: static tuple of (name, value) rasterizer settings.

  Returns:
    logits (N, NUM_CLASSES) float32, losses (num_iters,) float32.
  """
  logits = jnp.zeros((gaussians.num, NUM_CLASSES), jnp.float32)
  opt = optax.adam(lr)

  def loss_fn(lg, idx):
    probs = jax.nn.softmax(lg, -1)
    p = jax.vmap(lambda i: _render_probs(gaussians, cameras[i], probs, render_kwargs))(idx)
    picked = jnp.take_along_axis(p, labels[idx][..., None], axis=-1)[..., 0]
    return -jnp.mean(jnp.log(jnp.clip(picked, 1e-6, 1.0)))

  def step(carry, key):
    lg, state = carry
    idx = jax.random.choice(key, len(labels), (views_per_iter,), replace=False)
    loss, grad = jax.value_and_grad(loss_fn)(lg, idx)
    updates, state = opt.update(grad, state, lg)
    return (optax.apply_updates(lg, updates), state), loss

  (logits, _), losses = jax.lax.scan(step, (logits, opt.init(logits)), jax.random.split(rng, num_iters))
  return logits, losses


def labels_from_render(features: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """(..., H, W) int32 parsing labels: argmax of rendered class probabilities (..., H, W, C) with the
  transparency (alpha (..., H, W)) counted as background."""
  return np.asarray(jnp.argmax(_pixel_probs(jnp.asarray(features), jnp.asarray(alpha)), -1), np.int32)


def render_labels(gaussians: Gaussians, cameras: Camera, class_probs: jax.Array, chunk: int = 4) -> np.ndarray:
  """(V, H, W) int32 parsing labels of every view: argmax of the rendered class probabilities.

  Args:
    class_probs: (N, NUM_CLASSES) per-Gaussian probabilities (softmax of `lift_labels`' logits, or
      one-hot ground truth).
  """
  out = render_chunked(gaussians, cameras, features=class_probs, render_rgb=False, chunk=chunk)
  return labels_from_render(out["features"], out["alpha"])


def approximate_view_labels(points3d: np.ndarray, cameras: Camera, alpha: np.ndarray) -> np.ndarray:
  """(V, H, W) int32 `face.controls.approximate_parsing` of each view from projected 3D landmarks.

  Args:
    points3d: (68, 3) landmarks; cameras: Camera (V,); alpha: (V, H, W) foreground in [0, 1].
  """
  uv = np.asarray(project_landmarks(jnp.asarray(points3d), cameras))
  return np.stack([controls.approximate_parsing(uv[v], alpha[v], cameras.height, cameras.width)
                   for v in range(len(cameras))])
