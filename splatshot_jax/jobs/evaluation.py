"""Evaluating avatars: identity over a yaw sweep, multi-view consistency, and the official turntables.

  python -m experiments.run --config=configs/evaluate.py --config.target=OUT/00000   # one avatar folder
  python -m experiments.run --config=configs/evaluate.py --config.target=OUT         # a batch folder

For an avatar folder (the outputs of one run: avatar.ply, cameras.json, views/, config.json, metrics.json):
- identity: dlib distance (`splatshot_jax.face.identity`, < 0.6 = same person for dlib) between the photo and the
  avatar rendered on a yaw sweep in the template's rig frame (yaw 0 = the frontal view, about the rig's up axis),
  per yaw and as the mean over |yaw| <= 30; ArcFace cosine similarity as well when an ONNX file of insightface's
  recognition model is given (`ArcFace`);
- multi-view consistency: PSNR / SSIM between the final diffusion views and the avatar's renders of the same
  cameras, and a reprojection error between neighbouring views (`reprojection`): view i's pixels, lifted with the
  avatar's rendered depth, projected into view j; depth and colours compared where both alphas are high;
- the official turntable of the photo, when there is one (`<videos>/<photo stem>.mp4`): the same identity metric
  on its frames, next to ours (the official median dlib distance over 70 CelebA-HQ photos is 0.54).
Writes <folder>/evaluation.json and <folder>/evaluation/ (images for the report). For a batch folder: every
finished photo's evaluation, OUT/evaluation.csv and OUT/report.html (`splatshot_jax.jobs.report`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from splatshot_jax import errors
from splatshot_jax.jobs import outputs
from splatshot_jax import metrics as metrics_lib
from splatshot_jax.jobs import paper_metrics, report
from splatshot_jax.jobs.batch import is_finished, photo_row
from splatshot_jax.jobs.inputs import RANDOM_TINY
from splatshot_jax.jobs.report import OFFICIAL_MEDIAN_DLIB, SAME_PERSON
from splatshot_jax.cameras import Camera, orbit_rig
from splatshot_jax.datasets import scene_frame
from splatshot_jax.face import align, detect, identity
from splatshot_jax.face.scrfd import ARCFACE_SIZE, ARCFACE_TEMPLATE  # insightface's 112x112 five-point template
from splatshot_jax.io import images as image_io
from splatshot_jax.io import ply
from splatshot_jax.io.atomic import atomic_path
from splatshot_jax.render import check_overflow, render_views




class EvaluationError(errors.UserInputError):
  """An avatar folder or an evaluation input is missing something; the message names the file or field."""


# ----------------------------------------------------------------------------------------------
# Cameras.


def cameras_from_json(d: dict) -> Camera:
  """The inverse of `outputs.cameras_to_json`: Camera (V,)."""
  views = d["views"]
  return Camera(jnp.asarray([v["viewmat"] for v in views], jnp.float32), jnp.asarray([v["K"] for v in views],
                                                                                      jnp.float32),
                int(d["width"]), int(d["height"]))


def sweep_cameras(cameras: Camera, frontal: int, yaws: Sequence[float]) -> Camera:
  """Cameras at `yaws` (degrees) about the rig's up axis through its look-at point, yaw 0 = the frontal view.

  The frame is the template rig's (`datasets.scene_frame`: target, up, mean distance); pitch 0 is the frontal
  camera's direction made orthogonal to up; intrinsics and image size are the frontal view's.
  """
  target, up, radius = scene_frame(cameras)
  front = np.asarray(cameras.center, np.float64)[frontal] - target
  return orbit_rig(target, radius, list(yaws), [0.0], width=cameras.width, height=cameras.height,
                   K=np.asarray(cameras.K)[frontal], up=up, front=front)


def neighbour_pairs(cameras: Camera) -> list[tuple[int, int]]:
  """(i, j) for every view i with j the view whose optical axis is closest in angle to i's."""
  axes = np.asarray(cameras.viewmat, np.float64)[:, 2, :3]
  cos = axes @ axes.T
  np.fill_diagonal(cos, -np.inf)
  return [(i, int(np.argmax(cos[i]))) for i in range(len(axes))]


