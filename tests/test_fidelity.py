"""The official run's behaviours (docs/fidelity.md), each pinned: the schedule against the release's own numbers,
the L1-only feedback gradient, min-max refit weights, Adam carried across refits, SDI's source view, dropped
invalid views, 'valid' SSIM, the α clamp, the two camera/control-map quirks, and the config presets."""

import dataclasses
import functools
import json
import os
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import struct
from PIL import Image

from splatshot_jax import fit as fit_lib
from splatshot_jax import guidance, metrics, sampler, synthetic, templates
from splatshot_jax.cameras import Camera
from splatshot_jax.diffusion import ddim
from splatshot_jax.gaussians import Gaussians
from splatshot_jax.jobs import pipeline, preflight
from splatshot_jax.render import render, render_dense

SHARED = Path(os.environ.get("SPLATSHOT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
SCHEDULE_JSON = SHARED / "reference" / "official-schedule.json"


# ----------------------------------------------------------------------------------------------
# The schedule and strength.


def _official_fixture():
  if not SCHEDULE_JSON.is_file():
    pytest.skip(f"{SCHEDULE_JSON} not found (the shared reference notes; set SPLATSHOT_SHARED)")
  return json.loads(SCHEDULE_JSON.read_text())


def test_official_schedule_matches_the_release():
  ref = _official_fixture()
  sched = ddim.official_schedule(25)
  np.testing.assert_array_equal(np.asarray(sched.timesteps), ref["timesteps_all"])
  ts = sampler.sampler_timesteps(sched, 0.5, "official")
  np.testing.assert_array_equal(ts, ref["timesteps_run"])
  assert len(ts) == 13 and ref["start_index"] == 12
  alpha, sigma = ddim.alpha_sigma(sched, jnp.asarray(ts))
  want = {k: np.array([s[k] for s in ref["per_step"]]) for k in ("alpha", "sigma", "alphas_cumprod")}
  np.testing.assert_allclose(np.asarray(alpha), want["alpha"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(sigma), want["sigma"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(sched.alphas_cumprod)[ts], want["alphas_cumprod"], rtol=0, atol=1e-6)
  # The default sampler runs it.
  assert sampler.resolve_schedule(sampler.SamplerConfig()).timesteps.tolist() == ref["timesteps_all"]


def test_checkpoint_schedule_is_unchanged():
  cfg = sampler.SamplerConfig(schedule="checkpoint")
  sched, sd15 = sampler.resolve_schedule(cfg), ddim.make_schedule(25)
  np.testing.assert_array_equal(np.asarray(sched.alphas_cumprod), np.asarray(sd15.alphas_cumprod))
  np.testing.assert_array_equal(np.asarray(sched.timesteps), np.asarray(sd15.timesteps))
  ts = sampler.sampler_timesteps(sched, 0.5, "official")
  assert len(ts) == 13 and ts[0] == 481 and ts[-1] == 1
  mine = ddim.make_schedule(10, beta_schedule="linear")
  assert sampler.resolve_schedule(dataclasses.replace(cfg, num_inference_steps=10), mine) is mine


@struct.dataclass
class _LinearPrior:
  """eps = a z + 0.1 cos(z + t) (a toy prior: any eps works for the schedule's arithmetic); decode/encode the
  identity."""

  a: float = 0.3

  def eps(self, z, t, cond):
    return self.a * z + 0.1 * jnp.cos(z + t)

  def encode(self, images, rng=None):
    return images

  def decode(self, z):
    return z


def test_thirteen_step_run_ends_on_x0_exactly():
  _official_fixture()
  sched = ddim.official_schedule(25)
  ts = sampler.sampler_timesteps(sched, 0.5)
  z = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  state = guidance.SplatShotState(z=z, eps_gt=jnp.zeros_like(z), model=None, rng=jax.random.key(1))
  cfg = guidance.GuidanceConfig(feedback=False, sdi=False)
  prior = _LinearPrior()
  for t in ts:
    before = state.z
    state, _ = guidance.splatshot_step(state, jnp.int32(t), prior=prior, schedule=sched, cameras=None,
                                       cond_photo=None, cfg=cfg)
  eps = prior.eps(before, jnp.int32(0), None)
  np.testing.assert_array_equal(np.asarray(state.z), np.asarray(ddim.predict_x0(sched, before, eps, 0)))
  # The checkpoint schedule's last step (t = 1) re-noises instead.
  sd = ddim.make_schedule(25)
  z1 = ddim.ddim_step(sd, eps, 1, before)
  assert not np.array_equal(np.asarray(z1), np.asarray(ddim.predict_x0(sd, before, eps, 1)))


@pytest.mark.parametrize("start", ["official", "diffusers"])
def test_strength_is_the_fraction_re_run(start):
  for sched in (ddim.official_schedule(25), ddim.make_schedule(25)):
    n = sched.num_inference_steps
    assert len(sampler.sampler_timesteps(sched, 0.0, start)) == 0
    full = sampler.sampler_timesteps(sched, 1.0, start)
    np.testing.assert_array_equal(full, np.asarray(sched.timesteps))
    steps = [len(sampler.sampler_timesteps(sched, s, start)) for s in np.linspace(0, 1, 21)]
    assert steps == sorted(steps), steps  # more strength, more steps (never the opposite)
    assert all(abs(k - n * s) <= 1 for k, s in zip(steps, np.linspace(0, 1, 21))), steps
  # Strength 0 runs no step and does not crash: the template goes through the VAE and back.
  template = types.SimpleNamespace(gaussians=None, cameras=None, images=jnp.full((2, 16, 16, 3), 0.25))
  cfg = sampler.SamplerConfig(strength=0.0, start=start, progress=False, thumbnail=8,
                              guidance=guidance.GuidanceConfig(feedback=False, sdi=False))
  res = sampler.run_splatshot(_LinearPrior(), template, None, cfg, jax.random.key(0))
  assert res.x0_images.shape == (0, 2, 8, 8, 3) and res.timesteps.shape == (0,)
  np.testing.assert_allclose(res.final_images, 0.25)


# ----------------------------------------------------------------------------------------------
# The feedback gradient.


def test_l1_only_feedback_gradient_is_the_closed_form():
  rng = np.random.default_rng()
  v, h, w = 2, 16, 12
  A = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)
  decode = lambda x0: jnp.tanh(x0 @ A)  # a non-linear "decoder" (latents = pixels here)
  x0 = jnp.asarray(rng.normal(size=(v, h, w, 3)), jnp.float32)
  renders = jnp.asarray(rng.uniform(size=(v, h, w, 3)), jnp.float32)
  images, vjp = jax.vjp(decode, x0)
  loss_fn = lambda r, i: guidance.default_photometric_loss(r, i, 0.2, feedback_loss="l1", padding="valid")
  loss, grad = guidance.discrepancy_grad(images, renders, vjp, loss_fn)
  # Closed form: d(0.8 L1)/dI = 0.8 sign(I - R) / n per pixel, n = H W 3, then the decoder's VJP.
  (want,) = vjp(0.8 * jnp.sign(images - renders) / (h * w * 3))
  np.testing.assert_allclose(np.asarray(grad), np.asarray(want), rtol=1e-6, atol=1e-9)
  # The value still carries the SSIM term ('valid' padding), summed over views.
  ssim = np.asarray(metrics.ssim(renders, images, padding="valid"))
  l1 = np.abs(np.asarray(images) - np.asarray(renders)).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(float(loss), np.sum(0.8 * l1 + 0.2 * (1 - ssim)), rtol=1e-5)
  # "l1_ssim" differentiates both terms: a different gradient.
  both = lambda r, i: guidance.default_photometric_loss(r, i, 0.2, feedback_loss="l1_ssim", padding="valid")
  _, grad2 = guidance.discrepancy_grad(images, renders, vjp, both)
  assert np.linalg.norm(np.asarray(grad2 - grad)) > 0.05 * np.linalg.norm(np.asarray(grad))


# ----------------------------------------------------------------------------------------------
# The refit: view weights, Adam carried, SSIM padding.


def test_minmax_view_weights_closed_form():
  w = jnp.asarray([0.1, 0.4, 0.25, 0.4])
  probs, scale = fit_lib.view_weighting(w, "minmax")
  m = np.array([0.0, 1.0, 0.5, 1.0])
  np.testing.assert_allclose(np.asarray(scale), m, atol=1e-6)
  np.testing.assert_allclose(np.asarray(probs), m / m.sum(), atol=1e-6)
  probs, scale = fit_lib.view_weighting(jnp.full((5,), 0.2), "minmax")  # all equal: all ones
  np.testing.assert_allclose(np.asarray(scale), 1.0)
  np.testing.assert_allclose(np.asarray(probs), 0.2)
  probs, scale = fit_lib.view_weighting(w, "normalized")
  np.testing.assert_allclose(np.asarray(probs), np.asarray(w) / 1.15, atol=1e-6)
  np.testing.assert_allclose(np.asarray(scale), np.asarray(w) / 0.4, atol=1e-6)


def test_least_confident_view_is_never_drawn():
  rng = np.random.default_rng()
  w = guidance.confidence_weights(jnp.asarray(rng.uniform(size=(48, 4, 4, 3))), jnp.zeros((48, 4, 4, 3)), 10.0)
  probs, _ = fit_lib.view_weighting(w, "minmax")
  keys = jax.random.split(jax.random.key(int(rng.integers(2**31))), 20_000)
  draws = np.asarray(jax.vmap(lambda k: fit_lib.draw_views(k, probs, 1)[0])(keys))
  worst = int(np.argmin(np.asarray(w)))
  assert not np.any(draws == worst)
  assert len(np.unique(draws)) >= 40  # every other view is drawn (probabilities ~1/47 each)
  probs_n, _ = fit_lib.view_weighting(w, "normalized")
  assert np.any(np.asarray(jax.vmap(lambda k: fit_lib.draw_views(k, probs_n, 1)[0])(keys)) == worst)


def _tiny_refit_problem(size=16):
  g, _ = synthetic.head_gaussians(60, sh_degree=1)
  cams = synthetic.head_rig(2, width=size, height=size, pitches=(0.0,))
  from splatshot_jax.render import render_views
  target = jnp.clip(render_views(g, cams).rgb[..., ::-1] * 1.2, 0, 1)  # something to move toward
  return g, cams, target


def test_adam_state_carried_across_refits_equals_one_refit():
  g, cams, images = _tiny_refit_problem()
  cfg = fit_lib.official_refit_config()
  w = jnp.asarray([0.3, 0.7])
  key = jax.random.key(3)
  init = fit_lib.make_optimizer(cfg).init(fit_lib.split_params(g))  # = None's fresh state; one compile for all
  one = fit_lib.fit_steps(g, cams, images, cfg, 6, view_weights=w, rng=key, opt_state=init)
  a = fit_lib.fit_steps(g, cams, images, cfg, 3, view_weights=w, rng=key, opt_state=init)
  b = fit_lib.fit_steps(a.gaussians, cams, images, cfg, 3, view_weights=w, rng=key, start_iter=3,
                        opt_state=a.opt_state)
  for x, y in zip(jax.tree.leaves(b.gaussians), jax.tree.leaves(one.gaussians)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
  fresh = fit_lib.fit_steps(a.gaussians, cams, images, cfg, 3, view_weights=w, rng=key, start_iter=3,
                            opt_state=init)
  assert not np.allclose(np.asarray(fresh.gaussians.means), np.asarray(one.gaussians.means), atol=1e-7)


def _counting_scene():
  """A stand-in whose model is a number: the refit with state returns the state's count, the stateless one -1."""
  render = lambda model, cameras: jnp.zeros((2, 4, 4, 3)) + model
  refit = lambda model, cameras, images, w, rng, n: jnp.float32(-1.0)
  with_state = lambda model, cameras, images, w, rng, n, state, start: (state + n, state + n)
  return guidance.Scene3D(render=render, refit=refit, init_refit_state=lambda model: jnp.float32(0.0),
                          refit_with_state=with_state, photometric_loss=lambda a, b: jnp.mean(jnp.abs(a - b)))


@pytest.mark.parametrize("carry", [True, False])
def test_sampler_threads_the_refit_state(carry):
  template = types.SimpleNamespace(gaussians=jnp.float32(0.0), cameras=None, images=jnp.full((2, 4, 4, 3), 0.5))
  gcfg = guidance.GuidanceConfig(sdi=False, carry_adam=carry, refit_iters_first=7, refit_iters=2,
                                 ssim_padding="same")
  cfg = sampler.SamplerConfig(num_inference_steps=10, progress=False, guidance=gcfg)
  res = sampler.run_splatshot(_LinearPrior(), template, None, cfg, jax.random.key(0), scene=_counting_scene())
  steps = len(res.timesteps)
  # Carried: the model after the last refit is the state's iteration count over all refits (one optimiser);
  # not carried: every refit is the stateless (fresh optimiser) one.
  assert float(res.gaussians) == (7 + 2 * (steps - 1) if carry else -1.0)


def _ssim_valid_f64(a, b):
  """Brute-force float64 SSIM with 'valid' padding (11x11 Gaussian window, sigma 1.5), mean over everything."""
  x = np.arange(11) - 5.0
  g = np.exp(-x**2 / (2 * 1.5**2))
  win = np.outer(g, g) / np.outer(g, g).sum()
  h, w = a.shape[:2]
  c1, c2 = 0.01**2, 0.03**2
  vals = []
  for i in range(h - 10):
    for j in range(w - 10):
      pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
      mu_a, mu_b = np.einsum("ij,ijc->c", win, pa), np.einsum("ij,ijc->c", win, pb)
      saa = np.einsum("ij,ijc->c", win, pa * pa) - mu_a**2
      sbb = np.einsum("ij,ijc->c", win, pb * pb) - mu_b**2
      sab = np.einsum("ij,ijc->c", win, pa * pb) - mu_a * mu_b
      vals.append((2 * mu_a * mu_b + c1) * (2 * sab + c2) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2)))
  return float(np.mean(vals))


def test_refit_loss_uses_valid_ssim():
  g, cams, images = _tiny_refit_problem(size=16)
  cfg = fit_lib.official_refit_config()
  assert cfg.ssim_padding == "valid"
  loss, _ = fit_lib.view_loss(g, cams[0], images[0], cfg)
  pred = np.asarray(render(g, cams[0], alpha_max=0.999).rgb, np.float64)
  target = np.asarray(images[0], np.float64)
  want = 0.8 * np.abs(pred - target).mean() + 0.2 * (1 - _ssim_valid_f64(pred, target))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  same, _ = fit_lib.view_loss(g, cams[0], images[0], dataclasses.replace(cfg, ssim_padding="same"))
  assert abs(float(same) - want) > 1e-4


# ----------------------------------------------------------------------------------------------
# The α clamp: renderer, dense reference, viewer page.


def _opaque_scene(rng, n=40):
  means = rng.normal(size=(n, 3)) * [0.4, 0.4, 0.2]
  return Gaussians(means=means, log_scales=rng.uniform(-2.0, -1.2, size=(n, 3)), quats=rng.normal(size=(n, 4)),
                   opacity_logits=rng.uniform(5.0, 9.0, size=(n,)),  # o > 0.993: the clamp binds
                   sh=rng.normal(size=(n, 4, 3)) * 0.3)


def test_alpha_clamp_in_renderer_and_dense_reference():
  rng = np.random.default_rng()
  g = _opaque_scene(rng)
  vm = np.eye(4)
  vm[2, 3] = 3.0
  K = np.array([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]])
  cam32 = Camera(jnp.asarray(vm, jnp.float32), jnp.asarray(K, jnp.float32), 32, 24)
  as32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g)
  out = {a: render(as32, cam32, alpha_max=a, backend="xla") for a in (0.99, 0.999)}
  with jax.enable_x64(True):
    cam64 = Camera(jnp.asarray(vm), jnp.asarray(K), 32, 24)
    as64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), g)
    ref = {a: render_dense(as64, cam64, alpha_max=a) for a in (0.99, 0.999)}
    for a in (0.99, 0.999):
      for key in ("rgb", "alpha"):
        err = np.max(np.abs(np.asarray(getattr(out[a], key), np.float64) - np.asarray(ref[a][key])))
        assert err < 2e-5, (a, key, err)
    # At 0.999 a pixel behind an opaque Gaussian lets through 1e-3 of what is behind, at 0.99 1e-2.
    assert float(np.max(np.asarray(ref[0.999]["alpha"]))) > 0.99 + 5e-3
    assert np.max(np.abs(np.asarray(ref[0.999]["rgb"]) - np.asarray(ref[0.99]["rgb"]))) > 1e-3


