"""Fitting 3D Gaussians to posed images: the refit inside every SplatShot step, and template building.

`fit` runs N Adam iterations in one `lax.scan`. Each iteration renders one view (or a few), drawn
uniformly or according to per-view weights (the paper's confidence weights), and minimises
0.8·L1 + 0.2·(1 − SSIM) scaled by the view's weight. Learning rates are the usual 3DGS/gsplat
per-parameter-group ones (the official SplatShot refit uses the same numbers, eps 1e-15, constant).

The official refit (`official_refit_config`): confidences min-max rescaled to [0, 1] (all equal → all ones),
the rescaled values are both the draw probabilities (normalised) and the loss scale, so the least confident
view is never drawn (`view_weighting="minmax"`); SSIM with 'valid' padding; gsplat's α clamp 0.999; and one
Adam state carried across all the refits of a run (`fit_steps(..., opt_state=...)`, threaded by the sampler).

Densification (clone / split / prune, gsplat's default schedule) changes the number of Gaussians,
which XLA cannot do inside one compiled loop. `fit_with_densification` therefore runs `fit` in
chunks of `refine_every` iterations, accumulates screen-space gradient statistics inside each chunk,
and edits the set on the host in between. The Adam moments and step count travel across chunks
(rows follow their Gaussian; new clones/children start at zero, as in gsplat), and each chunk is told
its global start iteration, so the SH and learning-rate schedules run over the whole fit. Sizes are
padded up to a bucket (dead Gaussians with zero opacity, which the renderer culls) so the chunk is
recompiled only when a bucket is outgrown.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from splatshot_jax import metrics
from splatshot_jax.device import sharding
from splatshot_jax.cameras import Camera
from splatshot_jax.gaussians import Gaussians
from splatshot_jax.render import render

log = logging.getLogger(__name__)

PARAM_GROUPS = ("means", "scales", "quats", "opacities", "sh0", "shN")


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Static settings of a fit (hashable: it is a static argument of the jitted loop).

  Learning rates are gsplat's defaults for a scene of extent 1 (means 1.6e-4 · scene_scale).
  """

  num_iters: int = 500
  lr_means: float = 1.6e-4
  lr_scales: float = 5e-3
  lr_quats: float = 1e-3
  lr_opacities: float = 5e-2
  lr_sh0: float = 2.5e-3
  lr_shN: float = 2.5e-3 / 20
  scene_scale: float = 1.0  # means' LR is multiplied by this, as in gsplat
  lambda_dssim: float = 0.2
  # Views per iteration, B: B distinct views drawn with probability ∝ view weight (without replacement when
  # B > 1), rendered in one call, their weighted losses summed, one Adam step.
  views_per_iter: int = 1
  # Learning rates for B > 1: "none" (as for B = 1) or "sqrt" (every group's LR × √B, gsplat's batch rule).
  lr_batch_scaling: str = "none"
  # Divide the iteration count by B (rounded up), so a batched fit sees as many views as an unbatched one.
  equal_views_seen: bool = False
  # A jax.sharding.Mesh with a "views" axis (`splatshot_jax.device.sharding`): an iteration's B views are split across
  # its devices and their gradients summed. None or B not divisible by its size: one device.
  mesh: object = None
  frozen: tuple[str, ...] = ()  # names from PARAM_GROUPS kept fixed
  background: tuple[float, float, float] = (0.0, 0.0, 0.0)
  sh_degree: int | None = None  # None: all the SH the Gaussians carry
  # Progressive SH as in 3DGS: one more degree every this many iterations (0: off).
  sh_degree_interval: int = 0
  # Means LR decays exponentially to lr_means · means_lr_final over `schedule_iters` iterations
  # (gsplat: 0.01 over the whole fit; 1.0 = constant, the refit's setting).
  means_lr_final: float = 1.0
  schedule_iters: int = 0  # 0: num_iters (fit_with_densification sets the whole fit's length)
  # Rasterizer settings forwarded to `render`.
  render_kwargs: tuple[tuple[str, object], ...] = ()
  # Compositor of `render` ("auto" | "xla" | "triton" | "triton_interpret"); a "backend" entry of
  # render_kwargs takes precedence.
  backend: str = "auto"
  # How per-view weights w (the confidences) become draw probabilities p and loss scales s:
  # "minmax" (official refit): m = (w - min w) / (max w - min w) (all equal: m = 1); p = m / Σ m, s = m.
  # "normalized" (a plain weighted fit; `official_refit_config` sets "minmax"): p = w / Σ w, s = w / max w.
  view_weighting: str = "normalized"
  # SSIM padding of the loss: "same" (3DGS, template fits) or "valid" (the official refit's fused SSIM).
  ssim_padding: str = "same"