# ----------------------------------------------------------------------------------------------
# Renders with depth.


def render_maps(gaussians, cameras: Camera, *, background=(0.0, 0.0, 0.0), chunk: int = 4) -> dict:
  """Colour, alpha and surface depth of V views, `chunk` at a time (the last chunk padded: one compile).

  Returns:
    {"rgb": (V, H, W, 3) float32 in [0, 1], "alpha": (V, H, W) float32,
     "depth": (V, H, W) float32 camera z of the surface (expected z / alpha; 0 where alpha < 1e-6)}.
  """
  v = len(cameras)
  out = {"rgb": [], "alpha": [], "depth": []}
  for s in range(0, v, chunk):
    idx = np.minimum(np.arange(s, s + chunk), v - 1)
    o = render_views(gaussians, cameras[idx], background=jnp.asarray(background, jnp.float32))
    check_overflow(o)
    n = min(chunk, v - s)
    alpha = np.asarray(o.alpha)[:n]
    out["rgb"].append(np.clip(np.asarray(o.rgb)[:n], 0.0, 1.0))
    out["alpha"].append(alpha)
    out["depth"].append(np.where(alpha > 1e-6, np.asarray(o.depth)[:n] / np.maximum(alpha, 1e-6), 0.0))
  return {k: np.concatenate(x).astype(np.float32) for k, x in out.items()}


# ----------------------------------------------------------------------------------------------
# Multi-view consistency.


def view_consistency(views: np.ndarray, renders: np.ndarray, alpha: np.ndarray | None = None) -> dict:
  """PSNR / SSIM per view between the diffusion views and the avatar's renders of the same cameras.

  Args:
    views: (V, H, W, 3) float in [0, 1] (the run's final views, read back from 8-bit PNGs).
    renders: (V, H, W, 3) float in [0, 1].
    alpha: optional (V, H, W) render alpha: adds PSNR over the avatar's pixels (alpha > 0.5).
  Returns:
    {"psnr": [V], "ssim": [V], "psnr_fg": [V] (with alpha)} floats. Views equal to the renders up to 8-bit
    rounding score the PSNR of that rounding (about 59 dB on smooth images, more with flat background).
  """
  a, b = jnp.asarray(views, jnp.float32), jnp.asarray(renders, jnp.float32)
  res = {"psnr": np.asarray(metrics_lib.psnr(a, b)).tolist(),
         "ssim": np.asarray(metrics_lib.ssim(a, b, padding="valid")).tolist()}
  if alpha is not None:
    res["psnr_fg"] = np.asarray(metrics_lib.psnr(a, b, mask=jnp.asarray(alpha > 0.5, jnp.float32))).tolist()
  return res


def bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Samples (H, W[, C]) at continuous pixel coordinates (centres at integer + 0.5), bilinearly.

  Returns (values (N[, C]) float64, inside (N,) bool: all four taps in the image).
  """
  h, w = image.shape[:2]
  px, py = np.asarray(x, np.float64) - 0.5, np.asarray(y, np.float64) - 0.5
  inside = (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
  x0 = np.clip(np.floor(px).astype(np.int64), 0, max(w - 2, 0))
  y0 = np.clip(np.floor(py).astype(np.int64), 0, max(h - 2, 0))
  fx, fy = px - x0, py - y0
  img = np.asarray(image, np.float64)
  if img.ndim == 3:
    fx, fy = fx[:, None], fy[:, None]
  x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
  val = ((1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x1]) + fy * ((1 - fx) * img[y1, x0] + fx * img[y1, x1]))
  return val, inside


def reprojection(depth_i: np.ndarray, alpha_i: np.ndarray, cam_i: Camera, depth_j: np.ndarray,
                 alpha_j: np.ndarray, cam_j: Camera, images: Sequence[tuple[np.ndarray, np.ndarray]] = (),
                 alpha_threshold: float = 0.9) -> dict:
  """Warps view i into view j with i's depth and compares depth (and images) where both alphas are high.

  Each pixel centre of i with alpha_i > threshold is lifted to 3D at its depth, projected into j, and kept when it
  lands inside j where alpha_j (sampled bilinearly) > threshold and in front of the camera.

  Args:
    depth_i, depth_j: (H, W) surface depth (camera z) of the two views; alpha_i, alpha_j: (H, W).
    cam_i, cam_j: single Cameras.
    images: pairs (image_i, image_j) of (H, W, C) images of the two views to compare under the warp.
    alpha_threshold: the "alpha is high" line.
  Returns:
    {"depth_rel": mean |z_j(lifted) - depth_j(sampled)| / depth_j(sampled), "color_l1": [mean |I_i - I_j(warped)|
     per image pair], "coverage": kept / lifted pixels}; None for the means when nothing is kept.
  """
  h, w = depth_i.shape
  ys, xs = np.nonzero(alpha_i > alpha_threshold)
  u, v = xs + 0.5, ys + 0.5
  z = np.asarray(depth_i, np.float64)[ys, xs]
  K_i, K_j = np.asarray(cam_i.K, np.float64), np.asarray(cam_j.K, np.float64)
  pc = np.stack([(u - K_i[0, 2]) / K_i[0, 0] * z, (v - K_i[1, 2]) / K_i[1, 1] * z, z], -1)
  vm_i, vm_j = np.asarray(cam_i.viewmat, np.float64), np.asarray(cam_j.viewmat, np.float64)
  world = (pc - vm_i[:3, 3]) @ vm_i[:3, :3]  # R^T (p - t), row vectors
  pj = world @ vm_j[:3, :3].T + vm_j[:3, 3]
  zj = pj[:, 2]
  safe = np.where(zj > 1e-9, zj, 1.0)
  uj = K_j[0, 0] * pj[:, 0] / safe + K_j[0, 2]
  vj = K_j[1, 1] * pj[:, 1] / safe + K_j[1, 2]
  a_j, inside = bilinear(alpha_j, uj, vj)
  d_j, _ = bilinear(depth_j, uj, vj)
  keep = inside & (zj > 1e-9) & (a_j > alpha_threshold) & (d_j > 1e-9)
  res = {"coverage": float(keep.sum() / max(len(z), 1)), "depth_rel": None, "color_l1": [None] * len(images)}
  if keep.any():
    res["depth_rel"] = float(np.mean(np.abs(zj[keep] - d_j[keep]) / d_j[keep]))
    for k, (im_i, im_j) in enumerate(images):
      warped, _ = bilinear(im_j, uj[keep], vj[keep])
      res["color_l1"][k] = float(np.mean(np.abs(np.asarray(im_i, np.float64)[ys[keep], xs[keep]] - warped)))
  return res


def reprojection_errors(cameras: Camera, maps: dict, views: np.ndarray, alpha_threshold: float = 0.9) -> dict:
  """`reprojection` between every view and its nearest neighbour; per pair and mean.

  Args:
    cameras: Camera (V,); maps: `render_maps` of the avatar in them; views: (V, H, W, 3) diffusion views.
  Returns:
    {"pairs": [[i, j]], "depth_rel": [...], "render_l1": [...], "views_l1": [...], "coverage": [...],
     "mean_depth_rel", "mean_render_l1", "mean_views_l1"}.
  """
  res = {"pairs": [], "depth_rel": [], "render_l1": [], "views_l1": [], "coverage": []}
  for i, j in neighbour_pairs(cameras):
    r = reprojection(maps["depth"][i], maps["alpha"][i], cameras[i], maps["depth"][j], maps["alpha"][j], cameras[j],
                     images=[(maps["rgb"][i], maps["rgb"][j]), (views[i], views[j])],
                     alpha_threshold=alpha_threshold)
    res["pairs"].append([i, j])
    res["depth_rel"].append(r["depth_rel"])
    res["render_l1"].append(r["color_l1"][0])
    res["views_l1"].append(r["color_l1"][1])
    res["coverage"].append(r["coverage"])
  for k in ("depth_rel", "render_l1", "views_l1"):
    res[f"mean_{k}"] = _mean(res[k])
  return res


def _mean(values) -> float | None:
  vals = [v for v in values if v is not None and np.isfinite(v)]
  return float(np.mean(vals)) if vals else None


# ----------------------------------------------------------------------------------------------
# Identity.


def arcface_input(image: np.ndarray, landmarks68: np.ndarray, size: tuple[int, int] = (ARCFACE_SIZE,) * 2
                  ) -> np.ndarray:
  """The (3, H, W) float32 input of insightface's recognition model: the face aligned to its five-point
  template by a similarity transform (black outside the image), RGB, (x - 127.5) / 127.5, channels first.

  Args:
    image: (H, W, 3) uint8 RGB; landmarks68: (68, 2) its dlib landmarks (continuous pixel coordinates).
    size: the model's input (H, W); the template is scaled from 112x112 (insightface does the same).
  """
  dst = ARCFACE_TEMPLATE * (np.asarray(size[::-1], np.float64) / ARCFACE_SIZE) + 0.5  # to continuous coordinates
  m = align.similarity_transform(align.five_points(landmarks68), dst)
  crop, _ = align.warp_affine(image, m, size, border="constant", fill=0.0)
  return ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)


class ArcFace:
  """insightface's ArcFace recognition model from a local ONNX file, run by onnxruntime.

  `embed(image, landmarks68)` -> (D,) float32 unit embedding; compare with a dot product (cosine similarity).
  """

  def __init__(self, path: str):
    if not Path(path).expanduser().is_file():
      raise EvaluationError(f"config.arcface: no ONNX file at {path} (insightface's recognition model, e.g. "
                            "w600k_r50.onnx or glintr100.onnx of the buffalo_l / antelopev2 packs)")
    try:
      import onnxruntime  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise EvaluationError("config.arcface needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu)") from e
    self.session = onnxruntime.InferenceSession(str(Path(path).expanduser()),
                                                providers=onnxruntime.get_available_providers())
    inp = self.session.get_inputs()[0]
    self.input_name = inp.name
    shape = list(inp.shape)
    self.size = tuple(int(s) if isinstance(s, int) else ARCFACE_SIZE for s in shape[2:4]) if len(shape) == 4 \
        else (ARCFACE_SIZE, ARCFACE_SIZE)

  def embed(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
    x = arcface_input(image, landmarks68, self.size)[None]
    e = np.asarray(self.session.run(None, {self.input_name: x})[0], np.float32).reshape(-1)
    return e / max(float(np.linalg.norm(e)), 1e-12)


def face_embeddings(image, arcface: ArcFace | None = None) -> dict | None:
  """{"dlib": (128,), "arcface": (D,) or None} of an image's largest face; None when no usable face is found."""
  img = detect.as_rgb_uint8(image)
  try:
    analysis = detect.analyze_photo(img, warn_multiple=False)
  except detect.FaceError:
    return None
  return {"dlib": identity.identity_embedding(img, analysis),
          "arcface": arcface.embed(img, analysis.landmarks68) if arcface is not None else None}


