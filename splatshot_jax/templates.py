"""Base templates: a 3DGS head, its camera rig, per-view renders and the two ControlNet maps per view.

A template is what SplatShot starts from (the official code ships two, NeRSemble subjects 333 and 288).
Here any calibrated multi-view head becomes one:

  scene = load_scene(path, scale=0.5, holdout=(8,), background=(1, 1, 1))
  g, fit_info = fit_scene(scene.train, scene.points, scene.colors, fit=..., init=..., background=...)
  rig, real = make_rig(scene.all_cameras, "paper48")          # 16 real + 32 interpolated cameras
  t = build_template(g, scene.train, rig, real, name="nersemble-128", parsing_labels=None)
  save_template("templates/nersemble-128", t)

Controls are consistent across views by construction: the 68 landmarks are detected on the renders
of the real cameras, triangulated once (face.landmarks3d) and projected into every rig view for the
heatmap; per-view parsing labels (the set's own maps, or `face.controls.approximate_parsing`) are
lifted onto the Gaussians as per-Gaussian class logits (rendered as extra channels, fitted by softmax
cross-entropy with the Gaussians frozen), so any new view gets its parsing map by rendering them.

On disk a template is a folder that `cameras.load_splatshot_views` also reads (the official layout):

  gaussians.ply       3DGS PLY (io.ply)
  manifest.json       name, num_views, size, source, real views, frontal view, landmarks3d,
                      parsing source and approximate classes, fit metrics
  meta.json           num_views, valid_views, padded_width, padded_height
  view_NNN.npz        padded_image (H, W render padded centred to multiples of 16 by reflection,
                      uint8), heatmap_control, parsing_control (H, W, 3) uint8, viewmat, K, valid
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from splatshot_jax import cameras as cam_lib
from splatshot_jax import datasets, fit as fit_lib, metrics, synthetic
from splatshot_jax.cameras import Camera
from splatshot_jax.face import controls, features as face_features
from splatshot_jax.face.detect import as_rgb_uint8
from splatshot_jax.face.landmarks3d import (Landmarks3D, detect_landmarks_views, project_landmarks,
                                            triangulate_camera_landmarks)
from splatshot_jax.gaussians import Gaussians, init_from_points
from splatshot_jax.io import images as image_io
from splatshot_jax.io import ply
from splatshot_jax.render import check_overflow, render_views

FORMAT_VERSION = 1
NUM_CLASSES = len(controls.CLASS_NAMES)  # 19 CelebAMask-HQ classes
BACKGROUND = controls.CLASS["background"]
REQUIRED_FILES = ("gaussians.ply", "manifest.json", "meta.json")
PAD_MULTIPLE = 16  # SplatShot pads renders to multiples of 16 (the VAE's 8 x the UNet's 2)
# Classes `approximate_parsing` derives from region heuristics (hairline, neck band) rather than from
# landmark polygons; see its docstring.
HEURISTIC_CLASSES = ("skin", "neck", "cloth", "hair")


class TemplateError(ValueError):
  """A template folder is incomplete or malformed, or a template cannot be built from the inputs."""


@dataclasses.dataclass(frozen=True)
class TemplateInfo:
  """Static description of a template (hashable: it is pytree metadata of `Template`).

  Attributes:
    source: where the Gaussians came from (a data folder, "synthetic head", ...).
    real_views: rig views that are real cameras of the source set (the rest are interpolated).
    frontal_view: the rig view closest to facing the head (used for template choice).
    parsing_source: how the parsing labels were obtained.
    approximate_classes: class names whose labels come from heuristics, not from a parser or ground truth.
    background: (3,) RGB behind the renders.
    metrics: (name, value) scalar fit metrics (held-out PSNR, ...).
  """

  source: str = ""
  real_views: tuple[int, ...] = ()
  frontal_view: int = 0
  parsing_source: str = ""
  approximate_classes: tuple[str, ...] = ()
  background: tuple[float, float, float] = (0.0, 0.0, 0.0)
  metrics: tuple[tuple[str, float], ...] = ()


@struct.dataclass
class Template:
  """A base template.

  Attributes:
    gaussians: the template head (N Gaussians).
    cameras: Camera (V,), the rig.
    renders: (V, H, W, 3) float32 in [0, 1], renders of `gaussians` in the rig on `info.background`.
    heatmaps: (V, H, W, 3) uint8 landmark heatmaps (openpose ControlNet condition).
    parsing: (V, H, W, 3) uint8 parsing maps in the official palette (seg ControlNet condition).
    landmarks3d: (68, 3) float32 world-space dlib-order landmarks (NaN where untriangulated).
    valid: (V,) bool, views whose heatmap has landmarks (the official npz's `valid`).
    name: template name (static).
    info: TemplateInfo (static).
  """

  gaussians: Gaussians
  cameras: Camera
  renders: jax.Array
  heatmaps: jax.Array
  parsing: jax.Array
  landmarks3d: jax.Array
  valid: jax.Array
  name: str = struct.field(pytree_node=False, default="template")
  info: TemplateInfo = struct.field(pytree_node=False, default_factory=TemplateInfo)

  def __len__(self) -> int:
    return self.renders.shape[0]

  @property
  def images(self) -> jax.Array:
    """(V, H, W, 3) float32 renders: the img2img inputs (the name `sampler.run_splatshot` reads)."""
    return self.renders

  @property
  def labels(self) -> np.ndarray:
    """(V, H, W) int32 parsing class ids decoded from the palette maps."""
    return np.stack([controls.colors_to_labels(p) for p in np.asarray(self.parsing)])


# ----------------------------------------------------------------------------------------------
# Save / load.


def _manifest(t: Template) -> dict:
  lm = np.asarray(t.landmarks3d, np.float64)
  return {
      "format_version": FORMAT_VERSION,
      "name": t.name,
      "num_views": len(t),
      "size": [t.cameras.width, t.cameras.height],
      "source": t.info.source,
      "real_views": list(t.info.real_views),
      "frontal_view": t.info.frontal_view,
      "num_gaussians": int(t.gaussians.num),
      "sh_degree": int(t.gaussians.sh_degree),
      "background": list(t.info.background),
      "parsing_source": t.info.parsing_source,
      "approximate_classes": list(t.info.approximate_classes),
      "parsing_classes": list(controls.CLASS_NAMES),
      "landmarks3d": [[float(v) if np.isfinite(v) else None for v in p] for p in lm],
      "metrics": dict(t.info.metrics),
  }


def save_template(folder: str | os.PathLike, t: Template) -> Path:
  """Writes a template folder atomically (a temporary sibling folder, then renamed).

  An existing template at `folder` is replaced; any other non-empty folder there is an error (so a
  wrong path never deletes unrelated files).

  Args:
    folder: destination directory.
    t: the template.

  Returns:
    the folder.
  """
  folder = Path(folder)
  if folder.exists() and any(folder.iterdir()) and not (folder / "manifest.json").exists():
    raise TemplateError(f"{folder}: exists, is not empty and holds no manifest.json; refusing to replace "
                        "it with a template (choose an empty or new folder)")
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
  old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    ply.write_gaussians(tmp / "gaussians.ply", t.gaussians)
    renders = image_io.to_uint8(np.asarray(t.renders))
    heat, pars = np.asarray(t.heatmaps, np.uint8), np.asarray(t.parsing, np.uint8)
    viewmat, K = np.asarray(t.cameras.viewmat, np.float32), np.asarray(t.cameras.K, np.float32)
    valid = np.asarray(t.valid, bool)
    padded_hw = None
    for v in range(len(t)):
      padded, _ = image_io.pad_to_multiple(renders[v], PAD_MULTIPLE, "symmetric")
      padded_hw = padded.shape[:2]
      np.savez_compressed(tmp / f"view_{v:03d}.npz", padded_image=padded, heatmap_control=heat[v],
                          parsing_control=pars[v], viewmat=viewmat[v], K=K[v], valid=np.bool_(valid[v]))
    meta = {"num_views": len(t), "valid_views": int(valid.sum()), "padded_width": int(padded_hw[1]),
            "padded_height": int(padded_hw[0]), "template": t.name}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    (tmp / "manifest.json").write_text(json.dumps(_manifest(t), indent=1))
    if folder.exists():
      os.replace(folder, old)
    os.replace(tmp, folder)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
  return folder


def _read_manifest(path: Path) -> dict:
  try:
    m = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise TemplateError(f"{path}: invalid JSON ({e})") from None
  checks = {"name": str, "num_views": int, "size": list, "landmarks3d": list}
  for key, typ in checks.items():
    if not isinstance(m.get(key), typ) or isinstance(m.get(key), bool):
      raise TemplateError(f"{path}: field '{key}' must be a {typ.__name__}, got {m.get(key)!r:.60}")
  if m.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
    raise TemplateError(f"{path}: format_version {m['format_version']} is newer than this code's "
                        f"{FORMAT_VERSION}")
  lm = m["landmarks3d"]
  if len(lm) != 68 or any(not isinstance(p, list) or len(p) != 3 for p in lm):
    raise TemplateError(f"{path}: field 'landmarks3d' must be 68 [x, y, z] triples (null for missing)")
  return m


def load_template(folder: str | os.PathLike) -> Template:
  """Reads a template folder written by `save_template`.

  Renders come back quantised to 8 bits (they are stored as the official uint8 `padded_image`).

  Raises:
    TemplateError: the folder, or files in it, are missing (all missing files are listed) or the
      manifest is malformed; cameras.CameraFormatError / io.ply.PlyError for malformed views / PLY.
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise TemplateError(f"{folder}: not a directory (expected a template folder with "
                        f"{', '.join(REQUIRED_FILES)} and view_NNN.npz)")
  missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
  m = None
  if (folder / "manifest.json").is_file():
    m = _read_manifest(folder / "manifest.json")
    missing += [f"view_{v:03d}.npz" for v in range(m["num_views"])
                if not (folder / f"view_{v:03d}.npz").is_file()]
  if missing:
    raise TemplateError(f"{folder}: incomplete template, missing {', '.join(missing)}")
  data = cam_lib.load_splatshot_views(folder)
  if len(data) != m["num_views"] or [data.cameras.width, data.cameras.height] != m["size"]:
    raise TemplateError(f"{folder}: manifest.json says {m['num_views']} views of size {m['size']}, "
                        f"the views hold {len(data)} of {[data.cameras.width, data.cameras.height]}")
  g = ply.read_gaussians(folder / "gaussians.ply")
  lm = np.array([[np.nan if v is None else v for v in p] for p in m["landmarks3d"]], np.float32)
  info = TemplateInfo(
      source=m.get("source", ""), real_views=tuple(m.get("real_views", ())),
      frontal_view=int(m.get("frontal_view", 0)), parsing_source=m.get("parsing_source", ""),
      approximate_classes=tuple(m.get("approximate_classes", ())),
      background=tuple(m.get("background", (0.0, 0.0, 0.0))),
      metrics=tuple((k, float(v)) for k, v in m.get("metrics", {}).items()
                    if isinstance(v, (int, float))))
  return Template(gaussians=g, cameras=data.cameras,
                  renders=jnp.asarray(data.images, jnp.float32) / 255.0,
                  heatmaps=jnp.asarray(data.controls["heatmap_control"]),
                  parsing=jnp.asarray(data.controls["parsing_control"]),
                  landmarks3d=jnp.asarray(lm), valid=jnp.asarray(data.valid), name=m["name"], info=info)


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
                              means_lr_final=float(fit.get("means_lr_final", 1.0)), render_kwargs=render_kwargs)
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


