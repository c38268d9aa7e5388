"""Brute-force dense reference renderer: every pixel × every Gaussian, one global depth sort.

Same projection (shared code), same compositing rules as the tile rasterizer, no tiles, no
custom VJP: its gradient is plain autodiff. Memory is O(H·W·N): tests and small benchmarks only.
Float64-capable: pass float64 Gaussians under `jax.enable_x64(True)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from splatshot_jax.cameras import Camera
from splatshot_jax.gaussians import Gaussians
from splatshot_jax.render.composite import ALPHA_MAX, T_MIN
from splatshot_jax.render.project import ALPHA_MIN, project_gaussians, sh_colors


def render_dense(
    gaussians: Gaussians,
    camera: Camera,
    *,
    background=(0.0, 0.0, 0.0),
    sh_degree=None,
    features: jax.Array | None = None,
    render_rgb: bool = True,
    near_plane: float = 0.01,
    eps2d: float = 0.3,
    alpha_max: float = ALPHA_MAX,
) -> dict[str, jax.Array | None]:
  """Reference render of one camera.

  Args: as `render` (tile settings do not exist here).
  Returns:
    dict with rgb (H, W, 3) or None, alpha (H, W), depth (H, W), features (H, W, C) or None.
  """
  dtype = gaussians.means.dtype
  proj = project_gaussians(gaussians, camera, near_plane=near_plane, eps2d=eps2d)
  channels = []
  if render_rgb:
    channels.append(sh_colors(gaussians, camera, sh_degree))
  channels.append(proj.depths[:, None])
  if features is not None:
    channels.append(features.astype(dtype))
  feats = jnp.concatenate(channels, -1)

  order = jnp.argsort(jax.lax.stop_gradient(proj.depths))
  mu, con = proj.means2d[order], proj.conics[order]
  op, valid, feats = proj.opacities[order], proj.valid[order], feats[order]

  H, W = camera.height, camera.width
  i, j = jnp.meshgrid(jnp.arange(H), jnp.arange(W), indexing="ij")
  px = (j.reshape(-1) + 0.5).astype(dtype)[:, None]
  py = (i.reshape(-1) + 0.5).astype(dtype)[:, None]
  dx, dy = px - mu[None, :, 0], py - mu[None, :, 1]  # (HW, N)
  power = -0.5 * (con[None, :, 0] * dx * dx + con[None, :, 2] * dy * dy) - con[None, :, 1] * dx * dy
  alpha = jnp.minimum(alpha_max, op[None] * jnp.exp(power))
  ok = valid[None] & (power <= 0) & (alpha >= ALPHA_MIN)
  a = jnp.where(ok, alpha, 0)
  # Stop before the Gaussian that would take T below T_MIN: T_incl is monotone, so the
  # contributing set is a prefix.
  contrib = jnp.cumprod(1 - a, axis=1) >= T_MIN
  a = jnp.where(contrib, a, 0)
  trans = jnp.cumprod(1 - a, axis=1)
  T_excl = jnp.concatenate([jnp.ones_like(trans[:, :1]), trans[:, :-1]], 1)
  image = ((a * T_excl) @ feats).reshape(H, W, -1)
  T_final = trans[:, -1].reshape(H, W)

  c, rgb = 0, None
  if render_rgb:
    rgb = image[..., :3] + T_final[..., None] * jnp.asarray(background, dtype)
    c = 3
  return dict(rgb=rgb, alpha=1 - T_final, depth=image[..., c],
              features=image[..., c + 1:] if features is not None else None)