def test_viewer_page_follows_the_runs_alpha_clamp(tmp_path):
  from splatshot_jax import viewer
  from splatshot_jax.jobs import outputs
  g = jax.tree.map(np.asarray, synthetic.head_gaussians(50, sh_degree=1)[0])
  cams = synthetic.head_rig(2, width=16, height=16, pitches=(0.0,))
  res = sampler.SplatShotResult(gaussians=g, base=g, final_images=np.zeros((2, 16, 16, 3), np.float32),
                                view_weights=np.full(2, 0.5, np.float32),
                                x0_images=np.zeros((1, 2, 8, 8, 3), np.uint8),
                                renders=np.zeros((1, 2, 8, 8, 3), np.uint8), discrepancy=np.zeros(1, np.float32),
                                eps_correction=np.zeros(1, np.float32), timesteps=np.zeros(1, np.int32))
  config = {"seed": 0, "refit": {"alpha_max": 0.999}}
  written = outputs.write_outputs(res, tmp_path, cameras=cams, config=config, render=None, export=False)
  page = written["viewer"].read_text()
  meta = json.loads(page.split('id="splat-meta" type="application/json">', 1)[1].split("</script>", 1)[0])
  assert meta["alpha_max"] == 0.999
  assert "min(u_alphaMax," in page and "min(0.99," not in page
  assert viewer.run_alpha_max(tmp_path / "config.json") == 0.999  # experiments.view reads it back
  assert viewer.run_alpha_max({"seed": 0}) == viewer.DEFAULT_ALPHA_MAX
  from splatshot_jax.viewer import browser
  if browser.find_chromium() is None:
    return
  state = browser.page_state(written["viewer"], "w=64&h=64&ui=0")
  assert state.get("data-state") == "ready", state
  assert float(state["data-alpha-max"]) == pytest.approx(0.999)


