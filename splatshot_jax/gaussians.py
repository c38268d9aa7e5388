"""3D Gaussians as a pytree.

The parameterisation is the usual 3DGS one: activations are applied at render time so that
optimisers see unconstrained values (log-scales, opacity logits, unnormalised quaternions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SH_C0 = 0.28209479177387814  # Y_0^0; colour = SH_C0 * f_dc + 0.5


def num_sh_coeffs(degree: int) -> int:
  return (degree + 1) ** 2


@struct.dataclass
class Gaussians:
  """A set of N Gaussians.

  Attributes:
    means: (N, 3) float32, world space.
    log_scales: (N, 3) float32, log of per-axis standard deviations (world units).
    quats: (N, 4) float32, rotation quaternion (w, x, y, z); normalised at render time.
    opacity_logits: (N,) float32, opacity = sigmoid(logit).
    sh: (N, K, 3) float32, SH coefficients, K = (degree + 1)**2; sh[:, 0] is the DC term.
  """

  means: jax.Array
  log_scales: jax.Array
  quats: jax.Array
  opacity_logits: jax.Array
  sh: jax.Array

  @property
  def num(self) -> int:
    return self.means.shape[0]

  @property
  def sh_degree(self) -> int:
    return int(round(self.sh.shape[1] ** 0.5)) - 1

  @property
  def scales(self) -> jax.Array:
    return jnp.exp(self.log_scales)

  @property
  def opacities(self) -> jax.Array:
    return jax.nn.sigmoid(self.opacity_logits)

  @property
  def rotations(self) -> jax.Array:
    """(N, 4) unit quaternions."""
    return self.quats / jnp.linalg.norm(self.quats, axis=-1, keepdims=True)


def rgb_to_sh_dc(rgb: jax.Array) -> jax.Array:
  """Inverse of the DC colour map: rgb = SH_C0 * dc + 0.5."""
  return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: jax.Array) -> jax.Array:
  return SH_C0 * dc + 0.5


# ----------------------------------------------------------------------------------------------
# Initialisation.


def _inverse_sigmoid(p: float) -> float:
  return float(np.log(p / (1.0 - p)))


def _brute_knn_sqdist(points: np.ndarray, queries: np.ndarray, k: int,
                      chunk: int = 256) -> np.ndarray:
  """Exact squared distances to the k nearest *other* points, by brute force.

  Args:
    points: (N, 3) float64, all points.
    queries: (Q,) int64 indices into `points` of the points to query.
    k: neighbours per query (k < N).
    chunk: queries per block; a block holds chunk * N float64 distances.

  Returns:
    (Q, k) float64 squared distances, ascending.
  """
  out = np.empty((len(queries), k), np.float64)
  sq = np.einsum("ij,ij->i", points, points)
  for s in range(0, len(queries), chunk):
    idx = queries[s:s + chunk]
    q = points[idx]
    d2 = sq[idx, None] + sq[None, :] - 2.0 * q @ points.T
    d2[np.arange(len(idx)), idx] = np.inf  # the query itself is not its own neighbour
    part = np.partition(d2, k - 1, axis=1)[:, :k]
    out[s:s + chunk] = np.sort(np.maximum(part, 0.0), axis=1)
  return out


def knn_sqdist(points: np.ndarray, k: int = 3, *, max_per_cell: int = 48,
               chunk: int = 2048) -> np.ndarray:
  """Exact squared distances from every point to its k nearest other points.

  A uniform grid with cell size h makes every neighbour closer than h lie in the 27 cells around
  a point, so a grid search is exact wherever the k-th distance it finds is <= h; the few points
  where that fails (sparse outliers, over-full cells) fall back to brute force. This keeps 100k
  points to a few seconds on a CPU without scipy's KD-tree.

  Args:
    points: (N, 3) float, N >= 2.
    k: number of neighbours; clipped to N - 1.
    max_per_cell: cells holding more points than this are left to the brute-force fallback.
    chunk: points per vectorised block of the grid search.

  Returns:
    (N, k') float64 squared distances, ascending, k' = min(k, N - 1).
  """
  pts = np.asarray(points, np.float64)
  n = pts.shape[0]
  k = min(k, n - 1)
  if k < 1:
    raise ValueError(f"knn_sqdist needs at least 2 points, got {n}")
  if n <= 4096:
    return _brute_knn_sqdist(pts, np.arange(n), k)

  # Cell size: twice the median k-th neighbour distance of a random sample, so most points
  # find their k neighbours inside the 3x3x3 block and cells stay small.
  rs = np.random.default_rng(0)
  sample = rs.choice(n, size=512, replace=False)
  h = 2.0 * float(np.sqrt(np.median(_brute_knn_sqdist(pts, sample, k)[:, -1])))
  if not np.isfinite(h) or h <= 0.0:  # many duplicates: every grid cell would be one point
    h = float(np.max(np.ptp(pts, axis=0))) / 64.0 or 1.0
  cell = np.floor((pts - pts.min(0)) / h).astype(np.int64) + 1  # +1: offsets of -1 stay >= 0
  dims = cell.max(0) + 2
  key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
  order = np.argsort(key, kind="stable")
  skey = key[order]
  offsets = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(27, 3)
  off_key = (offsets[:, 0] * dims[1] + offsets[:, 1]) * dims[2] + offsets[:, 2]

  out = np.full((n, k), np.inf)
  redo = np.zeros(n, bool)
  # Queries go in cell order so that a block's padded width (its fullest cell) stays small.
  for s in range(0, n, chunk):
    ids = order[s:s + chunk]
    nkey = key[ids, None] + off_key[None, :]  # (B, 27)
    start = np.searchsorted(skey, nkey, "left")
    count = np.searchsorted(skey, nkey, "right") - start
    full = count.max(1) > max_per_cell
    slot = np.arange(min(int(count.max()), max_per_cell))
    cand = start[..., None] + slot  # (B, 27, M)
    valid = slot < count[..., None]
    cand = order[np.minimum(cand, n - 1)].reshape(len(ids), -1)
    valid = valid.reshape(len(ids), -1) & (cand != ids[:, None])
    d2 = np.sum((pts[cand] - pts[ids, None, :]) ** 2, -1)
    d2 = np.where(valid, d2, np.inf)
    best = np.sort(np.partition(d2, k - 1, axis=1)[:, :k], axis=1)
    out[ids] = best
    redo[ids] = full | ~(best[:, -1] <= h * h)
  bad = np.nonzero(redo)[0]
  if len(bad):
    out[bad] = _brute_knn_sqdist(pts, bad, k)
  return out


def init_from_points(points, colors=None, *, sh_degree: int = 3, init_opacity: float = 0.1,
                     missing_colors: str = "grey", rng: jax.Array | None = None) -> Gaussians:
  """3DGS initialisation from a point cloud (Kerbl et al. 2023, `create_from_pcd`).

  Each point becomes an isotropic Gaussian whose standard deviation is sqrt of the mean squared
  distance to its 3 nearest neighbours (clamped below at 1e-7, as `distCUDA2` does), with identity
  rotation, opacity `init_opacity`, DC colour from `colors` and zero higher-order SH.

  Args:
    points: (N, 3) float, world space.
    colors: (N, 3) RGB, float in [0, 1] or uint8 in [0, 255]; None or all zero (as in point clouds
      that carry no colour) means `missing_colors` decides.
    sh_degree: SH degree of the result, K = (sh_degree + 1)**2 coefficients.
    init_opacity: initial opacity in (0, 1); 3DGS uses 0.1.
    missing_colors: "grey" (RGB 0.5, i.e. DC = 0) or "random" (uniform RGB, needs `rng`).
    rng: jax PRNG key, used only for random colours.

  Returns:
    Gaussians with N entries, float32.
  """
  pts = np.asarray(points, np.float64)
  if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] < 1:
    raise ValueError(f"init_from_points: points must be (N, 3) with N >= 1, got {pts.shape}")
  if not 0.0 < init_opacity < 1.0:
    raise ValueError(f"init_from_points: init_opacity must be in (0, 1), got {init_opacity}")
  n = pts.shape[0]
  if colors is not None:
    colors = np.asarray(colors)
    if colors.shape != (n, 3):
      raise ValueError(f"init_from_points: colors must be ({n}, 3), got {colors.shape}")
    colors = colors.astype(np.float32) / 255.0 if colors.dtype == np.uint8 else colors
    if not np.any(colors):
      colors = None
  if colors is None:
    if missing_colors == "grey":
      colors = np.full((n, 3), 0.5, np.float32)
    elif missing_colors == "random":
      if rng is None:
        raise ValueError("init_from_points: missing_colors='random' needs rng")
      colors = jax.random.uniform(rng, (n, 3), jnp.float32)
    else:
      raise ValueError(f"init_from_points: missing_colors must be 'grey' or 'random', "
                       f"got {missing_colors!r}")

  if n >= 2:
    dist2 = np.maximum(knn_sqdist(pts, 3).mean(1), 1e-7)
  else:
    dist2 = np.full((n,), 1e-7)
  log_scales = np.repeat(0.5 * np.log(dist2)[:, None], 3, axis=1)
  quats = np.zeros((n, 4), np.float32)
  quats[:, 0] = 1.0
  sh = jnp.zeros((n, num_sh_coeffs(sh_degree), 3), jnp.float32)
  sh = sh.at[:, 0].set(rgb_to_sh_dc(jnp.asarray(colors, jnp.float32)))
  return Gaussians(
      means=jnp.asarray(pts, jnp.float32),
      log_scales=jnp.asarray(log_scales, jnp.float32),
      quats=jnp.asarray(quats),
      opacity_logits=jnp.full((n,), _inverse_sigmoid(init_opacity), jnp.float32),
      sh=sh,
  )


def random_gaussians(rng: jax.Array, n: int, *, sh_degree: int = 3, extent: float = 1.0,
                     scale_range: tuple[float, float] = (0.01, 0.1),
                     opacity_range: tuple[float, float] = (0.3, 0.95),
                     sh_rest_std: float = 0.1) -> Gaussians:
  """Random Gaussians for tests and benchmarks.

  Args:
    rng: jax PRNG key.
    n: number of Gaussians.
    sh_degree: SH degree, K = (sh_degree + 1)**2.
    extent: means are uniform in [-extent, extent]^3.
    scale_range: per-axis standard deviations are log-uniform in this range.
    opacity_range: opacities are uniform in this range.
    sh_rest_std: std of the higher-order SH coefficients (DC gives RGB uniform in [0, 1]).

  Returns:
    Gaussians with n entries, float32, random (non-normalised) quaternions.
  """
  k_mean, k_scale, k_quat, k_op, k_dc, k_rest = jax.random.split(rng, 6)
  lo, hi = np.log(scale_range[0]), np.log(scale_range[1])
  op = jax.random.uniform(k_op, (n,), minval=opacity_range[0], maxval=opacity_range[1])
  kk = num_sh_coeffs(sh_degree)
  dc = rgb_to_sh_dc(jax.random.uniform(k_dc, (n, 1, 3)))
  rest = sh_rest_std * jax.random.normal(k_rest, (n, kk - 1, 3))
  return Gaussians(
      means=jax.random.uniform(k_mean, (n, 3), minval=-extent, maxval=extent),
      log_scales=jax.random.uniform(k_scale, (n, 3), minval=lo, maxval=hi),
      quats=jax.random.normal(k_quat, (n, 4)),
      opacity_logits=jnp.log(op) - jnp.log1p(-op),
      sh=jnp.concatenate([dc, rest], axis=1),
  )
