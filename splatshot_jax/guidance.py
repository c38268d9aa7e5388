"""The SplatShot step: denoise all views, refit a 3D model to them, and correct the noise toward 3D consistency.

This is the paper's contribution (official-code steps 2-6, `../shared/reference/splatshot-official.md`); everything
else in the package serves it. One call advances V views by one DDIM timestep t -> t':

  1. eps_tgt = prior.eps(z, t, cond_photo)                       the prior, conditioned on the photo (CFG inside)
     eps_src = prior.eps(z, t, cond_template)                    Semantic Delta Injection (SDI), when on
     eps_smart = eps_gt + omega (eps_tgt - eps_src)              (SDI off: eps_smart = eps_tgt, omega = 1)
  2. x0 = (z - sigma eps_smart) / alpha;  I = decode(x0)         `predict_x0`: decoded once, its VJP kept
  3. c_v = softmax_v(-10 L1(render_v(G), I_v))                   `confidence_weights` of the current 3D model
  4. G <- refit(G, I, c)                                         `refit`: 1000 iterations at the first step, 500 later
                                                                 (official: one Adam state carried across the refits)
  5. L = sum_v 0.8 L1 + 0.2 (1 - SSIM)(sg[render_v(G)], I_v)      `discrepancy_grad`: dL/dx0 = VJP_decode(dL/dI);
     official ("l1", `GuidanceConfig.feedback_loss`): the SSIM term is reported but carries no gradient (the
     release's fused SSIM differentiates only its first argument, the no-grad render), so dL/dI = d(0.8 L1)/dI
     dL/deps = -(sigma / alpha) omega dL/dx0                     (chain rule through x0 = (z - sigma eps_smart)/alpha)
  6. eps = eps_tgt - w dL/deps                                   `correct_eps` (w = 5e4 for SD-1.5)
     z' = DDIM(z, eps, t -> t')                                  `ddim_step` (eta 0)
  7. self-recurrence (R > 1): z <- alpha x0_corrected + sigma n, fresh n, repeat 1-6 at the same t.

All views at once, under one `jax.jit` (no per-view Python loop, no host round-trip); memory is bounded by the
prior's own view chunking (`SDSpec.view_chunk` for eps, `decode_chunk` for decode and its VJP). The prior is
anything with `eps`, `encode`, `decode` (`splatshot_jax.priors.Prior`); the 3D model is a `Scene3D`: a render and
a refit function, so the same step runs with 3D Gaussians (`gaussian_scene`) or a stand-in in tests.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from splatshot_jax import fit as fit_lib
from splatshot_jax import metrics
from splatshot_jax.diffusion import ddim
from splatshot_jax.render import render_views
from splatshot_jax.render.composite import ALPHA_MAX

Pytree = Any


@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
  """Static settings of the step (hashable: a static argument of the jitted step). Defaults: the paper's.

  Attributes:
    feedback: run the refit and the correction (steps 3-6); off gives plain (SDI) DDIM img2img.
    guidance_weight: w in eps = eps_tgt - w dL/deps (official 5e4 for SD-1.5 latents).
    sdi: Semantic Delta Injection on/off.
    sdi_omega: omega (official 0.5).
    confidence_temperature: the 10 in softmax(-10 L1).
    refit_iters_first, refit_iters: refit length at the first step / later steps (official 1000 / 500).
    lambda_dssim: the 0.2 in 0.8 L1 + 0.2 (1 - SSIM) of the discrepancy loss.
    self_recurrence: R, how many times the step runs at the same t (official default 1 = off).
    feedback_loss: "l1" (official): L's value is 0.8 L1 + 0.2 (1 - SSIM) but only 0.8 L1 is differentiated
      (the release's SSIM carries no gradient to the decoded image); "l1_ssim": both terms differentiated.
    ssim_padding: SSIM padding of the discrepancy, "valid" (official fused SSIM) or "same" (3DGS).
    carry_adam: carry the refit's Adam state (moments, step count) across the refits of a run (official: the
      optimisers are created once before the loop); False: a fresh Adam at every refit.
    sdi_source_view: the template view whose render conditions eps_src (official 0, a ~50 degree side view;
      read by the pipeline when it builds cond_template).
  """

  feedback: bool = True
  guidance_weight: float = 5e4
  sdi: bool = True
  sdi_omega: float = 0.5
  confidence_temperature: float = 10.0
  refit_iters_first: int = 1000
  refit_iters: int = 500
  lambda_dssim: float = 0.2
  self_recurrence: int = 1
  feedback_loss: str = "l1"
  ssim_padding: str = "valid"
  carry_adam: bool = True
  sdi_source_view: int = 0


FEEDBACK_LOSSES = ("l1", "l1_ssim")


@dataclasses.dataclass(frozen=True)
class Scene3D:
  """The 3D model the views are kept consistent with, as two pure functions (static: hashable callables).

  Attributes:
    render: (model, cameras) -> (V, H, W, 3) float32 images of the model from each camera.
    refit: (model, cameras, images (V, H, W, 3), view_weights (V,), rng, num_iters: () int32, traced) -> model.
      The count is a traced loop bound (never differentiated), so the step compiles once for every length.
    photometric_loss: (pred (H, W, 3), target (H, W, 3)) -> () loss; default 0.8 L1 + 0.2 (1 - SSIM) per
      `GuidanceConfig.feedback_loss`.
    init_refit_state: optional model -> the refit's optimiser state (Adam moments, step count); with
      `refit_with_state` it lets the step carry that state across refits (`GuidanceConfig.carry_adam`).
    refit_with_state: optional (model, cameras, images, view_weights, rng, num_iters, state, start_iter: () int32,
      the refit iterations run before with this state) -> (model, state).
  """

  render: Callable[..., jax.Array]
  refit: Callable[..., Pytree]
  photometric_loss: Callable[[jax.Array, jax.Array], jax.Array] | None = None
  init_refit_state: Callable[[Pytree], Pytree] | None = None
  refit_with_state: Callable[..., tuple[Pytree, Pytree]] | None = None


@struct.dataclass
class SplatShotState:
  """What the sampler carries from one step to the next.

  Attributes:
    z: (V, h, w, c) float32 latents at the current timestep.
    eps_gt: (V, h, w, c) float32 the noise drawn when the template was noised (kept; SDI's base noise).
    model: the 3D model (e.g. `Gaussians`) after the latest refit.
    rng: PRNG key (refit view sampling, self-recurrence noise).
    refit_state: the refit's optimiser state carried across refits (`GuidanceConfig.carry_adam`), or None
      (a fresh optimiser at every refit).
    refit_iter: () int32 refit iterations run so far with refit_state (the next refit's first global
      iteration: it keeps the view draws of consecutive refits those of one long refit).
  """

  z: jax.Array
  eps_gt: jax.Array
  model: Pytree
  rng: jax.Array
  refit_state: Pytree = None
  refit_iter: jax.Array | int = 0


@struct.dataclass
class StepAux:
  """Per-step diagnostics (all for the step's last self-recurrence round).

  Attributes:
    x0_images: (V, H, W, 3) float32 decoded x0 (what the refit saw).
    renders: (V, H, W, 3) float32 renders of the refit model (zeros when feedback is off).
    view_weights: (V,) float32 confidence weights before the refit.
    discrepancy: () float32 the photometric loss L summed over views.
    eps_correction: () float32 RMS of w dL/deps (how far the feedback moved eps).
  """

  x0_images: jax.Array
  renders: jax.Array
  view_weights: jax.Array
  discrepancy: jax.Array
  eps_correction: jax.Array


# ----------------------------------------------------------------------------------------------
# The pieces, in the paper's terms.


def predict_x0(schedule: ddim.DDIMSchedule, z: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
  """x0 = (z - sigma_t eps) / alpha_t (DDIM eq. 12). z, eps: (V, h, w, c) -> (V, h, w, c)."""
  return ddim.predict_x0(schedule, z, eps, t)


def confidence_weights(renders: jax.Array, images: jax.Array, temperature: float) -> jax.Array:
  """View confidence softmax_v(-temperature * mean|render_v - image_v|) (official step 3).

  Views the current 3D model already explains get more say in the refit. renders, images: (V, H, W, 3) -> (V,).
  """
  l1 = jnp.mean(jnp.abs(renders - images), axis=(1, 2, 3))
  return jax.nn.softmax(-temperature * l1)


def default_photometric_loss(pred: jax.Array, target: jax.Array, lambda_dssim: float = 0.2,
                             feedback_loss: str = "l1", padding: str = "valid") -> jax.Array:
  """(1 - lambda) L1 + lambda (1 - SSIM) of one view (`splatshot_jax.metrics`), differentiated w.r.t. target.

  pred: (H, W, 3) the (no-grad) render; target: (H, W, 3) the decoded x0. feedback_loss "l1" (official): same
  value, but the SSIM term is a constant (stop_gradient), so the gradient is (1 - lambda) sign(target - pred) / n
  with n = H W 3; "l1_ssim": both terms differentiated.
  """
  if feedback_loss not in FEEDBACK_LOSSES:
    raise ValueError(f"GuidanceConfig.feedback_loss={feedback_loss!r}; expected one of {FEEDBACK_LOSSES}")
  l1 = metrics.l1(pred, target)
  ssim = metrics.ssim(pred, target, padding=padding)
  if feedback_loss == "l1":
    ssim = jax.lax.stop_gradient(ssim)
  return (1.0 - lambda_dssim) * l1 + lambda_dssim * (1.0 - ssim)


def discrepancy_grad(
    images: jax.Array, renders: jax.Array, decode_vjp: Callable, loss_fn: Callable
) -> tuple[jax.Array, jax.Array]:
  """dL/dx0 of L = sum_v loss(sg[render_v], decode(x0)_v), through the decoder's VJP (official step 5).

  The loss is per view (each view's mean), summed over views, so a view's gradient does not shrink with V.
  Args:
    images: (V, H, W, 3) decode(x0), the primal output of the VJP.
    renders: (V, H, W, 3) renders of the refit model; constants (no gradient into the 3D model).
    decode_vjp: the VJP of decode at x0 (from `jax.vjp`), so decode runs once per step, not twice.
    loss_fn: (pred (H, W, 3), target (H, W, 3)) -> ().
  Returns:
    (L (), dL/dx0 (V, h, w, c)).
  """
  renders = jax.lax.stop_gradient(renders)
  total = lambda imgs: jnp.sum(jax.vmap(loss_fn)(renders, imgs))
  loss, grad_images = jax.value_and_grad(total)(images)
  (grad_x0,) = decode_vjp(grad_images)
  return loss, grad_x0


def correct_eps(
    eps_tgt: jax.Array, grad_x0: jax.Array, alpha: jax.Array, sigma: jax.Array, omega: float, weight: float
) -> tuple[jax.Array, jax.Array]:
  """eps = eps_tgt - w dL/deps_tgt with dL/deps_tgt = -(sigma/alpha) omega dL/dx0 (official step 6).

  x0 = (z - sigma eps_smart)/alpha and eps_smart = eps_gt + omega (eps_tgt - eps_src) (omega = 1 without SDI),
  hence dx0/deps_tgt = -(sigma/alpha) omega. Returns (corrected eps (V, h, w, c), the applied shift w dL/deps).
  """
  grad_eps = -(sigma / alpha) * omega * grad_x0
  shift = weight * grad_eps
  return eps_tgt - shift, shift


def ddim_step(schedule: ddim.DDIMSchedule, eps: jax.Array, t: jax.Array, z: jax.Array) -> jax.Array:
  """Deterministic DDIM (eta 0) z_t -> z_{t'} with the corrected noise. (V, h, w, c) -> (V, h, w, c)."""
  return ddim.ddim_step(schedule, eps, t, z)


# ----------------------------------------------------------------------------------------------
# The step.


def _one_round(state, t, prior, schedule, cameras, cond_photo, cond_template, scene, cfg, refit_iters):
  """Steps 1-6 once at timestep t. Returns (z', corrected x0, state with the new model/rng/refit state, aux)."""
  alpha, sigma = ddim.alpha_sigma(schedule, t)

  # 1. Noise predictions; SDI adds the photo-vs-template difference to the kept noise.
  eps_tgt = prior.eps(state.z, t, cond_photo)
  if cfg.sdi:
    eps_src = prior.eps(state.z, t, cond_template)
    eps_smart = state.eps_gt + cfg.sdi_omega * (eps_tgt - eps_src)
    omega = cfg.sdi_omega
  else:
    eps_smart, omega = eps_tgt, 1.0

  # 2. Clean estimate, decoded once; the VJP is reused for the discrepancy gradient.
  x0 = predict_x0(schedule, state.z, eps_smart, t)
  images, decode_vjp = jax.vjp(prior.decode, x0)
  num_views = images.shape[0]

  if not cfg.feedback:
    eps = eps_tgt
    aux = StepAux(images, jnp.zeros_like(images), jnp.full((num_views,), 1.0 / num_views), jnp.zeros(()),
                  jnp.zeros(()))
    return ddim_step(schedule, eps, t, state.z), predict_x0(schedule, state.z, eps, t), state, aux

  # 3-4. Confidence of each view under the current model, then the refit to the decoded views.
  rng, refit_key = jax.random.split(state.rng)
  targets = jax.lax.stop_gradient(images)
  weights = confidence_weights(scene.render(state.model, cameras), targets, cfg.confidence_temperature)
  refit_state, refit_iter = state.refit_state, state.refit_iter
  if refit_state is None:
    model = scene.refit(state.model, cameras, targets, weights, refit_key, refit_iters)
  else:  # one optimiser across the run's refits (official); the draws continue those of the refits before
    model, refit_state = scene.refit_with_state(state.model, cameras, targets, weights, refit_key, refit_iters,
                                                refit_state, refit_iter)
    refit_iter = refit_iter + refit_iters

  # 5-6. Photometric discrepancy -> dL/dx0 through the decoder -> dL/deps -> corrected eps.
  renders = scene.render(model, cameras)
  loss_fn = scene.photometric_loss or functools.partial(
      default_photometric_loss, lambda_dssim=cfg.lambda_dssim, feedback_loss=cfg.feedback_loss,
      padding=cfg.ssim_padding)
  loss, grad_x0 = discrepancy_grad(images, renders, decode_vjp, loss_fn)
  eps, shift = correct_eps(eps_tgt, grad_x0, alpha, sigma, omega, cfg.guidance_weight)

  aux = StepAux(images, renders, weights, loss, jnp.sqrt(jnp.mean(jnp.square(shift))))
  z_prev = ddim_step(schedule, eps, t, state.z)
  new = state.replace(model=model, rng=rng, refit_state=refit_state, refit_iter=refit_iter)
  return z_prev, predict_x0(schedule, state.z, eps, t), new, aux


@functools.partial(jax.jit, static_argnames=("scene", "cfg"))
def splatshot_step(
    state: SplatShotState,
    t: jax.Array,
    *,
    prior: Pytree,
    schedule: ddim.DDIMSchedule,
    cameras: Pytree,
    cond_photo: Pytree,
    cond_template: Pytree = None,
    scene: Scene3D | None = None,
    cfg: GuidanceConfig = GuidanceConfig(),
    refit_iters: jax.Array | int | None = None,
) -> tuple[SplatShotState, StepAux]:
  """One SplatShot denoising step for all V views: z_t -> z_{t'} (t' = t - T/n), plus the refit model.

  Args:
    state: SplatShotState at timestep t.
    t: () int32 train timestep.
    prior: a `Prior` pytree (eps / encode / decode), e.g. `AnalyticPrior` or the SD-1.5 denoiser.
    schedule: the DDIM schedule.
    cameras: the V cameras (e.g. a `Camera` batch), passed through to `scene`.
    cond_photo: prior conditioning with the photo (leading V axis on arrays).
    cond_template: prior conditioning with the base template (needed when cfg.sdi).
    scene: static `Scene3D` (render + refit); needed when cfg.feedback.
    cfg: static GuidanceConfig.
    refit_iters: () int32 refit length of this step, traced (one compile for every length); None:
      cfg.refit_iters. The sampler passes cfg.refit_iters_first at the first step (the refit starts from the
      base template there).
  Returns:
    (next state, StepAux of this step).
  """
  if cfg.feedback and scene is None:
    raise ValueError("splatshot_step: cfg.feedback needs a Scene3D (render + refit)")
  if cfg.sdi and cond_template is None:
    raise ValueError("splatshot_step: cfg.sdi needs cond_template (the template's conditioning)")
  if refit_iters is None:
    refit_iters = cfg.refit_iters
  refit_iters = jnp.asarray(refit_iters, jnp.int32)
  alpha, sigma = ddim.alpha_sigma(schedule, t)
  for r in range(cfg.self_recurrence):  # static, default 1: unrolled
    z_prev, x0, state, aux = _one_round(
        state, t, prior, schedule, cameras, cond_photo, cond_template, scene, cfg, refit_iters
    )
    if r + 1 < cfg.self_recurrence:
      # Self-recurrence: back to the same t from the corrected x0 with fresh noise, and again.
      rng, key = jax.random.split(state.rng)
      z = alpha * x0 + sigma * jax.random.normal(key, x0.shape, x0.dtype)
      state = state.replace(z=z, rng=rng)
      refit_iters = jnp.asarray(cfg.refit_iters, jnp.int32)
  return state.replace(z=z_prev), aux


# ----------------------------------------------------------------------------------------------
# The 3D Gaussian scene used by the paper.


def gaussian_scene(fit_cfg=None, *, background=(0.0, 0.0, 0.0), render_kwargs=()) -> Scene3D:
  """Scene3D of 3D Gaussians: `render_views` for the renders, `fit.fit_steps` (one view per iteration drawn
  according to the confidences, loss scaled by them, per fit_cfg.view_weighting; fit_cfg.views_per_iter for more)
  for the refit, its length a traced loop bound, its Adam state optionally carried. Black background as official.

  Args:
    fit_cfg: a `fit.FitConfig` (its num_iters is ignored: the step gives the length); None: the official refit
      (`fit.official_refit_config`: per-group Adam LRs, eps 1e-15, all groups trainable, no densification,
      min-max view weights, 'valid' SSIM, α clamp 0.999), with `background` and `render_kwargs` added.
    background: (3,) RGB of the renders (official: black).
    render_kwargs: ((name, value), ...) static rasterizer settings of the renders (pair_budget, alpha_max, ...);
      the refit's are fit_cfg.render_kwargs.
  """
  if fit_cfg is None:
    fit_cfg = fit_lib.official_refit_config(background=tuple(background))
    fit_cfg = dataclasses.replace(fit_cfg, render_kwargs=tuple(dict(fit_cfg.render_kwargs, **dict(render_kwargs))
                                                                .items()))
    render_kwargs = fit_cfg.render_kwargs
  return Scene3D(
      render=functools.partial(_render_gaussians, background=tuple(background), render_kwargs=tuple(render_kwargs)),
      refit=functools.partial(_refit_gaussians, fit_cfg=fit_cfg),
      init_refit_state=functools.partial(_init_refit_state, fit_cfg=fit_cfg),
      refit_with_state=functools.partial(_refit_gaussians_with_state, fit_cfg=fit_cfg),
  )


def refit_scene(refit: dict, *, mesh=None) -> Scene3D:
  """The Gaussian Scene3D of a config's `refit` section: fit.FitConfig fields plus `alpha_max` (the rasterizer's
  α clamp of the refit and of the renders) and `backend` (the compositor of both).

  One Scene3D per distinct setting in a process (cached): the jitted step is keyed on it, so runs share its
  compilations. Raises ValueError naming an unknown field.
  """
  values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in dict(refit).items()}
  alpha_max = float(values.pop("alpha_max", ALPHA_MAX))
  known = {f.name for f in dataclasses.fields(fit_lib.FitConfig)} - {"num_iters", "mesh", "render_kwargs"}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"config.refit: unknown field(s) {unknown}; expected a subset of {sorted(known | {'alpha_max'})}")
  background = tuple(float(b) for b in values.get("background", (0.0, 0.0, 0.0)))
  values["background"] = background
  render_kwargs = (("alpha_max", alpha_max), ("backend", values.get("backend", "auto")))
  return _cached_scene(fit_lib.FitConfig(**values, mesh=mesh, render_kwargs=render_kwargs[:1]), background,
                       render_kwargs)


@functools.lru_cache(maxsize=None)
def _cached_scene(fit_cfg, background, render_kwargs) -> Scene3D:
  return gaussian_scene(fit_cfg, background=background, render_kwargs=render_kwargs)


def _render_gaussians(gaussians, cameras, *, background, render_kwargs):
  return render_views(gaussians, cameras, background=jnp.asarray(background, jnp.float32),
                      **dict(render_kwargs)).rgb


def _refit_gaussians(gaussians, cameras, images, view_weights, rng, num_iters, *, fit_cfg):
  return fit_lib.fit_steps(gaussians, cameras, images, fit_cfg, num_iters, view_weights=view_weights,
                           rng=rng).gaussians


def _init_refit_state(gaussians, *, fit_cfg):
  return fit_lib.make_optimizer(fit_cfg).init(fit_lib.split_params(gaussians))


def _refit_gaussians_with_state(gaussians, cameras, images, view_weights, rng, num_iters, opt_state, start_iter,
                                *, fit_cfg):
  out = fit_lib.fit_steps(gaussians, cameras, images, fit_cfg, num_iters, view_weights=view_weights, rng=rng,
                          opt_state=opt_state, start_iter=start_iter)
  return out.gaussians, out.opt_state