# ----------------------------------------------------------------------------------------------
# The pipeline: SDI source view, invalid views, quirks.


def _template(v=5, h=21, w=27, seed=0):
  rng = np.random.default_rng(seed)
  g, _ = synthetic.head_gaussians(20, sh_degree=0)
  K = np.tile(np.array([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]], np.float32), (v, 1, 1))
  vm = np.tile(np.eye(4, dtype=np.float32), (v, 1, 1))
  vm[:, 0, 3] = np.arange(v)  # tell the views apart
  return templates.Template(
      gaussians=g, cameras=Camera(jnp.asarray(vm), jnp.asarray(K), w, h),
      renders=jnp.asarray(rng.uniform(size=(v, h, w, 3)), jnp.float32),
      heatmaps=jnp.asarray(rng.integers(0, 256, size=(v, h, w, 3)), jnp.uint8),
      parsing=jnp.asarray(rng.integers(0, 256, size=(v, h, w, 3)), jnp.uint8),
      landmarks3d=jnp.zeros((68, 3)), valid=jnp.ones((v,), bool), name="t",
      info=templates.TemplateInfo(frontal_view=3))


def _config(**kw):
  from configs import splatshot_sd15
  config = splatshot_sd15.get_config()
  config.num_views = kw.pop("num_views", 5)
  config.update(kw)
  return config


