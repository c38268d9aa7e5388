"""Every input of a job checked before any model is built or anything is compiled.

One check per job returns every problem at once (`errors.Problem`: config field, file, what was
expected and what was found); the job raises them together:

  problems = preflight.check_splatshot(config)           # weights, photo, template, values, out_dir
  preflight.raise_if_problems(problems, "cannot start the splatshot job")   # = errors.raise_if_problems

`CHECKS` maps a job name to its check (a batch calls `check_splatshot` once per photo); a new job
adds its own entry. The checks only read: headers of weight files (never the tensors), the photo
(one dlib detection), the template's views and PLY, and probe that out_dir can be written.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from splatshot_jax.errors import Problem, UserInputError, raise_if_problems  # noqa: F401 (re-exported)
from splatshot_jax.io import atomic
from splatshot_jax.io.atomic import is_finished  # noqa: F401 (re-exported: the one "finished run" test)
from splatshot_jax.jobs import inputs

# Config values the code accepts, by field (enums).
SAMPLER_STARTS = ("official", "diffusers")
SAMPLER_SCHEDULES = ("official", "checkpoint")  # diffusion/ddim.SCHEDULES
FEEDBACK_LOSSES = ("l1", "l1_ssim")  # guidance.FEEDBACK_LOSSES
SSIM_PADDINGS = ("same", "valid")  # fit.SSIM_PADDINGS
VIEW_WEIGHTINGS = ("minmax", "normalized")  # fit.VIEW_WEIGHTINGS
SD_NATIVE_PIXELS = 512 * 512  # SD-1.x's training resolution
DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
SYNTHETIC_RIGS = ("own", "paper48")
BUILD_RIGS = ("own", "paper48", "auto")
DETECTORS = ("hog", "cnn")
LR_BATCH_SCALINGS = ("none", "sqrt")  # fit.FitConfig.lr_batch_scaling
RENDER_BACKENDS = ("auto", "xla", "triton", "triton_interpret")  # render/composite_triton.BACKENDS
PROTOCOLS = ("ours", "paper")  # configs/evaluate.py protocol
SYNTHETIC_VIEWS = 16  # synthetic.head_rig's cameras; "paper48" adds 2 interpolated per real one


# ---------------------------------------------------------------------------------------------
# Config keys.


def _is_section(x) -> bool:
  return hasattr(x, "keys") and hasattr(x, "items") and not isinstance(x, (str, bytes))


def _unknown_key(prefix: str, key: str, valid: Iterable[str]) -> Problem:
  valid = sorted(valid)
  near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
  hint = f"; did you mean {prefix}.{near[0]}?" if near else ""
  return Problem(f"{prefix}.{key}", f"unknown key{hint} (valid keys of {prefix}: {', '.join(valid)})")


def check_keys(config, reference, prefix: str = "config") -> list[Problem]:
  """Keys of `config` that `reference` (the job's own default config) does not have, in any section."""
  problems = []
  for key, value in config.items():
    if key not in reference:
      problems.append(_unknown_key(prefix, key, reference.keys()))
    elif _is_section(value) and _is_section(reference[key]):
      problems += check_keys(value, reference[key], f"{prefix}.{key}")
  return problems


def check_override_keys(config, paths: Sequence[str], prefix: str = "config") -> list[Problem]:
  """Command-line overrides (`--config.a.b=...` -> "a.b") that name no field of `config`."""
  problems = []
  for path in paths:
    node, walked = config, prefix
    for part in path.split("."):
      name = part.split("[", 1)[0]
      if not _is_section(node):
        problems.append(Problem(walked, f"is a {type(node).__name__} value, not a section: "
                                        f"--{prefix}.{path} cannot set a field inside it"))
        break
      if name not in node:
        problems.append(_unknown_key(walked, name, node.keys()))
        break
      node, walked = node[name], f"{walked}.{name}"
  return problems


# ---------------------------------------------------------------------------------------------
# Values.


class _Values:
  """Collects value problems of one config: `v.int("sampler.num_inference_steps", lo=1)`, ..."""

  def __init__(self, config):
    self.config = config
    self.problems: list[Problem] = []

  def get(self, field: str):
    node = self.config
    for part in field.split("."):
      node = node[part]
    return node

  def custom(self, field, ok: Callable[[Any], bool], expected: str):
    try:
      value = self.get(field)
    except (KeyError, AttributeError):
      return None  # absent keys are the key check's business
    try:
      good = bool(ok(value))
    except (TypeError, ValueError):  # e.g. len() of a number where a tuple was expected
      good = False
    if not good:
      self.problems.append(Problem(f"config.{field}", f"expected {expected}, got {value!r}"))
      return None
    return value

  def int(self, field, lo=None, hi=None):
    rng = ("an integer" + (f" >= {lo}" if lo is not None and hi is None else "")
           + (f" in [{lo}, {hi}]" if lo is not None and hi is not None else ""))
    return self.custom(field, lambda x: isinstance(x, int) and not isinstance(x, bool)
                       and (lo is None or x >= lo) and (hi is None or x <= hi), rng)

  def number(self, field, lo=None, hi=None, open_lo=False):
    def ok(x):
      if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return False
      return (lo is None or (x > lo if open_lo else x >= lo)) and (hi is None or x <= hi)
    expected = "a finite number" + (f" > {lo}" if open_lo else f" >= {lo}" if lo is not None and hi is None
                                    else "") + (f" in [{lo}, {hi}]" if lo is not None and hi is not None else "")
    return self.custom(field, ok, expected)

  def choice(self, field, choices):
    return self.custom(field, lambda x: x in choices, f"one of {list(choices)}")

  def boolean(self, field):
    return self.custom(field, lambda x: isinstance(x, bool), "True or False")

  def rgb(self, field, allow_empty=False):
    return self.custom(field, lambda x: (allow_empty and len(x) == 0) or (
        len(x) == 3 and all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in x)),
        "3 numbers in [0, 1]" + (" (or () for automatic)" if allow_empty else ""))


def check_dataclass_sections(config) -> list[Problem]:
  """The sampler / guidance sections against the dataclasses they fill (sampler.sampler_config)."""
  from splatshot_jax import sampler  # pylint: disable=import-outside-toplevel
  try:
    sampler.sampler_config(config)
  except (TypeError, ValueError) as e:
    return [Problem("", str(e))]
  return []


