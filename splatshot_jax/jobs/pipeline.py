"""From a config to the sampler's inputs: weights, base template, photo, conditioning.

`experiments/splatshot.py` calls these in order; each checks its inputs first and fails with one
error that lists everything missing and where it was looked for, before any model is built.

What the released run does here (and the config fields that switch it, docs/fidelity.md): template views whose
control maps failed (`valid` false) are dropped (`config.drop_invalid_views`); the views are padded to a multiple
of 16 with, under `config.official_quirks`, the release's two bugs (the cameras keep the unpadded K, so renders
sit off the centre-padded targets, and the control maps are LANCZOS-stretched to the padded size instead of
padded); SDI's source identity is view `config.guidance.sdi_source_view` (0) of the kept views; the SD models run
in `config.sd.dtype` (float16).

The weights layout and where templates are looked for: `jobs/inputs.py`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from splatshot_jax import cameras as cam_lib
from splatshot_jax import errors, guidance, sampler, templates
from splatshot_jax.jobs import outputs
from splatshot_jax.device import sharding
from splatshot_jax.diffusion import denoiser, loading, presets
from splatshot_jax.io import images as image_io
from splatshot_jax.io.images import to_uint8
from splatshot_jax.render import RenderOverflowError, check_overflow, render_views
from splatshot_jax.jobs.inputs import (RANDOM_TINY, MissingInputsError, WeightPaths, missing_weights_message,  # noqa: F401
                                       resolve_weights, template_folders, template_hint, weight_paths)

def load_prior(config):
  """(prior, conditioner): the SD prior from `config.weights`, or random tiny weights (the conditioner is then
  only the IP-Adapter's image side, `presets.random_image_conditioner`, so the photo conditions the run)."""
  sd = config.sd
  if config.weights == RANDOM_TINY:
    prior = presets.random_stable_diffusion("tiny", config.seed, num_controlnets=len(sd.controlnet_scales),
                                            dtype=sd.dtype, view_chunk=sd.view_chunk, decode_chunk=sd.decode_chunk)
    return prior, presets.random_image_conditioner("tiny", config.seed + 3, dtype=sd.dtype)
  paths = resolve_weights(sd, config.weights)
  return loading.load_stable_diffusion(
      paths.base, vae=paths.vae, controlnets=paths.controlnets, ip_adapter=paths.ip_adapter,
      image_encoder=paths.image_encoder, dtype=sd.dtype, num_inference_steps=config.sampler.num_inference_steps,
      view_chunk=sd.view_chunk, decode_chunk=sd.decode_chunk)


def pad_template(t: templates.Template, multiple: int = 16, *, official_quirks: bool = False) -> templates.Template:
  """Pads renders, control maps and cameras to a multiple of `multiple` px, centred, mirrored edges.

  SD's VAE and UNet need sizes divisible by 8 (latents) and the official code pads its 802x550
  views to 816x560 the same way. Aligned (official_quirks False): the control maps are padded like the renders
  and the cameras' principal point shifts with the padding, so renders line up with the images.
  official_quirks True (the release): the cameras only grow (K unchanged: renders sit (-left, -top) px off the
  padded targets, (-5, -7) at 550x802) and the control maps are LANCZOS-resized (stretched) to the padded size.
  """
  h, w = t.renders.shape[1:3]
  if h % multiple == 0 and w % multiple == 0:
    return t
  pad_one = lambda x: image_io.pad_to_multiple(np.asarray(x), multiple)[0]
  _, (top, bottom, left, right) = image_io.pad_to_multiple(np.zeros((h, w)), multiple)
  stack = lambda xs, one=pad_one: jnp.asarray(np.stack([one(x) for x in np.asarray(xs)]))
  if not official_quirks:
    return t.replace(renders=stack(t.renders), heatmaps=stack(t.heatmaps), parsing=stack(t.parsing),
                     cameras=cam_lib.pad(t.cameras, top, bottom, left, right))
  size = (w + left + right, h + top + bottom)
  # As the release: the uint8 RGB map resized as a PIL image (8-bit result).
  stretch = lambda x: np.asarray(Image.fromarray(np.asarray(x, np.uint8)).resize(size, Image.Resampling.LANCZOS))
  grown = cam_lib.crop(t.cameras, 0, 0, size[0], size[1])  # same K, bigger image
  return t.replace(renders=stack(t.renders), heatmaps=stack(t.heatmaps, stretch), parsing=stack(t.parsing, stretch),
                   cameras=grown)


def keep_views(t: templates.Template, kept: np.ndarray) -> templates.Template:
  """The template restricted to views `kept` (ascending (K,) ints); its frontal view re-indexed (0 if dropped)."""
  kept = np.asarray(kept)
  frontal = np.nonzero(kept == t.info.frontal_view)[0]
  info = dataclasses.replace(t.info, frontal_view=int(frontal[0]) if len(frontal) else 0)
  return t.replace(cameras=t.cameras[kept], renders=t.renders[kept], heatmaps=t.heatmaps[kept],
                   parsing=t.parsing[kept], valid=t.valid[kept], info=info)


def _load_template_folder(folder: Path) -> templates.Template:
  try:
    return templates.load_template(folder)
  except templates.TemplateError as e:
    raise MissingInputsError(f"config.template: {e}{template_hint(folder)}") from e


def load_template_candidates(config) -> list[templates.Template]:
  """The templates config.template names ("synthetic", a folder, or comma-separated folders), unpadded."""
  if config.template == "synthetic":
    return [templates.synthetic_template(num_gaussians=config.synthetic.num_gaussians, size=config.synthetic.size,
                                         rig=config.synthetic.rig)]
  return [_load_template_folder(f) for f in template_folders(config)]


def load_base_template(config, photo: np.ndarray | None = None, candidates: list | None = None
                       ) -> tuple[templates.Template, dict]:
  """The base template named by config.template, padded for SD, and how it was chosen.

  config.template is "synthetic" (the project's own head, built in seconds), a template folder, or
  several folders separated by commas: then the one closest to the photo is chosen
  (`templates.choose_template`: skin colour and face shape; `config.template_override` names one).
  `candidates`: the templates already loaded by `load_template_candidates` (a batch loads them once).
  Returns (template, {"template": name, "scores": ...}).
  """
  choice_info: dict = {}
  if candidates is None:
    candidates = load_template_candidates(config)
  t = candidates[0]
  if len(candidates) > 1:
    if photo is None:
      raise MissingInputsError("config.template lists several templates: choosing one needs config.photo")
    t, choice = templates.choose_template(to_uint8(photo), candidates, override=config.get("template_override", ""))
    choice_info = {"candidates": [c.name for c in candidates], "scores": np.asarray(choice.scores).tolist()}
  choice_info["template"] = t.name
  n = config.num_views
  if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(t):  # preflight reports it first
    raise MissingInputsError(f"config.num_views: expected an integer in [1, {len(t)}] (the template's views), "
                             f"got {n!r}")
  kept = np.arange(n)
  if config.get("drop_invalid_views", False):  # the release loads only the views whose control maps exist
    kept = np.nonzero(np.asarray(t.valid[:n], bool))[0]
    if not len(kept):
      raise MissingInputsError(f"config.template: all {n} views of {t.name} are marked invalid (no control maps); "
                               "set config.drop_invalid_views=False to use them anyway")
    choice_info["dropped_views"] = sorted(set(range(n)) - set(kept.tolist()))
  if len(kept) < len(t):
    t = keep_views(t, kept)
  return pad_template(t, official_quirks=bool(config.get("official_quirks", False))), choice_info


def load_photo(path: str) -> np.ndarray:
  """The photo as (H, W, 3) float32 in [0, 1]; checks that it is an image file with one usable face (dlib).

  Raises:
    errors.UserInputError: naming config.photo, the file and the problem (`preflight.check_photo`).
  """
  from splatshot_jax import errors  # pylint: disable=import-outside-toplevel
  from splatshot_jax.jobs import preflight  # pylint: disable=import-outside-toplevel

  errors.raise_if_problems(preflight.check_photo(path), "the photo cannot be used")
  return image_io.load_image(Path(path).expanduser())


def sdi_source_view(config, template: templates.Template) -> int:
  """The view whose render conditions SDI's eps_src: config.guidance.sdi_source_view (official 0, a side view) of
  the template's (kept) views. Raises MissingInputsError when the template has fewer views."""
  v = int(config.guidance.get("sdi_source_view", 0))
  if not 0 <= v < template.renders.shape[0]:
    raise MissingInputsError(f"config.guidance.sdi_source_view: expected a view index in [0, "
                             f"{template.renders.shape[0]}) (the template's views kept), got {v}")
  return v


def make_conditions(config, prior, conditioner, template: templates.Template, photo: np.ndarray | None):
  """(cond with the photo, cond with the template's render of view config.guidance.sdi_source_view) for all
  template views (official: view 0)."""
  sd = config.sd
  v, h, w = template.renders.shape[:3]
  controls = (jnp.asarray(template.heatmaps, jnp.float32) / 255.0,
              jnp.asarray(template.parsing, jnp.float32) / 255.0)[: len(sd.controlnet_scales)]
  # SDI's source: the template's own identity, from one view's render (official: view 0, not the frontal one).
  source = np.asarray(template.renders[sdi_source_view(config, template)])
  if config.weights == RANDOM_TINY:  # random prompt embeddings, real control maps, IP tokens of the real path
    base = presets.random_cond("tiny", jax.random.PRNGKey(config.seed + 1), num_views=v, height=h, width=w,
                               text_len=8, ip_tokens=4, guidance_scale=sd.guidance_scale,
                               control_scales=tuple(sd.controlnet_scales), ip_scale=sd.ip_adapter_scale)
    ip = lambda image: jnp.broadcast_to(conditioner.ip_tokens(image), base.ip.shape)
    base = base.replace(controls=controls)
    if photo is not None:  # without one (the bare install check) the photo's tokens stay random
      base = base.replace(ip=ip(photo), uncond_ip=jnp.broadcast_to(conditioner.uncond_ip_tokens(), base.ip.shape))
    return base, base.replace(ip=ip(source))
  make = lambda image: conditioner.make_cond(
      v, sd.prompt, sd.negative_prompt, controls=controls, control_scales=tuple(sd.controlnet_scales),
      guidance_scale=sd.guidance_scale, photo=image, ip_scale=sd.ip_adapter_scale)
  return make(photo), make(source)


def identity_report(photo: np.ndarray, views: np.ndarray, cameras, frontal: int, max_yaw_deg: float = 30.0) -> dict:
  """dlib identity distance between the photo and each output view within ±max_yaw of the frontal one."""
  from splatshot_jax.face import identity  # pylint: disable=import-outside-toplevel

  axes = np.asarray(cameras.viewmat)[:, 2, :3]
  yaw = np.degrees(np.arccos(np.clip(axes @ axes[frontal], -1.0, 1.0)))
  report = {}
  for i in np.nonzero(yaw <= max_yaw_deg)[0]:
    try:
      report[f"view_{i:03d}"] = round(float(identity.identity_distance(photo, views[i])), 4)
    except Exception as e:  # no face found in a generated view is a result, not a crash
      report[f"view_{i:03d}"] = f"n/a ({type(e).__name__})"
  return report


# ----------------------------------------------------------------------------------------------
# One run, split so that a batch loads the models once: check_inputs -> load_session -> run_photo.


def check_inputs(config, reference=None) -> np.ndarray | None:
  """The run's input checks (`preflight.check_splatshot`: weights, photo, template, values, out_dir), before any
  model is built; returns the photo (None for the install check without one). A batch calls this once per photo.

  Args:
    config: a splatshot config (configs/splatshot_sd15.py layout); reference: its default, to report unknown keys.
  Raises:
    errors.UserInputError: every problem found, each naming its config field and file.
  """
  from splatshot_jax import errors  # pylint: disable=import-outside-toplevel  (preflight imports us)
  from splatshot_jax.jobs import preflight  # pylint: disable=import-outside-toplevel  (preflight imports us)

  errors.raise_if_problems(preflight.check_splatshot(config, reference=reference), "cannot start the splatshot job")
  if (notice := preflight.resolution_notice(config)):
    print(f"note: {notice}")
  if config.weights == RANDOM_TINY and not config.photo:
    return None
  return load_photo(config.photo)


@dataclasses.dataclass(frozen=True)
class Session:
  """What a run loads once and every photo reuses (a new `scene` would recompile the jitted step).

  Attributes:
    prior, conditioner: from `load_prior`.
    candidates: the unpadded templates of config.template (`load_template_candidates`).
    scene: guidance.Scene3D (render + refit), a static argument of the jitted step.
    sampler_cfg: sampler.SamplerConfig.
    schedule: the run's DDIM schedule (`sampler.resolve_schedule`: the official one, or the prior's checkpoint's).
    mesh: the jax.sharding.Mesh the views are split over (None: one device).
  """

  prior: object
  conditioner: object
  candidates: list
  scene: object
  sampler_cfg: object
  schedule: object
  mesh: object = None


def _mesh(config):
  """The views mesh config.mesh.views names (None on one device); a bad count is the user's error."""
  try:
    return sharding.make_mesh(config.mesh.views) if "mesh" in config else None
  except ValueError as e:
    raise errors.UserInputError([errors.Problem("config.mesh.views", str(e))], "cannot split the views") from e


def load_session(config, *, progress: bool = True) -> Session:
  """Loads the prior and the templates and builds the step's static arguments (`progress`: the step bar).

  The weights are checked before the templates are read and the templates before the prior is built, so a
  batch reports missing inputs before any long work. With several devices (config.mesh.views) the prior's views
  are split over them, and so are the refit's views per iteration.
  """
  if config.weights != RANDOM_TINY:
    resolve_weights(config.sd, config.weights)
  mesh = _mesh(config)
  candidates = load_template_candidates(config)
  prior, conditioner = load_prior(config)
  cfg = dataclasses.replace(sampler.sampler_config(config), progress=progress)
  # The refit's settings are config.refit (fit.FitConfig fields + alpha_max; its num_iters comes from the step).
  scene = guidance.refit_scene(config.refit.to_dict() if hasattr(config.refit, "to_dict") else config.refit,
                               mesh=mesh)
  return Session(prior=sharding.shard_prior(prior, mesh), conditioner=conditioner, candidates=candidates,
                 scene=scene, sampler_cfg=cfg, schedule=sampler.resolve_schedule(cfg, getattr(prior, "schedule", None)),
                 mesh=mesh)


def run_photo(session: Session, config, photo: np.ndarray | None, out_dir, *, log=print) -> dict:
  """SplatShot for one photo (checked by `check_inputs`) with a loaded session; writes out_dir, returns metrics."""
  t_start = time.time()
  template, choice = load_base_template(config, photo, session.candidates)
  num_views, height, width = template.renders.shape[:3]
  log(f"template {template.name}: {num_views} views of {width}x{height}, {template.gaussians.num} Gaussians")
  try:
    sharding.check_divisible(num_views, session.mesh, f"template {template.name}")
  except ValueError as e:
    raise errors.UserInputError([errors.Problem("config.mesh.views", str(e))], "cannot split the views") from e
  if session.sampler_cfg.guidance.sdi:
    sdi_source_view(config, template)  # a bad index is the user's error, before any model runs
  cond_photo, cond_template = make_conditions(config, session.prior, session.conditioner, template, photo)
  cond_photo, cond_template = sharding.put_views(cond_photo, session.mesh), sharding.put_views(cond_template,
                                                                                               session.mesh)
  t_setup = time.time()
  try:
    result = sampler.run_splatshot(session.prior, template, cond_photo, session.sampler_cfg,
                                   jax.random.PRNGKey(config.seed), scene=session.scene, template_cond=cond_template,
                                   schedule=session.schedule)
  except errors.NonFiniteError as e:
    if e.partial is not None:  # keep the steps that were fine (run_folder moves the folder to OUT.failed)
      outputs.write_step_grids(out_dir, e.partial["x0_images"], e.partial["renders"], e.partial["timesteps"])
    raise
  t_run = time.time()

  frontal = template.info.frontal_view if template.info.frontal_view < num_views else 0
  metrics = {"install_check": config.weights == RANDOM_TINY, "template_choice": choice, "num_views": int(num_views),
             "frontal_view": int(frontal),
             "seconds": {"setup": round(t_setup - t_start, 1), "sampling": round(t_run - t_setup, 1)}}
  try:  # the refits inside the jitted steps cannot raise: check the avatar's budgets on the host
    check_overflow(render_views(result.gaussians, template.cameras,
                                background=jnp.asarray(config.refit.background, jnp.float32)))
  except RenderOverflowError as e:
    log(f"warning: {e}")
    metrics["render_overflow"] = str(e)
  if photo is not None:
    metrics["identity_distance"] = identity_report(photo, result.final_images, template.cameras, frontal)
  written = outputs.write_outputs(result, out_dir, cameras=template.cameras, config=config, extra_metrics=metrics,
                                  render=session.scene.render, turntable_frames=config.outputs.turntable_frames,
                                  turntable_fps=config.outputs.turntable_fps)
  log(f"wrote {len(written)} outputs to {config.out_dir} in {time.time() - t_start:.0f} s")
  return metrics
