"""Image metrics and the 3DGS photometric loss.

Images are float (..., H, W, C) in [0, max_val]; leading axes are a batch. Per-image metrics
return shape (...) (a scalar for one image). SSIM follows Wang et al. 2004 with the constants and
window of the 3DGS code (`utils/loss_utils.py`): an 11x11 Gaussian, sigma 1.5, C1 = (0.01 L)^2,
C2 = (0.03 L)^2. The 'same' variant zero-pads by 5 as 3DGS does (used in losses); 'valid' keeps
only windows fully inside the image (the textbook / scikit-image figure).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """(size,) float64 normalised 1D Gaussian; the 2D SSIM window is its outer product."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
  return g / g.sum()


def _batch(x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
  """(..., H, W, C) -> (B, H, W, C) and the leading shape."""
  lead = x.shape[:-3]
  return x.reshape((-1,) + x.shape[-3:]), lead


def _blur(x: jax.Array, window: np.ndarray, padding: str) -> jax.Array:
  """Separable depthwise filter of (B, H, W, C) with zero 'SAME' padding or 'VALID'."""
  c = x.shape[-1]
  k = jnp.asarray(window, x.dtype)
  dn = ("NHWC", "HWIO", "NHWC")
  pad = padding.upper()
  x = lax.conv_general_dilated(x, jnp.tile(k[:, None, None, None], (1, 1, 1, c)), (1, 1), pad,
                               dimension_numbers=dn, feature_group_count=c)
  return lax.conv_general_dilated(x, jnp.tile(k[None, :, None, None], (1, 1, 1, c)), (1, 1), pad,
                                  dimension_numbers=dn, feature_group_count=c)


def ssim_map(a: jax.Array, b: jax.Array, *, max_val: float = 1.0, window_size: int = 11,
             sigma: float = 1.5, padding: str = "same") -> jax.Array:
  """Per-pixel SSIM.

  Args:
    a, b: (..., H, W, C) float images in [0, max_val].
    max_val: dynamic range L.
    window_size, sigma: Gaussian window (3DGS: 11, 1.5).
    padding: 'same' (zero padding, output (..., H, W, C), as 3DGS) or 'valid'
      (output (..., H - window_size + 1, W - window_size + 1, C)).

  Returns:
    SSIM map, dtype of the inputs.
  """
  if padding not in ("same", "valid"):
    raise ValueError(f"ssim: padding must be 'same' or 'valid', got {padding!r}")
  if a.shape != b.shape:
    raise ValueError(f"ssim: image shapes differ: {a.shape} vs {b.shape}")
  if padding == "valid" and min(a.shape[-3:-1]) < window_size:  # static shapes: raised at trace time, not a NaN
    raise ValueError(f"ssim: padding='valid' needs images of at least {window_size}x{window_size} px (the window), "
                     f"got {a.shape[-2]}x{a.shape[-3]}; use ssim_padding='same' (GuidanceConfig, FitConfig) for "
                     "smaller views")
  x, lead = _batch(a)
  y, _ = _batch(b)
  w = gaussian_window(window_size, sigma)
  mu_x, mu_y = _blur(x, w, padding), _blur(y, w, padding)
  sxx = _blur(x * x, w, padding) - mu_x ** 2
  syy = _blur(y * y, w, padding) - mu_y ** 2
  sxy = _blur(x * y, w, padding) - mu_x * mu_y
  c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
  s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
  return s.reshape(lead + s.shape[1:])


def _masked_mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Mean of (..., H, W, C) over H, W, C, weighting pixels by mask (..., H, W) or (..., H, W, 1)."""
  if mask is None:
    return jnp.mean(x, axis=(-3, -2, -1))
  m = jnp.asarray(mask, x.dtype)
  if m.ndim == x.ndim - 1:
    m = m[..., None]
  m = jnp.broadcast_to(m, x.shape[:-1] + (1,))
  # The eps keeps an empty mask at loss 0 instead of NaN (e.g. a view that misses the head).
  return jnp.sum(x * m, axis=(-3, -2, -1)) / (jnp.sum(m, axis=(-3, -2, -1)) * x.shape[-1] + 1e-8)


def ssim(a: jax.Array, b: jax.Array, *, max_val: float = 1.0, window_size: int = 11,
         sigma: float = 1.5, padding: str = "same", mask: jax.Array | None = None) -> jax.Array:
  """Mean SSIM per image.

  Args:
    a, b: (..., H, W, C) float images in [0, max_val].
    padding: 'same' (3DGS, loss) or 'valid' (textbook).
    mask: optional (..., H, W[, 1]) pixel weights ('same' only).

  Returns:
    (...) float SSIM, 1 for identical images.
  """
  if mask is not None and padding != "same":
    raise ValueError("ssim: a mask needs padding='same' (the map must cover every pixel)")
  return _masked_mean(ssim_map(a, b, max_val=max_val, window_size=window_size, sigma=sigma,
                               padding=padding), mask)


def l1(a: jax.Array, b: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean absolute error per image: (..., H, W, C) x2 [, mask (..., H, W[, 1])] -> (...)."""
  return _masked_mean(jnp.abs(a - b), mask)


def mse(a: jax.Array, b: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean squared error per image: (..., H, W, C) x2 [, mask] -> (...)."""
  return _masked_mean((a - b) ** 2, mask)


def psnr(a: jax.Array, b: jax.Array, *, max_val: float = 1.0,
         mask: jax.Array | None = None) -> jax.Array:
  """Peak signal-to-noise ratio per image in dB: 10 log10(max_val^2 / MSE); inf if identical."""
  return 10.0 * jnp.log10(max_val ** 2 / mse(a, b, mask))


def photometric_loss(pred: jax.Array, target: jax.Array, lambda_dssim: float = 0.2,
                     mask: jax.Array | None = None, padding: str = "same") -> jax.Array:
  """The 3DGS training loss (1 - lambda) L1 + lambda (1 - SSIM), averaged over the batch.

  Args:
    pred, target: (..., H, W, C) float images in [0, 1].
    lambda_dssim: weight of the D-SSIM term (3DGS: 0.2).
    mask: optional (..., H, W[, 1]) pixel weights, e.g. a foreground mask.
    padding: SSIM padding, 'same' (3DGS) or 'valid' (the official SplatShot refit's fused SSIM).

  Returns:
    scalar loss.
  """
  l = (1.0 - lambda_dssim) * l1(pred, target, mask)
  l = l + lambda_dssim * (1.0 - ssim(pred, target, padding=padding, mask=mask))
  return jnp.mean(l)