def _common_fit_values(v: _Values) -> None:
  v.number("scale", lo=0, hi=4, open_lo=True)
  v.int("seed")
  v.int("init.sh_degree", 0, 3)
  v.number("init.opacity", 0, 1)
  v.int("init.hull_points", lo=1)
  v.int("fit.num_iters", lo=1)
  for k in ("sh_degree_interval", "refine_every", "reset_every", "max_gaussians", "tile_size", "tiles_per_step"):
    v.int(f"fit.{k}", lo=1)
  v.int("fit.refine_start_iter", lo=0)
  v.int("fit.refine_stop_iter", lo=0)
  v.boolean("fit.densify")
  v.number("fit.means_lr_final", lo=0, open_lo=True)
  v.choice("fit.backend", RENDER_BACKENDS)


# ---------------------------------------------------------------------------------------------
# Files.


def check_out_dir(out_dir: str, overwrite: bool = False, field: str = "config.out_dir", *, replaced: bool = True
                  ) -> list[Problem]:
  """out_dir can be created and written, is not a file, is not a finished run (unless overwrite), holds nothing a
  run did not write, is no mount point, and no live process is writing it. `replaced=False` (a batch's OUT, which
  holds the photos' run folders and is never replaced itself): only a folder that can be created and written.

  A run writes a sibling folder and renames it into place (io.atomic.run_folder), so the nearest
  existing ancestor must be a writable folder; an existing out_dir is replaced at the end only when
  it is a run folder of this project (finished: with overwrite) or empty (`io.atomic.replace_refusal`).
  """
  if not out_dir:
    return [Problem(field, "is empty: give the folder the outputs go to")]
  out = Path(out_dir).expanduser()
  if out.is_file() or (out.exists() and not out.is_dir()):
    return [Problem(field, "is a file, expected a folder (or a path where one can be created)", str(out))]
  if replaced and (reason := atomic.replace_refusal(out)):
    return [Problem(field, reason, str(out))]
  if replaced and out.is_dir():
    state = atomic.run_state(out)
    if state is not None and state.get("status") == "complete" and not overwrite:
      return [Problem(field, "holds a finished run; pass --config.overwrite=True to replace it, or choose "
                             "another out_dir", str(out))]
  problems = check_run_lock(out, field) if replaced else []
  ancestor = out.parent
  while not ancestor.exists() and ancestor != ancestor.parent:
    ancestor = ancestor.parent
  if not ancestor.is_dir():
    return [Problem(field, f"cannot be created: {ancestor} is a file, not a folder", str(out))]
  try:  # os.access is not enough (root, ACLs, read-only mounts): really create something
    tempfile.TemporaryDirectory(dir=ancestor, prefix=".splatshot-probe-").cleanup()
  except OSError as e:
    return [Problem(field, f"cannot be created: {ancestor} is not writable ({e.strerror})", str(out))]
  return problems


def safetensors_problem(path: Path) -> str | None:
  """Reads a .safetensors header only (8-byte length + JSON); None when it is readable and the tensors it
  lists fit in the file, else what is wrong."""
  try:
    size = path.stat().st_size
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        return f"{size} bytes: too short for a safetensors file (truncated?)"
      (n,) = struct.unpack("<Q", head)
      if n <= 0 or 8 + n > size or n > 100 * 2 ** 20:
        return f"header length {n} does not fit the file's {size} bytes (truncated or not safetensors)"
      header = json.loads(f.read(n))
  except OSError as e:
    return f"cannot read ({e.strerror})"
  except (ValueError, UnicodeDecodeError) as e:
    return f"safetensors header is not valid JSON ({e})"
  if not isinstance(header, dict):
    return "safetensors header is not a JSON object"
  end = max((int(t["data_offsets"][1]) for k, t in header.items()
             if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t), default=0)
  if 8 + n + end > size:
    return f"truncated: the header lists {8 + n + end} bytes of tensors and header, the file has {size}"
  return None


def _weights_file_problem(path: Path) -> str | None:
  if path.name.endswith(".index.json"):
    try:
      weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      return f"not a shard index with a 'weight_map' ({e})"
    absent = sorted({s for s in weight_map.values() if not (path.parent / s).is_file()})
    return f"shards missing: {', '.join(absent)}" if absent else None
  if path.suffix == ".safetensors":
    return safetensors_problem(path)
  if path.stat().st_size == 0:
    return "empty file"
  if path.suffix == ".bin" and not zipfile.is_zipfile(path):
    with open(path, "rb") as f:
      if f.read(1) != b"\x80":  # a legacy (non-zip) torch pickle starts with the pickle protocol byte
        return "neither a torch zip archive nor a pickle (truncated or not a .bin checkpoint?)"
  return None


def _json_problem(path: Path) -> str | None:
  try:
    json.loads(path.read_text())
  except OSError as e:
    return f"cannot read ({e.strerror})"
  except ValueError as e:
    return f"not valid JSON ({e})"
  return None


def check_weights(config) -> list[Problem]:
  """The SD weights under config.weights: layout (every file `inputs.resolve_weights` needs), every
  config JSON parsed, every weights file's header readable. Tensors are not loaded."""
  from splatshot_jax.diffusion import loading  # pylint: disable=import-outside-toplevel
  if not config.weights:
    return [Problem("config.weights", "is empty: give the folder that holds the checkpoints (or "
                                      f"--config.weights={inputs.RANDOM_TINY} for the install check)")]
  paths, wanted = inputs.weight_paths(config.sd, config.weights)
  # A dangling link or a link loop is there but not readable: check_weight_files names it.
  missing = [f"  {what}: {path}" for what, path in wanted if not path.exists() and not path.is_symlink()]
  problems = []
  if missing:
    problems.append(Problem("config.weights", inputs.missing_weights_message(config.weights, missing)))
  # Component folders: (field, folder, weight stems); the base pipeline's own sub-folders included.
  folders = [(f"config.sd.controlnets[{i}]", c, loading.DIFFUSERS_STEMS) for i, c in enumerate(paths.controlnets)]
  folders.append(("config.sd.image_encoder", paths.image_encoder, loading.TRANSFORMERS_STEMS))
  if paths.vae is not None:
    folders.append(("config.sd.vae", paths.vae, loading.DIFFUSERS_STEMS))
  base = paths.base
  if (base / "model_index.json").is_file():
    if (err := _json_problem(base / "model_index.json")):
      problems.append(Problem("config.sd.base", err, str(base / "model_index.json")))
    for sub, stems in (("unet", loading.DIFFUSERS_STEMS), ("text_encoder", loading.TRANSFORMERS_STEMS)):
      folders.append((f"config.sd.base ({sub})", base / sub, stems))
    if paths.vae is None:
      folders.append(("config.sd.base (vae)", base / "vae", loading.DIFFUSERS_STEMS))
    if (err := tokenizer_problem(base / "tokenizer")):
      problems.append(Problem("config.sd.base (tokenizer)", err, str(base / "tokenizer")))
    if (base / "scheduler" / "scheduler_config.json").is_file():
      if (err := _json_problem(base / "scheduler" / "scheduler_config.json")):
        problems.append(Problem("config.sd.base (scheduler)", err, str(base / "scheduler/scheduler_config.json")))
  for field, folder, stems in folders:
    if not (folder / "config.json").is_file():
      if folder.parent == base:  # the top-level ones are in `missing` already
        problems.append(Problem(field, "file not found", str(folder / "config.json")))
      continue
    if (err := _json_problem(folder / "config.json")):
      problems.append(Problem(field, err, str(folder / "config.json")))
    try:
      wfile = loading.find_weights(folder, stems)
    except loading.CheckpointError as e:
      problems.append(Problem(field, str(e)))
      continue
    if (err := _weights_file_problem(wfile)):
      problems.append(Problem(field, err, str(wfile)))
  if paths.ip_adapter is not None and paths.ip_adapter.is_file():
    if (err := _weights_file_problem(paths.ip_adapter)):
      problems.append(Problem("config.sd.ip_adapter", err, str(paths.ip_adapter)))
  return problems


