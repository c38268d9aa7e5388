"""Pinhole cameras in the OpenCV convention (x right, y down, z forward)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Camera:
  """One camera, or a batch of V cameras sharing an image size.

  Attributes:
    viewmat: (..., 4, 4) float32 world-to-camera, OpenCV axes.
    K: (..., 3, 3) float32 intrinsics in pixels (pixel centres at integer + 0.5).
    width, height: static image size in pixels.
  """

  viewmat: jax.Array
  K: jax.Array
  width: int = struct.field(pytree_node=False)
  height: int = struct.field(pytree_node=False)

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return self.viewmat.shape[:-2]

  def __len__(self) -> int:
    return self.viewmat.shape[0]

  def __getitem__(self, idx) -> "Camera":
    return Camera(self.viewmat[idx], self.K[idx], self.width, self.height)

  @property
  def camtoworld(self) -> jax.Array:
    return jnp.linalg.inv(self.viewmat)

  @property
  def center(self) -> jax.Array:
    """(..., 3) camera centre in world space."""
    R = self.viewmat[..., :3, :3]
    t = self.viewmat[..., :3, 3]
    return -jnp.einsum("...ji,...j->...i", R, t)
