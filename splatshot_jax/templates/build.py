"""Building templates: a multi-view scene, its 3DGS fit, the camera rig, and the assembled template
(renders + control maps), from fitted Gaussians or from the synthetic head.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from splatshot_jax import cameras as cam_lib
from splatshot_jax import datasets, fit as fit_lib, metrics, synthetic
from splatshot_jax.cameras import Camera
from splatshot_jax.face import controls
from splatshot_jax.face.landmarks3d import Landmarks3D
from splatshot_jax.gaussians import Gaussians, init_from_points
from splatshot_jax.templates.control_maps import (approximate_view_labels, frontal_view, labels_from_render,
                                                  landmark_heatmaps, lift_labels, render_chunked, resize_labels,
                                                  triangulate_template_landmarks)
from splatshot_jax.templates.folder import HEURISTIC_CLASSES, NUM_CLASSES, Template, TemplateInfo


# ----------------------------------------------------------------------------------------------
# Scene loading and the 3DGS fit (shared with experiments/fit_multiview.py).


@dataclasses.dataclass(frozen=True)
class Scene:
  """A multi-view set split for fitting.

  Attributes:
    train, test: datasets.Views (test None when nothing is held out).
    all_cameras: Camera (V,) of every view in file order (train and test).
    train_index, test_index: view indices of train / test in file order.
    points, colors: (M, 3) init points and (M, 3) colours or None.
    source: description of where the views and points came from.
    data: the MultiviewData (None for the synthetic head).
  """

  train: datasets.Views
  test: Optional[datasets.Views]
  all_cameras: Camera
  train_index: tuple[int, ...]
  test_index: tuple[int, ...]
  points: np.ndarray
  colors: Optional[np.ndarray]
  source: str
  data: Optional[cam_lib.MultiviewData] = None


def load_scene(path: str, *, scale: float, holdout: Sequence[int], background, hull_points: int,
               seed: int) -> Scene:
  """Loads a multi-view set (or, with path '', renders the synthetic head) and splits off held-out views.

  Args:
    path: a folder `cameras.load_multiview` reads; '' = `synthetic.make_head_scene` at 256 * scale px.
    scale: image resolution factor.
    holdout: held-out view indices (those >= V are ignored).
    background: (3,) RGB where stored images carry alpha (and behind the synthetic renders).
    hull_points: init points carved from the visual hull when the set has no points3d.ply.
    seed: randomness of the hull points / synthetic head.
  """
  rng = np.random.default_rng(seed)
  data = None
  if path:
    data = cam_lib.load_multiview(path)
    views = datasets.load_views(data, scale, background=tuple(background))
    points, colors, source = datasets.initial_points(data, views, path, hull_points, rng)
  else:
    size = max(16, int(256 * scale))
    scene = synthetic.make_head_scene(width=size, height=size, render_images=True,
                                      background=tuple(background), seed=seed)
    views = datasets.Views(scene.cameras, scene.images, None,
                           tuple(f"view_{i:02d}" for i in range(len(scene.cameras))))
    points, colors = scene.points, None
    source = "synthetic head (splatshot_jax.synthetic)"
  test = tuple(i for i in holdout if i < len(views))
  train = tuple(i for i in range(len(views)) if i not in test)
  return Scene(views.subset(train), views.subset(test) if test else None, views.cameras, train, test,
               points, colors, source, data)


def fit_scene(train: datasets.Views, points: np.ndarray, colors: Optional[np.ndarray], *,
              fit: Mapping, init: Mapping, background, seed: int,
              progress: Optional[Callable[[int, dict], None]] = None) -> tuple[Gaussians, dict]:
  """Full 3DGS fit with gsplat-style densification, from an init point cloud.

  Args:
    train: Views to fit (cameras (V,), images (V, H, W, 3) float32).
    points: (M, 3) float32 init points; colors: (M, 3) or None.
    fit: mapping with num_iters, sh_degree_interval, densify (bool), refine_start_iter,
      refine_stop_iter, refine_every, reset_every, max_gaussians and optionally means_lr_final, tile_size,
      tiles_per_step (rasterizer settings; 8-px tiles are faster on CPU) (configs/fit_multiview.py's `fit`).
    init: mapping with sh_degree, opacity (its `init`).
    background: (3,) RGB behind the renders (the images' background).
    seed: PRNG seed.
    progress: called with (iterations done in the chunk, stats) between densification chunks.

  Returns:
    (Gaussians, info {num_gaussians, fit_seconds, iterations, final_loss, overflow, resolution}).
  """
  g = init_from_points(points, colors, sh_degree=init["sh_degree"], init_opacity=init["opacity"],
                       rng=jax.random.PRNGKey(seed))
  centers = np.asarray(train.cameras.center)
  # gsplat's scene scale: 1.1 x the largest camera distance from the cameras' mean.
  scene_scale = 1.1 * float(np.linalg.norm(centers - centers.mean(0), axis=-1).max())
  render_kwargs = tuple((k, int(fit[k])) for k in ("tile_size", "tiles_per_step") if k in fit)
  fit_cfg = fit_lib.FitConfig(num_iters=fit["num_iters"], scene_scale=scene_scale,
                              background=tuple(background), sh_degree_interval=fit["sh_degree_interval"],
                              means_lr_final=float(fit.get("means_lr_final", 1.0)), render_kwargs=render_kwargs,
                              backend=str(fit.get("backend", "auto")))
  densify = fit_lib.DensifyConfig(
      refine_start_iter=fit["refine_start_iter"], refine_stop_iter=fit["refine_stop_iter"],
      refine_every=fit["refine_every"], reset_every=fit["reset_every"], max_gaussians=fit["max_gaussians"])
  if not fit["densify"]:
    densify = dataclasses.replace(densify, refine_start_iter=fit["num_iters"] + 1)
  t0 = time.time()
  g, losses, overflow = fit_lib.fit_with_densification(
      g, train.cameras, jnp.asarray(train.images), fit_cfg, densify, rng=jax.random.PRNGKey(seed),
      scene_scale=scene_scale, progress=progress)
  info = {"num_gaussians": int(g.num), "fit_seconds": round(time.time() - t0, 1),
          "iterations": int(fit["num_iters"]), "final_loss": float(np.mean(losses[-50:])),
          "overflow": int(overflow), "resolution": [train.cameras.width, train.cameras.height]}
  return g, info


def evaluate_views(g: Gaussians, views: datasets.Views, background, chunk: int = 4
                   ) -> tuple[dict, np.ndarray]:
  """Mean PSNR / SSIM of renders vs images. Returns (metrics, renders (V, H, W, 3) float32)."""
  rgb = render_chunked(g, views.cameras, background=background, chunk=chunk)["rgb"]
  target = jnp.asarray(views.images)
  psnr = jax.vmap(metrics.psnr)(jnp.asarray(rgb), target)
  ssim = jax.vmap(metrics.ssim)(jnp.asarray(rgb), target)
  return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean()),
          "psnr_per_view": [round(float(p), 3) for p in psnr]}, rgb


# ----------------------------------------------------------------------------------------------
# The rig.


def interpolated_rig(cameras: Camera, num_interpolated: int) -> tuple[Camera, np.ndarray, np.ndarray]:
  """The real cameras followed by cameras interpolated between neighbouring pairs.

  Neighbours are the closest pairs of camera centres: the `num_interpolated` shortest pairs get one
  camera each at their midpoint (slerp / lerp, `cameras.interpolate_cameras`). For NeRSemble's two
  rows of 8 this is the 14 pairs within a row, the 8 across rows and the 10 shortest diagonals, so
  the new views fill in yaw and pitch between the real ones. (The official 48 views pair real
  cameras at random with t in 0.3..0.7; a deterministic neighbour rule gives the same coverage.)
  With fewer pairs than `num_interpolated`, each pair gets several evenly spaced cameras.

  Args:
    cameras: Camera (V,), V >= 2, one image size.
    num_interpolated: M new cameras.

  Returns:
    rig: Camera (V + M,), the V real ones first.
    pairs: (M, 2) int, the real cameras each new one lies between.
    ts: (M,) float32 interpolation weights (0 = pairs[:, 0]).
  """
  V = len(cameras)
  if V < 2:
    raise ValueError(f"interpolated_rig: need at least 2 cameras, got {V}")
  c = np.asarray(cameras.center, np.float64)
  a, b = np.triu_indices(V, 1)
  order = np.argsort(np.linalg.norm(c[a] - c[b], axis=-1), kind="stable")
  per_pair = max(1, math.ceil(num_interpolated / len(order)))
  n_pairs = math.ceil(num_interpolated / per_pair)
  pairs = np.repeat(np.stack([a[order[:n_pairs]], b[order[:n_pairs]]], -1), per_pair, 0)
  ts = np.tile((np.arange(per_pair) + 1.0) / (per_pair + 1.0), n_pairs)
  pairs, ts = pairs[:num_interpolated], ts[:num_interpolated].astype(np.float32)
  new = [cam_lib.interpolate_cameras(cameras[int(i)], cameras[int(j)], [t]) for (i, j), t in zip(pairs, ts)]
  rig = Camera(jnp.concatenate([cameras.viewmat] + [n.viewmat for n in new]),
               jnp.concatenate([cameras.K] + [n.K for n in new]), cameras.width, cameras.height)
  return rig, pairs, ts


def make_rig(cameras: Camera, mode: str) -> tuple[Camera, tuple[int, ...]]:
  """The template's camera rig from the set's cameras.

  Args:
    cameras: Camera (V,) of the set (all views, held-out included).
    mode: "own" (the set's cameras), "paper48" (the V real cameras + 2V interpolated: 48 for
      NeRSemble's 16, as the official templates), or "auto" ("own" for >= 48 views, else "paper48").

  Returns:
    (rig Camera, indices of the real cameras in the rig).
  """
  if mode == "auto":
    mode = "own" if len(cameras) >= 48 else "paper48"
  if mode == "own":
    return cameras, tuple(range(len(cameras)))
  if mode == "paper48":
    rig, _, _ = interpolated_rig(cameras, 2 * len(cameras))
    return rig, tuple(range(len(cameras)))
  raise ValueError(f"rig: expected 'own', 'paper48' or 'auto', got {mode!r}")


# ----------------------------------------------------------------------------------------------
# Assembling templates.


@dataclasses.dataclass(frozen=True)
class TemplateConfig:
  """Settings of the control maps and label lifting (`build_template`, `template_from_gaussians`).

  Attributes:
    background: RGB behind the template renders (the official templates are on black).
    drop_jaw: leave the jaw points out of the heatmaps (official maps have no jawline).
    detector, min_face_px: dlib settings for the landmark detection on the real views' renders.
    lift_iters, lift_lr, lift_views_per_iter: `lift_labels` settings.
    render_chunk: views per render call.
    seed: PRNG seed of the lifting.
  """

  background: tuple[float, float, float] = (0.0, 0.0, 0.0)
  drop_jaw: bool = False
  detector: str = "hog"
  min_face_px: float = 40.0
  lift_iters: int = 300
  lift_lr: float = 0.1
  lift_views_per_iter: int = 2
  render_chunk: int = 4
  seed: int = 0


def template_from_gaussians(gaussians: Gaussians, cameras: Camera, landmarks3d: np.ndarray,
                            class_probs: jax.Array, *, name: str, cfg: TemplateConfig = TemplateConfig(),
                            real_views: Sequence[int] = (), source: str = "", parsing_source: str = "",
                            approximate_classes: Sequence[str] = (),
                            metrics: Optional[Mapping[str, float]] = None) -> Template:
  """A template from given Gaussians, 3D landmarks and per-Gaussian class probabilities.

  Renders every rig view, draws the heatmaps of the projected landmarks and renders the parsing.

  Args:
    gaussians: N Gaussians.
    cameras: Camera (V,), the rig.
    landmarks3d: (68, 3) world-space dlib-order landmarks.
    class_probs: (N, NUM_CLASSES) float32 per-Gaussian class probabilities.
    name, real_views, source, parsing_source, approximate_classes, metrics: recorded in TemplateInfo.
  """
  out = render_chunked(gaussians, cameras, background=cfg.background,
                       features=jnp.asarray(class_probs, jnp.float32), chunk=cfg.render_chunk)
  renders, labels = out["rgb"], labels_from_render(out["features"], out["alpha"])
  heat, valid = landmark_heatmaps(landmarks3d, cameras, drop_jaw=cfg.drop_jaw)
  info = TemplateInfo(source=source, real_views=tuple(int(v) for v in real_views),
                      frontal_view=frontal_view(landmarks3d, cameras), parsing_source=parsing_source,
                      approximate_classes=tuple(approximate_classes),
                      background=tuple(float(c) for c in cfg.background),
                      metrics=tuple((k, float(v)) for k, v in (metrics or {}).items()))
  return Template(gaussians=gaussians, cameras=cameras, renders=jnp.asarray(renders),
                  heatmaps=jnp.asarray(heat), parsing=jnp.asarray(controls.labels_to_colors(labels)),
                  landmarks3d=jnp.asarray(landmarks3d, jnp.float32), valid=jnp.asarray(valid),
                  name=name, info=info)


def build_template(gaussians: Gaussians, train: datasets.Views, rig: Camera, real_views: Sequence[int], *,
                   name: str, parsing_labels: Optional[np.ndarray] = None, cfg: TemplateConfig = TemplateConfig(),
                   source: str = "", metrics: Optional[Mapping[str, float]] = None,
                   log: Callable[[str], None] = print) -> tuple[Template, Landmarks3D]:
  """A template from fitted Gaussians: landmarks, heatmaps, lifted parsing, rig renders.

  1. Render the real cameras of the rig, detect 68 landmarks, triangulate robustly.
  2. Per-view parsing labels of the training views: `parsing_labels` when the set has parsing maps,
     else `approximate_parsing` from the projected landmarks and the render alpha.
  3. Lift them onto the Gaussians (`lift_labels`), then render the maps of every rig view.

  Args:
    gaussians: the fitted Gaussians.
    train: the views the Gaussians were fitted to (their cameras carry the labels).
    rig: Camera (R,), the template's cameras; real_views: rig indices of the set's real cameras.
    name: template name.
    parsing_labels: (V_train, H, W) int32 class ids of the training views, or None.
    cfg: TemplateConfig.
    source, metrics: recorded in the manifest.
    log: progress messages.

  Returns:
    (Template, Landmarks3D of the triangulation, with its per-view reprojection errors).
  """
  real = rig[jnp.asarray(np.asarray(real_views))]
  real_renders = render_chunked(gaussians, real, background=cfg.background, chunk=cfg.render_chunk)["rgb"]
  lm3d = triangulate_template_landmarks(real_renders, real, min_face_px=cfg.min_face_px,
                                        detector=cfg.detector)
  log(f"landmarks: {int(lm3d.views_used.sum())}/{len(real)} views used, {int(lm3d.valid.sum())}/68 points, "
      f"median reprojection {lm3d.median_reproj_error():.2f} px")
  if parsing_labels is None:
    alpha = render_chunked(gaussians, train.cameras, features=jnp.zeros((gaussians.num, 1)),
                           render_rgb=False, chunk=cfg.render_chunk)["alpha"]
    parsing_labels = approximate_view_labels(lm3d.points, train.cameras, alpha)
    parsing_source = "approximate_parsing from the 3D landmarks and the render alpha, lifted onto the Gaussians"
    approx = HEURISTIC_CLASSES
  else:
    parsing_source = "the set's parsing maps, lifted onto the Gaussians"
    approx = ()
  labels = resize_labels(parsing_labels, (train.cameras.width, train.cameras.height)).astype(np.int32)
  t0 = time.time()
  logits, losses = lift_labels(gaussians, train.cameras, jnp.asarray(labels), num_iters=cfg.lift_iters,
                               lr=cfg.lift_lr, views_per_iter=min(cfg.lift_views_per_iter, len(train)),
                               rng=jax.random.PRNGKey(cfg.seed))
  log(f"label lifting: {cfg.lift_iters} iterations in {time.time() - t0:.1f} s, cross-entropy "
      f"{float(losses[:10].mean()):.3f} -> {float(losses[-10:].mean()):.3f}")
  t = template_from_gaussians(gaussians, rig, lm3d.points, jax.nn.softmax(logits, -1), name=name, cfg=cfg,
                              real_views=real_views, source=source, parsing_source=parsing_source,
                              approximate_classes=approx, metrics=metrics)
  return t, lm3d


# ----------------------------------------------------------------------------------------------
# The synthetic head as a template (no detector needed: landmarks are placed geometrically).


def _ellipse(cx, cy, a, b, n, start=np.pi):
  """n points on an ellipse in the face's direction plane, clockwise on screen from angle `start`."""
  ang = start - 2 * np.pi * np.arange(n) / n
  return np.stack([cx + a * np.cos(ang), cy + b * np.sin(ang)], -1)


def synthetic_landmarks3d() -> np.ndarray:
  """(68, 3) float32 dlib-order landmarks of `synthetic.head_gaussians`' face.

  Placed in the head's direction space (x towards the subject's left, y up, on the unit sphere facing
  +z, then scaled by HEAD_RADII and raised by the nose bump exactly as the surfels are), at the
  eyes, lips and nose the generator draws; jaw and brows follow the face outline.
  """
  phi = np.linspace(0.0, np.pi, 17)
  jaw = np.stack([-0.78 * np.cos(phi), 0.12 - 0.87 * np.sin(phi)], -1)
  bx = np.linspace(0.15, 0.55, 5)
  brow_r = np.stack([-bx[::-1], 0.36 + 0.04 * np.sin(np.pi * (bx[::-1] - 0.15) / 0.4)], -1)
  brow_l = np.stack([bx, 0.36 + 0.04 * np.sin(np.pi * (bx - 0.15) / 0.4)], -1)
  bridge = np.stack([np.zeros(4), [0.14, 0.04, -0.06, -0.16]], -1)
  base = np.stack([[-0.12, -0.06, 0.0, 0.06, 0.12], [-0.28, -0.3, -0.31, -0.3, -0.28]], -1)
  eye_r = _ellipse(-0.36, 0.17, 0.15, 0.07, 6)
  eye_l = _ellipse(0.36, 0.17, 0.15, 0.07, 6)
  outer = _ellipse(0.0, -0.52, 0.26, 0.08, 12)
  inner = _ellipse(0.0, -0.52, 0.2, 0.03, 8)
  d2 = np.concatenate([jaw, brow_r, brow_l, bridge, base, eye_r, eye_l, outer, inner])
  x, y = d2[:, 0], d2[:, 1]
  d = np.stack([x, y, np.sqrt(np.clip(1 - x ** 2 - y ** 2, 0, 1))], -1)
  pos = d * synthetic.HEAD_RADII
  pos[:, 2] += 0.02 * np.exp(-((x / 0.11) ** 2 + ((y + 0.12) / 0.17) ** 2) / 2.0)  # the nose bump
  return pos.astype(np.float32)


def synthetic_class_labels(gaussians: Gaussians, part_labels: np.ndarray) -> np.ndarray:
  """(N,) int32 CelebAMask-HQ class ids of the synthetic head's part labels.

  skin, hair, nose, neck map directly; eyes split by side (+x is the subject's left), lips by height.
  """
  x, y = np.asarray(gaussians.means)[:, 0], np.asarray(gaussians.means)[:, 1]
  part = np.asarray(synthetic.PARTS)[np.asarray(part_labels)]
  c = controls.CLASS
  out = np.full(len(part), c["skin"], np.int32)
  out[part == "hair"] = c["hair"]
  out[part == "nose"] = c["nose"]
  out[part == "neck"] = c["neck"]
  eye = (part == "sclera") | (part == "iris")
  out[eye] = np.where(x[eye] > 0, c["l_eye"], c["r_eye"])
  lips = part == "lips"
  lip_y = -0.52 * synthetic.HEAD_RADII[1]
  out[lips] = np.where(y[lips] > lip_y, c["u_lip"], c["l_lip"])
  return out


def synthetic_template(*, num_gaussians: int = 3000, size: int = 128, rig: str = "paper48",
                       cfg: TemplateConfig = TemplateConfig(), seed: int = 0,
                       name: str = "synthetic-head") -> Template:
  """The synthetic head as a template: ground-truth Gaussians, exact part labels, geometric landmarks.

  Args:
    num_gaussians: size of the head; size: square image size in pixels.
    rig: "own" (its 16-camera rig) or "paper48" (+ 32 interpolated cameras).
  """
  scene = synthetic.make_head_scene(num_gaussians, width=size, height=size, seed=seed)
  cams, real = make_rig(scene.cameras, rig)
  classes = synthetic_class_labels(scene.gaussians, scene.labels)
  return template_from_gaussians(
      scene.gaussians, cams, synthetic_landmarks3d(), jax.nn.one_hot(classes, NUM_CLASSES), name=name,
      cfg=cfg, real_views=real, source="synthetic head (splatshot_jax.synthetic), ground-truth Gaussians",
      parsing_source="ground-truth part labels of the synthetic head")