def check_photo(path: str, field: str = "config.photo", *, min_face_px: float | None = None) -> list[Problem]:
  """The photo is a readable image file with exactly one usable face (dlib HOG, as the run uses)."""
  from splatshot_jax.face import detect  # pylint: disable=import-outside-toplevel (dlib loads lazily)
  from splatshot_jax.io import images as image_io  # pylint: disable=import-outside-toplevel
  if not path:
    return [Problem(field, "is empty: give the path of a face photo")]
  p = Path(path).expanduser()
  if p.is_dir():
    return [Problem(field, "is a directory, expected an image file (jpg, png, ...)", str(p))]
  if not p.is_file():
    return [Problem(field, "no such file" if not p.exists() else "not a regular file", str(p))]
  try:
    image = image_io.load_image(p)
  except (image_io.ImageError, OSError) as e:
    return [Problem(field, str(e).replace(f"{p}: ", ""), str(p))]
  min_px = detect.MIN_FACE_PX if min_face_px is None else min_face_px
  try:
    face = detect.analyze_photo(image, min_face_px=min_px, warn_multiple=False)
  except detect.FaceError as e:
    return [Problem(field, str(e).split(": ", 1)[-1], str(p))]
  sizes = [detect._box_size(b) for b in face.all_boxes]  # pylint: disable=protected-access
  usable = [s for s in sizes if s >= min_px]
  if len(usable) > 1:
    return [Problem(field, f"{len(usable)} usable faces found (sizes {', '.join(f'{s:.0f}' for s in usable)} px); "
                           "expected exactly one: crop the photo to the face you want", str(p))]
  return []


def check_template(config) -> tuple[list[Problem], list[int]]:
  """config.template: each folder complete and sound (`templates.inspect_template`); (problems, views of each)."""
  from splatshot_jax import templates  # pylint: disable=import-outside-toplevel
  if config.template == "synthetic":
    n = SYNTHETIC_VIEWS * (3 if config.synthetic.rig == "paper48" else 1)
    return [], [n]
  folders = inputs.template_folders(config)
  if not folders:
    return [Problem("config.template", "is empty: give a template folder (or 'synthetic')")], []
  problems, counts, names, parts_all = [], [], [], []
  for folder in folders:
    found, parts = templates.inspect_template(folder)
    parts_all.append(parts)
    hint = inputs.template_hint(folder)
    problems += [Problem("config.template", f + (hint if i == 0 else "")) for i, f in enumerate(found)]
    if parts is not None:
      problems += [Problem("config.template", m) for m in gaussian_problems(folder, parts["gaussians"],
                                                                             parts["data"].cameras)]
    if parts is not None:
      counts.append(len(parts["data"]))
      names.append(parts["manifest"]["name"] if parts["manifest"] else
                   str(parts["meta"].get("template") or folder.name))
  no_landmarks = [str(f) for f, p in zip(folders, parts_all) if p is not None and p["manifest"] is None]
  if len(folders) > 1 and no_landmarks:
    problems.append(Problem("config.template", f"{', '.join(no_landmarks)}: official template folders carry no 3D "
                                               "landmarks, which the automatic choice among several templates "
                                               "needs; give such a folder alone"))
  override = config.get("template_override", "")
  if override and len(names) == len(folders) and override not in names:
    problems.append(Problem("config.template_override", f"{override!r} is not one of the templates {names}"))
  return problems, counts


def check_data(field: str, path: str) -> list[Problem]:
  """A multi-view set (cameras.load_multiview): readable, cameras finite and consistent."""
  from splatshot_jax import cameras as cam_lib, templates  # pylint: disable=import-outside-toplevel
  from splatshot_jax.io import images as image_io  # pylint: disable=import-outside-toplevel
  p = Path(path).expanduser()
  if not p.exists():
    return [Problem(field, "no such folder", str(p))]
  try:
    data = cam_lib.load_multiview(p)
  except (cam_lib.CameraFormatError, image_io.ImageError, OSError, ValueError) as e:
    return [Problem(field, str(e))]
  return [Problem(field, m) for m in templates.camera_problems(p, data.cameras)]


# ---------------------------------------------------------------------------------------------
# What passes a glance and fails late: file kinds, weight shapes, template values, disk, locks, run length.

UNET_IN_CHANNELS = 4  # SD-1.5's text-to-image UNet (an inpainting UNet has 9: latents + mask + masked image)
CROSS_ATTENTION_DIM = 768  # SD-1.x (SD-2.x: 1024, SDXL: 2048); the ControlNets and IP-Adapter are SD-1.5's
IP_ADAPTER_TOKENS = 16  # IP-Adapter-Plus(-Face): a Resampler with 16 query tokens
MAX_SAMPLER_STEPS = 1000  # the DDIM grid is a subset of SD's 1000 training timesteps
MAX_ITERATIONS = 200_000  # refit or fit iterations of one run (the paper's run: 1000 + 12 x 500)
MIN_SECONDS_PER_ITERATION = 1e-3  # a lower bound for one refit/fit iteration (no GPU is faster): the ETA's floor
SCALE_RANGE = (1e-7, 1e3)  # a Gaussian's standard deviation, in units of the rig's distance to the head