VIEW_WEIGHTINGS = ("minmax", "normalized")
SSIM_PADDINGS = ("same", "valid")


def official_refit_config(**overrides) -> FitConfig:
  """FitConfig of the official SplatShot refit: per-group Adam LRs (eps 1e-15, constant), all groups trainable,
  no densification, min-max view weights, 'valid' SSIM, gsplat's α clamp 0.999 (a render_kwargs entry)."""
  cfg = FitConfig(view_weighting="minmax", ssim_padding="valid", render_kwargs=(("alpha_max", 0.999),))
  return dataclasses.replace(cfg, **overrides)


def view_weighting(view_weights: jax.Array, mode: str) -> tuple[jax.Array, jax.Array]:
  """(draw probabilities (V,), loss scales (V,)) from per-view weights (V,) >= 0 (`FitConfig.view_weighting`)."""
  if mode == "minmax":
    lo, hi = jnp.min(view_weights), jnp.max(view_weights)
    span = hi - lo
    m = jnp.where(span > 0, (view_weights - lo) / jnp.where(span > 0, span, 1.0), 1.0)
    return m / jnp.sum(m), m
  if mode == "normalized":
    return view_weights / jnp.sum(view_weights), view_weights / jnp.max(view_weights)
  raise ValueError(f"FitConfig.view_weighting={mode!r}; expected one of {VIEW_WEIGHTINGS}")


@struct.dataclass
class FitResult:
  """What a fit returns.

  Attributes:
    gaussians: the fitted Gaussians.
    losses: (num_iters,) float32 weighted photometric loss per iteration.
    overflow: () int32, the largest tile/pair overflow seen by the rasterizer (0 = exact).
    grad2d_sum: (N,) float32, summed screen-space positional gradient norms (densification).
    visible_count: (N,) float32, iterations in which each Gaussian was visible.
  """

  gaussians: Gaussians
  losses: jax.Array
  overflow: jax.Array
  grad2d_sum: jax.Array
  visible_count: jax.Array
  opt_state: optax.OptState = None


def split_params(g: Gaussians) -> dict[str, jax.Array]:
  """The six optimiser groups (PARAM_GROUPS) of a Gaussians' leaves, as `make_optimizer(cfg).init` expects."""
  return {
      "means": g.means,
      "scales": g.log_scales,
      "quats": g.quats,
      "opacities": g.opacity_logits,
      "sh0": g.sh[:, :1],
      "shN": g.sh[:, 1:],
  }


def _join_params(p: dict[str, jax.Array]) -> Gaussians:
  return Gaussians(
      means=p["means"],
      log_scales=p["scales"],
      quats=p["quats"],
      opacity_logits=p["opacities"],
      sh=jnp.concatenate([p["sh0"], p["shN"]], axis=1),
  )


LR_BATCH_SCALINGS = ("none", "sqrt")


def lr_batch_scale(cfg: FitConfig) -> float:
  """The factor every group's learning rate is multiplied by for cfg.views_per_iter views per iteration."""
  if cfg.lr_batch_scaling not in LR_BATCH_SCALINGS:
    raise ValueError(f"FitConfig.lr_batch_scaling={cfg.lr_batch_scaling!r}; expected one of {LR_BATCH_SCALINGS}")
  if cfg.views_per_iter < 1:
    raise ValueError(f"FitConfig.views_per_iter={cfg.views_per_iter}; expected an int >= 1")
  return float(np.sqrt(cfg.views_per_iter)) if cfg.lr_batch_scaling == "sqrt" else 1.0


