"""Features for choosing the base template closest to a photo.

The official code (disabled there) weighs DINO features of the hair and of the face crop with skin
HSV statistics. Here: skin colour statistics (HSV mean/std of the central face), the landmark geometry
(68 points normalised for position, scale and roll), and a hook for any embedding vectors (e.g. the
IP-Adapter's CLIP vision embeddings), compared by cosine similarity.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

from splatshot_jax.face.controls import polygon_mask
from splatshot_jax.face.detect import FaceAnalysis, ImageLike, analyze_photo, as_rgb_uint8

# Scales of the skin-statistic differences that count as "one unit" in `skin_similarity`:
# hue 0.05 turn (18 deg), saturation / value 0.1, their spreads 0.05.
SKIN_SCALES = np.array([0.05, 0.1, 0.1, 0.05, 0.05, 0.05])
# Procrustes distance of 68-point shapes counted as "one unit" in `shape_similarity`.
SHAPE_SCALE = 0.2

DEFAULT_WEIGHTS = {"skin": 0.5, "shape": 0.5}


@dataclasses.dataclass(frozen=True)
class FaceFeatures:
  """Template-choice features of one face.

  Attributes:
    skin_hsv: (6,) float32 (hue mean, sat mean, val mean, hue std, sat std, val std) in [0, 1]; hue
      mean and std are circular (hue in turns).
    shape: (136,) float32 normalised 68-point shape (`landmark_shape_descriptor`).
    extra: name -> (D,) float32 extra embeddings (e.g. "clip"), compared by cosine.
  """

  skin_hsv: np.ndarray
  shape: np.ndarray
  extra: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TemplateChoice:
  """Result of `choose_template`.

  Attributes:
    index: the chosen template.
    scores: (T,) float32 weighted similarity of every template (higher is closer).
    similarities: feature name -> (T,) float32 per-feature similarity: skin and shape in (0, 1],
      extra features (cosine) in [-1, 1].
  """

  index: int
  scores: np.ndarray
  similarities: Mapping[str, np.ndarray]


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
  """(..., 3) RGB in [0, 1] -> (..., 3) HSV in [0, 1] (hue in turns; hue 0 where saturation is 0)."""
  rgb = np.asarray(rgb, np.float64)
  mx, mn = rgb.max(-1), rgb.min(-1)
  d = mx - mn
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  safe = np.where(d > 0, d, 1.0)
  h = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  h = np.where(d > 0, h / 6.0, 0.0)
  s = np.where(mx > 0, d / np.where(mx > 0, mx, 1.0), 0.0)
  return np.stack([h, s, mx], -1)


def central_face_mask(landmarks68: np.ndarray, height: int, width: int) -> np.ndarray:
  """(H, W) bool: cheeks and nose between the lower eyelids and the nose base, without the eyes.

  Avoids eyes, brows, lips, nostrils and (mostly) beards, so it sees skin.

  Args:
    landmarks68: (68, 2) continuous pixel coordinates.
  """
  lm = np.asarray(landmarks68, np.float64)
  mask = polygon_mask(lm[[1, 29, 15, 35, 33, 31]], height, width)
  mask &= ~polygon_mask(lm[36:42], height, width) & ~polygon_mask(lm[42:48], height, width)
  return mask


def skin_color_stats(image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
  """HSV statistics of the central face region.

  Args:
    image: (H, W, 3) uint8 RGB.
    landmarks68: (68, 2) continuous pixel coordinates.

  Returns:
    (6,) float32 (h_mean, s_mean, v_mean, h_std, s_std, v_std); hue circular, in turns.
  """
  img = as_rgb_uint8(image)
  mask = central_face_mask(landmarks68, *img.shape[:2])
  if mask.sum() < 10:
    raise ValueError(f"landmarks68: the central face region covers {int(mask.sum())} px (< 10); "
                     "the landmarks do not describe a visible face")
  hsv = rgb_to_hsv(img[mask] / 255.0)
  ang = 2 * np.pi * hsv[:, 0]
  c, s = np.cos(ang).mean(), np.sin(ang).mean()
  rbar = np.hypot(c, s)
  # Skin hue straddles red (0 = 1 turn), so mean and spread must be circular.
  h_mean = (np.arctan2(s, c) / (2 * np.pi)) % 1.0
  h_std = np.sqrt(-2.0 * np.log(max(rbar, 1e-12))) / (2 * np.pi)
  return np.array([h_mean, hsv[:, 1].mean(), hsv[:, 2].mean(), h_std, hsv[:, 1].std(), hsv[:, 2].std()],
                  np.float32)


def landmark_shape_descriptor(landmarks68: np.ndarray) -> np.ndarray:
  """68 landmarks normalised for translation, scale and roll.

  Centred on the mean, scaled to unit Frobenius norm, rotated so the eye centres are horizontal.

  Args:
    landmarks68: (68, 2) landmarks.

  Returns:
    (136,) float32 (x0, y0, x1, y1, ...).
  """
  lm = np.asarray(landmarks68, np.float64)
  if lm.shape != (68, 2):
    raise ValueError(f"landmarks68: expected shape (68, 2), got {lm.shape}")
  x = lm - lm.mean(0)
  x = x / max(np.linalg.norm(x), 1e-12)
  d = lm[42:48].mean(0) - lm[36:42].mean(0)
  a = -np.arctan2(d[1], d[0])
  rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
  return (x @ rot.T).reshape(-1).astype(np.float32)


def face_features(image: ImageLike, analysis: Optional[FaceAnalysis] = None, *,
                  extra: Optional[Mapping[str, np.ndarray]] = None) -> FaceFeatures:
  """Template-choice features of an image's face.

  Args:
    image: path or (H, W, 3) uint8 RGB (a photo, or a template's frontal render).
    analysis: its FaceAnalysis (detected when omitted). For a template view, call
      `features_from_landmarks` with its projected 3D landmarks instead.
    extra: optional name -> (D,) embeddings (e.g. {"clip": ...}).
  """
  img = as_rgb_uint8(image)
  if analysis is None:
    analysis = analyze_photo(img)
  return features_from_landmarks(img, analysis.landmarks68, extra=extra)


def features_from_landmarks(image: np.ndarray, landmarks68: np.ndarray, *,
                            extra: Optional[Mapping[str, np.ndarray]] = None) -> FaceFeatures:
  """`face_features` from given landmarks (e.g. a template view's projected 3D landmarks).

  Args:
    image: (H, W, 3) uint8 RGB.
    landmarks68: (68, 2) continuous pixel coordinates.
    extra: optional name -> (D,) embeddings.
  """
  extra = {k: np.asarray(v, np.float32).reshape(-1) for k, v in (extra or {}).items()}
  return FaceFeatures(skin_hsv=skin_color_stats(image, landmarks68),
                      shape=landmark_shape_descriptor(landmarks68), extra=extra)


def skin_similarity(a: np.ndarray, b: np.ndarray) -> float:
  """exp(-|delta / SKIN_SCALES|^2 / 2) of two (6,) skin statistics; hue difference circular. In (0, 1]."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  d[0] = (d[0] + 0.5) % 1.0 - 0.5
  return float(np.exp(-0.5 * ((d / SKIN_SCALES) ** 2).sum()))


def procrustes_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Distance of two (136,) shapes after centring, unit scaling and the best rotation; in [0, 2].

  sqrt(2 - 2 cos) with cos the largest cosine over rotations (no reflection: a mirrored face is a
  different shape).
  """
  x, y = np.asarray(a, np.float64).reshape(-1, 2), np.asarray(b, np.float64).reshape(-1, 2)
  x, y = x - x.mean(0), y - y.mean(0)
  x, y = x / max(np.linalg.norm(x), 1e-12), y / max(np.linalg.norm(y), 1e-12)
  u, sv, vt = np.linalg.svd(y.T @ x)
  sign = np.sign(np.linalg.det(u @ vt)) or 1.0
  cos = sv[0] + sign * sv[1]
  return float(np.sqrt(max(2.0 - 2.0 * cos, 0.0)))


def shape_similarity(a: np.ndarray, b: np.ndarray) -> float:
  """exp(-d^2 / (2 SHAPE_SCALE^2)) of the Procrustes distance d of two (136,) shapes. In (0, 1].

  The kernel spreads the useful range: between different people's frontal faces d is ~0.1-0.4
  (cosines 0.92-0.996), which a plain cosine would squeeze next to 1.
  """
  return float(np.exp(-0.5 * (procrustes_distance(a, b) / SHAPE_SCALE) ** 2))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
  a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
  return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def choose_template(photo: FaceFeatures, templates: Sequence[FaceFeatures],
                    weights: Optional[Mapping[str, float]] = None) -> TemplateChoice:
  """Picks the template whose features are closest to the photo's.

  score_t = sum_f w_f * sim_f(photo, template_t) / sum_f w_f over features f: "skin"
  (`skin_similarity`), "shape" (`shape_similarity`) and any name in `FaceFeatures.extra` (cosine).

  Args:
    photo: the photo's features.
    templates: T >= 1 templates' features.
    weights: feature name -> weight (default {"skin": 0.5, "shape": 0.5}; add e.g. "clip": 0.4 when
      both sides carry extra["clip"]). Zero weights are skipped.

  Returns:
    TemplateChoice (ties go to the lowest index).
  """
  if not templates:
    raise ValueError("templates: expected at least one template's features, got none")
  weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
  weights = {k: float(w) for k, w in weights.items() if w != 0}
  if not weights or any(w < 0 for w in weights.values()):
    raise ValueError(f"weights: expected non-negative weights, not all zero, got {weights}")
  sims = {}
  for name in weights:
    if name == "skin":
      sims[name] = [skin_similarity(photo.skin_hsv, t.skin_hsv) for t in templates]
    elif name == "shape":
      sims[name] = [shape_similarity(photo.shape, t.shape) for t in templates]
    else:
      if name not in photo.extra:
        raise ValueError(f"weights: feature {name!r} has a weight but the photo's features have no "
                         f"extra[{name!r}] (has {sorted(photo.extra)})")
      for i, t in enumerate(templates):
        if name not in t.extra:
          raise ValueError(f"templates[{i}]: missing extra feature {name!r} (has {sorted(t.extra)})")
        if t.extra[name].shape != photo.extra[name].shape:
          raise ValueError(f"templates[{i}]: extra[{name!r}] has shape {t.extra[name].shape}, the "
                           f"photo's has {photo.extra[name].shape}")
      sims[name] = [cosine_similarity(photo.extra[name], t.extra[name]) for t in templates]
  sims = {k: np.asarray(v, np.float32) for k, v in sims.items()}
  total = sum(weights.values())
  scores = sum(weights[k] * sims[k] for k in weights) / total
  return TemplateChoice(index=int(np.argmax(scores)), scores=scores.astype(np.float32), similarities=sims)