def path_kind_problem(path: Path, expected: str = "file") -> str | None:
  """What is wrong with `path` being there as a regular file (or folder, expected="folder"): a symlink loop, a
  dangling link, a folder or FIFO where a file belongs. None when it is fine or simply absent."""
  import errno  # pylint: disable=import-outside-toplevel
  import stat  # pylint: disable=import-outside-toplevel
  try:
    st = os.stat(path)
  except OSError as e:
    if e.errno == errno.ELOOP:
      return "is a symbolic link loop (it points back to itself)"
    if e.errno == errno.ENOENT:
      if os.path.islink(path):
        return f"is a symbolic link to {os.readlink(path)}, which does not exist"
      return None
    return f"cannot be read ({e.strerror})"
  if expected == "folder":
    return None if stat.S_ISDIR(st.st_mode) else "is not a folder"
  if stat.S_ISDIR(st.st_mode):
    return "is a directory, expected a file"
  if stat.S_ISFIFO(st.st_mode):
    return "is a FIFO (named pipe), expected a regular file"
  if not stat.S_ISREG(st.st_mode):
    return "is a special file (socket or device), expected a regular file"
  return None


def _read_json_file(path: Path) -> dict:
  try:
    d = json.loads(path.read_text()) if path.is_file() else {}
  except (OSError, ValueError):
    return {}
  return d if isinstance(d, dict) else {}


def check_weight_files(config) -> list[Problem]:
  """Every weights path and component file is a regular file (not a folder, FIFO, dangling link or link loop)."""
  from splatshot_jax.diffusion import loading  # pylint: disable=import-outside-toplevel
  paths, wanted = inputs.weight_paths(config.sd, config.weights)
  problems = [Problem(field.split(" (")[0], err, str(path)) for field, path in wanted
              if (err := path_kind_problem(path))]
  folders = [paths.base / "unet", paths.base / "vae", paths.base / "text_encoder", paths.image_encoder,
             *paths.controlnets] + ([paths.vae] if paths.vae is not None else [])
  for folder in folders:
    for name in ["config.json"] + [f"{stem}{var}{ext}" for stem in loading.DIFFUSERS_STEMS + loading.TRANSFORMERS_STEMS
                                   for var in ("", ".fp16") for ext in (".safetensors", ".bin")]:
      if (folder / name) not in dict(wanted).values() and (err := path_kind_problem(folder / name)):
        problems.append(Problem("config.weights", err, str(folder / name)))
  tok = paths.base / "tokenizer"
  for name in ("vocab.json", "merges.txt", "tokenizer.json"):
    if (err := path_kind_problem(tok / name)):
      problems.append(Problem("config.sd.base (tokenizer)", err, str(tok / name)))
  return problems


def tokenizer_problem(folder: Path) -> str | None:
  """A CLIP tokenizer folder has vocab.json + merges.txt, or tokenizer.json alone (what transformers saves now)."""
  if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
    return None
  if (folder / "tokenizer.json").is_file():
    model = _read_json_file(folder / "tokenizer.json").get("model")
    if not isinstance(model, dict) or "vocab" not in model or "merges" not in model:
      return "tokenizer.json has no BPE model (model.vocab and model.merges)"
    return None
  return "found neither vocab.json + merges.txt nor tokenizer.json"


def _shapes(path: Path) -> tuple[dict | None, str | None]:
  from splatshot_jax.diffusion import headers  # pylint: disable=import-outside-toplevel
  try:
    return headers.tensor_shapes(path), None
  except headers.HeaderError as e:
    return None, str(e).replace(f"{path}: ", "")


def _first(shapes: dict, suffix: str):
  return next((v for k, v in sorted(shapes.items()) if k.endswith(suffix)), None)


_TO_K = "attentions.0.transformer_blocks.0.attn2.to_k.weight"


def unet_problems(cfg: dict, shapes: dict | None, what: str = "UNet") -> list[str]:
  """An SD-1.5 text-to-image UNet / ControlNet: config.json values and the header's shapes against them."""
  out = []
  sdxl = (cfg.get("cross_attention_dim") == 2048 or cfg.get("addition_embed_type") == "text_time"
          or any(k.startswith("add_embedding.") for k in shapes or {}))
  if sdxl:
    return [f"this {what} is an SDXL one (cross-attention 2048, text_time embedding); SplatShot needs SD-1.5's "
            f"(cross-attention {CROSS_ATTENTION_DIM}"
            + (", e.g. lllyasviel/control_v11p_sd15_openpose)" if what == "ControlNet" else ")")]
  c_in, cross = cfg.get("in_channels"), cfg.get("cross_attention_dim")
  if c_in == 9:
    out.append(f"an inpainting {what} (in_channels 9: latents + mask + masked image); SplatShot needs the "
               f"text-to-image one (in_channels {UNET_IN_CHANNELS})")
  elif isinstance(c_in, int) and c_in != UNET_IN_CHANNELS:
    out.append(f"config.json says in_channels {c_in}; expected {UNET_IN_CHANNELS} (SD-1.5's latents)")
  if isinstance(cross, int) and cross != CROSS_ATTENTION_DIM:
    kind = {1024: " (SD-2.x)", 2048: " (SDXL)"}.get(cross, "")
    out.append(f"config.json says cross_attention_dim {cross}{kind}; expected {CROSS_ATTENTION_DIM} (SD-1.x)")
  if shapes:
    conv, to_k = shapes.get("conv_in.weight"), _first(shapes, _TO_K)
    if conv is not None and len(conv) == 4 and isinstance(c_in, int) and conv[1] != c_in:
      out.append(f"the weights' header disagrees with config.json: conv_in.weight has {conv[1]} input channels, "
                 f"config.json says in_channels {c_in} (weights and config.json of different models?)")
    blocks = cfg.get("block_out_channels")
    if conv is not None and isinstance(blocks, list) and blocks and conv[0] != blocks[0]:
      out.append(f"the weights' header disagrees with config.json: conv_in.weight has {conv[0]} output channels, "
                 f"config.json's block_out_channels starts with {blocks[0]}")
    if to_k is not None and len(to_k) == 2 and isinstance(cross, int) and to_k[1] != cross:
      out.append(f"the weights' header disagrees with config.json: attn2.to_k takes {to_k[1]}-d text features, "
                 f"config.json says cross_attention_dim {cross}")
  return out