def num_iterations(cfg: FitConfig, num_iters):
  """Iterations a fit of `num_iters` runs: ceil(num_iters / B) with cfg.equal_views_seen, else num_iters.

  num_iters may be a Python int (static fit) or a traced int32 (`fit_steps`)."""
  if not cfg.equal_views_seen or cfg.views_per_iter == 1:
    return num_iters
  return (num_iters + cfg.views_per_iter - 1) // cfg.views_per_iter


def make_optimizer(cfg: FitConfig) -> optax.GradientTransformation:
  """Adam per parameter group; eps 1e-15 as in 3DGS (gradients are tiny), frozen groups get zero.

  Every LR is multiplied by `lr_batch_scale(cfg)` (1 unless lr_batch_scaling is "sqrt" and B > 1)."""
  scale = lr_batch_scale(cfg)
  means_lr = cfg.lr_means * cfg.scene_scale * scale
  if cfg.means_lr_final != 1.0:
    # optax counts the group's own updates, which carry across densification chunks.
    means_lr = optax.exponential_decay(means_lr, transition_steps=cfg.schedule_iters or cfg.num_iters,
                                       decay_rate=cfg.means_lr_final)
  lrs = {
      "means": means_lr,
      "scales": cfg.lr_scales * scale,
      "quats": cfg.lr_quats * scale,
      "opacities": cfg.lr_opacities * scale,
      "sh0": cfg.lr_sh0 * scale,
      "shN": cfg.lr_shN * scale,
  }
  unknown = set(cfg.frozen) - set(PARAM_GROUPS)
  if unknown:
    raise ValueError(f"FitConfig.frozen: unknown group(s) {sorted(unknown)}; expected names from {PARAM_GROUPS}")
  transforms = {
      name: optax.set_to_zero() if name in cfg.frozen else optax.adam(lr, eps=1e-15)
      for name, lr in lrs.items()
  }
  return optax.multi_transform(transforms, {name: name for name in PARAM_GROUPS})


def view_loss(
    g: Gaussians, camera: Camera, image: jax.Array, cfg: FitConfig, sh_degree: jax.Array | int | None = None
) -> tuple[jax.Array, jax.Array]:
  """Photometric loss of one view. Returns (loss (), overflow () int32).

  Args:
    g: Gaussians.
    camera: a single Camera.
    image: (H, W, 3) float32 target in [0, 1].
  """
  out = render(
      g,
      camera,
      background=jnp.asarray(cfg.background, jnp.float32),
      sh_degree=cfg.sh_degree if sh_degree is None else sh_degree,
      **{"backend": cfg.backend, **dict(cfg.render_kwargs)},
  )
  loss = metrics.photometric_loss(out.rgb, image, lambda_dssim=cfg.lambda_dssim, padding=cfg.ssim_padding)
  return loss, out.overflow_total


def _screen_grad_norm(grad_means: jax.Array, g: Gaussians, camera: Camera) -> tuple[jax.Array, jax.Array]:
  """Approximate ‖∂L/∂(NDC mean)‖ per Gaussian from the world-space mean gradient.

  gsplat accumulates the gradient of the 2D (pixel) means; our renderer hides them inside the
  projection, so we use the chain rule through the pinhole model: a lateral world displacement δ at
  depth z moves the projection by f·δ/z pixels, hence ∂L/∂pixel ≈ ∂L/∂world · z / f, and NDC units
  multiply by W/2 as in gsplat. Returns (grad_norm (N,), visible (N,) bool).
  """
  R = camera.viewmat[:3, :3]
  t = camera.viewmat[:3, 3]
  cam_pts = g.means @ R.T + t
  z = cam_pts[:, 2]
  grad_cam = grad_means @ R.T  # rotate the gradient into camera axes
  lateral = jnp.linalg.norm(grad_cam[:, :2], axis=-1)
  grad_px = lateral * jnp.maximum(z, 1e-6) / camera.K[0, 0]
  visible = (z > 0.01) & (jnp.abs(grad_cam).sum(-1) > 0)
  return grad_px * camera.width / 2.0, visible


