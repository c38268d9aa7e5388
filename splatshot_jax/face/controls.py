"""The two ControlNet condition maps of a view: landmark heatmap (openpose) and face parsing (seg).

Landmark heatmap, as in the official implementation: one isotropic Gaussian blob (sigma 3 px) per
projected landmark, summed, min-max normalised to [0, 255] (truncated to uint8; checked on the 333
set's `heatmap_control`: an isolated blob fits A*exp(-r^2 / 18) floored to within 10 grey levels in
total over 21x21 px), grey on black, (H, W, 3) uint8; all black when the view is invalid.

Difference from the official maps: they map mediapipe FaceMesh to 68 points whose first 17 are mesh
indices 0..16, i.e. points on the lips/nose midline, so their heatmaps have *no jawline*. Ours use
dlib's iBUG 68 points, whose 0..16 *are* the jawline. `drop_jaw=True` leaves them out, which looks
like the official maps minus their extra midline blobs.

Parsing map: the 19 CelebAMask-HQ classes painted with the official palette (read back from the 333
set's `parsing_control`: every pixel there is exactly one of these colours; classes 6, 9, 11, 15 do
not occur in it). "l_"/"r_" are the subject's left/right: l_brow is dlib's 22-26 (image right on a
frontal view).
"""

from __future__ import annotations

import numpy as np

from splatshot_jax.face.detect import JAW

CLASS_NAMES = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
               "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")
CLASS = {name: i for i, name in enumerate(CLASS_NAMES)}

# (19, 3) uint8 official palette, index = class id.
PALETTE = np.array([
    (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255), (204, 0, 204), (0, 255, 255),
    (255, 204, 204), (102, 51, 0), (255, 0, 0), (102, 204, 0), (255, 255, 0), (0, 0, 153),
    (0, 0, 204), (255, 51, 153), (0, 204, 204), (0, 51, 0), (255, 153, 51), (0, 204, 0)], np.uint8)

# Classes `approximate_parsing` can produce.
APPROXIMATE_CLASSES = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth",
                       "u_lip", "l_lip", "neck", "cloth", "hair")

HEATMAP_SIGMA_PX = 3.0  # official value


# ----------------------------------------------------------------------------- landmark heatmap

def landmark_heatmap(points2d: np.ndarray, height: int, width: int, *, sigma: float = HEATMAP_SIGMA_PX,
                     valid: bool = True, drop_jaw: bool = False) -> np.ndarray:
  """Landmark heatmap control map.

  Args:
    points2d: (N, 2) (x, y) continuous pixel coordinates (pixel centres at integer + 0.5); NaN rows
      (untriangulated points) are skipped. With drop_jaw, N must be 68 (dlib order).
    height, width: map size.
    sigma: blob standard deviation in pixels.
    valid: False gives the all-black map of a view without landmarks.
    drop_jaw: leave out dlib's jaw points 0-16 (closer to the official, jawless maps).

  Returns:
    (height, width, 3) uint8 grey heatmap.
  """
  pts = np.asarray(points2d, np.float64).reshape(-1, 2)
  if drop_jaw:
    if len(pts) != 68:
      raise ValueError(f"points2d: drop_jaw needs the 68 dlib landmarks, got {len(pts)} points")
    pts = np.delete(pts, list(JAW), axis=0)
  pts = pts[np.isfinite(pts).all(-1)]
  out = np.zeros((height, width, 3), np.uint8)
  if not valid or len(pts) == 0:
    return out
  # A 2D isotropic Gaussian is separable, so the sum of blobs is one (H, N) @ (N, W) product.
  ys = np.arange(height) + 0.5
  xs = np.arange(width) + 0.5
  gy = np.exp(-((ys[:, None] - pts[None, :, 1]) ** 2) / (2 * sigma ** 2))
  gx = np.exp(-((xs[:, None] - pts[None, :, 0]) ** 2) / (2 * sigma ** 2))
  heat = gy @ gx.T
  lo, hi = heat.min(), heat.max()
  if not hi > lo:
    return out
  grey = np.floor((heat - lo) / (hi - lo) * 255.0).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


# ----------------------------------------------------------------------------- parsing palette

