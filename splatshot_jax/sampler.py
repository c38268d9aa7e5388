"""The SplatShot run: template renders -> noised latents -> 13 SplatShot steps -> avatar Gaussians.

Official run (`SamplerConfig` defaults): the release's own DDIM (`ddim.official_schedule`: linear betas,
timesteps 960, 920, ..., 0 without offset), 25 steps at strength 0.5 -> timesteps 480, 440, ..., 40, 0, the
last step returning x̂0; the refit's Adam state is carried through all 13 refits (in the loop's state).

  result = run_splatshot(prior, template, photo_cond, cfg, rng, scene=gaussian_scene(), template_cond=...)
  write_outputs(result, out_dir, ...)        # avatar.ply, base.ply, views, turntable, x0 grid, json

The loop over timesteps is a short Python loop (one jitted `splatshot_step` per timestep, compiled once: the
refit length, longer at the first step, is a traced argument) so that progress can be shown and per-step x0 images
kept on the host.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from splatshot_jax import errors, guidance
from splatshot_jax.diffusion import ddim
from splatshot_jax.io import interrupt

Pytree = Any


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Settings of one run (defaults: the paper's).

  Attributes:
    num_inference_steps: DDIM grid size n (official 25).
    strength: SDEdit strength s in [0, 1], the fraction of the schedule that is re-run (0: no step, the template
      renders are encoded and decoded; 1: the whole schedule), under both starts (official 0.5).
    start: "official": the run starts at grid index n - int(n (1 - s)), i.e. it re-runs the grid's last
      n - int(n (1 - s)) points: 13 steps 480 ... 0 at the paper setting. The release computes the index as
      int(n s), the same index at s = 0.5 (its only setting) but the opposite meaning elsewhere.
      "diffusers": `ddim.img2img_timesteps` (int(n s) steps: 12 from 441 on the checkpoint grid).
    schedule: "official" (`ddim.official_schedule`, what the released loop runs) or "checkpoint" (the weights
      folder's scheduler_config.json, i.e. the `schedule` argument of `run_splatshot`; SD-1.5's by default).
    guidance: the step's GuidanceConfig.
    thumbnail: longest side of the per-step x0 images kept on the host (0: full size). uint8.
    progress: show a tqdm bar over timesteps.
  """

  num_inference_steps: int = 25
  strength: float = 0.5
  start: str = "official"
  schedule: str = "official"
  guidance: guidance.GuidanceConfig = guidance.GuidanceConfig()
  thumbnail: int = 128
  progress: bool = True


@struct.dataclass
class SplatShotResult:
  """What a run returns.

  Attributes:
    gaussians: the avatar (the 3D model after the last refit; the base model when feedback is off).
    base: the base template's 3D model.
    final_images: (V, H, W, 3) float32 decode of the final latents, in [0, 1] (clipped).
    view_weights: (V,) float32 confidence of each final view under the avatar (softmax(-10 L1)).
    x0_images: (S, V, h, w, 3) uint8 decoded x0 at every step (thumbnails).
    renders: (S, V, h, w, 3) uint8 renders of the refit model at every step (zeros without feedback).
    discrepancy: (S,) float32 the step's photometric loss L (summed over views).
    eps_correction: (S,) float32 RMS of the eps correction w dL/deps.
    timesteps: (S,) int32 visited train timesteps.
  """

  gaussians: Pytree
  base: Pytree
  final_images: np.ndarray
  view_weights: np.ndarray
  x0_images: np.ndarray
  renders: np.ndarray
  discrepancy: np.ndarray
  eps_correction: np.ndarray
  timesteps: np.ndarray


