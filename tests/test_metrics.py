"""Tests for splatshot_jax.metrics against an independent float64 loop implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splatshot_jax import metrics


def _ref_ssim_map(a, b, padding, size=11, sigma=1.5, max_val=1.0):
  """Direct 2D-window SSIM with explicit loops over window offsets (no separable filter)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  r = size // 2
  g = np.exp(-((np.arange(size) - r) ** 2) / (2 * sigma ** 2))
  w2 = np.outer(g, g) / np.outer(g, g).sum()
  h, w = a.shape[:2]

  def filt(x):
    if padding == "same":  # zero padding, as F.conv2d(padding=5) in 3DGS
      x = np.pad(x, ((r, r), (r, r), (0, 0)))
      oh, ow = h, w
    else:
      oh, ow = h - 2 * r, w - 2 * r
    out = np.zeros((oh, ow, x.shape[2]))
    for dy in range(size):
      for dx in range(size):
        out += w2[dy, dx] * x[dy:dy + oh, dx:dx + ow]
    return out

  mx, my = filt(a), filt(b)
  sxx, syy, sxy = filt(a * a) - mx ** 2, filt(b * b) - my ** 2, filt(a * b) - mx * my
  c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
  return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_ssim_matches_reference(padding):
  rs = np.random.default_rng(0)
  a = rs.uniform(size=(23, 19, 3)).astype(np.float32)
  b = np.clip(a + rs.normal(scale=0.1, size=a.shape), 0, 1).astype(np.float32)
  ref = _ref_ssim_map(a, b, padding)
  got = np.asarray(metrics.ssim_map(jnp.asarray(a), jnp.asarray(b), padding=padding))
  assert got.shape == ref.shape
  # Measured 2026-12-01 (4 seeds): map max abs 1.2e-6-1.4e-6, mean 0.9e-7-4.0e-7; bounds ~15x / ~5x.
  np.testing.assert_allclose(got, ref, atol=2e-5)
  np.testing.assert_allclose(float(metrics.ssim(a, b, padding=padding)), ref.mean(), atol=2e-6)


def test_ssim_batched_and_identity():
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 3, 16, 16, 3))
  y = jax.random.uniform(jax.random.PRNGKey(1), (2, 3, 16, 16, 3))
  s = metrics.ssim(x, y)
  assert s.shape == (2, 3)
  np.testing.assert_allclose(np.asarray(s[1, 2]), np.asarray(metrics.ssim(x[1, 2], y[1, 2])), atol=1e-6)
  np.testing.assert_allclose(np.asarray(metrics.ssim(x, x)), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(metrics.ssim(x, x, padding="valid")), 1.0, atol=1e-5)
  assert float(metrics.ssim(x[0, 0], 1 - x[0, 0])) < 0.0  # anticorrelated noise


def test_psnr_l1_closed_form():
  a = jnp.full((8, 8, 3), 0.25)
  b = a + 0.1
  np.testing.assert_allclose(float(metrics.psnr(a, b)), 20.0, atol=1e-4)  # 10 log10(1 / 0.01)
  np.testing.assert_allclose(float(metrics.psnr(a, b, max_val=2.0)), 10 * np.log10(400.0), atol=1e-4)
  np.testing.assert_allclose(float(metrics.l1(a, b)), 0.1, atol=1e-6)
  assert np.isinf(float(metrics.psnr(a, a)))
  mask = jnp.zeros((8, 8)).at[:4].set(1.0)
  c = b.at[4:].set(0.9)  # errors outside the mask must not count
  np.testing.assert_allclose(float(metrics.l1(a, c, mask)), 0.1, atol=1e-6)


def test_photometric_loss_and_gradient():
  k1, k2 = jax.random.split(jax.random.PRNGKey(3))
  pred = jax.random.uniform(k1, (12, 12, 3))
  target = jax.random.uniform(k2, (12, 12, 3))
  loss = metrics.photometric_loss(pred, target)
  expect = 0.8 * metrics.l1(pred, target) + 0.2 * (1 - metrics.ssim(pred, target))
  np.testing.assert_allclose(float(loss), float(expect), rtol=1e-6)
  assert float(metrics.photometric_loss(target, target)) == pytest.approx(0.0, abs=1e-6)
  np.testing.assert_allclose(
      float(metrics.photometric_loss(pred, target, mask=jnp.ones((12, 12)))), float(loss), rtol=1e-5)
  g = jax.grad(lambda p: metrics.photometric_loss(p, target))(pred)
  assert g.shape == pred.shape and bool(jnp.all(jnp.isfinite(g)))
  # Central finite difference on one pixel (smooth part of |.|: pred != target there).
  d = jnp.zeros_like(pred).at[5, 6, 1].set(1e-2)
  f = lambda p: float(metrics.photometric_loss(p, target))
  fd = (f(pred + d) - f(pred - d)) / 2e-2
  np.testing.assert_allclose(float(g[5, 6, 1]), fd, rtol=2e-2, atol=1e-5)
  # SSIM's gradient vanishes at its maximum (identical images).
  gs = jax.grad(lambda p: metrics.ssim(p, target))(target)
  assert float(jnp.abs(gs).max()) < 1e-4