@functools.partial(jax.jit, static_argnames=("cfg",))
def fit(
    gaussians: Gaussians,
    cameras: Camera,
    images: jax.Array,
    cfg: FitConfig,
    *,
    view_weights: jax.Array | None = None,
    rng: jax.Array,
    start_iter: jax.Array | int = 0,
    opt_state: optax.OptState | None = None,
) -> FitResult:
  """Optimises Gaussians to V posed images for `cfg.num_iters` iterations (one `lax.scan`).

  Args:
    gaussians: initial Gaussians, N of them.
    cameras: Camera batch with leading dim V (shared width/height).
    images: (V, H, W, 3) float32 in [0, 1], H, W = cameras.height, cameras.width.
    cfg: static FitConfig.
    view_weights: optional (V,) float32 ≥ 0 confidence per view, turned into draw probabilities and loss
      scales by `cfg.view_weighting` ("minmax": the official refit). None: uniform draws, unit weights.
    rng: PRNG key for view sampling.
    start_iter: global index of the first iteration (traced; drives the SH schedule when the fit runs
      in chunks).
    opt_state: optimiser state to continue from (a previous FitResult's, rows matching `gaussians`);
      None: fresh Adam moments.
  Returns:
    FitResult (its opt_state continues the optimisation).
  """
  step, init = _fit_iteration(gaussians, cameras, images, cfg, view_weights, opt_state)
  n_iters = num_iterations(cfg, cfg.num_iters)
  keys = jax.random.split(rng, n_iters)
  (params, opt_state, grad2d_sum, visible_count, overflow), losses = jax.lax.scan(
      step, init, (start_iter + jnp.arange(n_iters), keys)
  )
  return FitResult(_join_params(params), losses, overflow, grad2d_sum, visible_count, opt_state)


@functools.partial(jax.jit, static_argnames=("cfg",))
def fit_steps(
    gaussians: Gaussians,
    cameras: Camera,
    images: jax.Array,
    cfg: FitConfig,
    num_iters: jax.Array | int,
    *,
    view_weights: jax.Array | None = None,
    rng: jax.Array,
    start_iter: jax.Array | int = 0,
    opt_state: optax.OptState | None = None,
) -> FitResult:
  """`fit` with a traced iteration count (cfg.num_iters is ignored): one compile for every length.

  A `lax.fori_loop` with a dynamic trip count (never differentiated), so the refit inside the SplatShot step
  compiles once whatever the per-step schedule (1000 iterations at the first step, 500 later). Same iterations
  and draws as `fit` with num_iters: iteration i uses fold_in(rng, start_iter + i), which is split(rng, n)[i]
  under JAX's default (partitionable) threefry when start_iter = 0. So two calls of n iterations, the second
  with start_iter = n and the first's opt_state, are one call of 2n (the official Adam carried across refits).

  Args:
    num_iters: () int32, may be traced; `num_iterations(cfg, num_iters)` iterations run.
    (the rest as `fit`)
  Returns:
    FitResult whose `losses` is (1,): the last iteration's loss (0 when no iteration ran).
  """
  step, init = _fit_iteration(gaussians, cameras, images, cfg, view_weights, opt_state)
  start_iter = jnp.asarray(start_iter, jnp.int32)

  def body(i, carry):
    carry, loss = step(carry[:-1], (start_iter + i, jax.random.fold_in(rng, start_iter + i)))
    return carry + (loss,)

  n_iters = jnp.asarray(num_iterations(cfg, jnp.asarray(num_iters, jnp.int32)), jnp.int32)
  params, opt_state, grad2d_sum, visible_count, overflow, loss = jax.lax.fori_loop(
      0, n_iters, body, init + (jnp.zeros((), jnp.float32),))
  return FitResult(_join_params(params), loss[None], overflow, grad2d_sum, visible_count, opt_state)


def draw_views(key: jax.Array, probs: jax.Array, num: int) -> jax.Array:
  """(num,) int32 view indices drawn ∝ probs (V,): num = 1 one draw (the fit as it always was); num > 1 distinct
  views (Gumbel top-k on the log probabilities: sampling without replacement, zero-probability views last)."""
  return jax.random.choice(key, probs.shape[0], (num,), p=probs, replace=num == 1)


