"""DDIM (Song et al. 2021, eta = 0) as pure functions over a `DDIMSchedule` pytree.

Two schedules:
  * `make_schedule` / `schedule_from_config`: bit-for-bit the arithmetic of diffusers' `DDIMScheduler`
    (clip_sample off, thresholding off, eta 0) for a weights folder's scheduler_config.json (SD-1.5's:
    scaled_linear 0.00085-0.012, steps_offset 1, set_alpha_to_one off, "leading" spacing). The official
    pipeline builds this scheduler but never uses it.
  * `official_schedule`: what the released SplatShot loop actually runs (its own DDIM): **linear** betas
    linspace(0.00085, 0.012, 1000) in float32, ᾱ = cumprod(1 - β), timesteps flip(arange(n) * T/n) with no
    offset (960, ..., 0 for n = 25), and the step from t = 0 returns x̂0 itself (ᾱ after the last step is 1).
    Pinned against `../shared/reference/official-schedule.json` (tests/test_ddim.py).

Notation: ᾱ_t = alphas_cumprod[t], α_t = sqrt(ᾱ_t), σ_t = sqrt(1 - ᾱ_t), so z_t = α_t x0 + σ_t ε.

Every function accepts a timestep `t` that is a Python int, a 0-d int array (possibly traced, e.g.
inside `lax.scan` over `schedule.timesteps`) or a (B,) int array matching the leading axis of `z`.
Arithmetic runs in float32 and results are cast back to the dtype of `z` (bf16 latents stay bf16).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@struct.dataclass
class DDIMSchedule:
  """A DDIM noise schedule with its inference timesteps.

  Attributes:
    alphas_cumprod: (num_train_timesteps,) float32, ᾱ_t.
    final_alpha_cumprod: () float32, ᾱ used for the step after t = 0 (ᾱ_0 unless set_alpha_to_one).
    timesteps: (num_inference_steps,) int32, descending, the full (strength 1) inference grid.
    num_train_timesteps: static int.
    num_inference_steps: static int.
    prediction_type: static str, one of "epsilon", "v_prediction", "sample".
  """

  alphas_cumprod: jax.Array
  final_alpha_cumprod: jax.Array
  timesteps: jax.Array
  num_train_timesteps: int = struct.field(pytree_node=False, default=1000)
  num_inference_steps: int = struct.field(pytree_node=False, default=50)
  prediction_type: str = struct.field(pytree_node=False, default="epsilon")

  @property
  def step_ratio(self) -> int:
    """Timestep stride between consecutive inference steps (diffusers: train // inference)."""
    return self.num_train_timesteps // self.num_inference_steps


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
  """float32 linspace with torch's CPU rounding, so ᾱ matches diffusers bit for bit.

  torch's kernel counts up from start for the first half and down from end for the second, with
  a float32 step and a fused multiply-add (one rounding); float64 emulates the FMA exactly since a
  float32 times an index < 2^29 is exact in float64.
  """
  start32, end32 = np.float32(start), np.float32(end)
  step = np.float64((end32 - start32) / np.float32(steps - 1))
  idx = np.arange(steps, dtype=np.float64)
  half = steps // 2
  lo = np.float64(start32) + step * idx[:half]
  hi = np.float64(end32) - step * (steps - 1 - idx[half:])
  return np.concatenate([lo, hi]).astype(np.float32)


def make_betas(num_train_timesteps: int, beta_start: float, beta_end: float,
               beta_schedule: str) -> np.ndarray:
  """(num_train_timesteps,) float32 betas, as diffusers builds them."""
  if beta_schedule == "linear":
    return _torch_linspace_f32(beta_start, beta_end, num_train_timesteps)
  if beta_schedule == "scaled_linear":
    # Latent diffusion's schedule: linear in sqrt(beta).
    return _torch_linspace_f32(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2
  raise ValueError(
      f"beta_schedule={beta_schedule!r} is not supported; expected 'linear' or 'scaled_linear' "
      "(scheduler_config.json field 'beta_schedule')."
  )


def make_timesteps(num_train_timesteps: int, num_inference_steps: int, steps_offset: int,
                   timestep_spacing: str) -> np.ndarray:
  """(num_inference_steps,) int64 descending timesteps, as `DDIMScheduler.set_timesteps`."""
  n, T = num_inference_steps, num_train_timesteps
  if timestep_spacing == "leading":
    return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + steps_offset
  if timestep_spacing == "trailing":
    return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
  if timestep_spacing == "linspace":
    return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
  raise ValueError(
      f"timestep_spacing={timestep_spacing!r} is not supported; expected 'leading', 'trailing' "
      "or 'linspace'."
  )


def make_schedule(
    num_inference_steps: int,
    *,
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    beta_schedule: str = "scaled_linear",
    steps_offset: int = 1,
    set_alpha_to_one: bool = False,
    timestep_spacing: str = "leading",
    prediction_type: str = "epsilon",
) -> DDIMSchedule:
  """Builds a DDIM schedule. Defaults are SD-1.5's scheduler_config.json (and the paper's).

  Raises ValueError (naming the field) on unsupported settings.
  """
  if not 1 <= num_inference_steps <= num_train_timesteps:
    raise ValueError(
        f"num_inference_steps={num_inference_steps} must be in [1, num_train_timesteps="
        f"{num_train_timesteps}]."
    )
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"prediction_type={prediction_type!r}; expected one of {PREDICTION_TYPES}.")
  betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule)
  # torch.cumprod on CPU accumulates float32 inputs in float64 and rounds each output.
  alphas_cumprod = np.cumprod((np.float32(1.0) - betas).astype(np.float64)).astype(np.float32)
  final = np.float32(1.0) if set_alpha_to_one else alphas_cumprod[0]
  ts = make_timesteps(num_train_timesteps, num_inference_steps, steps_offset, timestep_spacing)
  return DDIMSchedule(
      alphas_cumprod=jnp.asarray(alphas_cumprod),
      final_alpha_cumprod=jnp.asarray(final, jnp.float32),
      timesteps=jnp.asarray(ts, jnp.int32),
      num_train_timesteps=num_train_timesteps,
      num_inference_steps=num_inference_steps,
      prediction_type=prediction_type,
  )