def frontal_view(points3d: np.ndarray, cameras: Camera) -> int:
  """The view that looks most directly at the face (the official frontal view is 8 of the 333 set).

  The face's forward direction is the normal of the plane through both eye centres and the mouth,
  oriented towards the majority of cameras; without landmarks, the view nearest the rig's mean
  viewing direction.
  """
  lm = np.asarray(points3d, np.float64)
  c = np.asarray(cameras.center, np.float64)
  pts = [lm[36:42].mean(0), lm[42:48].mean(0), lm[48:68].mean(0)]
  if all(np.isfinite(p).all() for p in pts):
    centre = np.mean(pts, 0)
    fwd = np.cross(pts[1] - pts[0], pts[2] - 0.5 * (pts[0] + pts[1]))
  else:
    centre, _, _ = datasets.scene_frame(cameras)
    fwd = (c - centre).mean(0)
  d = c - centre
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  cos = d @ (fwd / np.linalg.norm(fwd))
  if (cos > 0).sum() < (cos < 0).sum():
    cos = -cos
  return int(np.argmax(cos))


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


# ----------------------------------------------------------------------------------------------
# Template choice.

Embedder = Callable[[np.ndarray], np.ndarray]


def clip_embedder(model, params) -> Embedder:
  """An `Embedder` from diffusion.clip's CLIPVisionModelWithProjection (e.g. the IP-Adapter encoder).

  Returns:
    f(image (H, W, 3) uint8) -> (D,) float32 image embedding.
  """
  from splatshot_jax.diffusion import clip  # pylint: disable=import-outside-toplevel
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x).image_embeds)
  return lambda image: np.asarray(apply(params, clip.preprocess_image(image)[None]))[0]