def _fit_iteration(gaussians, cameras, images, cfg, view_weights, opt_state):
  """One Adam iteration of a fit as (step, init): step((params, opt_state, grad2d_sum, visible_count, overflow),
  (global iteration, key)) -> (carry, loss ()), for `lax.scan` (`fit`) or `lax.fori_loop` (`fit_steps`)."""
  num_views = images.shape[0]
  if not 1 <= cfg.views_per_iter <= num_views:
    raise ValueError(f"FitConfig.views_per_iter={cfg.views_per_iter}: expected 1..{num_views} (the number of "
                     "views; an iteration draws distinct views)")
  if view_weights is None:
    view_weights = jnp.ones((num_views,), jnp.float32)
  if cfg.ssim_padding not in SSIM_PADDINGS:
    raise ValueError(f"FitConfig.ssim_padding={cfg.ssim_padding!r}; expected one of {SSIM_PADDINGS}")
  probs, loss_scale = view_weighting(view_weights, cfg.view_weighting)
  optimizer = make_optimizer(cfg)
  params = split_params(gaussians)
  if opt_state is None:
    opt_state = optimizer.init(params)
  max_degree = gaussians.sh_degree if cfg.sh_degree is None else cfg.sh_degree

  def per_view(p, idx, degree, cams, imgs):
    g = _join_params(p)
    # Views one after another (lax.map), not vmap: with one view per iteration the vmapped version
    # (batched view index inside the rasterizer's loops) measured 2.6x slower per iteration on CPU.
    return jax.lax.map(lambda i: view_loss(g, cams[i], imgs[i], cfg, sh_degree=degree), idx)

  mesh = cfg.mesh if cfg.mesh is not None and cfg.views_per_iter % cfg.mesh.size == 0 else None
  # Each device renders its share of the B drawn views; differentiating sums the parameters' gradients.
  per_view = sharding.over_views(per_view, mesh, (False, True, False, False, False))

  def loss_fn(p, idx, degree):
    losses, overflow = per_view(p, idx, degree, cameras, images)
    # Summed over the B views (B = 1: that view's loss), so the step's gradient is the sum of the views'.
    return jnp.sum(losses * loss_scale[idx]), jnp.max(overflow)

  def step(carry, it_key):
    p, state, grad2d_sum, visible_count, overflow = carry
    it, key = it_key
    idx = draw_views(key, probs, cfg.views_per_iter)
    degree = max_degree
    if cfg.sh_degree_interval > 0:
      degree = jnp.minimum(it // cfg.sh_degree_interval, max_degree)
    (loss, ov), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, idx, degree)
    gnorm, vis = _screen_grad_norm(grads["means"], _join_params(p), cameras[idx[0]])
    updates, state = optimizer.update(grads, state, p)
    p = optax.apply_updates(p, updates)
    carry = (p, state, grad2d_sum + jnp.where(vis, gnorm, 0.0), visible_count + vis, jnp.maximum(overflow, ov))
    return carry, loss

  n = gaussians.num
  init = (params, opt_state, jnp.zeros((n,)), jnp.zeros((n,)), jnp.zeros((), jnp.int32))
  return step, init


# ----------------------------------------------------------------------------------------------
# Densification (host side, between jitted chunks).


@dataclasses.dataclass(frozen=True)
class DensifyConfig:
  """gsplat's DefaultStrategy schedule and thresholds (scene-scale relative)."""

  refine_start_iter: int = 500
  refine_stop_iter: int = 15_000
  refine_every: int = 100
  reset_every: int = 3000
  grow_grad2d: float = 2e-4
  grow_scale3d: float = 0.01
  prune_opa: float = 0.005
  prune_scale3d: float = 0.1
  max_gaussians: int = 300_000
  bucket: int = 8192  # N is padded up to a multiple of this to limit recompiles


DEAD_OPACITY_LOGIT = -30.0  # sigmoid ≈ 1e-13: culled by the renderer (o < 1/255)