def official_schedule(num_inference_steps: int = 25, *, prediction_type: str = "epsilon") -> DDIMSchedule:
  """The schedule of the released SplatShot loop (its own DDIM, not the pipeline's diffusers scheduler).

  Linear betas linspace(0.00085, 0.012, 1000) (float32), ᾱ = cumprod(1 - β), timesteps
  flip(arange(n) * (1000 // n)) with no offset, e.g. 960, 920, ..., 40, 0 for n = 25. The step from the last
  timestep (t = 0) returns x̂0 itself: ᾱ "after the last step" is 1 (set_alpha_to_one), so
  z_prev = 1 · x̂0 + 0 · ε exactly.
  """
  return make_schedule(num_inference_steps, beta_schedule="linear", steps_offset=0, set_alpha_to_one=True,
                       timestep_spacing="leading", prediction_type=prediction_type)


SCHEDULES = ("official", "checkpoint")


def schedule_from_config(config: dict[str, Any], num_inference_steps: int) -> DDIMSchedule:
  """Builds a schedule from a diffusers `scheduler_config.json` dict (unknown keys ignored).

  Raises ValueError if the config asks for clipping/thresholding, which DDIM here does not do.
  """
  for flag in ("clip_sample", "thresholding", "rescale_betas_zero_snr"):
    if config.get(flag, False):
      raise ValueError(f"scheduler config sets {flag}=true; only false is supported.")
  if config.get("trained_betas") is not None:
    raise ValueError("scheduler config sets trained_betas; only named beta schedules are supported.")
  keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "steps_offset",
          "set_alpha_to_one", "timestep_spacing", "prediction_type")
  return make_schedule(num_inference_steps, **{k: config[k] for k in keys if k in config})


def img2img_timesteps(schedule: DDIMSchedule, strength: float) -> np.ndarray:
  """The timesteps an img2img run at `strength` visits (diffusers' `get_timesteps`).

  init_timestep = min(int(n * strength), n); t_start = max(n - init_timestep, 0); returns
  timesteps[t_start:], e.g. n = 25, strength 0.5 -> 12 steps, t = 441 ... 1.

  Returns:
    (k,) int32 numpy array (static: its length sets the loop length).
  """
  if not 0.0 <= strength <= 1.0:
    raise ValueError(f"strength={strength} must be in [0, 1].")
  n = schedule.num_inference_steps
  init_timestep = min(int(n * strength), n)
  t_start = max(n - init_timestep, 0)
  return np.asarray(schedule.timesteps)[t_start:].astype(np.int32)


def _bcast(coef: jax.Array, like: jax.Array) -> jax.Array:
  """Scalar or (B,) coefficient -> broadcastable against `like` (B, ...)."""
  return jnp.reshape(coef, coef.shape + (1,) * (like.ndim - coef.ndim))


def alpha_bar(schedule: DDIMSchedule, t) -> jax.Array:
  """ᾱ_t; t < 0 means "after the last step" and gives final_alpha_cumprod. Shape of t, float32."""
  t = jnp.asarray(t)
  ac = schedule.alphas_cumprod[jnp.maximum(t, 0)]
  return jnp.where(t >= 0, ac, schedule.final_alpha_cumprod)


def alpha_sigma(schedule: DDIMSchedule, t) -> tuple[jax.Array, jax.Array]:
  """(α_t, σ_t) = (sqrt(ᾱ_t), sqrt(1 - ᾱ_t)), each with the shape of t, float32."""
  ab = alpha_bar(schedule, t)
  return ab**0.5, (1.0 - ab) ** 0.5