def identity_scores(reference: dict, images: Sequence, arcface: ArcFace | None = None) -> dict:
  """dlib distance and ArcFace similarity of each image to the reference embeddings (None: no face found).

  Args:
    reference: `face_embeddings` of the photo.
    images: (H, W, 3) images (float in [0, 1] or uint8).
  Returns:
    {"dlib": [float | None], "arcface": [float | None]}.
  """
  res = {"dlib": [], "arcface": []}
  for im in images:
    e = face_embeddings(im, arcface)
    res["dlib"].append(None if e is None else float(identity.embedding_distance(reference["dlib"], e["dlib"])))
    res["arcface"].append(None if e is None or e["arcface"] is None else float(reference["arcface"] @ e["arcface"]))
  return res


def summarize_identity(yaws: Sequence[float], scores: dict, max_yaw: float) -> dict:
  """Means over |yaw| <= max_yaw of the found faces, and how many were found."""
  near = [k for k, y in enumerate(yaws) if abs(y) <= max_yaw]
  pick = lambda xs: [xs[k] for k in near]
  return {"dlib_mean_near_frontal": _mean(pick(scores["dlib"])),
          "arcface_mean_near_frontal": _mean(pick(scores["arcface"])),
          "faces_found_near_frontal": f"{sum(x is not None for x in pick(scores['dlib']))}/{len(near)}",
          "max_yaw": float(max_yaw)}