def ip_adapter_problems(shapes: dict) -> list[str]:
  """An IP-Adapter-Plus(-Face) for SD-1.5: a Resampler (image_proj.latents, proj_in, proj_out) with 16 tokens of
  768 and to_k_ip / to_v_ip of 768-d inputs."""
  proj = {k.split("image_proj.", 1)[1]: v for k, v in shapes.items() if k.startswith("image_proj.")}
  if not shapes:
    return []  # no tensors at all: the loader names what is missing
  if not proj:
    return ["holds no image_proj weights (an IP-Adapter file holds image_proj and ip_adapter)"]
  if "proj.weight" in proj and "latents" not in proj:
    return ["is a base IP-Adapter (image_proj.proj: 4 tokens from the pooled image embedding); SplatShot uses "
            "IP-Adapter-Plus-Face (a Resampler: image_proj.latents, proj_in, proj_out; 16 tokens), e.g. "
            "ip-adapter-plus-face_sd15.bin"]
  missing = [k for k in ("latents", "proj_in.weight", "proj_out.weight") if k not in proj]
  if missing:
    return [f"is not an IP-Adapter-Plus(-Face): image_proj lacks {', '.join(missing)} (keys: "
            f"{', '.join(sorted(proj)[:4])} ...)"]
  out = []
  latents, proj_out = proj["latents"], proj["proj_out.weight"]
  if len(latents) == 3 and latents[1] != IP_ADAPTER_TOKENS:
    out.append(f"image_proj.latents has {latents[1]} tokens; IP-Adapter-Plus-Face has {IP_ADAPTER_TOKENS}")
  if proj_out and proj_out[0] != CROSS_ATTENTION_DIM:
    out.append(f"image_proj.proj_out gives {proj_out[0]}-d tokens; SD-1.5's cross-attention takes "
               f"{CROSS_ATTENTION_DIM} (an SDXL IP-Adapter?)")
  to_k = next((v for k, v in sorted(shapes.items()) if k.endswith("to_k_ip.weight")), None)
  if to_k is not None and len(to_k) == 2 and to_k[1] != CROSS_ATTENTION_DIM:
    out.append(f"to_k_ip takes {to_k[1]}-d tokens; expected {CROSS_ATTENTION_DIM}")
  return out


def check_weight_shapes(config) -> list[Problem]:
  """Header shapes (no tensors read) against each module's config.json: the UNet (SD-1.5 text-to-image, not
  inpainting), each ControlNet (SD-1.x, not SDXL), the IP-Adapter (Plus-Face), and zip .bin members."""
  from splatshot_jax.diffusion import loading  # pylint: disable=import-outside-toplevel
  paths, _ = inputs.weight_paths(config.sd, config.weights)
  problems = []
  modules = [("config.sd.base (unet)", paths.base / "unet", "UNet")]
  modules += [(f"config.sd.controlnets[{i}]", c, "ControlNet") for i, c in enumerate(paths.controlnets)]
  for field, folder, what in modules:
    try:
      wfile = loading.find_weights(folder, loading.DIFFUSERS_STEMS)
    except loading.CheckpointError:
      continue  # check_weights reports it
    shapes, err = _shapes(wfile)
    if err:
      problems.append(Problem(field, err, str(wfile)))
    problems += [Problem(field, m, str(folder)) for m in unet_problems(_read_json_file(folder / "config.json"),
                                                                       shapes, what)]
  if paths.ip_adapter is not None and paths.ip_adapter.is_file():
    shapes, err = _shapes(paths.ip_adapter)
    if err:
      problems.append(Problem("config.sd.ip_adapter", err, str(paths.ip_adapter)))
    elif shapes is not None:
      problems += [Problem("config.sd.ip_adapter", m, str(paths.ip_adapter)) for m in ip_adapter_problems(shapes)]
  return problems


def gaussian_problems(folder, g, cameras) -> list[str]:
  """A template's Gaussians are usable: non-zero quaternions, standard deviations within SCALE_RANGE of the rig's
  size, and some of them in front of and inside at least one camera (else every render is blank)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  out = []
  quats = np.asarray(g.quats, np.float64)
  zero = np.nonzero(np.linalg.norm(quats, axis=-1) < 1e-12)[0]
  if len(zero):
    out.append(f"{folder}: {len(zero)} of {len(quats)} Gaussians have an all-zero rotation quaternion (first: "
               f"{zero[:5].tolist()}); a rotation cannot be made from it")
  viewmat, K = np.asarray(cameras.viewmat, np.float64), np.asarray(cameras.K, np.float64)
  means = np.asarray(g.means, np.float64)
  centres = -np.einsum("vji,vj->vi", viewmat[:, :3, :3], viewmat[:, :3, 3])
  size = float(np.median(np.linalg.norm(centres - np.median(means, 0), axis=-1))) or 1.0
  with np.errstate(over="ignore", invalid="ignore"):
    sigma = np.exp(np.asarray(g.log_scales, np.float64)) / size
  lo, hi = SCALE_RANGE
  bad = np.nonzero(~((sigma >= lo) & (sigma <= hi)).all(-1))[0]
  if len(bad):
    out.append(f"{folder}: {len(bad)} of {len(sigma)} Gaussians have a size outside [{lo:g}, {hi:g}] x the rig's "
               f"distance to the head ({size:.3g}); first {bad[0]}: standard deviations "
               f"{np.exp(np.asarray(g.log_scales, np.float64)[bad[0]]).tolist()} (log-scales in the PLY?)")
  pc = np.einsum("vij,nj->vni", viewmat[:, :3, :3], means) + viewmat[:, None, :3, 3]
  z = pc[..., 2]
  with np.errstate(divide="ignore", invalid="ignore"):
    u = K[:, None, 0, 0] * pc[..., 0] / z + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * pc[..., 1] / z + K[:, None, 1, 2]
  seen = (z > 1e-6) & (u >= 0) & (u < cameras.width) & (v >= 0) & (v < cameras.height)
  if not seen.any():
    out.append(f"{folder}: none of the {len(means)} Gaussians is in front of and inside any of the "
               f"{len(viewmat)} cameras (every render would be blank): are the Gaussians and the cameras in the "
               "same world frame?")
  return out


def check_run_lock(out: Path, field: str = "config.out_dir") -> list[Problem]:
  """No live process is writing `out` (its lock), and no finished run waits in its hidden partial folder."""
  problems = []
  holder = atomic.lock_holder(out)
  if holder is not None:
    problems.append(Problem(field, f"another run is writing it: process {holder.get('pid')} on "
                                   f"{holder.get('host')}, started {holder.get('started')}; wait for it to end or "
                                   "choose another folder", str(out)))
  part = atomic.partial_dir(out)
  if (atomic.run_state(part) or {}).get("status") == "complete":
    problems.append(Problem(field, f"a finished run that could not be renamed into place waits in {part}: move it "
                                   "where you want it first", str(out)))
  return problems


def estimate_output_bytes(config, num_gaussians: int, num_views: int, height: int, width: int) -> int:
  """A generous estimate of one splatshot run's outputs: two PLYs and two viewer pages of the Gaussians, the
  exports, the views as PNG (uncompressed size), the step grids and the turntable."""
  sh = 48 + 14  # floats per Gaussian in a PLY (degree-3 SH + means, scales, rotation, opacity)
  gaussians = num_gaussians * sh * 4 * 5  # avatar.ply, base.ply, viewer.html, base_viewer.html, avatar.splat
  views = num_views * height * width * 3 * 3  # views/, views_grid.png, the exports' images
  steps = config.sampler.num_inference_steps
  thumb = max(1, config.sampler.thumbnail) ** 2 * 3 * num_views * steps * 2
  frames = config.outputs.turntable_frames * height * width * 3
  return int(1.5 * (gaussians + views + thumb + frames)) + 2 ** 20


def _ply_vertex_count(folder: Path) -> int | None:
  """The Gaussian count in a template's PLY header (the header only)."""
  from splatshot_jax import templates  # pylint: disable=import-outside-toplevel
  for name in ("gaussians.ply", templates.OFFICIAL_PLY):
    if (folder / name).is_file():
      try:
        with open(folder / name, "rb") as f:
          for _ in range(200):
            line = f.readline().decode("ascii", "replace").split()
            if line[:2] == ["element", "vertex"] and len(line) == 3 and line[2].isdigit():
              return int(line[2])
            if line[:1] == ["end_header"]:
              return None
      except OSError:
        return None
  return None


