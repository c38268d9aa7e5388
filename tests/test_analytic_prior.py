"""The analytic prior against a float64 numpy brute force of the posterior-mean denoiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splatshot_jax.priors.analytic import AnalyticCond, make_analytic_prior, same_view_mask


def _scaled_linear_acp(T=1000, beta_start=0.00085, beta_end=0.012):
  betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
  return np.cumprod(1.0 - betas)


def _brute_force_eps(images, acp, z, t, mask):
  """Loops over views and members in float64: eps = (z - alpha sum_i p_i x_i) / sigma."""
  images = images.astype(np.float64)
  z = z.astype(np.float64)
  alpha, sigma = np.sqrt(acp[t]), np.sqrt(1.0 - acp[t])
  out = np.zeros_like(z)
  for v in range(z.shape[0]):
    members = [i for i in range(images.shape[0]) if mask[v, i]]
    logits = np.array([-np.sum((z[v] - alpha * images[i]) ** 2) / (2 * sigma**2) for i in members])
    p = np.exp(logits - logits.max())
    p /= p.sum()
    mean = sum(pi * images[i] for pi, i in zip(p, members))
    out[v] = (z[v] - alpha * mean) / sigma
  return out


@pytest.mark.parametrize("t", [999, 700, 481, 200, 21])
def test_eps_matches_float64_brute_force(t):
  rng = np.random.default_rng(t)
  M, V, H, W = 6, 3, 5, 4
  # Members close to each other so the posterior is not one-hot at most t (a soft, informative case).
  base = rng.uniform(0.2, 0.8, (1, H, W, 3))
  images = np.clip(base + 0.05 * rng.normal(size=(M, H, W, 3)), 0, 1).astype(np.float32)
  acp = _scaled_linear_acp()
  mask = rng.uniform(size=(V, M)) < 0.6
  mask[:, 0] = True  # every view keeps at least one member
  alpha, sigma = np.sqrt(acp[t]), np.sqrt(1 - acp[t])
  z = (alpha * images[rng.integers(0, M, V)] + sigma * rng.normal(size=(V, H, W, 3))).astype(np.float32)

  prior = make_analytic_prior(images, acp)
  got = np.asarray(prior.eps(jnp.asarray(z), jnp.int32(t), AnalyticCond(jnp.asarray(mask))))
  want = _brute_force_eps(images, acp, z, t, mask)
  # eps = (z - alpha E[x|z]) / sigma: float32 rounding of E[x|z] is amplified by alpha/sigma at small t.
  np.testing.assert_allclose(got, want, atol=2e-5 * max(1.0, alpha / sigma), rtol=1e-4)


def test_posterior_is_exact_and_masked():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(4, 3, 3, 3)).astype(np.float32)
  acp = _scaled_linear_acp()
  prior = make_analytic_prior(images, acp)
  view_of_member = np.array([0, 1, 0, 1])
  mask = same_view_mask(view_of_member, np.array([0, 1]))
  t = 500
  z = jnp.asarray(np.sqrt(acp[t]) * images[[2, 1]], jnp.float32)  # noiseless: the member itself is the mode
  p = np.asarray(prior.posterior(z, jnp.int32(t), AnalyticCond(mask)))
  assert p.shape == (2, 4)
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
  assert p[0, 1] == 0 and p[0, 3] == 0 and p[1, 0] == 0 and p[1, 2] == 0  # masked members get exactly zero
  assert p[0, 2] > p[0, 0] and p[1, 1] > p[1, 3]


def test_small_sigma_denoises_to_the_member_and_is_jittable():
  rng = np.random.default_rng(1)
  images = rng.uniform(size=(3, 8, 8, 3)).astype(np.float32)
  acp = _scaled_linear_acp()
  prior = make_analytic_prior(images, acp)
  t = 1
  alpha, sigma = np.sqrt(acp[t]), np.sqrt(1 - acp[t])
  noise = rng.normal(size=(3, 8, 8, 3)).astype(np.float32)
  z = jnp.asarray(alpha * images[::-1] + sigma * noise)
  cond = AnalyticCond(jnp.ones((3, 3), bool))
  x0 = jax.jit(prior.x0_mean)(z, jnp.int32(t), cond)
  np.testing.assert_allclose(np.asarray(x0), images[::-1], atol=1e-6)
  eps = jax.jit(prior.eps)(z, jnp.int32(t), cond)
  # At t = 1 eps recovers the injected noise up to float32 rounding amplified by 1/sigma.
  np.testing.assert_allclose(np.asarray(eps), noise, atol=5e-3)


def test_identity_codec_and_input_checks():
  prior = make_analytic_prior(np.zeros((2, 4, 4, 3), np.uint8), _scaled_linear_acp())
  x = jnp.ones((2, 4, 4, 3))
  assert prior.decode(prior.encode(x)) is x
  with pytest.raises(ValueError, match=r"\(M, H, W, 3\)"):
    make_analytic_prior(np.zeros((4, 4, 3)), _scaled_linear_acp())