def test_invalid_views_are_dropped():
  t = _template()
  t = t.replace(valid=jnp.asarray([True, False, True, True, False]))
  out, info = pipeline.load_base_template(_config(), candidates=[t])
  assert len(out) == 3 and info["dropped_views"] == [1, 4]
  np.testing.assert_array_equal(np.asarray(out.cameras.viewmat)[:, 0, 3], [0, 2, 3])
  assert out.info.frontal_view == 2  # view 3 is the third view kept
  out, info = pipeline.load_base_template(_config(drop_invalid_views=False), candidates=[t])
  assert len(out) == 5 and "dropped_views" not in info
  with pytest.raises(pipeline.MissingInputsError, match="drop_invalid_views"):
    pipeline.load_base_template(_config(), candidates=[t.replace(valid=jnp.zeros(5, bool))])


def test_sdi_source_is_view_zero():
  t = pipeline.pad_template(_template())
  calls = []
  conditioner = types.SimpleNamespace(make_cond=lambda *a, photo, **kw: calls.append(photo) or photo)
  photo = np.zeros((8, 8, 3))
  config = _config()
  _, cond_template = pipeline.make_conditions(config, None, conditioner, t, photo)
  np.testing.assert_array_equal(cond_template, np.asarray(t.renders[0]))
  config.guidance.sdi_source_view = 2
  _, cond_template = pipeline.make_conditions(config, None, conditioner, t, photo)
  np.testing.assert_array_equal(cond_template, np.asarray(t.renders[2]))
  config.guidance.sdi_source_view = 9
  with pytest.raises(pipeline.MissingInputsError, match="sdi_source_view"):
    pipeline.make_conditions(config, None, conditioner, t, photo)


