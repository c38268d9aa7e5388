"""The refit's optimiser internals, not only its outcome: per-group learning rates, Adam's ε, the means-LR schedule,
and the densification gradient statistic, each against a closed form."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splatshot_jax import fit as fit_lib
from splatshot_jax.cameras import Camera
from splatshot_jax.gaussians import Gaussians
from splatshot_jax.render import project_gaussians

S = 24
# Distinct learning rates, so a rate sent to the wrong group shows.
CFG = fit_lib.FitConfig(num_iters=1, lr_means=1e-3, lr_scales=2e-3, lr_quats=3e-3, lr_opacities=4e-3,
                        lr_sh0=5e-3, lr_shN=6e-3, scene_scale=1.5)
EXPECTED_LR = {"means": 1.5e-3, "scales": 2e-3, "quats": 3e-3, "opacities": 4e-3, "sh0": 5e-3, "shN": 6e-3}


def _params(rng, n=7):
  return {"means": rng.normal(size=(n, 3)), "scales": rng.normal(size=(n, 3)), "quats": rng.normal(size=(n, 4)),
          "opacities": rng.normal(size=(n,)), "sh0": rng.normal(size=(n, 1, 3)), "shN": rng.normal(size=(n, 3, 3))}


def _f32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def test_first_adam_step_moves_each_group_by_its_own_lr():
  """First Adam step with bias correction: Δ = −lr · g / (|g| + ε) = −lr · sign(g) for |g| ≫ ε = 1e-15."""
  rng = np.random.default_rng(0)
  p = _f32(_params(rng))
  g = _f32(jax.tree.map(lambda x: rng.choice([-1, 1], x.shape) * rng.uniform(1e-6, 10, x.shape), _params(rng)))
  opt = fit_lib.make_optimizer(CFG)
  updates, _ = opt.update(g, opt.init(p), p)
  for name, lr in EXPECTED_LR.items():
    np.testing.assert_allclose(np.asarray(updates[name]), -lr * np.sign(np.asarray(g[name])), rtol=1e-5,
                               err_msg=name)


def test_adam_eps_is_1e_15():
  """ε enters only where |g| is comparable to it: g = ε gives exactly half a step; g = 1e-6 a full one."""
  p = _f32(_params(np.random.default_rng(1), n=3))
  g = jax.tree.map(lambda x: jnp.full_like(x, 1e-15), p)
  g["sh0"] = jnp.full_like(p["sh0"], 1e-6)
  opt = fit_lib.make_optimizer(CFG)
  updates, _ = opt.update(g, opt.init(p), p)
  for name, lr in EXPECTED_LR.items():
    expect = -lr if name == "sh0" else -lr * 0.5
    np.testing.assert_allclose(np.asarray(updates[name]), expect, rtol=2e-3, err_msg=name)


def test_frozen_group_gets_no_update_and_others_keep_their_lr():
  p = _f32(_params(np.random.default_rng(2), n=3))
  g = jax.tree.map(jnp.ones_like, p)
  opt = fit_lib.make_optimizer(dataclasses.replace(CFG, frozen=("quats", "shN")))
  updates, _ = opt.update(g, opt.init(p), p)
  for name, lr in EXPECTED_LR.items():
    expect = 0.0 if name in ("quats", "shN") else -lr
    np.testing.assert_allclose(np.asarray(updates[name]), expect, rtol=1e-5, err_msg=name)


def test_means_lr_exponential_schedule():
  """With a constant gradient Adam's step is exactly lr_t: lr_t = lr · scene_scale · final^(t / T)."""
  T, final = 40, 0.01
  cfg = dataclasses.replace(CFG, num_iters=T, means_lr_final=final)
  p = _f32(_params(np.random.default_rng(3), n=2))
  g = jax.tree.map(jnp.ones_like, p)
  opt = fit_lib.make_optimizer(cfg)
  state = opt.init(p)
  steps = {}
  for t in range(T + 1):
    updates, state = opt.update(g, state, p)
    steps[t] = (float(-updates["means"][0, 0]), float(-updates["scales"][0, 0]))
  for t in (0, T // 2, T):
    np.testing.assert_allclose(steps[t][0], 1.5e-3 * final ** (t / T), rtol=1e-4, err_msg=f"t={t}")
    np.testing.assert_allclose(steps[t][1], 2e-3, rtol=1e-4)  # other groups stay constant
  # schedule_iters overrides num_iters (fit_with_densification's chunks see the whole fit's length).
  opt = fit_lib.make_optimizer(dataclasses.replace(cfg, num_iters=5, schedule_iters=T))
  state = opt.init(p)
  for _ in range(T // 2 + 1):
    updates, state = opt.update(g, state, p)
  np.testing.assert_allclose(float(-updates["means"][0, 0]), 1.5e-3 * final ** 0.5, rtol=1e-4)


def _tiny_scene(rng, n=12):
  z = 3 + rng.normal(size=n) * 0.2
  z[:2] = -1.0  # two behind the camera: never visible, no gradient
  g = Gaussians(
      means=jnp.asarray(np.stack([rng.normal(size=n) * 0.3, rng.normal(size=n) * 0.3, z], -1), jnp.float32),
      log_scales=jnp.asarray(rng.uniform(-2.5, -1.5, (n, 3)), jnp.float32),
      quats=jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
      opacity_logits=jnp.asarray(rng.normal(size=n), jnp.float32),
      sh=jnp.asarray(rng.normal(size=(n, 4, 3)) * 0.3, jnp.float32),
  )
  K = np.array([[30.0, 0, S / 2], [0, 30.0, S / 2], [0, 0, 1]])
  cams = Camera(jnp.asarray(np.eye(4)[None], jnp.float32), jnp.asarray(K[None], jnp.float32), S, S)
  images = jnp.asarray(rng.uniform(0, 1, (1, S, S, 3)), jnp.float32)
  return g, cams, images


def test_fit_applies_per_group_lr_and_accumulates_the_densification_statistic():
  """One `fit` iteration on one view: every parameter moves by −lr_group·sign(∂L/∂p) (through the real split of
  the Gaussians into groups), and grad2d_sum equals the statistic of that same gradient."""
  rng = np.random.default_rng(4)
  g, cams, images = _tiny_scene(rng)
  res = fit_lib.fit(g, cams, images, CFG, rng=jax.random.PRNGKey(0))
  grads = jax.grad(lambda g: fit_lib.view_loss(g, cams[0], images[0], CFG)[0])(g)
  leaves = {"means": ("means", slice(None)), "scales": ("log_scales", slice(None)), "quats": ("quats", slice(None)),
            "opacities": ("opacity_logits", slice(None)), "sh0": ("sh", slice(0, 1)), "shN": ("sh", slice(1, None))}
  for group, (field, sl) in leaves.items():
    gr = np.asarray(getattr(grads, field))[:, sl] if field == "sh" else np.asarray(getattr(grads, field))
    delta = (np.asarray(getattr(res.gaussians, field)) - np.asarray(getattr(g, field)))
    delta = delta[:, sl] if field == "sh" else delta
    big = np.abs(gr) > 1e-9  # float32 noise in near-zero gradients may flip a sign: compare where it cannot
    assert big.sum() > 5, group
    np.testing.assert_allclose(delta[big], -EXPECTED_LR[group] * np.sign(gr[big]), rtol=2e-3, atol=1e-7,
                               err_msg=group)
  stat, vis = fit_lib._screen_grad_norm(grads.means, g, cams[0])
  np.testing.assert_allclose(np.asarray(res.grad2d_sum), np.where(vis, stat, 0), rtol=1e-4, atol=1e-12)
  np.testing.assert_array_equal(np.asarray(res.visible_count), np.asarray(vis, np.float32))
  assert not bool(vis[:2].any()) and bool(vis[2:].all())


@pytest.mark.parametrize("yaw", [0.0, 0.5])
def test_densification_statistic_closed_form(yaw):
  """For a Gaussian on the optical axis and L = a·u + b·v of its pixel position, ∂L/∂(NDC) = (a, b)·W/2 (gsplat's
  grad2d normalisation), whatever the camera's rotation: the statistic must be √(a² + b²)·W/2."""
  f, z, a, b = 40.0, 2.5, 0.3, -0.7
  c, s = np.cos(yaw), np.sin(yaw)
  R = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
  vm = np.eye(4)
  vm[:3, :3] = R
  vm[:3, 3] = [0.1, -0.2, 1.0]
  cam = Camera(jnp.asarray(vm, jnp.float32), jnp.asarray([[f, 0, S / 2], [0, f, S / 2], [0, 0, 1]], jnp.float32), S, S)
  mean = (np.array([0.0, 0.0, z]) - vm[:3, 3]) @ R  # world point at camera-space (0, 0, z)
  g = Gaussians(means=jnp.asarray(mean[None], jnp.float32), log_scales=jnp.full((1, 3), -3.0),
                quats=jnp.asarray([[1.0, 0, 0, 0]]), opacity_logits=jnp.zeros(1), sh=jnp.zeros((1, 1, 3)))

  def loss(means):
    uv = project_gaussians(g.replace(means=means), cam).means2d[0]
    return a * uv[0] + b * uv[1]

  grad = jax.grad(loss)(g.means)
  stat, vis = fit_lib._screen_grad_norm(grad, g, cam)
  np.testing.assert_allclose(float(stat[0]), np.hypot(a, b) * S / 2, rtol=1e-5)
  assert bool(vis[0])
