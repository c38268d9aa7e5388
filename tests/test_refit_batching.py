"""Several views per refit iteration (FitConfig.views_per_iter), the √B learning-rate rule, the traced refit length
(one compile per run) and the compilation-cache helper."""

import dataclasses
import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from splatshot_jax import fit as fit_lib
from splatshot_jax import guidance, sampler, synthetic
from splatshot_jax.diffusion import ddim
from splatshot_jax.gaussians import init_from_points

SIZE, V = 16, 4


@pytest.fixture(scope="module")
def scene():
  sc = synthetic.make_head_scene(num_gaussians=200, num_views=V, width=SIZE, height=SIZE, render_images=True)
  g0 = init_from_points(sc.points, None, sh_degree=1, init_opacity=0.3, rng=jax.random.PRNGKey(0))
  # Anisotropic and rotated, so every group (quaternions included) has a gradient.
  rng = np.random.default_rng(0)
  q = rng.normal(size=(g0.num, 4)).astype(np.float32)
  g0 = dataclasses.replace(g0, log_scales=g0.log_scales + jnp.asarray(rng.normal(size=(g0.num, 3)) * 0.4,
                                                                       jnp.float32),
                           quats=jnp.asarray(q / np.linalg.norm(q, axis=-1, keepdims=True)))
  return types.SimpleNamespace(cameras=sc.cameras, images=jnp.asarray(sc.images), g0=g0)


def _leaves(g):
  return [np.asarray(a) for a in jax.tree.leaves(g)]


def _mu(opt_state, name):
  """Adam's first moment of one parameter group (after one step: 0.1 x that step's gradient)."""
  adam = opt_state.inner_states[name].inner_state[0]
  return np.asarray(adam.mu[name])


def test_one_view_per_iteration_is_the_plain_loop(scene):
  """B = 1 is the fit as it always was: per iteration, key i of split(rng, n), one view drawn ∝ weight (with
  replacement), its loss × weight/max weight, one Adam step. Reference: that loop written out in Python."""
  cfg = fit_lib.FitConfig(num_iters=4, sh_degree_interval=2)
  w = jnp.asarray([0.1, 0.5, 0.15, 0.25])
  rng = jax.random.PRNGKey(11)
  got = fit_lib.fit(scene.g0, scene.cameras, scene.images, cfg, view_weights=w, rng=rng)

  opt = fit_lib.make_optimizer(cfg)
  params = fit_lib.split_params(scene.g0)
  state = opt.init(params)
  losses = []
  for i, key in enumerate(jax.random.split(rng, cfg.num_iters)):  # eager: the reference is slow, keep it short
    v = int(jax.random.choice(key, V, (1,), p=w / w.sum())[0])
    degree = min(i // 2, 1)
    loss = lambda p: fit_lib.view_loss(fit_lib._join_params(p), scene.cameras[v], scene.images[v], cfg,
                                       sh_degree=degree)[0] * (w[v] / w.max())
    value, grads = jax.value_and_grad(loss)(params)
    losses.append(float(value))
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(np.asarray(got.losses), losses, rtol=1e-5)
  # Adam (eps 1e-15) turns float rounding in near-zero gradients (scan vs eager) into steps of ~1e-6 on a few
  # quaternion entries; a different view or a missing weight moves parameters by ~lr >= 1e-4.
  for a, b in zip(_leaves(got.gaussians), _leaves(fit_lib._join_params(params))):
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5)