def check_disk_space(config, runs: int = 1, field: str = "config.out_dir") -> list[Problem]:
  """The free space where out_dir goes covers `runs` times the estimated outputs of one run."""
  if not config.get("out_dir"):
    return []
  ancestor = Path(config.out_dir).expanduser()
  while not ancestor.exists() and ancestor != ancestor.parent:
    ancestor = ancestor.parent
  try:
    free = shutil.disk_usage(ancestor).free
  except OSError:
    return []
  if config.template == "synthetic":
    n, size = config.synthetic.num_gaussians, config.synthetic.size
  else:  # the largest template listed; views of the paper's size (816 x 560 padded, taken square)
    counts = [c for f in inputs.template_folders(config) if (c := _ply_vertex_count(f)) is not None]
    n, size = max(counts, default=300_000), 816
  need = runs * estimate_output_bytes(config, n, config.num_views, size, size)
  if free < need:
    return [Problem(field, f"{free / 2**30:.2f} GiB free at {ancestor}; the outputs of {runs} run(s) need about "
                           f"{need / 2**30:.2f} GiB: free some space or choose another disk", str(ancestor))]
  return []


def _duration(seconds: float) -> str:
  for unit, n in (("days", 86400), ("hours", 3600), ("minutes", 60)):
    if seconds >= n:
      return f"{seconds / n:.3g} {unit}"
  return f"{seconds:.3g} s"


def check_run_length(config) -> list[Problem]:
  """Step and iteration counts within sane bounds, with an ETA's lower bound when they are not."""
  problems = []
  if "sampler" in config and "guidance" in config:
    n, first, later = (config.sampler.get("num_inference_steps"), config.guidance.get("refit_iters_first"),
                       config.guidance.get("refit_iters"))
    if isinstance(n, int) and n > MAX_SAMPLER_STEPS:
      problems.append(Problem("config.sampler.num_inference_steps", f"{n} steps; expected at most "
                              f"{MAX_SAMPLER_STEPS} (SD's training timesteps; the paper uses 25)"))
    if all(isinstance(x, int) for x in (n, first, later)):
      steps = max(1, min(n, MAX_SAMPLER_STEPS))
      total = first + (steps - 1) * later
      if total > MAX_ITERATIONS:
        problems.append(Problem("config.guidance.refit_iters", f"refit_iters_first={first} and refit_iters={later} "
                                f"over up to {steps} steps are {total:.3g} refit iterations; at least "
                                f"{_duration(total * MIN_SECONDS_PER_ITERATION)} at {MIN_SECONDS_PER_ITERATION * 1e3:g}"
                                f" ms each. Expected at most {MAX_ITERATIONS} (the paper: 1000 + 12 x 500)"))
  iters = config.get("fit", {}).get("num_iters") if "fit" in config else None
  if isinstance(iters, int) and iters > MAX_ITERATIONS:
    problems.append(Problem("config.fit.num_iters", f"{iters:.3g} iterations; at least "
                            f"{_duration(iters * MIN_SECONDS_PER_ITERATION)}. Expected at most {MAX_ITERATIONS}"))
  return problems


# ---------------------------------------------------------------------------------------------
# One check per job.


