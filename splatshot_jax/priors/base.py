"""The interface between the SplatShot step and a diffusion model.

The step (`splatshot_jax.guidance`) never looks inside the prior: it calls `eps` for the noise prediction(s),
`decode` (and its VJP) to see x0 as images, and `encode` once at the start. Two priors implement it: Stable
Diffusion (`splatshot_jax.diffusion.denoiser`) and the exact denoiser of a finite image set
(`splatshot_jax.priors.analytic`), which makes the method measurable on a CPU.

A prior that is passed to a jitted function as an argument must be a pytree (e.g. a `flax.struct` dataclass whose
arrays are leaves and whose settings are `pytree_node=False`), so that its weights are jit inputs, not constants
baked into the compiled program.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax


@runtime_checkable
class Prior(Protocol):
  """What the SplatShot step needs from a diffusion model; all methods are batched over V views.

  Shapes: images (V, H, W, 3) float32 in [0, 1]; latents (V, h, w, c) float32 (h, w, c = H, W, 3 for a
  pixel-space prior; H/8, W/8, 4 for SD-1.5).
  """

  def eps(self, z: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
    """Noise prediction eps(z_t, t | cond).

    Args:
      z: (V, h, w, c) float32 noisy latents at train timestep t.
      t: () int32 train timestep in [0, T) (the same for all views).
      cond: a pytree with a leading V axis on its arrays (per-view conditioning: text/IP tokens, control maps,
        guidance settings; for the analytic prior, which members of the set each view may come from).
    Returns:
      (V, h, w, c) float32; classifier-free guidance, if any, is applied inside.
    """
    ...

  def encode(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """(V, H, W, 3) images in [0, 1] -> (V, h, w, c) latents (a sample of the posterior when rng is given)."""
    ...

  def decode(self, latents: jax.Array) -> jax.Array:
    """(V, h, w, c) latents -> (V, H, W, 3) images in [0, 1] (differentiable; the step takes its VJP)."""
    ...