def labels_to_colors(labels: np.ndarray) -> np.ndarray:
  """(H, W) integer class ids in [0, 19) -> (H, W, 3) uint8 official colours."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= len(PALETTE)):
    raise ValueError(f"labels: expected class ids in [0, {len(PALETTE)}), got range "
                     f"[{labels.min()}, {labels.max()}]")
  return PALETTE[labels]


def colors_to_labels(colors: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 colour-coded parsing map -> (H, W) int32 class ids (nearest palette colour).

  Nearest in RGB (squared Euclidean) so that resampled or compressed maps still decode.
  """
  c = np.asarray(colors)
  if c.ndim != 3 or c.shape[-1] != 3:
    raise ValueError(f"colors: expected an (H, W, 3) colour map, got shape {c.shape}")
  flat = c.reshape(-1, 3).astype(np.int32)
  pal = PALETTE.astype(np.int32)
  # |c - p|^2 = |c|^2 - 2 c.p + |p|^2; |c|^2 is constant per pixel.
  d = (pal ** 2).sum(-1)[None] - 2 * flat @ pal.T
  return np.argmin(d, axis=-1).astype(np.int32).reshape(c.shape[:2])


def parsing_agreement(pred: np.ndarray, ref: np.ndarray, *, classes=None) -> dict:
  """Pixel accuracy and mean IoU of two (H, W) label maps.

  Args:
    pred, ref: (H, W) integer class ids.
    classes: ids averaged in the mIoU (default: every class present in either map).

  Returns:
    {"pixel_acc": float, "miou": float, "iou": {class_name: float}}.
  """
  pred, ref = np.asarray(pred), np.asarray(ref)
  if classes is None:
    classes = np.union1d(np.unique(pred), np.unique(ref))
  iou = {}
  for k in classes:
    a, b = pred == k, ref == k
    union = (a | b).sum()
    if union:
      iou[CLASS_NAMES[int(k)]] = float((a & b).sum() / union)
  return {"pixel_acc": float((pred == ref).mean()), "miou": float(np.mean(list(iou.values()))),
          "iou": iou}


# ----------------------------------------------------------------------------- approximate parsing

def polygon_mask(poly: np.ndarray, height: int, width: int) -> np.ndarray:
  """(H, W) bool: pixel centres inside a polygon (even-odd rule).

  Args:
    poly: (K, 2) (x, y) vertices in continuous pixel coordinates, in order (closed implicitly).
  """
  poly = np.asarray(poly, np.float64)
  mask = np.zeros((height, width), bool)
  if len(poly) < 3 or not np.isfinite(poly).all():
    return mask
  x0, y0 = np.clip(np.floor(poly.min(0)).astype(int), 0, [width, height])
  x1, y1 = np.clip(np.ceil(poly.max(0)).astype(int) + 1, 0, [width, height])
  if x1 <= x0 or y1 <= y0:
    return mask
  px = (np.arange(x0, x1) + 0.5)[None, :]
  py = (np.arange(y0, y1) + 0.5)[:, None]
  inside = np.zeros((y1 - y0, x1 - x0), bool)
  a, b = poly, np.roll(poly, -1, axis=0)
  for (ax, ay), (bx, by) in zip(a, b):
    if ay == by:
      continue
    crosses = (ay > py) != (by > py)
    xint = ax + (py - ay) * (bx - ax) / (by - ay)
    inside ^= crosses & (px < xint)
  mask[y0:y1, x0:x1] = inside
  return mask


