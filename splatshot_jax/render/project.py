"""EWA projection of 3D Gaussians to the image plane, and SH colour.

Shared by the tile rasterizer (`rasterize.py`) and the dense reference (`dense.py`) so that the
two can only differ in how they composite. Plain JAX: its gradient is ordinary autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from splatshot_jax.cameras import Camera
from splatshot_jax.gaussians import Gaussians

# Real SH basis constants, same values and sign convention as 3DGS / gsplat.
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)

# Alpha below which a Gaussian is skipped while compositing (3DGS rule).
ALPHA_MIN = 1.0 / 255.0


@struct.dataclass
class Projected:
  """Per-Gaussian 2D quantities for one camera.

  Attributes:
    means2d: (N, 2) float, pixel coordinates (x right, y down; pixel centres at integer + 0.5).
    conics: (N, 3) float, upper triangle (a, b, c) of the inverse 2D covariance [[a, b], [b, c]].
    depths: (N,) float, camera-space z.
    opacities: (N,) float, sigmoid(opacity_logits).
    radii: (N,) int32, opacity-aware screen radius in pixels; 0 where culled. Beyond it α < 1/255.
    valid: (N,) bool, in front of the near plane, positive-definite 2D covariance, o ≥ 1/255.
      (Culling against the image rectangle is done by the binning, from `radii`.)
  """

  means2d: jax.Array
  conics: jax.Array
  depths: jax.Array
  opacities: jax.Array
  radii: jax.Array
  valid: jax.Array


def quat_to_rotmat(quats: jax.Array) -> jax.Array:
  """(N, 4) quaternions (w, x, y, z), any norm -> (N, 3, 3) rotation matrices."""
  q = quats / jnp.linalg.norm(quats, axis=-1, keepdims=True)
  w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
  rows = [
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
  ]
  return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def covariances3d(log_scales: jax.Array, quats: jax.Array) -> jax.Array:
  """Σ = R S Sᵀ Rᵀ. log_scales (N, 3), quats (N, 4) -> (N, 3, 3)."""
  M = quat_to_rotmat(quats) * jnp.exp(log_scales)[..., None, :]
  return M @ jnp.swapaxes(M, -1, -2)


def project_gaussians(
    gaussians: Gaussians, camera: Camera, *, near_plane: float = 0.01, eps2d: float = 0.3
) -> Projected:
  """EWA splatting: Σ' = J W Σ Wᵀ Jᵀ + eps2d·I for a single (unbatched) camera.

  Args:
    gaussians: N Gaussians (any float dtype; output follows it).
    camera: one Camera; viewmat (4, 4), K (3, 3).
    near_plane: Gaussians with camera z < near_plane are culled.
    eps2d: low-pass filter added to the 2D covariance, in px² (3DGS uses 0.3).
  Returns:
    Projected.
  """
  dtype = gaussians.means.dtype
  R = camera.viewmat[:3, :3].astype(dtype)
  t = camera.viewmat[:3, 3].astype(dtype)
  K = camera.K.astype(dtype)
  fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

  p = gaussians.means @ R.T + t  # (N, 3) camera space
  z = p[:, 2]
  in_front = z > near_plane
  # Gaussians behind the camera are culled anyway; a safe z keeps their (discarded) maths finite
  # so no NaN leaks into the gradient through jnp.where.
  zs = jnp.where(in_front, z, 1.0)
  x, y = p[:, 0], p[:, 1]

  # Clamp the point used for the Jacobian to 1.3× the field of view (3DGS/gsplat): the affine
  # approximation explodes for points far outside the frustum.
  lim_xp = (camera.width - cx) / fx + 0.3 * camera.width / (2 * fx)
  lim_xn = cx / fx + 0.3 * camera.width / (2 * fx)
  lim_yp = (camera.height - cy) / fy + 0.3 * camera.height / (2 * fy)
  lim_yn = cy / fy + 0.3 * camera.height / (2 * fy)
  tx = zs * jnp.clip(x / zs, -lim_xn, lim_xp)
  ty = zs * jnp.clip(y / zs, -lim_yn, lim_yp)
  zero = jnp.zeros_like(zs)
  J = jnp.stack([
      jnp.stack([fx / zs, zero, -fx * tx / (zs * zs)], -1),
      jnp.stack([zero, fy / zs, -fy * ty / (zs * zs)], -1),
  ], -2)  # (N, 2, 3)

  cov3d = covariances3d(gaussians.log_scales, gaussians.quats)
  JW = J @ R  # (N, 2, 3)
  cov2d = JW @ cov3d @ jnp.swapaxes(JW, -1, -2)
  a = cov2d[:, 0, 0] + eps2d
  b = cov2d[:, 0, 1]
  c = cov2d[:, 1, 1] + eps2d
  det = a * c - b * b
  pos_def = det > 0
  det_s = jnp.where(pos_def, det, 1.0)
  conics = jnp.stack([c / det_s, -b / det_s, a / det_s], -1)

  means2d = jnp.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
  opacities = jax.nn.sigmoid(gaussians.opacity_logits)
  valid = in_front & pos_def & (opacities >= ALPHA_MIN)

  # Opacity-aware extent: o·exp(-½ dᵀΣ'⁻¹d) < 1/255 once |d|² > 2 ln(255 o) λ_max, so tiles beyond
  # this radius receive α < 1/255 from this Gaussian and skipping them is exact.
  sg = jax.lax.stop_gradient
  mid = 0.5 * (sg(a) + sg(c))
  lam_max = mid + jnp.sqrt(jnp.maximum(mid * mid - sg(det), 0.0))
  log_term = 2.0 * jnp.log(jnp.maximum(255.0 * sg(opacities), 1.0))
  radius_f = jnp.ceil(jnp.sqrt(log_term * lam_max))
  # Clip before the int cast: near-plane Gaussians can have astronomically large extents.
  radius = jnp.where(valid, jnp.clip(radius_f, 0, 1 << 20), 0).astype(jnp.int32)
  return Projected(means2d=means2d, conics=conics, depths=z, opacities=opacities, radii=radius,
                   valid=valid)


def sh_band_mask(sh_degree, num_coeffs: int, dtype) -> jax.Array | None:
  """(K,) mask keeping bands l ≤ sh_degree when sh_degree is traced (progressive SH); else None."""
  if sh_degree is None or isinstance(sh_degree, int):
    return None
  band = jnp.floor(jnp.sqrt(jnp.arange(num_coeffs, dtype=jnp.float32)))
  return (band <= sh_degree).astype(dtype)


def eval_sh(sh: jax.Array, dirs: jax.Array, degree: int) -> jax.Array:
  """Real SH evaluation, 3DGS convention.

  Args:
    sh: (N, K, 3) coefficients, K ≥ (degree + 1)².
    dirs: (N, 3) unit view directions (world space, from camera centre to the Gaussian).
    degree: static int in 0..3.
  Returns:
    (N, 3) raw SH value (before the +0.5 offset).
  """
  out = SH_C0 * sh[:, 0]
  if degree < 1:
    return out
  x, y, z = dirs[:, 0:1], dirs[:, 1:2], dirs[:, 2:3]
  out = out - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
  if degree < 2:
    return out
  xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
  out = (out + SH_C2[0] * xy * sh[:, 4] + SH_C2[1] * yz * sh[:, 5]
         + SH_C2[2] * (2 * zz - xx - yy) * sh[:, 6] + SH_C2[3] * xz * sh[:, 7]
         + SH_C2[4] * (xx - yy) * sh[:, 8])
  if degree < 3:
    return out
  out = (out + SH_C3[0] * y * (3 * xx - yy) * sh[:, 9] + SH_C3[1] * xy * z * sh[:, 10]
         + SH_C3[2] * y * (4 * zz - xx - yy) * sh[:, 11]
         + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
         + SH_C3[4] * x * (4 * zz - xx - yy) * sh[:, 13] + SH_C3[5] * z * (xx - yy) * sh[:, 14]
         + SH_C3[6] * x * (xx - 3 * yy) * sh[:, 15])
  return out


def sh_colors(gaussians: Gaussians, camera: Camera, sh_degree=None) -> jax.Array:
  """View-dependent colour: SH on dir = (mean − camera centre)/‖·‖, +0.5, clamped at 0.

  Args:
    gaussians: N Gaussians with sh (N, K, 3).
    camera: one Camera.
    sh_degree: None (use all of sh), a static int ≤ the stored degree, or a traced int scalar
      (progressive SH during a fit: higher bands are masked to zero, evaluated up to the stored degree).
  Returns:
    (N, 3) colours ≥ 0.
  """
  dtype = gaussians.means.dtype
  stored = gaussians.sh_degree
  sh = gaussians.sh
  mask = sh_band_mask(sh_degree, sh.shape[1], dtype)
  if mask is not None:
    degree = stored
    sh = sh * mask[None, :, None]
  else:
    degree = stored if sh_degree is None else min(int(sh_degree), stored)
  dirs = gaussians.means - camera.center.astype(dtype)
  # Guard the norm's gradient at a Gaussian sitting exactly on the camera centre.
  norm = jnp.sqrt(jnp.maximum(jnp.sum(dirs * dirs, -1, keepdims=True), 1e-20))
  return jnp.maximum(eval_sh(sh, dirs / norm, degree) + 0.5, 0.0)
