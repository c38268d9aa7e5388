"""3D Gaussians as a pytree.

The parameterisation is the usual 3DGS one: activations are applied at render time so that
optimisers see unconstrained values (log-scales, opacity logits, unnormalised quaternions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
