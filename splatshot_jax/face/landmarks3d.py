"""3D facial landmarks of a calibrated multi-view set: triangulate once, project into any view.

A template's landmark heatmaps must agree across views, so the 68 landmarks are detected per view,
triangulated once in 3D and re-projected into every view (including views where 2D detection failed).

Triangulation is robust per landmark: RANSAC over pairs of views where the face was detected (up to
400 two-view DLT hypotheses scored by truncated squared reprojection error, i.e. MSAC), then a weighted
DLT on the inliers and Gauss-Newton on the reprojection error. Views where detection failed, or where
a landmark is off (e.g. self-occluded jaw points, which dlib still places), are excluded per point;
views whose detection mostly disagrees with the consensus are rejected as failed detections.
The numerics are numpy float64 (data-dependent inlier sets, done once per template);
`project_landmarks` is jax so that it batches over cameras.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from splatshot_jax.cameras import Camera, project_points
from splatshot_jax.face.detect import FaceError, analyze_photo


@dataclasses.dataclass(frozen=True)
class Landmarks3D:
  """Triangulated landmarks.

  Attributes:
    points: (N, 3) float32 world-space positions (NaN where a point could not be triangulated).
    valid: (N,) bool, True where the point has >= `min_views` inlier views.
    inliers: (V, N) bool, the views each point was triangulated from.
    reproj_error_px: (V, N) float32 distance between the projected point and the view's detection
      (NaN where the view has no detection).
    views_used: (V,) bool, views whose detection was accepted (detected and mostly consistent).
  """

  points: np.ndarray
  valid: np.ndarray
  inliers: np.ndarray
  reproj_error_px: np.ndarray
  views_used: np.ndarray

  def median_reproj_error(self, which: str = "used") -> float:
    """Median over (view, point) of the reprojection error against the per-view detections.

    Args:
      which: "used" (every point of the accepted views), "inliers" (only the per-point inliers) or
        "all" (every detection, including views rejected as failed detections).
    """
    err = self.reproj_error_px[:, self.valid]
    if which == "used":
      err = err[self.views_used]
    elif which == "inliers":
      err = err[self.inliers[:, self.valid]]
    elif which != "all":
      raise ValueError(f"which: expected 'used', 'inliers' or 'all', got {which!r}")
    return float(np.nanmedian(err))


def projection_matrices(viewmats: np.ndarray, Ks: np.ndarray) -> np.ndarray:
  """(V, 3, 4) float64 P = K [R | t] from (V, 4, 4) world-to-camera matrices and (V, 3, 3) K."""
  viewmats = np.asarray(viewmats, np.float64)
  return np.asarray(Ks, np.float64) @ viewmats[..., :3, :4]


def _project_np(P: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Projects (..., 3) points with (..., 3, 4) matrices (broadcasting) -> uv (..., 2), depth (...)."""
  p = np.einsum("...ij,...j->...i", P[..., :3], X) + P[..., 3]
  z = p[..., 2]
  return p[..., :2] / np.where(np.abs(z) < 1e-12, 1e-12, z)[..., None], z


def _dlt(P: np.ndarray, uv: np.ndarray, w: np.ndarray) -> np.ndarray:
  """Weighted homogeneous DLT.

  Args:
    P: (..., V, 3, 4) projections; uv: (..., V, 2) observations; w: (..., V) weights (0 = unused).

  Returns:
    (..., 3) points.
  """
  rows = np.concatenate([uv[..., 0:1, None] * P[..., 2:3, :] - P[..., 0:1, :],
                         uv[..., 1:2, None] * P[..., 2:3, :] - P[..., 1:2, :]], axis=-2)  # (..., V, 2, 4)
  # Unit-norm rows make every observation count alike whatever its pixel scale.
  rows = rows / np.linalg.norm(rows, axis=-1, keepdims=True).clip(1e-12)
  rows = rows * w[..., None, None]
  A = rows.reshape(*rows.shape[:-3], -1, 4)
  # Null vector of A = eigenvector of A^T A with the smallest eigenvalue: a batched 4x4 eigh is
  # ~10x faster than SVDs of (2V, 4) and accurate enough for hypotheses that Gauss-Newton refines.
  _, vecs = np.linalg.eigh(np.einsum("...ki,...kj->...ij", A, A))
  X = vecs[..., :, 0]
  return X[..., :3] / np.where(np.abs(X[..., 3:]) < 1e-12, 1e-12, X[..., 3:])