def template_features(t: Template, *, embedder: Optional[Embedder] = None) -> face_features.FaceFeatures:
  """Template-choice features of a template's frontal view, from its projected 3D landmarks."""
  v = t.info.frontal_view
  image = image_io.to_uint8(np.asarray(t.renders[v]))
  uv = np.asarray(project_landmarks(t.landmarks3d, t.cameras[v]))
  extra = {"clip": embedder(image)} if embedder is not None else None
  return face_features.features_from_landmarks(image, uv, extra=extra)


def choose_template(photo, templates: Sequence[Template], weights: Optional[Mapping[str, float]] = None, *,
                    embedder: Optional[Embedder] = None, override: str = ""
                    ) -> tuple[Template, face_features.TemplateChoice]:
  """The template closest to a photo (skin colour, landmark shape and optionally CLIP embeddings).

  Args:
    photo: image path or (H, W, 3) uint8 RGB (analysed with face.detect), or its FaceFeatures.
    templates: T >= 1 templates.
    weights: feature weights (face.features.choose_template; default skin 0.5, shape 0.5); with an
      `embedder`, "clip" defaults to 0.4 next to them.
    embedder: optional f(image uint8) -> (D,) (e.g. `clip_embedder`), applied to the photo and to
      every template's frontal render. Off by default (it needs the encoder weights).
    override: a template name that is chosen regardless of the scores (config override).

  Returns:
    (the chosen Template, the TemplateChoice with every score).
  """
  if not templates:
    raise ValueError("templates: expected at least one template, got none")
  if weights is None:
    weights = dict(face_features.DEFAULT_WEIGHTS, **({"clip": 0.4} if embedder is not None else {}))
  if isinstance(photo, face_features.FaceFeatures):
    pf = photo
  else:
    img = as_rgb_uint8(photo)
    pf = face_features.face_features(img, extra={"clip": embedder(img)} if embedder is not None else None)
  choice = face_features.choose_template(pf, [template_features(t, embedder=embedder) for t in templates],
                                         weights)
  index = choice.index
  if override:
    names = [t.name for t in templates]
    if override not in names:
      raise ValueError(f"template override {override!r} is not one of the templates {names}")
    index = names.index(override)
    choice = dataclasses.replace(choice, index=index)
  return templates[index], choice


def preview_grid(t: Template, views: Optional[Sequence[int]] = None) -> np.ndarray:
  """(H, W, 3) uint8 grid: renders, heatmaps and parsing maps in three rows, one column per view."""
  views = list(range(len(t))) if views is None else list(views)
  rows = [np.asarray(t.renders)[views], np.asarray(t.heatmaps)[views], np.asarray(t.parsing)[views]]
  tiles = [image_io.to_uint8(im) for row in rows for im in row]
  labels = [f"view {v}" + (" (real)" if v in t.info.real_views else "") for v in views] + [""] * 2 * len(views)
  return image_io.make_grid(tiles, ncols=len(views), labels=labels)