def test_official_quirks_keep_K_and_stretch_the_control_maps():
  t = _template()  # 27 x 21 -> 32 x 32: padding (top 5, bottom 6, left 2, right 3)
  quirky = pipeline.pad_template(t, official_quirks=True)
  aligned = pipeline.pad_template(t, official_quirks=False)
  for p in (quirky, aligned):
    assert p.renders.shape[1:3] == (32, 32) and (p.cameras.width, p.cameras.height) == (32, 32)
  np.testing.assert_array_equal(np.asarray(quirky.cameras.K), np.asarray(t.cameras.K))  # no principal-point shift
  np.testing.assert_allclose(np.asarray(aligned.cameras.K)[:, :2, 2] - np.asarray(t.cameras.K)[:, :2, 2],
                             np.tile([2.0, 5.0], (5, 1)))
  np.testing.assert_array_equal(np.asarray(quirky.renders), np.asarray(aligned.renders))  # renders padded in both
  for field in ("heatmaps", "parsing"):
    src = np.asarray(getattr(t, field))
    stretched = np.stack([np.asarray(Image.fromarray(x).resize((32, 32), Image.Resampling.LANCZOS)) for x in src])
    padded = np.pad(src, ((0, 0), (5, 6), (2, 3), (0, 0)), mode="symmetric")
    np.testing.assert_array_equal(np.asarray(getattr(quirky, field)), stretched)
    np.testing.assert_array_equal(np.asarray(getattr(aligned, field)), padded)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_step_runs(dtype):
  """The official run is float16 (bfloat16 for TPUs): one SplatShot step with feedback stays finite in both."""
  from splatshot_jax.diffusion import presets
  prior = presets.random_stable_diffusion("tiny", 0, dtype=dtype, view_chunk=1, decode_chunk=1)
  cond = presets.random_cond("tiny", jax.random.key(1), num_views=1, height=16, width=16, text_len=4, ip_tokens=2)
  z = prior.encode(jnp.full((1, 16, 16, 3), 0.5), jax.random.key(2))
  state = guidance.SplatShotState(z=z, eps_gt=jnp.zeros_like(z), model=jnp.full((1, 16, 16, 3), 0.4),
                                  rng=jax.random.key(3))
  scene = guidance.Scene3D(render=lambda m, c: m, refit=lambda m, c, imgs, w, rng, n: imgs * 0.9)
  z_dtype = z.dtype
  state, aux = guidance.splatshot_step(state, jnp.int32(480), prior=prior, schedule=ddim.official_schedule(25),
                                       cameras=None, cond_photo=cond, scene=scene,
                                       cfg=guidance.GuidanceConfig(sdi=False, guidance_weight=5e4))
  assert state.z.dtype == z_dtype
  assert {leaf.dtype for leaf in jax.tree.leaves(prior) if jnp.issubdtype(leaf.dtype, jnp.floating)} == {
      jnp.dtype(dtype)}  # the model runs in the half type
  assert np.isfinite(np.asarray(state.z, np.float32)).all() and float(aux.eps_correction) > 0


