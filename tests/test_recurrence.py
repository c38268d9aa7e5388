"""Self-recurrence (R > 1) of the SplatShot step in closed form, at a fixed t with a fixed noise draw.

Stand-ins make every quantity of a round an affine function of the round's latents, so the step can be written
out by hand (guidance.py, official steps 1-7):
  prior:  eps(z) = a z, decode = identity (3 latent channels);
  scene:  render(model) = model; refit(model, ..., num_iters) = 2 model + num_iters (ignores the images, so the
          model after R rounds says which model each round started from and with which refit length);
  loss:   L = sum_v <render_v, image_v>, so dL/dx0 = the refit model's render m_r.
With SDI off (omega = 1) a round r at t from latents z_r does
  eps_r = a z_r + w (sigma/alpha) m_r,   x0_r = (z_r - sigma eps_r) / alpha,   z'_r = alpha' x0_r + sigma' eps_r,
and between rounds z_{r+1} = alpha x0_r + sigma n with fresh noise n ~ N(0, I). The returned latents are
z'_R = k z_R + c m_R (k, c numbers), which is inverted here for the noise the step drew: it must be standard
normal and independent of the template's noise eps_gt, whatever key derivation the step uses.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from splatshot_jax import guidance
from splatshot_jax.diffusion import ddim

A_EPS = 0.3  # eps(z) = A_EPS z
W = 0.05  # guidance weight
T = 481  # the paper's first timestep
ITERS_FIRST, ITERS = 7, 3


@struct.dataclass
class LinearPrior:
  a: float = struct.field(pytree_node=False, default=A_EPS)

  def eps(self, z, t, cond):
    del t, cond
    return self.a * z

  def encode(self, images, rng=None):
    return images

  def decode(self, latents):
    return latents


def _render(model, cameras):
  del cameras
  return model


def _refit(model, cameras, images, weights, rng, num_iters):
  del cameras, images, weights, rng
  return 2.0 * model + num_iters.astype(model.dtype)


def _inner(pred, target):
  return jnp.sum(pred * target)


SCENE = guidance.Scene3D(render=_render, refit=_refit, photometric_loss=_inner)


def _setup(seed=0, shape=(2, 24, 24, 3)):
  rng = np.random.default_rng(seed)
  z = jnp.asarray(3.0 + 0.5 * rng.normal(size=shape), jnp.float32)  # x0 far from 0: the alpha scale shows
  m0 = jnp.asarray(rng.uniform(-1, 1, size=shape), jnp.float32)
  eps_gt = jnp.asarray(rng.normal(size=shape), jnp.float32)
  state = guidance.SplatShotState(z=z, eps_gt=eps_gt, model=m0, rng=jax.random.key(seed))
  return state


def _step(state, recurrence):
  cfg = guidance.GuidanceConfig(sdi=False, guidance_weight=W, self_recurrence=recurrence, refit_iters_first=ITERS_FIRST,
                                refit_iters=ITERS)
  return guidance.splatshot_step(state, jnp.int32(T), prior=LinearPrior(), schedule=ddim.make_schedule(25),
                                 cameras=None, cond_photo=jnp.zeros((2,)), scene=SCENE, cfg=cfg,
                                 refit_iters=jnp.int32(ITERS_FIRST))


def _coefficients():
  sched = ddim.make_schedule(25)
  al, s = (float(x) for x in ddim.alpha_sigma(sched, T))
  al_p, s_p = (float(x) for x in ddim.alpha_sigma(sched, T - sched.step_ratio))
  return al, s, al_p, s_p


def _models(m0, rounds):
  """The refit model after each round: round 1 refits for ITERS_FIRST, later rounds for ITERS."""
  ms, m = [], np.asarray(m0, np.float64)
  for r in range(rounds):
    m = 2.0 * m + (ITERS_FIRST if r == 0 else ITERS)
    ms.append(m)
  return ms


def test_one_round_is_the_closed_form():
  state = _setup()
  al, s, al_p, s_p = _coefficients()
  (m1,) = _models(state.model, 1)
  z1 = np.asarray(state.z, np.float64)
  eps1 = A_EPS * z1 + W * (s / al) * m1
  want = al_p * (z1 - s * eps1) / al + s_p * eps1
  out, _ = _step(state, 1)
  np.testing.assert_allclose(np.asarray(out.z), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.model), m1, rtol=1e-6)


@pytest.mark.parametrize("recurrence", [2, 3])
def test_next_round_starts_from_the_refit_model(recurrence):
  state = _setup(1)
  out, _ = _step(state, recurrence)
  np.testing.assert_allclose(np.asarray(out.model), _models(state.model, recurrence)[-1], rtol=1e-6)


def test_second_round_renoises_the_corrected_x0_with_fresh_unit_noise():
  state = _setup(2)
  al, s, al_p, s_p = _coefficients()
  m1, m2 = _models(state.model, 2)
  z1 = np.asarray(state.z, np.float64)
  eps1 = A_EPS * z1 + W * (s / al) * m1
  x0_1 = (z1 - s * eps1) / al  # round 1's corrected x0
  out, aux = _step(state, 2)
  # z'_2 = k z_2 + c m_2  ->  z_2  ->  the noise n = (z_2 - alpha x0_1) / sigma the step drew.
  k = al_p * (1 - s * A_EPS) / al + s_p * A_EPS
  c = W * (s / al) * (s_p - al_p * s / al)
  z2 = (np.asarray(out.z, np.float64) - c * m2) / k
  n = (z2 - al * x0_1) / s
  # Round 2 saw z_2: its decoded x0 (before the correction) is (z_2 - sigma a z_2) / alpha.
  np.testing.assert_allclose(np.asarray(aux.x0_images), (1 - s * A_EPS) * z2 / al, rtol=1e-4, atol=1e-4)
  size = n.size
  msg = f"recovered noise: mean {n.mean():.4f}, std {n.std():.4f} over {size} values"
  assert abs(n.mean()) < 4.0 / np.sqrt(size), msg
  assert abs(n.std() - 1.0) < 4.0 / np.sqrt(2 * size), msg
  for name, other in (("eps_gt", state.eps_gt), ("x0_1", x0_1), ("z_1", state.z)):
    corr = np.corrcoef(n.ravel(), np.asarray(other, np.float64).ravel())[0, 1]
    assert abs(corr) < 4.0 / np.sqrt(size), f"{msg}; correlation with {name} {corr:.4f}"