def _pad_to(g: Gaussians, n: int) -> Gaussians:
  """Appends dead Gaussians (zero opacity, tiny scale) up to n."""
  extra = n - g.num
  if extra <= 0:
    return g
  k = g.sh.shape[1]
  return Gaussians(
      means=np.concatenate([g.means, np.zeros((extra, 3), np.float32)]),
      log_scales=np.concatenate([g.log_scales, np.full((extra, 3), -10.0, np.float32)]),
      quats=np.concatenate([g.quats, np.tile(np.float32([[1, 0, 0, 0]]), (extra, 1))]),
      opacity_logits=np.concatenate([g.opacity_logits, np.full((extra,), DEAD_OPACITY_LOGIT, np.float32)]),
      sh=np.concatenate([g.sh, np.zeros((extra, k, 3), np.float32)]),
  )


def _take(g: Gaussians, idx: np.ndarray) -> Gaussians:
  return jax.tree.map(lambda a: np.asarray(a)[idx], g)


def _concat(a: Gaussians, b: Gaussians) -> Gaussians:
  return jax.tree.map(lambda x, y: np.concatenate([np.asarray(x), np.asarray(y)]), a, b)


def _quat_to_rotmat(q: np.ndarray) -> np.ndarray:
  q = q / np.linalg.norm(q, axis=-1, keepdims=True)
  w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
  return np.stack(
      [
          np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
          np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
          np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
      ],
      -2,
  )


def densify_and_prune(
    g: Gaussians,
    grad2d_mean: np.ndarray,
    cfg: DensifyConfig,
    scene_scale: float,
    rng: np.random.Generator,
    prune_big: bool,
) -> tuple[Gaussians, dict[str, int]]:
  """One gsplat refinement: clone small high-gradient Gaussians, split large ones, prune faint/huge.

  Args:
    g: live Gaussians (no padding), numpy leaves.
    grad2d_mean: (N,) mean screen-space gradient norm over the iterations a Gaussian was visible.
  Returns:
    (the new Gaussians, counts {cloned, split, pruned}, source (N',) int64: the row of `g` each new
    row continues, -1 for clones and split children, which start with fresh optimiser moments).
  """
  g = jax.tree.map(np.asarray, g)
  scales = np.exp(g.log_scales)
  max_scale = scales.max(-1)
  grow = grad2d_mean > cfg.grow_grad2d
  small = max_scale <= cfg.grow_scale3d * scene_scale
  room = cfg.max_gaussians - g.num
  clone_idx = np.nonzero(grow & small)[0][: max(room, 0)]
  split_idx = np.nonzero(grow & ~small)[0][: max(room - len(clone_idx), 0)]

  # Split: two samples from each big Gaussian, scales shrunk by 1/1.6 (3DGS).
  parents = _take(g, split_idx)
  rot = _quat_to_rotmat(parents.quats)
  children = []
  for _ in range(2):
    offset = rng.normal(size=(len(split_idx), 3)) * np.exp(parents.log_scales)
    child = dataclasses.replace(
        parents,
        means=(parents.means + np.einsum("nij,nj->ni", rot, offset)).astype(np.float32),
        log_scales=(parents.log_scales - np.log(1.6)).astype(np.float32),
    )
    children.append(child)
  keep = np.ones(g.num, bool)
  keep[split_idx] = False
  out = _concat(_concat(_take(g, np.nonzero(keep)[0]), _take(g, clone_idx)), _concat(*children))
  source = np.concatenate([np.nonzero(keep)[0], np.full(len(clone_idx) + 2 * len(split_idx), -1)])

  opacity = 1.0 / (1.0 + np.exp(-out.opacity_logits))
  prune = opacity < cfg.prune_opa
  if prune_big:
    prune |= np.exp(out.log_scales).max(-1) > cfg.prune_scale3d * scene_scale
  out = _take(out, np.nonzero(~prune)[0])
  counts = {"cloned": len(clone_idx), "split": len(split_idx), "pruned": int(prune.sum())}
  return out, counts, source[~prune]


def _map_rows(opt_state, num: int, fn: Callable[[np.ndarray], np.ndarray]):
  """Applies fn to every per-Gaussian array (leading dim `num`) of an optimiser state; scalars such
  as Adam's step count are kept."""
  return jax.tree.map(lambda a: fn(np.asarray(a)) if np.ndim(a) and np.shape(a)[0] == num else a, opt_state)