# ----------------------------------------------------------------------------------------------
# Configs and the preflight.


def test_presets_and_their_fields():
  from configs import splatshot_sd15, build_template
  c = splatshot_sd15.get_config()
  assert c.sd.base == "Realistic_Vision_V4.0_noVAE" and c.sd.vae == "sd-vae-ft-mse" and c.sd.dtype == "float16"
  assert (c.sampler.schedule, c.guidance.feedback_loss, c.refit.view_weighting) == ("official", "l1", "minmax")
  assert c.guidance.carry_adam and c.guidance.sdi_source_view == 0 and c.drop_invalid_views and c.official_quirks
  assert (c.guidance.ssim_padding, c.refit.ssim_padding, c.refit.alpha_max) == ("valid", "valid", 0.999)
  s = sampler.sampler_config(c)
  assert s.guidance == guidance.GuidanceConfig() and s.schedule == "official"
  a = splatshot_sd15.get_config("aligned")
  get = lambda cfg, field: functools.reduce(lambda node, part: node[part], field.split("."), cfg)
  diff = {k for k in ("official_quirks", "sampler.schedule", "guidance.feedback_loss", "refit.view_weighting",
                      "guidance.carry_adam", "guidance.sdi_source_view", "refit.alpha_max", "sd.dtype")
          if get(a, k) != get(c, k)}
  assert diff == {"official_quirks", "sampler.schedule", "guidance.feedback_loss", "refit.view_weighting"}
  for arg in ("smoke", "aligned_smoke"):
    sm = splatshot_sd15.get_config(arg)
    assert sm.weights == "random-tiny" and sm.num_views == 4
  assert splatshot_sd15.get_config("aligned_smoke").sampler.schedule == "checkpoint"
  assert build_template.get_config().scale == 1.0 and build_template.get_config("333").scale == 1.0
  assert build_template.get_config("smoke").scale < 0.2