def check_splatshot(config, reference=None, *, per_run: bool = True) -> list[Problem]:
  """Every problem of a splatshot config (configs/splatshot_sd15.py layout), weights to out_dir.

  Args:
    config: the job's ConfigDict.
    reference: the job's default config; when given, keys it lacks are reported (typos in a config file).
    per_run: also check config.photo and config.out_dir (a batch checks those per photo, `check_batch`).
  """
  problems = check_keys(config, reference) if reference is not None else []
  problems += check_dataclass_sections(config)
  v = _Values(config)
  v.int("seed")
  v.int("sampler.num_inference_steps", lo=1)
  v.number("sampler.strength", 0, 1)
  v.choice("sampler.start", SAMPLER_STARTS)
  v.choice("sampler.schedule", SAMPLER_SCHEDULES)
  v.int("sampler.thumbnail", lo=0)
  for k in ("refit_iters_first", "refit_iters", "self_recurrence"):
    v.int(f"guidance.{k}", lo=1)
  v.choice("guidance.feedback_loss", FEEDBACK_LOSSES)
  v.choice("guidance.ssim_padding", SSIM_PADDINGS)
  v.boolean("guidance.carry_adam")
  v.int("guidance.sdi_source_view", lo=0)
  v.choice("refit.view_weighting", VIEW_WEIGHTINGS)
  v.choice("refit.ssim_padding", SSIM_PADDINGS)
  v.custom("refit.alpha_max", lambda x: not isinstance(x, bool) and isinstance(x, (int, float)) and 0 < x < 1,
           "a number in (0, 1) (official gsplat 0.999, 3DGS 0.99)")
  v.boolean("official_quirks")
  v.boolean("drop_invalid_views")
  v.number("guidance.guidance_weight", lo=0)
  v.number("guidance.sdi_omega")
  v.number("guidance.confidence_temperature", lo=0, open_lo=True)
  v.number("guidance.lambda_dssim", 0, 1)
  v.choice("sd.dtype", DTYPES)
  v.number("sd.guidance_scale", lo=0)
  v.number("sd.ip_adapter_scale", lo=0)
  v.int("sd.view_chunk", lo=1)
  v.int("sd.decode_chunk", lo=1)
  for k in ("lr_means", "lr_scales", "lr_quats", "lr_opacities", "lr_sh0", "lr_shN"):
    v.number(f"refit.{k}", lo=0)
  v.rgb("refit.background")
  v.choice("refit.backend", RENDER_BACKENDS)
  v.int("refit.views_per_iter", lo=1)
  v.choice("refit.lr_batch_scaling", LR_BATCH_SCALINGS)
  v.boolean("refit.equal_views_seen")
  v.custom("mesh.views", lambda x: isinstance(x, int) and not isinstance(x, bool) and (x == -1 or x >= 1),
           "-1 (all local devices) or a device count >= 1")
  v.int("outputs.turntable_frames", lo=0)
  v.number("outputs.turntable_fps", lo=0, open_lo=True)
  v.boolean("overwrite")
  scales = v.custom("sd.controlnet_scales", lambda x: len(x) <= 2 and all(
      isinstance(c, (int, float)) and math.isfinite(c) for c in x), "at most 2 finite numbers (openpose, seg)")
  if config.template == "synthetic":
    v.int("synthetic.num_gaussians", lo=1)
    v.int("synthetic.size", lo=16)
    v.choice("synthetic.rig", SYNTHETIC_RIGS)
  problems += v.problems + check_run_length(config)
  tiny = config.weights == inputs.RANDOM_TINY
  if not tiny:
    problems += check_weights(config) + check_weight_files(config) + check_weight_shapes(config)
    if scales is not None and len(scales) != len(config.sd.controlnets):
      problems.append(Problem("config.sd.controlnet_scales", f"{len(scales)} scales for "
                              f"{len(config.sd.controlnets)} config.sd.controlnets; expected one per ControlNet"))
    if per_run:
      problems += check_photo(config.photo)
  if not any(p.field.startswith("config.synthetic") for p in problems):
    found, counts = check_template(config)
    problems += found
    if len(counts) > 1 and tiny:
      problems.append(Problem("config.template", "lists several templates: choosing one needs config.photo "
                                                 "(a real run, not the install check)"))
    v2 = _Values(config)
    v2.int("num_views", 1, min(counts) if counts else None)
    if counts:
      v2.problems = [Problem(p.field, p.message + f" (the template{'s have' if len(counts) > 1 else ' has'} "
                                      f"{min(counts)} views)") for p in v2.problems]
    problems += v2.problems
  if per_run:
    problems += check_out_dir(config.out_dir, bool(config.get("overwrite", False)))
    problems += check_disk_space(config)
  return problems