def convex_hull(points: np.ndarray) -> np.ndarray:
  """(K, 2) counter-clockwise (in y-down image axes: clockwise on screen) hull of (N, 2) points."""
  pts = np.unique(np.asarray(points, np.float64), axis=0)
  if len(pts) < 3:
    return pts
  pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
  cross = lambda o, a, b: (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
  # Andrew's monotone chain.
  lower, upper = [], []
  for p in pts:
    while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
      lower.pop()
    lower.append(p)
  for p in pts[::-1]:
    while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
      upper.pop()
    upper.append(p)
  return np.array(lower[:-1] + upper[:-1])


def _scaled(pts: np.ndarray, s: float) -> np.ndarray:
  c = pts.mean(0)
  return c + s * (pts - c)


def approximate_parsing(landmarks2d: np.ndarray, alpha_mask: np.ndarray, height: int, width: int, *,
                        forehead: float = 0.8, brow_thickness: float = 0.22, eye_scale: float = 1.25,
                        neck_length: float = 0.35, neck_width: float = 1.0) -> np.ndarray:
  """Face-parsing labels derived from 68 landmarks and a foreground mask (no parser network).

  For templates without parsing maps. Exact up to landmark accuracy: brows, eyes, nose, lips, mouth
  (polygons of the landmark contours, slightly grown). Approximate: skin (the jaw contour closed by the
  brows raised by `forehead` x brow-to-nose-base distance; the real hairline is unknown), hair (every
  other foreground pixel above the jaw line or beside the face, which also swallows ears, glasses,
  hats and earrings: classes 6-9, 15, 18 are never produced), neck (foreground below the jaw within a
  band `neck_width` x jaw width, down to `neck_length` x brow-to-chin distance below the chin) and
  cloth (foreground below that, or below the jaw outside the band). Pixels where `alpha_mask` is off are
  background.

  Args:
    landmarks2d: (68, 2) dlib-order landmarks in continuous pixel coordinates (projected 3D landmarks
      for a template view).
    alpha_mask: (H, W) bool or float in [0, 1] foreground (render alpha or fg mask; > 0.5 = fg).
    height, width: map size (= alpha_mask's).
    forehead, brow_thickness, eye_scale, neck_length, neck_width: shape constants (fractions of
      face distances; defaults tuned on views 4, 8, 10, 12 of the 333 set against its parsing maps).

  Returns:
    (H, W) int32 class ids (see CLASS_NAMES); colour them with `labels_to_colors`.
  """
  lm = np.asarray(landmarks2d, np.float64)
  if lm.shape != (68, 2):
    raise ValueError(f"landmarks2d: expected shape (68, 2), got {lm.shape}")
  fg = np.asarray(alpha_mask)
  if fg.shape != (height, width):
    raise ValueError(f"alpha_mask: expected shape ({height}, {width}), got {fg.shape}")
  fg = fg > 0.5 if fg.dtype != bool else fg
  labels = np.zeros((height, width), np.int32)
  if not np.isfinite(lm).all():
    labels[fg] = CLASS["hair"]
    return labels

  # Face frame: ex along the eye line (image right on a frontal view), ey perpendicular, "down".
  eye_r, eye_l = lm[36:42].mean(0), lm[42:48].mean(0)
  ex = eye_l - eye_r
  iod = np.linalg.norm(ex)
  ex = ex / max(iod, 1e-9)
  ey = np.array([-ex[1], ex[0]])
  brow_mid = lm[17:27].mean(0)
  up = -ey * max(float((lm[33] - brow_mid) @ ey), 0.0) * forehead
  # Convex hull of every landmark plus the brows and jaw ends raised to the hairline: the jaw contour
  # on frontal views, and it keeps the nose profile inside on turned ones.
  face_poly = convex_hull(np.concatenate([lm, lm[17:27] + up, lm[[0, 16]] + up]))

  def brow(idx):
    pts = lm[list(idx)]
    t = brow_thickness * iod * ey
    return np.concatenate([pts - 0.35 * t, (pts + 0.65 * t)[::-1]])

  wn = np.linalg.norm(lm[35] - lm[31])
  nose_poly = np.array([lm[27] - 0.22 * wn * ex, lm[31] - 0.2 * wn * ex, *lm[31:36],
                        lm[35] + 0.2 * wn * ex, lm[27] + 0.22 * wn * ex])
  nose_poly[2:7] += 0.08 * wn * ey
  upper_lip = np.concatenate([lm[48:55], lm[64:59:-1]])
  lower_lip = np.concatenate([lm[54:60], lm[48:49], lm[60:61], lm[67:63:-1]])

  pm = lambda p: polygon_mask(p, height, width)
  face = pm(face_poly)
  labels[fg] = CLASS["hair"]

  # Below the jaw: neck band then clothes, measured in the face frame from the brow midpoint.
  ys, xs = np.mgrid[0:height, 0:width] + 0.5
  rel = np.stack([xs - brow_mid[0], ys - brow_mid[1]], -1)
  u, v = rel @ ex, rel @ ey
  ju, jv = (lm[0:17] - brow_mid) @ ex, (lm[0:17] - brow_mid) @ ey
  order = np.argsort(ju)
  v_jaw = np.interp(u, ju[order], jv[order])
  chin_v = float(jv[8])
  jaw_half = 0.5 * abs(float(ju[12] - ju[4]))
  in_band = np.abs(u - ju[8]) < neck_width * jaw_half
  neck_end = chin_v + neck_length * max(chin_v, 1e-9)
  below = fg & ~face & (v > v_jaw)
  labels[below & in_band & (v <= neck_end)] = CLASS["neck"]
  # Beside the neck below chin level are the shoulders.
  labels[below & ~in_band & (v > chin_v)] = CLASS["cloth"]
  labels[fg & ~face & (v > neck_end)] = CLASS["cloth"]

  # Face interior, later parts drawn over earlier ones (brows/eyes/nose/lips over skin).
  labels[face & fg] = CLASS["skin"]
  for name, poly in (("r_brow", brow(range(17, 22))), ("l_brow", brow(range(22, 27))),
                     ("r_eye", _scaled(lm[36:42], eye_scale)), ("l_eye", _scaled(lm[42:48], eye_scale)),
                     ("nose", nose_poly), ("u_lip", upper_lip), ("l_lip", lower_lip),
                     ("mouth", lm[60:68])):
    labels[pm(poly) & fg] = CLASS[name]
  return labels