def test_batched_iteration_gradient_is_the_sum_of_view_gradients(scene):
  """B = V draws every view once: the iteration's gradient (Adam's first moment / 0.1) is the sum over views of
  each view's own gradient × its weight/max weight, computed here view by view."""
  w = jnp.asarray([0.4, 0.1, 0.3, 0.2])
  scale = np.asarray(w / w.max())
  cfg = fit_lib.FitConfig(num_iters=1, views_per_iter=V)
  res = fit_lib.fit(scene.g0, scene.cameras, scene.images, cfg, view_weights=w, rng=jax.random.PRNGKey(3))
  params = fit_lib.split_params(scene.g0)
  single = [jax.grad(lambda p, v=v: fit_lib.view_loss(fit_lib._join_params(p), scene.cameras[v],
                                                      scene.images[v], cfg)[0])(params) for v in range(V)]
  expected_loss = sum(float(fit_lib.view_loss(scene.g0, scene.cameras[v], scene.images[v], cfg)[0]) * scale[v]
                      for v in range(V))
  np.testing.assert_allclose(float(res.losses[0]), expected_loss, rtol=1e-5)
  for name in fit_lib.PARAM_GROUPS:
    want = sum(scale[v] * np.asarray(single[v][name]) for v in range(V))
    got = _mu(res.opt_state, name) / 0.1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max(), err_msg=name)
    assert np.abs(want).max() > 0, name


def test_draws_are_distinct_and_follow_the_weights():
  """B = 2 of 5 views: never a repeat, and the pair frequencies match sampling without replacement ∝ weight
  (exact probabilities by enumerating ordered pairs: p_i p_j / (1 - p_i))."""
  p = np.array([0.05, 0.1, 0.15, 0.3, 0.4])
  keys = jax.random.split(jax.random.key(0), 4000)
  idx = np.asarray(jax.vmap(lambda k: fit_lib.draw_views(k, jnp.asarray(p, jnp.float32), 2))(keys))
  assert idx.shape == (4000, 2) and np.all(idx[:, 0] != idx[:, 1])
  exact = np.zeros(5)
  for i, j in itertools.permutations(range(5), 2):
    exact[[i, j]] += p[i] * p[j] / (1 - p[i])  # inclusion probability of each view
  freq = np.bincount(idx.ravel(), minlength=5) / len(idx)
  sd = np.sqrt(exact * (1 - exact) / len(idx))
  assert np.all(np.abs(freq - exact) < 4 * sd), (freq, exact)
  # With replacement (the wrong sampler) view 4 would appear in 1 - 0.6^2 = 64% of draws, here 4 sd away.
  first = np.bincount(idx[:, 0], minlength=5) / len(idx)
  assert np.all(np.abs(first - p) < 4 * np.sqrt(p * (1 - p) / len(idx))), first


