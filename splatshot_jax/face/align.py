"""Aligning a photo to a template's framing with a similarity transform.

The photo's eye centres, nose tip and mouth corners are mapped by the least-squares similarity
(rotation, uniform scale, translation; Umeyama 1991) onto the same points of the template's frontal
view, and the photo is resampled into the template's image size. All coordinates are continuous pixel
coordinates (pixel centres at integer + 0.5), as in `splatshot_jax.face.detect`.

Five-point convention used here (like the common ArcFace 5 points, *not* dlib's 5-point predictor):
0 right eye centre, 1 left eye centre (subject's right/left = image left/right on a frontal photo),
2 nose tip, 3 right mouth corner, 4 left mouth corner.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from splatshot_jax.face.detect import LEFT_EYE, RIGHT_EYE

BORDERS = ("reflect", "edge", "constant")


def five_points(landmarks: np.ndarray) -> np.ndarray:
  """The five alignment points of a face.

  Args:
    landmarks: (68, 2) dlib/iBUG landmarks, or (5, 2) points already in the five-point convention.

  Returns:
    (5, 2) float64: right eye centre, left eye centre, nose tip (30), mouth corners (48, 54).
  """
  lm = np.asarray(landmarks, np.float64)
  if lm.shape == (5, 2):
    return lm
  if lm.shape != (68, 2):
    raise ValueError(f"landmarks: expected shape (68, 2) or (5, 2), got {lm.shape}")
  return np.stack([lm[list(RIGHT_EYE)].mean(0), lm[list(LEFT_EYE)].mean(0), lm[30], lm[48], lm[54]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Least-squares similarity taking `src` points onto `dst` (Umeyama 1991, no reflection).

  Args:
    src: (N, 2) points, N >= 2.
    dst: (N, 2) points.

  Returns:
    (2, 3) float64 M with dst ~= M[:, :2] @ src + M[:, 2].
  """
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  mu_s, mu_d = src.mean(0), dst.mean(0)
  s, d = src - mu_s, dst - mu_d
  cov = d.T @ s / len(src)
  u, sig, vt = np.linalg.svd(cov)
  # Umeyama's sign fix keeps a proper rotation when the best orthogonal map would be a reflection.
  e = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
  rot = u @ e @ vt
  var_s = (s ** 2).sum() / len(src)
  scale = np.trace(np.diag(sig) @ e) / var_s
  a = scale * rot
  return np.concatenate([a, (mu_d - a @ mu_s)[:, None]], axis=1)