def run_resolution(config) -> tuple[int, int] | None:
  """(width, height) of the views a splatshot run will sample (the first template's padded size; the synthetic
  head's), or None when the template cannot tell (its meta.json lacks the size)."""
  if config.template == "synthetic":
    size = -(-int(config.synthetic.size) // 16) * 16
    return size, size
  folders = inputs.template_folders(config)
  try:
    meta = json.loads((Path(folders[0]) / "meta.json").read_text())
    return int(meta["padded_width"]), int(meta["padded_height"])
  except (IndexError, OSError, KeyError, TypeError, ValueError):
    return None


def resolution_notice(config, *, lo: float = 0.5, hi: float = 2.0) -> str | None:
  """One line for a user whose run is far from SD's native size (pixel count outside [lo, hi] x 512x512):
  "you are about to run at resolution WxH ..." (SD-1.x makes poor faces far below it, and the feedback gradient
  per latent grows as the pixel count shrinks). None when the size is near native or unknown."""
  wh = run_resolution(config)
  if wh is None or config.weights == inputs.RANDOM_TINY:
    return None
  ratio = wh[0] * wh[1] / SD_NATIVE_PIXELS
  if lo <= ratio <= hi:
    return None
  return (f"you are about to run at resolution {wh[0]}x{wh[1]} ({wh[0] * wh[1] / 1e6:.2f} MP; SD's native is "
          f"~512x512 = 0.26 MP, the official run 560x816): " + (
              "SD-1.5 makes poor faces this small and the same guidance_weight acts more strongly per latent; "
              "build the template at scale 1.0 (configs/build_template.py)" if ratio < lo else
              "far above SD's training size; expect repeated features and long runs"))


def check_batch(config, reference=None) -> list[Problem]:
  """Every problem of a batch config (configs/batch.py) that can be seen before the first photo runs.

  The photo list and the shard, and the single run's checks of weights, template and values. Each photo's own
  checks (a readable file with one usable face, its folder) run when its turn comes: a bad photo is a recorded
  failure of the batch, not a reason to refuse the others. OUT itself must be a folder that can be created.
  """
  problems = []
  try:
    inputs.list_photos(config.photos)
  except inputs.BatchError as e:
    problems += e.problems
  try:
    inputs.parse_shard(config.shard)
  except inputs.BatchError as e:
    problems += e.problems
  problems += check_splatshot(config, reference, per_run=False)
  # OUT holds the per-photo run folders and is never replaced itself: it only has to be a writable folder.
  problems += check_out_dir(config.out_dir, replaced=False)
  # Room for one photo now (the estimate is generous: all photos at once would refuse big batches that fit);
  # each photo's own check looks again in its turn, so a disk that fills up is a recorded failure, not a crash.
  return problems + check_disk_space(config)


def check_evaluate(config, reference=None) -> list[Problem]:
  """Every problem of an evaluate config (configs/evaluate.py) before anything is rendered."""
  problems = check_keys(config, reference) if reference is not None else []
  v = _Values(config)
  v.custom("yaws", lambda x: len(x) > 0 and all(isinstance(y, (int, float)) and -180 <= y <= 180 for y in x),
           "a non-empty list of yaw angles in degrees within [-180, 180]")
  v.number("max_yaw", lo=0)
  v.number("side_yaw", -180, 180)
  v.int("video_stride", lo=1)
  v.number("alpha_threshold", 0, 1)
  v.int("render_chunk", lo=1)
  v.int("thumbnail", lo=16)
  problems += v.problems
  if not config.target:
    problems.append(Problem("config.target", "is empty: give an avatar folder (one run) or a batch folder"))
  elif not Path(config.target).expanduser().is_dir():
    problems.append(Problem("config.target", "no folder there (expected an avatar folder or a batch folder)",
                            str(Path(config.target).expanduser())))
  if config.arcface and not Path(config.arcface).expanduser().is_file():
    problems.append(Problem("config.arcface", "no ONNX file there (insightface's recognition model, e.g. "
                                              "w600k_r50.onnx)", str(Path(config.arcface).expanduser())))
  if "protocol" in config:
    problems += _check_paper_protocol(config)
  return problems


def _check_paper_protocol(config) -> list[Problem]:
  """The paper protocol's fields of an evaluate config (splatshot_jax/jobs/paper_metrics.py): the user's files."""
  from splatshot_jax.face import scrfd  # pylint: disable=import-outside-toplevel
  v = _Values(config)
  v.choice("protocol", PROTOCOLS)
  v.custom("det_size", lambda x: isinstance(x, int) and x >= 32 and x % 32 == 0, "an int >= 32, a multiple of 32")
  for k in ("ffhq_subset", "kid_subsets", "kid_subset_size"):
    v.int(k, lo=1)
  problems = v.problems
  if config.insightface:
    try:
      scrfd.model_folder(config.insightface)
    except scrfd.InsightFaceError as e:
      problems.append(Problem("config.insightface", str(e)))
  if bool(config.fid_weights) != bool(config.ffhq):
    problems.append(Problem("config.fid_weights" if not config.fid_weights else "config.ffhq",
                            "FID / KID need both config.fid_weights and config.ffhq (or neither)"))
  if config.fid_weights:
    p = Path(config.fid_weights).expanduser()
    if not p.is_file():
      problems.append(Problem("config.fid_weights", "no file there (the FID Inception's weights, "
                                                    "pt_inception-2015-12-05-6726825d.pth, or an ONNX network)", str(p)))
    elif p.suffix != ".onnx" and not _importable("torch_fidelity"):
      problems.append(Problem("config.fid_weights", "a .pth Inception needs torch and torch-fidelity: "
                                                    "pip install 'splatshot_jax[paper]'", str(p)))
  if config.ffhq:
    d = Path(config.ffhq).expanduser()
    if not d.is_dir():
      problems.append(Problem("config.ffhq", "no folder there (the FFHQ images, the FID reference)", str(d)))
    elif next(d.glob("**/*.png"), None) is None and next(d.glob("**/*.jpg"), None) is None:
      problems.append(Problem("config.ffhq", "no .png or .jpg images under it", str(d)))
  if bool(config.clip_iqa) != bool(config.clip_iqa_text):
    problems.append(Problem("config.clip_iqa_text" if config.clip_iqa else "config.clip_iqa",
                            "CLIP-IQA needs both config.clip_iqa (image encoder) and config.clip_iqa_text"))
  if config.clip_iqa and not Path(config.clip_iqa).expanduser().is_file():
    problems.append(Problem("config.clip_iqa", "no ONNX file there (a CLIP image encoder)",
                            str(Path(config.clip_iqa).expanduser())))
  if config.clip_iqa_text:
    p = Path(config.clip_iqa_text).expanduser()
    try:
      import numpy as np  # pylint: disable=import-outside-toplevel
      shape = np.load(p, mmap_mode="r").shape
      if len(shape) != 2 or shape[0] != 2:
        problems.append(Problem("config.clip_iqa_text", f"expected a (2, D) array (\"Good photo.\", \"Bad "
                                                        f"photo.\" text embeddings), got shape {shape}", str(p)))
    except (OSError, ValueError) as e:
      problems.append(Problem("config.clip_iqa_text", f"not a readable .npy file ({e})", str(p)))
  return problems


def _importable(module: str) -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel
  return importlib.util.find_spec(module) is not None


def check_build_template(config, reference=None) -> list[Problem]:
  """Every problem of a build_template config (configs/build_template.py layout)."""
  problems = check_keys(config, reference) if reference is not None else []
  v = _Values(config)
  _common_fit_values(v)
  v.choice("rig", BUILD_RIGS)
  v.rgb("background", allow_empty=True)
  v.int("preview_views", lo=1)
  v.rgb("template.background")
  v.boolean("template.drop_jaw")
  v.choice("template.detector", DETECTORS)
  v.number("template.min_face_px", lo=0, open_lo=True)
  for k in ("lift_iters", "lift_views_per_iter", "render_chunk"):
    v.int(f"template.{k}", lo=1)
  v.number("template.lift_lr", lo=0, open_lo=True)
  v.boolean("overwrite")
  if not config.data:
    v.int("synthetic.num_gaussians", lo=1)
    v.int("synthetic.size", lo=16)
  problems += v.problems + check_run_length(config)
  if config.data:
    problems += check_data("config.data", config.data)
  if config.gaussians:
    from splatshot_jax.io import ply  # pylint: disable=import-outside-toplevel
    p = Path(config.gaussians).expanduser()
    if not p.is_file():
      problems.append(Problem("config.gaussians", "no such file" + (" (it is a directory)" if p.is_dir() else ""),
                              str(p)))
    else:
      try:
        ply.read_gaussians(p)
      except ply.PlyError as e:
        problems.append(Problem("config.gaussians", str(e)))
  problems += check_out_dir(config.out_dir, bool(config.get("overwrite", False)))
  return problems


def check_fit_multiview(config, reference=None) -> list[Problem]:
  """Every problem of a fit_multiview config (configs/fit_multiview.py layout)."""
  problems = check_keys(config, reference) if reference is not None else []
  v = _Values(config)
  _common_fit_values(v)
  v.rgb("background")
  v.int("turntable_frames", lo=1)
  v.boolean("overwrite")
  problems += v.problems + check_run_length(config)
  if config.data:
    problems += check_data("config.data", config.data)
  problems += check_out_dir(config.out_dir, bool(config.get("overwrite", False)))
  return problems


# The hook for every job: a new job (batch, evaluate) registers its check here and calls it first.
CHECKS: dict[str, Callable[..., list[Problem]]] = {
    "splatshot": check_splatshot,
    "build_template": check_build_template,
    "fit_multiview": check_fit_multiview,
    "batch": check_batch,
    "evaluate": check_evaluate,
}


def check(config, reference=None) -> list[Problem]:
  """The check of the job config.job names ([] for a job without one)."""
  fn = CHECKS.get(config.get("job"))
  return fn(config, reference) if fn is not None else []


def require(config, reference=None) -> None:
  """Raises one UserInputError listing every problem `check` finds in the job config.job names."""
  raise_if_problems(check(config, reference), f"cannot start the {config.get('job')} job")
