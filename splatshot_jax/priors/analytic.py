"""The exact optimal denoiser of a finite image set: a diffusion "model" with no weights.

For data x_1..x_M and the forward process z = alpha_t x + sigma_t eps (math-notes, "The analytic prior"):

  p(i | z)  = softmax_i( -||z - alpha_t x_i||^2 / (2 sigma_t^2) )      (posterior over the set)
  E[x | z]  = sum_i p(i | z) x_i                                      (the MMSE denoiser)
  eps(z, t) = (z - alpha_t E[x | z]) / sigma_t

This is what a perfectly trained diffusion model outputs on that set: it memorises. Sampling views independently
from it picks a member per view; with several subjects in the set, different views pick different subjects,
which is exactly the 3D inconsistency the SplatShot feedback has to repair. It lives in pixel space (identity
encode/decode), so the step's decoder VJP is the identity and everything runs on a CPU in seconds.

Conditioning restricts the set per view (e.g. only the images taken from that view's camera), with a boolean mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class AnalyticCond:
  """Per-view conditioning of the analytic prior.

  Attributes:
    mask: (V, M) bool; mask[v, i] says member i of the set may explain view v. Every row needs a True.
  """

  mask: jax.Array


@struct.dataclass
class AnalyticPrior:
  """Exact denoiser of the set `images` under the DDPM schedule `alphas_cumprod`.

  Attributes:
    images: (M, H, W, 3) float32, the set, in [0, 1]; latents are these images themselves.
    alphas_cumprod: (T,) float32, abar_t of the diffusion schedule (indexed by train timestep).
  """

  images: jax.Array
  alphas_cumprod: jax.Array

  def alpha_sigma(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    abar = self.alphas_cumprod[t]
    return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)

  def posterior(self, z: jax.Array, t: jax.Array, cond: AnalyticCond) -> jax.Array:
    """p(i | z_v) for every view: (V, h, w, c), () int32, cond -> (V, M) float."""
    alpha, sigma = self.alpha_sigma(t)
    x = self.images.reshape(self.images.shape[0], -1).astype(z.dtype)  # (M, D)

    def one_view(zv, mask):
      # Direct differences, not the ||z||^2 - 2 z.x + ||x||^2 expansion: at small sigma the logits are ~1e6 and
      # the expansion's cancellation in float32 would scramble the near-one-hot posterior.
      d2 = jnp.sum(jnp.square(zv.reshape(1, -1) - alpha * x), axis=-1)  # (M,)
      logits = jnp.where(mask, -d2 / (2.0 * jnp.square(sigma)), -jnp.inf)
      return jax.nn.softmax(logits)  # log-space normalisation (max-subtracted)

    return jax.vmap(one_view)(z, cond.mask)

  def x0_mean(self, z: jax.Array, t: jax.Array, cond: AnalyticCond) -> jax.Array:
    """E[x | z_v] per view: (V, h, w, c)."""
    p = self.posterior(z, t, cond)
    x = self.images.reshape(self.images.shape[0], -1).astype(z.dtype)
    return (p @ x).reshape(z.shape)

  def eps(self, z: jax.Array, t: jax.Array, cond: AnalyticCond) -> jax.Array:
    """Noise prediction (V, h, w, c) from latents (V, h, w, c) at train timestep t (() int32)."""
    alpha, sigma = self.alpha_sigma(t)
    return (z - alpha * self.x0_mean(z, t, cond)) / sigma

  def encode(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Identity: (V, H, W, 3) -> (V, H, W, 3); rng unused (there is no posterior to sample)."""
    del rng
    return images

  def decode(self, latents: jax.Array) -> jax.Array:
    """Identity: (V, H, W, 3) -> (V, H, W, 3). Not clipped, so its VJP is exactly the identity."""
    return latents


def make_analytic_prior(images, alphas_cumprod) -> AnalyticPrior:
  """Builds the prior, checking the inputs at the edge.

  Args:
    images: (M, H, W, 3) float array in [0, 1] (or uint8, converted).
    alphas_cumprod: (T,) float array, decreasing, in (0, 1].
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"analytic prior: images must be (M, H, W, 3), got shape {images.shape}")
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255.0
  acp = np.asarray(alphas_cumprod)
  if acp.ndim != 1 or not np.all((acp > 0) & (acp <= 1)):
    raise ValueError("analytic prior: alphas_cumprod must be a (T,) array in (0, 1]")
  return AnalyticPrior(images=jnp.asarray(images, jnp.float32), alphas_cumprod=jnp.asarray(acp, jnp.float32))


def same_view_mask(view_of_member, views) -> jax.Array:
  """Restriction "only images of this view's camera": (M,) int, (V,) int -> (V, M) bool."""
  return jnp.asarray(views)[:, None] == jnp.asarray(view_of_member)[None, :]