def transform_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Applies a (2, 3) affine map to (..., 2) points."""
  points = np.asarray(points, np.float64)
  return points @ m[:, :2].T + m[:, 2]


def _border_index(idx: np.ndarray, n: int, border: str) -> np.ndarray:
  if border == "reflect":
    # OpenCV BORDER_REFLECT (fedcba|abcdef|fedcba): the edge pixel is repeated, period 2n.
    m = np.mod(idx, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)
  return np.clip(idx, 0, n - 1)


def warp_affine(image: np.ndarray, m: np.ndarray, out_hw: tuple[int, int], *,
                border: str = "reflect", fill: float = 0.0, prefilter: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Resamples `image` under the affine map `m` (source -> output coordinates), bilinear.

  When the map shrinks the image by 2x or more the source is first box-averaged by the integer
  factor, so the bilinear taps do not alias.

  Args:
    image: (H, W, C) or (H, W) array (uint8 or float).
    m: (2, 3) map from source to output continuous pixel coordinates.
    out_hw: (H_out, W_out).
    border: "reflect" (mirror, OpenCV BORDER_REFLECT), "edge" (replicate) or "constant" (`fill`).
    fill: value outside the image for border="constant".
    prefilter: box-average before shrinking (above); False samples the source as it is, like OpenCV's
      warpAffine / resize with INTER_LINEAR (insightface's detector input and 112x112 crop are made that way).

  Returns:
    out: (H_out, W_out[, C]) with the dtype of `image` (uint8 rounded).
    valid: (H_out, W_out) bool, True where the output pixel centre maps inside the source image.
  """
  if border not in BORDERS:
    raise ValueError(f"border: expected one of {BORDERS}, got {border!r}")
  img = np.asarray(image)
  squeeze = img.ndim == 2
  src = img[..., None] if squeeze else img
  src = src.astype(np.float32)
  m = np.asarray(m, np.float64)
  a = np.concatenate([m, [[0.0, 0.0, 1.0]]])
  scale = np.sqrt(abs(np.linalg.det(m[:, :2])))
  k = int(np.floor(1.0 / scale)) if scale > 0 else 1
  if k >= 2 and prefilter:
    h, w = src.shape[0] // k * k, src.shape[1] // k * k
    src = src[:h, :w].reshape(h // k, k, w // k, k, -1).mean((1, 3))
    # New pixel (i, j) covers old [k*j, k*j + k): old coordinate = k * new coordinate.
    a = a @ np.diag([k, k, 1.0])
  ainv = np.linalg.inv(a)
  ho, wo = out_hw
  ys, xs = np.meshgrid(np.arange(ho) + 0.5, np.arange(wo) + 0.5, indexing="ij")
  u = ainv[0, 0] * xs + ainv[0, 1] * ys + ainv[0, 2] - 0.5  # to pixel-index units
  v = ainv[1, 0] * xs + ainv[1, 1] * ys + ainv[1, 2] - 0.5
  hs, ws = src.shape[:2]
  valid = (u >= -0.5) & (u <= ws - 0.5) & (v >= -0.5) & (v <= hs - 0.5)
  x0, y0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
  fx, fy = (u - x0)[..., None], (v - y0)[..., None]
  out = 0.0
  for dy, wy in ((0, 1.0 - fy), (1, fy)):
    for dx, wx in ((0, 1.0 - fx), (1, fx)):
      xi, yi = x0 + dx, y0 + dy
      tap = src[_border_index(yi, hs, border), _border_index(xi, ws, border)]
      if border == "constant":
        inside = ((xi >= 0) & (xi < ws) & (yi >= 0) & (yi < hs))[..., None]
        tap = np.where(inside, tap, np.float32(fill))
      out = out + wy * wx * tap
  if squeeze:
    out = out[..., 0]
  if img.dtype == np.uint8:
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
  else:
    out = out.astype(img.dtype if np.issubdtype(img.dtype, np.floating) else np.float32)
  return out, valid


@dataclasses.dataclass(frozen=True)
class AlignedFace:
  """A photo resampled into a template's framing.

  Attributes:
    image: (H, W, 3) uint8 aligned photo.
    valid: (H, W) bool, True where the pixel comes from inside the photo (not from the border rule).
    transform: (2, 3) float64 map from photo to aligned continuous pixel coordinates.
    landmarks68: (68, 2) float32 the photo's landmarks in the aligned image.
    residual_px: RMS distance between the mapped five points and the target's, in aligned pixels
      (a large value means the photo's face proportions or pose differ from the template's).
  """

  image: np.ndarray
  valid: np.ndarray
  transform: np.ndarray
  landmarks68: np.ndarray
  residual_px: float


def align_face(image: np.ndarray, landmarks68: np.ndarray, target: np.ndarray,
               target_hw: tuple[int, int], *, border: str = "edge", fill: float = 0.0
               ) -> AlignedFace:
  """Aligns and crops a photo to the framing of a template view.

  Args:
    image: (H, W, 3) uint8 RGB photo.
    landmarks68: (68, 2) photo landmarks (from `analyze_photo`).
    target: (68, 2) or (5, 2) landmarks of the template's frontal view, in its pixel coordinates.
    target_hw: (H_t, W_t) size of the template image.
    border: how pixels outside the photo are filled: "edge" (default: replicate the border pixels;
      "reflect" would mirror the face itself into the crop, a second face for any detector or
      identity encoder) or "constant" (`fill`). `valid` marks them in any case.

  Returns:
    AlignedFace.
  """
  lm = np.asarray(landmarks68, np.float64)
  if lm.shape != (68, 2):
    raise ValueError(f"landmarks68: expected shape (68, 2), got {lm.shape}")
  src, dst = five_points(lm), five_points(target)
  m = similarity_transform(src, dst)
  out, valid = warp_affine(image, m, target_hw, border=border, fill=fill)
  residual = float(np.sqrt(((transform_points(m, src) - dst) ** 2).sum(-1).mean()))
  return AlignedFace(image=out, valid=valid, transform=m,
                     landmarks68=transform_points(m, lm).astype(np.float32), residual_px=residual)