def _rows_from(a: np.ndarray, source: np.ndarray) -> np.ndarray:
  """Rows a[source], zeros where source is -1."""
  out = a[np.maximum(source, 0)]
  out[source < 0] = 0
  return out


def _zero_padded(a: np.ndarray, size: int) -> np.ndarray:
  """a with zero rows appended up to `size` rows (the moments of padding Gaussians)."""
  return np.concatenate([a, np.zeros((size - len(a),) + a.shape[1:], a.dtype)])


def reset_opacities(g: Gaussians, opt_state, prune_opa: float):
  """3DGS opacity reset: opacities clamped to 2·prune_opa so stale Gaussians can be pruned later;
  as in gsplat, the opacities' Adam moments restart with them (the other groups' are kept).

  Returns (Gaussians, opt_state); `opt_state` is `fit`'s (per-group `inner_states`), rows matching g.
  """
  cap = np.log(2 * prune_opa / (1 - 2 * prune_opa))
  g = dataclasses.replace(g, opacity_logits=np.minimum(g.opacity_logits, cap).astype(np.float32))
  inner = dict(opt_state.inner_states)
  inner["opacities"] = _map_rows(inner["opacities"], g.num, np.zeros_like)
  return g, opt_state._replace(inner_states=inner)


def fit_with_densification(
    gaussians: Gaussians,
    cameras: Camera,
    images: jax.Array,
    cfg: FitConfig,
    densify: DensifyConfig,
    *,
    rng: jax.Array,
    scene_scale: float = 1.0,
    progress: Callable[[int, dict], None] | None = None,
) -> tuple[Gaussians, np.ndarray, int]:
  """Runs `fit` for cfg.num_iters iterations with gsplat-style densification between chunks.

  Returns (gaussians (live only), losses (num_iters,), worst overflow).
  """
  np_rng = np.random.default_rng(int(jax.random.randint(rng, (), 0, 2**31 - 1)))
  g = jax.tree.map(np.asarray, gaussians)
  chunk = densify.refine_every
  chunk_cfg = dataclasses.replace(cfg, num_iters=chunk, schedule_iters=cfg.schedule_iters or cfg.num_iters)
  losses, worst_overflow, it, opt_state = [], 0, 0, None
  while it < cfg.num_iters:
    n_iters = min(chunk, cfg.num_iters - it)
    live = g.num
    size = -(-live // densify.bucket) * densify.bucket
    padded = _pad_to(g, size)
    if opt_state is not None:
      opt_state = _map_rows(opt_state, live, lambda a: _zero_padded(a, size))
    rng, key = jax.random.split(rng)
    result = fit(padded, cameras, images, dataclasses.replace(chunk_cfg, num_iters=n_iters), rng=key,
                 start_iter=it, opt_state=opt_state)
    it += n_iters
    g = _take(jax.tree.map(np.asarray, result.gaussians), np.arange(live))
    opt_state = _map_rows(result.opt_state, size, lambda a: a[:live])
    losses.append(np.asarray(result.losses))
    worst_overflow = max(worst_overflow, int(result.overflow))
    stats = {"iter": it, "num": g.num, "loss": float(np.mean(losses[-1]))}
    if densify.refine_start_iter <= it < densify.refine_stop_iter and it % densify.refine_every == 0:
      count = np.asarray(result.visible_count)[:live]
      grad2d = np.asarray(result.grad2d_sum)[:live] / np.maximum(count, 1)
      g, counts, source = densify_and_prune(
          g, grad2d, densify, scene_scale, np_rng, prune_big=it > densify.reset_every
      )
      opt_state = _map_rows(opt_state, live, lambda a: _rows_from(a, source))
      stats.update(counts, num=g.num)
    if densify.reset_every and it % densify.reset_every == 0 and it < densify.refine_stop_iter:
      g, opt_state = reset_opacities(g, opt_state, densify.prune_opa)
    if progress is not None:
      progress(n_iters, stats)
  return jax.tree.map(jnp.asarray, g), np.concatenate(losses), worst_overflow