def official_turntable(reference: dict, video: Path, stride: int, arcface: ArcFace | None = None) -> dict:
  """The identity metric on every `stride`-th frame of an official turntable video."""
  frames, _ = image_io.load_video(video)
  index = list(range(0, len(frames), max(int(stride), 1)))
  scores = identity_scores(reference, [frames[k] for k in index], arcface)
  d = [x for x in scores["dlib"] if x is not None]
  return {"video": str(video), "frames": index, **scores, "dlib_mean": _mean(d),
          "dlib_median": float(np.median(d)) if d else None, "arcface_mean": _mean(scores["arcface"]),
          "faces_found": f"{len(d)}/{len(index)}"}


# ----------------------------------------------------------------------------------------------
# One avatar folder.


def _read_json(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise EvaluationError(f"{path}: missing (an avatar folder holds the outputs of one run)") from None
  except ValueError as e:
    raise EvaluationError(f"{path}: not valid JSON ({e})") from None


def load_views(folder: Path, num_views: int) -> np.ndarray:
  """(V, H, W, 3) float32 final views of a run folder (views/view_NNN.png)."""
  paths = [folder / "views" / f"view_{i:03d}.png" for i in range(num_views)]
  missing = [str(p) for p in paths if not p.is_file()]
  if missing:
    raise EvaluationError(f"{folder}: final views missing: {', '.join(missing[:4])}"
                          + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
  return np.stack([image_io.load_image(p) for p in paths])


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
  """(H, W, 3) -> longest side <= size, area-averaged by an integer factor (uint8)."""
  f = max(1, -(-max(image.shape[:2]) // size))
  im = image_io.to_uint8(image).astype(np.float32) / 255.0
  h, w = im.shape[0] // f * f, im.shape[1] // f * f
  return image_io.to_uint8(im[:h, :w].reshape(h // f, f, w // f, f, -1).mean((1, 3)))


def evaluate_avatar(folder, config, arcface: ArcFace | None = None) -> dict:
  """Evaluates one run folder; writes folder/evaluation.json and folder/evaluation/*; returns the evaluation.

  Args:
    folder: a run's output folder.
    config: configs/evaluate.py (yaws, max_yaw, side_yaw, official_videos, video_stride, ...).
    arcface: an `ArcFace` (config.arcface), or None.
  """
  folder = Path(folder)
  run_config, run_metrics = _read_json(folder / "config.json"), _read_json(folder / "metrics.json")
  if not (folder / "avatar.ply").is_file():
    raise EvaluationError(f"{folder / 'avatar.ply'}: missing (an avatar folder holds the outputs of one run)")
  gaussians = ply.read_gaussians(folder / "avatar.ply")
  cameras = cameras_from_json(_read_json(folder / "cameras.json"))
  views = load_views(folder, len(cameras))
  background = tuple((run_config.get("refit") or {}).get("background", (0.0, 0.0, 0.0)))
  frontal = int(run_metrics.get("frontal_view", 0))
  assets = folder / "evaluation"
  res: dict = {"folder": str(folder), "photo": run_config.get("photo", ""), "frontal_view": frontal,
               # the install check's random weights: its numbers test the harness, not the method
               "random_weights": bool(run_metrics.get("install_check")) or run_config.get("weights") == RANDOM_TINY,
               "discrepancy_per_step": run_metrics.get("discrepancy_per_step", []),
               "timesteps": run_metrics.get("timesteps", [])}

  maps = render_maps(gaussians, cameras, background=background, chunk=config.render_chunk)
  res["consistency"] = view_consistency(views, maps["rgb"], maps["alpha"])
  for k in ("psnr", "ssim", "psnr_fg"):
    res["consistency"][f"mean_{k}"] = _mean(res["consistency"][k])
  res["reprojection"] = reprojection_errors(cameras, maps, views, config.alpha_threshold)
  if config.get("protocol", "ours") == "paper":  # the 3DGS renderings the paper's protocol scores
    paper_metrics.save_renderings(folder, maps["rgb"], frontal)

  yaws = [float(y) for y in config.yaws]
  sweep = render_maps(gaussians, sweep_cameras(cameras, frontal, yaws), background=background,
                      chunk=config.render_chunk)["rgb"]
  res["identity"] = {"yaws": yaws}
  photo_path = Path(res["photo"]).expanduser() if res["photo"] else None
  reference = None
  if photo_path is None or not photo_path.is_file():
    res["identity"]["skipped"] = f"no photo file ({res['photo']!r} in config.json)"
  else:
    photo = image_io.load_image(photo_path)
    image_io.save_image(assets / "photo.jpg", _thumbnail(photo, config.thumbnail))
    reference = face_embeddings(photo, arcface)
    if reference is None:
      res["identity"]["skipped"] = f"no face found in the photo {photo_path}"
  if reference is not None:
    scores = identity_scores(reference, sweep, arcface)
    res["identity"].update(scores)
    res["identity"].update(summarize_identity(yaws, scores, config.max_yaw))
    video = Path(config.official_videos).expanduser() / f"{photo_path.stem}.mp4" if config.official_videos else None
    if video is not None and video.is_file():
      res["official"] = official_turntable(reference, video, config.video_stride, arcface)

  # Images for the report: the photo (above), frontal and two side views of the sweep, a turntable GIF.
  for name, target in (("frontal", 0.0), ("side_left", -abs(config.side_yaw)), ("side_right", abs(config.side_yaw))):
    k = int(np.argmin([abs(y - target) for y in yaws]))
    image_io.save_image(assets / f"{name}.png", _thumbnail(sweep[k], config.thumbnail))
  if (folder / "turntable.mp4").is_file() and config.gif_frames > 0:
    frames, fps = image_io.load_video(folder / "turntable.mp4")
    pick = np.linspace(0, len(frames) - 1, min(config.gif_frames, len(frames))).round().astype(int)
    image_io.save_video([_thumbnail(frames[k], config.thumbnail) for k in pick], assets / "turntable.gif",
                        fps=max(fps * len(pick) / len(frames), 1.0))
  outputs.write_json(folder / "evaluation.json", res)
  return res


# ----------------------------------------------------------------------------------------------
# A batch folder.

CSV_FIELDS = ("photo", "folder", "status", "dlib_mean_near_frontal", "dlib_frontal", "faces_found_near_frontal",
              "arcface_mean_near_frontal", "official_dlib_median", "official_dlib_mean", "official_arcface_mean",
              "psnr", "ssim", "psnr_fg", "reproj_depth_rel", "reproj_render_l1", "reproj_views_l1",
              "final_discrepancy", "error")


def evaluation_row(photo: str, folder: str, ev: dict | None, status: str, error: str = "") -> dict:
  """One evaluation.csv row (numbers rounded; "" where not available)."""
  row = dict.fromkeys(CSV_FIELDS, "")
  row.update(photo=photo, folder=folder, status=status, error=error)
  if ev is None:
    return row
  fmt = lambda x, n=4: "" if x is None else f"{x:.{n}f}"
  ident, off = ev.get("identity", {}), ev.get("official", {})
  yaws, dl = ident.get("yaws", []), ident.get("dlib", [])
  frontal = dl[yaws.index(0.0)] if 0.0 in yaws and dl else None
  con, rep = ev["consistency"], ev["reprojection"]
  disc = ev.get("discrepancy_per_step") or []
  row.update(dlib_mean_near_frontal=fmt(ident.get("dlib_mean_near_frontal")), dlib_frontal=fmt(frontal),
             faces_found_near_frontal=ident.get("faces_found_near_frontal", ""),
             arcface_mean_near_frontal=fmt(ident.get("arcface_mean_near_frontal")),
             official_dlib_median=fmt(off.get("dlib_median")), official_dlib_mean=fmt(off.get("dlib_mean")),
             official_arcface_mean=fmt(off.get("arcface_mean")), psnr=fmt(con.get("mean_psnr"), 2),
             ssim=fmt(con.get("mean_ssim")), psnr_fg=fmt(con.get("mean_psnr_fg"), 2),
             reproj_depth_rel=fmt(rep.get("mean_depth_rel"), 5), reproj_render_l1=fmt(rep.get("mean_render_l1")),
             reproj_views_l1=fmt(rep.get("mean_views_l1")), final_discrepancy=fmt(disc[-1] if disc else None, 5))
  return row


def aggregate(rows: Sequence[dict]) -> list[dict]:
  """The report's top table: per metric, n, mean, median and (identity) the share under dlib's 0.6 line."""
  spec = [("dlib distance, ours (mean |yaw| <= 30)", "dlib_mean_near_frontal", True),
          ("dlib distance, ours (yaw 0)", "dlib_frontal", True),
          ("dlib distance, official turntable (median of frames)", "official_dlib_median", True),
          ("ArcFace similarity, ours (mean |yaw| <= 30)", "arcface_mean_near_frontal", False),
          ("ArcFace similarity, official turntable", "official_arcface_mean", False),
          ("PSNR views vs avatar (dB)", "psnr", False), ("SSIM views vs avatar", "ssim", False),
          ("reprojection depth error (relative)", "reproj_depth_rel", False),
          ("reprojection colour L1, diffusion views", "reproj_views_l1", False)]
  table = []
  for label, key, is_dlib in spec:
    vals = np.asarray([float(r[key]) for r in rows if r.get(key) not in ("", None)], np.float64)
    entry = {"metric": label, "key": key, "n": int(vals.size),
             "mean": float(vals.mean()) if vals.size else None,
             "median": float(np.median(vals)) if vals.size else None}
    if is_dlib:
      entry["under_0.6"] = float((vals < SAME_PERSON).mean()) if vals.size else None
    table.append(entry)
  return table


def is_avatar_folder(folder: Path) -> bool:
  return (folder / "avatar.ply").is_file() and (folder / "cameras.json").is_file()


def evaluate_batch(out_dir, config, arcface: ArcFace | None = None) -> dict:
  """Evaluates every finished photo folder of a batch; writes OUT/evaluation.csv and OUT/report.html.

  The photo list is the batch's summary.csv when present (failed and pending photos get a row), else every
  subfolder that holds a finished run. A photo whose evaluation fails gets its error in the row; the rest go on.
  """
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  out = Path(out_dir)
  from_batch = (out / "summary.csv").is_file()
  if from_batch:
    with open(out / "summary.csv", newline="") as f:
      entries = [(r["photo"], out / r["folder"]) for r in csv.DictReader(f)]
  else:
    entries = [(str(d), d) for d in sorted(out.iterdir()) if d.is_dir() and is_avatar_folder(d)]
  if not entries:
    raise EvaluationError(f"config.target={str(out)!r}: neither an avatar folder (avatar.ply, cameras.json, ...) "
                          "nor a batch folder (summary.csv or finished photo folders)")
  rows, evals = [], {}
  for photo, folder in tqdm(entries, desc="evaluate", unit="avatar"):
    if from_batch and not is_finished(folder):  # failed or pending in the batch: its row says so
      run = photo_row(out, Path(photo))
      rows.append(evaluation_row(photo, folder.name, None, run["status"], run["error"]))
      continue
    try:
      evals[folder.name] = evaluate_avatar(folder, config, arcface)
      rows.append(evaluation_row(photo, folder.name, evals[folder.name], "done"))
    except Exception as e:  # pylint: disable=broad-except  (one broken folder must not stop the report)
      rows.append(evaluation_row(photo, folder.name, None, "evaluation failed", f"{type(e).__name__}: {e}"))
  with atomic_path(out / "evaluation.csv") as tmp:
    with open(tmp, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
      writer.writeheader()
      writer.writerows(rows)
  table = aggregate(rows)
  outputs.write_json(out / "evaluation_summary.json", {"aggregate": table, "official_median_dlib":
                                                        OFFICIAL_MEDIAN_DLIB, "same_person": SAME_PERSON})
  paper = None
  if config.get("protocol", "ours") == "paper":
    done = [(out / r["folder"], evals[r["folder"]]) for r in rows if r["status"] == "done"]
    paper = paper_metrics.evaluate_paper(out, [f for f, _ in done], [e["photo"] for _, e in done],
                                         [e["frontal_view"] for _, e in done], config)
  random_weights = sum(bool(ev.get("random_weights")) for ev in evals.values())
  report.write_report(out / "report.html", rows, evals, table, paper=paper, random_weights=random_weights)
  return {"rows": rows, "evaluations": evals, "aggregate": table, "paper": paper, "random_weights": random_weights}


def _why_empty(key: str, evaluations: Sequence[dict], config) -> str:
  """Why an aggregate row has no value (n = 0), for the terminal summary."""
  if not evaluations:
    return "no avatar was evaluated"
  if "arcface" in key and not config.arcface:
    return "not measured (no --config.arcface model)"
  idents = [ev.get("identity", {}) for ev in evaluations]
  if all(i.get("skipped") for i in idents):
    return "no face found in the photos (" + "; ".join(sorted({i["skipped"] for i in idents}))[:200] + ")"
  if key.startswith("official"):
    offs = [ev["official"] for ev in evaluations if ev.get("official")]
    if not offs:
      return f"no official turntable <photo>.mp4 in config.official_videos={config.official_videos!r}"
    return f"no face found in the frames of the {len(offs)} official turntable(s)"
  if key.startswith(("dlib", "arcface")):
    where = "at yaw 0" if key == "dlib_frontal" else f"within |yaw| <= {config.max_yaw:g}"
    return f"no face found in any avatar's renders {where}"
  return "no value"


def summary_lines(result: dict, config) -> list[str]:
  """The evaluation's terminal summary of a batch: a warning first when avatars came from random weights, then
  every aggregate row (a row without values says why instead of being left out), then the published official."""
  evals = list(result["evaluations"].values())
  lines = []
  if result.get("random_weights"):
    lines.append(f"RANDOM WEIGHTS: {result['random_weights']} of the {len(evals)} evaluated avatars come from the "
                 "install check (config.weights = random-tiny); these numbers test the evaluation, not the method")
  for e in result["aggregate"]:
    lines.append(f"{e['metric']:<55} n={e['n']:<3} " + (f"mean {e['mean']:.4f}  median {e['median']:.4f}" if e["n"]
                                                         else _why_empty(e["key"], evals, config)))
  lines.append(f"official SplatShot median dlib distance (70 CelebA-HQ photos, published): {OFFICIAL_MEDIAN_DLIB}")
  return lines


def evaluate(config) -> dict:
  """configs/evaluate.py: an avatar folder (evaluation.json) or a batch folder (+ evaluation.csv, report.html)."""
  if not config.target:
    raise EvaluationError("config.target is empty: give an avatar folder (one run) or a batch folder")
  target = Path(config.target).expanduser()
  if not target.is_dir():
    raise EvaluationError(f"config.target: no folder at {target}")
  arcface = ArcFace(config.arcface) if config.arcface else None
  if is_avatar_folder(target):
    return {"evaluations": {target.name: evaluate_avatar(target, config, arcface)}}
  return evaluate_batch(target, config, arcface)