def test_preflight_checks_the_new_fields():
  from configs import splatshot_sd15
  c = splatshot_sd15.get_config("smoke")
  c.out_dir = "/tmp/splatshot-test-fidelity-preflight"
  assert not [p for p in preflight.check_splatshot(c, splatshot_sd15.get_config("smoke")) if "config." in p.field]
  bad = {"sampler.schedule": "linear", "guidance.feedback_loss": "ssim", "refit.view_weighting": "softmax",
         "refit.alpha_max": 1.0, "guidance.ssim_padding": "full", "official_quirks": "yes",
         "guidance.carry_adam": 1, "guidance.sdi_source_view": -1}
  with c.ignore_type():  # wrong types on purpose
    for field, value in bad.items():
      section, _, key = field.rpartition(".")
      (c[section] if section else c)[key] = value
  fields = {p.field for p in preflight.check_splatshot(c)}
  assert {f"config.{f}" for f in bad} <= fields, fields - {f"config.{f}" for f in bad}


def test_preflight_tells_the_resolution(tmp_path):
  from configs import splatshot_sd15
  c = splatshot_sd15.get_config()
  c.weights = str(tmp_path)
  for (w, h), far in (((288, 416), True), ((560, 816), False)):
    (tmp_path / "t").mkdir(exist_ok=True)
    (tmp_path / "t" / "meta.json").write_text(json.dumps({"padded_width": w, "padded_height": h}))
    c.template = str(tmp_path / "t")
    notice = preflight.resolution_notice(c)
    assert (notice is not None) == far, notice
    if far:
      assert "about to run at resolution 288x416" in notice and "512x512" in notice