def sampler_config(config) -> SamplerConfig:
  """SamplerConfig from a config's `sampler` and `guidance` sections (configs/splatshot_sd15.py layout).

  Raises ValueError naming the field when a section has a key the dataclasses do not know.
  """
  def build(cls, section, name):
    known = {f.name for f in dataclasses.fields(cls)}
    values = dict(section) if section is not None else {}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"config.{name}: unknown field(s) {unknown}; expected a subset of {sorted(known)}")
    return cls(**values)

  g = build(guidance.GuidanceConfig, config.get("guidance"), "guidance")
  s = dict(config.get("sampler") or {})
  s = build(SamplerConfig, {k: v for k, v in s.items() if k != "guidance"}, "sampler")
  return dataclasses.replace(s, guidance=g)


def _named_leaves(tree) -> list[tuple[str, Any]]:
  """[(field path, leaf)] of a pytree, for messages."""
  return [(jax.tree_util.keystr(path).lstrip("."), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


STARTS = ("official", "diffusers")


def sampler_timesteps(schedule: ddim.DDIMSchedule, strength: float, start: str = "official") -> np.ndarray:
  """(S,) int32 timesteps the run visits, descending (static: S sets the loop length; S = 0 at strength 0).

  strength is the fraction of the schedule that is re-run under both starts: "official" re-runs the grid's last
  n - int(n (1 - strength)) points (13 of 25 at 0.5: 480 ... 0 on the official grid), "diffusers" its last
  int(n strength) points (`ddim.img2img_timesteps`: 12 at 0.5).
  """
  if start not in STARTS:
    raise ValueError(f"SamplerConfig.start={start!r}; expected one of {STARTS}")
  if not 0.0 <= strength <= 1.0:
    raise ValueError(f"SamplerConfig.strength={strength} must be in [0, 1]")
  if start == "diffusers":
    return ddim.img2img_timesteps(schedule, strength)
  n = schedule.num_inference_steps
  return np.asarray(schedule.timesteps)[int(n * (1.0 - strength)):].astype(np.int32)


def resolve_schedule(cfg: SamplerConfig, checkpoint: ddim.DDIMSchedule | None = None) -> ddim.DDIMSchedule:
  """The DDIM schedule a run uses: `ddim.official_schedule` (cfg.schedule "official") or the checkpoint's
  (`checkpoint`, default SD-1.5's `ddim.make_schedule`), with cfg.num_inference_steps points."""
  if cfg.schedule == "official":
    pred = checkpoint.prediction_type if checkpoint is not None else "epsilon"
    return ddim.official_schedule(cfg.num_inference_steps, prediction_type=pred)
  if cfg.schedule == "checkpoint":
    return ddim.make_schedule(cfg.num_inference_steps) if checkpoint is None else checkpoint
  raise ValueError(f"SamplerConfig.schedule={cfg.schedule!r}; expected one of {ddim.SCHEDULES}")


def _non_finite(step: int, t: int, x0: np.ndarray, renders: np.ndarray, loss: float, shift: float
                ) -> list[errors.Problem]:
  """What became NaN/inf at a step, from the host copies the loop already has (no extra device sync).

  x0 is decoded from the latents, renders from the refit Gaussians, and the eps correction is the
  gradient through the decoder: each names one part of the state.
  """
  problems = []
  where = f"step {step} (t={t})"
  for what, images in (("latents (the decoded x0)", x0), ("Gaussians (renders of the refit model)", renders)):
    bad = ~np.isfinite(images).all(axis=tuple(range(1, images.ndim)))
    if bad.any():
      problems.append(errors.Problem("", f"{where}: the {what} became non-finite in views "
                                         f"{np.nonzero(bad)[0].tolist()}"))
  if not np.isfinite(shift):
    problems.append(errors.Problem("", f"{where}: eps (the feedback correction w dL/deps, RMS {shift}) became "
                                       "non-finite (a smaller config.guidance.guidance_weight may help)"))
  if not np.isfinite(loss) and not problems:
    problems.append(errors.Problem("", f"{where}: the discrepancy L between renders and x0 is {loss}"))
  return problems


def _thumbnail(images: jax.Array, size: int) -> np.ndarray:
  """(V, H, W, 3) float in [0, 1] -> (V, h, w, 3) uint8 with max(h, w) <= size (area-average by integer factor)."""
  x = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  if size > 0:
    f = max(1, -(-max(x.shape[1:3]) // size))
    h, w = x.shape[1] // f * f, x.shape[2] // f * f
    x = x[:, :h, :w].reshape(x.shape[0], h // f, f, w // f, f, 3).mean(axis=(2, 4))
  return np.round(x * 255.0).astype(np.uint8)


@jax.jit
def _decode(prior, z):
  return jnp.clip(prior.decode(z), 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("noise",))
def _start(prior, images, schedule, t0, rng, noise=True):
  """Encode the template renders and noise them to t0: z = alpha z0 + sigma eps_gt (eps_gt kept for SDI).
  noise=False (strength 0): z = z0."""
  enc_key, noise_key = jax.random.split(rng)
  z0 = prior.encode(images, enc_key)
  eps_gt = jax.random.normal(noise_key, z0.shape, z0.dtype)
  return (ddim.add_noise(schedule, z0, eps_gt, t0) if noise else z0), eps_gt


def run_splatshot(
    prior: Pytree,
    template: Any,
    photo_cond: Pytree,
    cfg: SamplerConfig,
    rng: jax.Array,
    *,
    scene: guidance.Scene3D | None = None,
    template_cond: Pytree = None,
    schedule: ddim.DDIMSchedule | None = None,
) -> SplatShotResult:
  """Runs SplatShot from a base template to an avatar.

  Args:
    prior: a `Prior` pytree (eps / encode / decode).
    template: the base template: any object with `gaussians` (the base 3D model), `cameras` (the V cameras)
      and `images` ((V, H, W, 3) float32 renders of the base in [0, 1], the img2img inputs).
    photo_cond: the prior's conditioning with the photo (leading V axis).
    cfg: SamplerConfig.
    rng: PRNG key (VAE posterior sample, the initial noise, refit view sampling).
    scene: Scene3D (render + refit); required when cfg.guidance.feedback. Build it once: it is a static
      argument of the jitted step, and a new one recompiles.
    template_cond: the prior's conditioning with the template (required when cfg.guidance.sdi).
    schedule: the DDIM schedule to run (the prior must have been made for it); None: `resolve_schedule(cfg)`
      (cfg.schedule "official": `ddim.official_schedule`, the default). The pipeline passes
      `resolve_schedule(cfg, <the weights folder's schedule>)`.
  Returns:
    SplatShotResult.

  Raises:
    errors.NonFiniteError: a step's x0 (the latents), renders (the refit Gaussians) or eps correction became
      NaN/inf, or the final model / decode did; `.step` is the step index and `.partial` holds the per-step
      thumbnails of the steps before it (checked on the host copies each step already brings back).
  """
  gcfg = cfg.guidance
  if gcfg.feedback and scene is None:
    raise ValueError("run_splatshot: cfg.guidance.feedback=True needs scene= (a guidance.Scene3D)")
  if gcfg.sdi and template_cond is None:
    raise ValueError("run_splatshot: cfg.guidance.sdi=True needs template_cond= (the template's conditioning)")
  if schedule is None:
    schedule = resolve_schedule(cfg)
  timesteps = sampler_timesteps(schedule, cfg.strength, cfg.start)
  images = jnp.asarray(template.images, jnp.float32)

  rng, start_key = jax.random.split(rng)
  if len(timesteps):
    z, eps_gt = _start(prior, images, schedule, jnp.int32(timesteps[0]), start_key)
  else:  # strength 0: nothing is re-run, the template renders go through the VAE and back
    z, eps_gt = _start(prior, images, schedule, jnp.int32(-1), start_key, noise=False)
  refit_state = None
  if gcfg.feedback and gcfg.carry_adam and scene.init_refit_state is not None:
    refit_state = scene.init_refit_state(template.gaussians)  # one optimiser for all the run's refits
  state = guidance.SplatShotState(z=z, eps_gt=eps_gt, model=template.gaussians, rng=rng, refit_state=refit_state,
                                  refit_iter=jnp.int32(0))

  steps = enumerate(timesteps)
  if cfg.progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    # leave=None: a top-level bar stays; nested under a batch's photo bar (position 1) it clears when done.
    steps = tqdm(steps, total=len(timesteps), desc="splatshot", unit="step", leave=None)
  x0s, renders, losses, shifts = [], [], [], []
  for i, t in steps:
    interrupt.check(step=i, total=len(timesteps))  # Ctrl-C / SIGTERM stop the run here (io/interrupt.py)
    state, aux = guidance.splatshot_step(
        state, jnp.int32(t), prior=prior, schedule=schedule, cameras=template.cameras, cond_photo=photo_cond,
        cond_template=template_cond, scene=scene, cfg=gcfg,
        refit_iters=jnp.int32(gcfg.refit_iters_first if i == 0 else gcfg.refit_iters))
    x0, rendered = np.asarray(aux.x0_images, np.float32), np.asarray(aux.renders, np.float32)
    losses.append(float(aux.discrepancy))
    shifts.append(float(aux.eps_correction))
    bad = _non_finite(i, int(t), x0, rendered, losses[-1], shifts[-1])
    if bad:  # stop instead of writing NaNs; the steps before this one are kept for the failed folder
      raise errors.NonFiniteError(
          bad, f"the sampler stopped at step {i} of {len(timesteps)}", step=i,
          partial=None if not x0s else {"x0_images": np.stack(x0s), "renders": np.stack(renders),
                                        "timesteps": np.asarray(timesteps[:i], np.int32)})
    x0s.append(_thumbnail(x0, cfg.thumbnail))
    renders.append(_thumbnail(rendered, cfg.thumbnail))
    if cfg.progress:
      steps.set_postfix(t=int(t), L=f"{losses[-1]:.4f}")

  final = _decode(prior, state.z)
  final_np = np.asarray(final)
  if not x0s:  # no step ran (strength 0): empty per-step arrays of the thumbnails' size
    thumb = _thumbnail(np.zeros((1,) + final_np.shape[1:], np.float32), cfg.thumbnail)
    empty = np.zeros((0, final_np.shape[0]) + thumb.shape[1:], np.uint8)
    stack = lambda xs: empty
  else:
    stack = np.stack
  leaves = [(k, np.asarray(v)) for k, v in _named_leaves(state.model)]  # copied to the host once, at the end
  model_bad = [f"{k}: {int((~np.isfinite(v)).sum())}" for k, v in leaves
               if v.dtype.kind == "f" and not np.isfinite(v).all()]
  if model_bad or not np.isfinite(final_np).all():
    what = ([f"the avatar Gaussians ({', '.join(model_bad)} non-finite values)"] if model_bad else []) + (
        ["the final latents' decode"] if not np.isfinite(final_np).all() else [])
    raise errors.NonFiniteError([errors.Problem("", f"after the last step: {' and '.join(what)}")],
                                "the sampler produced non-finite values", step=len(timesteps),
                                partial={"x0_images": stack(x0s), "renders": stack(renders),
                                         "timesteps": np.asarray(timesteps, np.int32)})
  if scene is not None:
    # Eager on purpose: scene.render's own jit cache is shared with the template renders (no extra compile).
    weights = guidance.confidence_weights(scene.render(state.model, template.cameras), final,
                                          gcfg.confidence_temperature)
  else:
    weights = jnp.full((final.shape[0],), 1.0 / final.shape[0])
  return SplatShotResult(
      gaussians=state.model,
      base=template.gaussians,
      final_images=final_np,
      view_weights=np.asarray(weights),
      x0_images=stack(x0s),
      renders=stack(renders),
      discrepancy=np.asarray(losses, np.float32),
      eps_correction=np.asarray(shifts, np.float32),
      timesteps=np.asarray(timesteps, np.int32),
  )