def _coefs(schedule, t, z):
  ab = alpha_bar(schedule, t)
  return _bcast(ab**0.5, z), _bcast((1.0 - ab) ** 0.5, z), z.astype(jnp.float32)


def predict_x0(schedule: DDIMSchedule, z: jax.Array, eps: jax.Array, t) -> jax.Array:
  """x̂0 = (z - σ_t ε) / α_t (DDIM eq. 12). z, eps: (B, ...) -> (B, ...) in z's dtype."""
  a, s, z32 = _coefs(schedule, t, z)
  return ((z32 - s * eps.astype(jnp.float32)) / a).astype(z.dtype)


def eps_from_x0(schedule: DDIMSchedule, z: jax.Array, x0: jax.Array, t) -> jax.Array:
  """ε = (z - α_t x0) / σ_t. z, x0: (B, ...) -> (B, ...)."""
  a, s, z32 = _coefs(schedule, t, z)
  return ((z32 - a * x0.astype(jnp.float32)) / s).astype(z.dtype)


def x0_from_v(schedule: DDIMSchedule, z: jax.Array, v: jax.Array, t) -> jax.Array:
  """v-prediction (Salimans & Ho 2022): x0 = α_t z - σ_t v."""
  a, s, z32 = _coefs(schedule, t, z)
  return (a * z32 - s * v.astype(jnp.float32)).astype(z.dtype)


def eps_from_v(schedule: DDIMSchedule, z: jax.Array, v: jax.Array, t) -> jax.Array:
  """v-prediction: ε = α_t v + σ_t z."""
  a, s, z32 = _coefs(schedule, t, z)
  return (a * v.astype(jnp.float32) + s * z32).astype(z.dtype)


def v_from_eps(schedule: DDIMSchedule, x0: jax.Array, eps: jax.Array, t) -> jax.Array:
  """The v target (diffusers' get_velocity): v = α_t ε - σ_t x0."""
  a, s, x32 = _coefs(schedule, t, x0)
  return (a * eps.astype(jnp.float32) - s * x32).astype(x0.dtype)


def add_noise(schedule: DDIMSchedule, x0: jax.Array, noise: jax.Array, t) -> jax.Array:
  """Forward process z_t = α_t x0 + σ_t ε. x0, noise: (B, ...) -> (B, ...)."""
  a, s, x32 = _coefs(schedule, t, x0)
  return (a * x32 + s * noise.astype(jnp.float32)).astype(x0.dtype)


def _x0_eps_f32(schedule, model_output, t, z):
  """float32 (x̂0, ε̂) from a model output of the schedule's prediction_type."""
  a, s, z32 = _coefs(schedule, t, z)
  out = model_output.astype(jnp.float32)
  if schedule.prediction_type == "epsilon":
    return (z32 - s * out) / a, out
  if schedule.prediction_type == "v_prediction":
    return a * z32 - s * out, a * out + s * z32
  return out, (z32 - a * out) / s  # "sample"


def to_x0_eps(schedule: DDIMSchedule, model_output: jax.Array, t,
              z: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x̂0, ε̂) from a model output of the schedule's prediction_type. All (B, ...), z's dtype."""
  x0, eps = _x0_eps_f32(schedule, model_output, t, z)
  return x0.astype(z.dtype), eps.astype(z.dtype)


def _step_f32(schedule, x0, eps, t):
  prev_t = jnp.asarray(t) - schedule.step_ratio
  ab_prev = _bcast(alpha_bar(schedule, prev_t), x0)
  return ab_prev**0.5 * x0.astype(jnp.float32) + (1.0 - ab_prev) ** 0.5 * eps.astype(jnp.float32)


def ddim_step_x0_eps(schedule: DDIMSchedule, x0: jax.Array, eps: jax.Array, t) -> jax.Array:
  """z_{t'} = sqrt(ᾱ_{t'}) x̂0 + sqrt(1 - ᾱ_{t'}) ε̂ with t' = t - T/n (eta 0, DDIM eq. 12).

  Useful when ε is corrected after the model call (the paper's guidance). x0, eps: (B, ...).
  """
  return _step_f32(schedule, x0, eps, t).astype(x0.dtype)


def ddim_step(schedule: DDIMSchedule, model_output: jax.Array, t, z: jax.Array) -> jax.Array:
  """One deterministic DDIM step z_t -> z_{t - T/n}, as `DDIMScheduler.step(eta=0)`.

  Args:
    schedule: the DDIMSchedule.
    model_output: (B, C, H, W) or any (B, ...), the UNet output (ε, v or x0 per prediction_type).
    t: int timestep (Python int, traced 0-d int, or (B,) int).
    z: (B, ...) the current latents.
  Returns:
    (B, ...) the previous-timestep latents, in z's dtype.
  """
  # float32 x0/eps throughout so bf16 latents round once, at the end.
  x0, eps = _x0_eps_f32(schedule, model_output, t, z)
  return _step_f32(schedule, x0, eps, t).astype(z.dtype)