def _gauss_newton(P: np.ndarray, uv: np.ndarray, w: np.ndarray, X: np.ndarray,
                  iters: int) -> np.ndarray:
  """Minimises sum_v w_v |proj(P_v, X) - uv_v|^2 for (N,) independent points.

  P: (V, 3, 4); uv: (V, N, 2); w: (V, N); X: (N, 3).
  """
  for _ in range(iters):
    p = np.einsum("vij,nj->vni", P[:, :, :3], X) + P[:, None, :, 3]  # (V, N, 3)
    z = p[..., 2:3]
    r = p[..., :2] / z - uv  # (V, N, 2)
    # d(p_xy / p_z)/dX = (M_xy - (p_xy / p_z) M_z) / p_z, with M = P[:, :3].
    J = (P[:, None, :2, :3] - (p[..., :2] / z)[..., None] * P[:, None, 2:3, :3]) / z[..., None]
    Jw = J * w[..., None, None]
    H = np.einsum("vnai,vnaj->nij", Jw, J) + 1e-9 * np.eye(3)
    g = np.einsum("vnai,vna->ni", Jw, r)
    X = X - np.linalg.solve(H, g[..., None])[..., 0]
  return X


def _triangulate(uv: np.ndarray, det: np.ndarray, P: np.ndarray, inlier_px: float,
                 refine_iters: int, max_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """RANSAC + refinement for every point; returns X (N, 3), inliers (V, N), errors (V, N)."""
  V, N = uv.shape[:2]
  # RANSAC hypotheses: two-view DLT for pairs of views (all, or a fixed random subset), all points.
  ii, jj = np.triu_indices(V, k=1)
  if len(ii) > max_pairs:
    keep = np.sort(np.random.default_rng(0).choice(len(ii), max_pairs, replace=False))
    ii, jj = ii[keep], jj[keep]
  pair_ok = det[ii] & det[jj]  # (Pairs, N)
  Ppair = np.stack([P[ii], P[jj]], axis=1)[:, None]  # (Pairs, 1, 2, 3, 4)
  uvpair = np.stack([uv[ii], uv[jj]], axis=2)  # (Pairs, N, 2, 2)
  Xh = _dlt(np.broadcast_to(Ppair, (len(ii), N, 2, 3, 4)), uvpair, np.ones(uvpair.shape[:-1]))
  # One BLAS product projects every hypothesis into every view: (Pairs*N, 4) @ (4, V*3).
  Xh1 = np.concatenate([Xh, np.ones_like(Xh[..., :1])], -1).reshape(-1, 4)
  p = (Xh1 @ P.reshape(V * 3, 4).T).reshape(len(ii), N, V, 3).transpose(0, 2, 1, 3)
  depth = p[..., 2]  # (Pairs, V, N)
  proj = p[..., :2] / np.where(np.abs(depth) < 1e-12, 1e-12, depth)[..., None]
  err2 = ((proj - uv[None]) ** 2).sum(-1)
  supp = det[None] & (depth > 0)
  cost = np.where(supp, np.minimum(err2, inlier_px ** 2), inlier_px ** 2).sum(1)  # MSAC
  cost = np.where(pair_ok & np.isfinite(cost), cost, np.inf)
  best = np.argmin(cost, axis=0)  # (N,)
  X = Xh[best, np.arange(N)]
  inl = supp[best, :, np.arange(N)].T & (err2[best, :, np.arange(N)].T < inlier_px ** 2)  # (V, N)
  # Refine on the inliers, then re-select inliers once with the better point.
  for _ in range(2):
    w = inl.astype(np.float64)
    X = _dlt(np.broadcast_to(P[:, None], (V, N, 3, 4)).transpose(1, 0, 2, 3), uv.transpose(1, 0, 2), w.T)
    X = _gauss_newton(P, uv, w, X, refine_iters)
    proj, depth = _project_np(P[:, None], X[None])
    err = np.sqrt(((proj - uv) ** 2).sum(-1))
    inl = det & (depth > 0) & (err < inlier_px)
  return X, inl, err


def triangulate_landmarks(landmarks2d: np.ndarray, detected: np.ndarray, viewmats: np.ndarray,
                          Ks: np.ndarray, *, inlier_px: float = 8.0, min_views: int = 2,
                          min_view_inlier_frac: float = 0.5, refine_iters: int = 10,
                          max_pairs: int = 400) -> Landmarks3D:
  """Robust triangulation of N landmarks seen in V calibrated views.

  Two levels of robustness: per point, RANSAC drops the views where that landmark is off (dlib
  places self-occluded jaw points on the silhouette); per view, a detection whose points mostly
  disagree with the consensus (fewer than `min_view_inlier_frac` inliers: dlib's frontal model fitted
  to a near-profile view, or another face) counts as a failed detection and the points are
  re-triangulated without it.

  Args:
    landmarks2d: (V, N, 2) per-view detections, continuous pixel coordinates of each view's image.
    detected: (V,) or (V, N) bool, False where the view's detection failed (its rows are ignored).
    viewmats: (V, 4, 4) world-to-camera, OpenCV axes (e.g. `Camera.viewmat`).
    Ks: (V, 3, 3) intrinsics in pixels.
    inlier_px: reprojection distance below which a view supports a point (the RANSAC threshold;
      8 px suits ~250 px faces, scale it with the face size).
    min_views: inlier views needed for a valid point.
    min_view_inlier_frac: views with a smaller fraction of inlier points are rejected.
    refine_iters: Gauss-Newton iterations on the inliers.
    max_pairs: at most this many view pairs give RANSAC hypotheses (a fixed random subset of the
      V(V-1)/2; with half the views good, 400 pairs all miss the good ones with probability 0.75^400).

  Returns:
    Landmarks3D.
  """
  uv = np.asarray(landmarks2d, np.float64)
  V, N = uv.shape[:2]
  det = np.asarray(detected, bool)
  det = np.broadcast_to(det[:, None] if det.ndim == 1 else det, (V, N))
  det = det & np.isfinite(uv).all(-1)
  uv = np.where(det[..., None], uv, 0.0)
  P = projection_matrices(viewmats, Ks)
  if P.shape[0] != V:
    raise ValueError(f"cameras: expected {V} views to match landmarks2d, got {P.shape[0]}")
  X, inl, err = _triangulate(uv, det, P, inlier_px, refine_iters, max_pairs)
  frac = inl.sum(1) / np.maximum(det.sum(1), 1)
  views_used = det.any(1) & (frac >= min_view_inlier_frac)
  if (det.any(1) & ~views_used).any():
    X, inl, err = _triangulate(uv, det & views_used[:, None], P, inlier_px, refine_iters, max_pairs)
  valid = (inl.sum(0) >= min_views) & np.isfinite(X).all(-1)
  X = np.where(valid[:, None], X, np.nan)
  err = np.where(det, err, np.nan)
  return Landmarks3D(points=X.astype(np.float32), valid=valid, inliers=inl & valid[None],
                     reproj_error_px=err.astype(np.float32), views_used=views_used)


def triangulate_camera_landmarks(landmarks2d: np.ndarray, detected: np.ndarray, cameras: Camera,
                                 **kwargs) -> Landmarks3D:
  """`triangulate_landmarks` with a batched `Camera` (V views)."""
  return triangulate_landmarks(landmarks2d, detected, np.asarray(cameras.viewmat),
                               np.asarray(cameras.K), **kwargs)


def project_landmarks(points3d: jax.Array, camera: Camera, *, return_depth: bool = False):
  """Projects world-space landmarks into one or a batch of cameras.

  Args:
    points3d: (N, 3) float32 world-space points (NaN rows stay NaN).
    camera: Camera with batch shape (...) (viewmat (..., 4, 4), K (..., 3, 3)).
    return_depth: also return the camera-space depth.

  Returns:
    uv: (..., N, 2) float32 continuous pixel coordinates (pixel centres at integer + 0.5);
    depth: (..., N) float32 (z in camera space), when return_depth.
  """
  uv, depth = project_points(camera, jnp.asarray(points3d, jnp.float32))
  return (uv, depth) if return_depth else uv


def detect_landmarks_views(images: Sequence[np.ndarray], **analyze_kwargs
                           ) -> tuple[np.ndarray, np.ndarray]:
  """68 landmarks in each view; views without a usable face are marked undetected, not raised.

  Args:
    images: V images (H, W, 3) uint8 RGB.
    **analyze_kwargs: passed to `analyze_photo` (detector, min_face_px, ...).

  Returns:
    landmarks2d: (V, 68, 2) float32 (NaN where undetected).
    detected: (V,) bool.
  """
  lms = np.full((len(images), 68, 2), np.nan, np.float32)
  ok = np.zeros(len(images), bool)
  analyze_kwargs.setdefault("warn_multiple", False)
  for v, img in enumerate(images):
    try:
      lms[v] = analyze_photo(img, **analyze_kwargs).landmarks68
      ok[v] = True
    except FaceError:
      pass
  return lms, ok