@pytest.mark.parametrize("rule, factor", [("none", 1.0), ("sqrt", 2.0)])
def test_lr_batch_scaling_multiplies_every_group(scene, rule, factor):
  """Adam's first step moves each parameter by lr × g/|g|, so |Δ| = that group's LR (× √B = 2 for B = 4 with the
  "sqrt" rule) wherever the gradient is not ~0."""
  cfg = fit_lib.FitConfig(num_iters=1, views_per_iter=4, lr_batch_scaling=rule, scene_scale=2.0)
  res = fit_lib.fit(scene.g0, scene.cameras, scene.images, cfg, rng=jax.random.PRNGKey(0))
  before, after = fit_lib.split_params(scene.g0), fit_lib.split_params(res.gaussians)
  lrs = {"means": cfg.lr_means * 2.0, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
         "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN}
  for name, lr in lrs.items():
    g = _mu(res.opt_state, name)
    step = np.abs(np.asarray(after[name]) - np.asarray(before[name]))
    big = np.abs(g) > 1e-3 * np.abs(g).max()  # clear of the 1e-15 eps and of float rounding in the update
    assert big.sum() > 10, name
    np.testing.assert_allclose(step[big], lr * factor, rtol=2e-3, err_msg=name)


def test_bad_batch_settings_are_rejected(scene):
  with pytest.raises(ValueError, match="lr_batch_scaling"):
    fit_lib.make_optimizer(fit_lib.FitConfig(lr_batch_scaling="linear"))
  with pytest.raises(ValueError, match="views_per_iter"):
    fit_lib.fit(scene.g0, scene.cameras, scene.images, fit_lib.FitConfig(num_iters=1, views_per_iter=V + 1),
                rng=jax.random.PRNGKey(0))


def test_equal_views_seen_divides_the_iterations(scene):
  cfg = fit_lib.FitConfig(num_iters=10, views_per_iter=4, equal_views_seen=True)
  assert fit_lib.fit(scene.g0, scene.cameras, scene.images, cfg, rng=jax.random.PRNGKey(0)).losses.shape == (3,)
  assert fit_lib.num_iterations(cfg, 500) == 125 and fit_lib.num_iterations(cfg, 30) == 8
  assert fit_lib.num_iterations(dataclasses.replace(cfg, equal_views_seen=False), 30) == 30


def test_traced_length_fit_is_the_fit_and_compiles_once(scene):
  """fit_steps (a fori_loop with a traced count) gives the same Gaussians as fit, for two lengths, one compile."""
  cfg = fit_lib.FitConfig(num_iters=0, views_per_iter=2)
  w = jnp.asarray([0.3, 0.2, 0.4, 0.1])
  size = fit_lib.fit_steps._cache_size()
  for n in (3, 5):
    a = fit_lib.fit_steps(scene.g0, scene.cameras, scene.images, cfg, jnp.int32(n), view_weights=w,
                          rng=jax.random.PRNGKey(n))
    b = fit_lib.fit(scene.g0, scene.cameras, scene.images, dataclasses.replace(cfg, num_iters=n),
                    view_weights=w, rng=jax.random.PRNGKey(n))
    for x, y in zip(_leaves(a.gaussians), _leaves(b.gaussians)):
      np.testing.assert_array_equal(x, y)
    assert float(a.losses[0]) == float(b.losses[-1])
  assert fit_lib.fit_steps._cache_size() == size + 1


def test_splatshot_step_compiles_once_per_run():
  """A run whose first step refits 3 iterations and later ones 2 compiles splatshot_step once."""
  from splatshot_jax.priors.analytic import AnalyticCond, make_analytic_prior, same_view_mask

  sched = ddim.make_schedule(6)
  g, _ = synthetic.head_gaussians(60, sh_degree=0)
  cams = synthetic.head_rig(2, width=8, height=8, pitches=(0.0,))
  scene = guidance.gaussian_scene(fit_lib.FitConfig(views_per_iter=2))
  base = scene.render(g, cams)
  prior = make_analytic_prior(np.concatenate([np.asarray(base), np.asarray(base)[..., ::-1]]),
                              np.asarray(sched.alphas_cumprod))
  cond = AnalyticCond(same_view_mask(np.array([0, 1, 0, 1]), np.arange(2)))
  template = types.SimpleNamespace(gaussians=g, cameras=cams, images=base)
  cfg = sampler.SamplerConfig(progress=False, guidance=guidance.GuidanceConfig(
      sdi=False, guidance_weight=50.0, refit_iters_first=3, refit_iters=2,
      ssim_padding="same"))  # 8x8 views: smaller than the 11 px window of 'valid' SSIM
  size = guidance.splatshot_step._cache_size()
  res = sampler.run_splatshot(prior, template, cond, cfg, jax.random.key(0), scene=scene, schedule=sched)
  assert len(res.timesteps) == 3 and np.isfinite(res.final_images).all()
  assert guidance.splatshot_step._cache_size() == size + 1


def test_compilation_cache_folder(tmp_path, monkeypatch):
  from splatshot_jax.device import compile_cache

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.cache_dir("auto") == tmp_path / "xdg" / "splatshot_jax" / "jax"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compile_cache.cache_dir("auto") == tmp_path / "home" / ".cache" / "splatshot_jax" / "jax"
  assert compile_cache.cache_dir("") is None
  assert compile_cache.cache_dir(str(tmp_path / "mine")) == tmp_path / "mine"
