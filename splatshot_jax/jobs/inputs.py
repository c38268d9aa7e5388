"""Where a job's inputs are: the weights layout, the template folders, the batch's photos and shards.

The preflight (`jobs/preflight.py`) checks these before any work and the jobs load from them, so both
import this module and neither imports the other's job.

Weights layout under `config.weights` (each entry can be overridden by an absolute path):
  stable-diffusion-v1-5/                       diffusers pipeline folder (unet, vae, text_encoder, tokenizer)
  sd-vae-ft-mse/                               optional separate VAE (official code loads one)
  control_v11p_sd15_openpose/, control_v11p_sd15_seg/    the two ControlNets
  IP-Adapter/models/ip-adapter-plus-face_sd15.bin       IP-Adapter (.bin or .safetensors)
  IP-Adapter/models/image_encoder/             its CLIP ViT-H/14 vision encoder
`config.weights = "random-tiny"` builds a tiny random-weight prior instead (install check, no files).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import re
from pathlib import Path

import jax

from splatshot_jax import errors, templates

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

RANDOM_TINY = "random-tiny"


class MissingInputsError(errors.UserError, FileNotFoundError):
  """Inputs of a run are missing; the message lists each one and where it was looked for."""


@dataclasses.dataclass(frozen=True)
class WeightPaths:
  base: Path
  vae: Path | None
  controlnets: tuple[Path, ...]
  ip_adapter: Path
  image_encoder: Path


def weight_paths(sd_config, weights_root: str) -> tuple[WeightPaths, list[tuple[str, Path]]]:
  """(the checkpoint paths, [(config field, file that must exist)]) of the SD prior's weights."""
  root = Path(weights_root).expanduser()
  at = lambda p: None if not p else (Path(p) if Path(p).is_absolute() else root / p)
  paths = WeightPaths(base=at(sd_config.base), vae=at(sd_config.vae),
                      controlnets=tuple(at(c) for c in sd_config.controlnets),
                      ip_adapter=at(sd_config.ip_adapter), image_encoder=at(sd_config.image_encoder))
  wanted = [("config.sd.base (diffusers SD-1.5 folder)", paths.base / "model_index.json"),
            ("config.sd.ip_adapter", paths.ip_adapter),
            ("config.sd.image_encoder (CLIP vision folder)", paths.image_encoder / "config.json")]
  if paths.vae is not None:
    wanted.append(("config.sd.vae", paths.vae / "config.json"))
  wanted += [(f"config.sd.controlnets[{i}]", c / "config.json") for i, c in enumerate(paths.controlnets)]
  return paths, wanted


def missing_weights_message(weights_root: str, missing: list[str]) -> str:
  return ("SplatShot needs these checkpoints (nothing is downloaded at run time):\n" + "\n".join(missing)
          + f"\nLooked under config.weights = {str(Path(weights_root).expanduser())!r}; see "
          f"splatshot_jax/jobs/inputs.py for the layout, or use --config.weights={RANDOM_TINY} for the install check.")


def resolve_weights(sd_config, weights_root: str) -> WeightPaths:
  """Paths of every checkpoint the SD prior needs; raises MissingInputsError listing all absent ones."""
  paths, wanted = weight_paths(sd_config, weights_root)
  missing = [f"  {what}: {path}" for what, path in wanted if not path.exists()]
  if not weights_root:
    missing.insert(0, "  config.weights is empty (give the folder that holds the checkpoints)")
  if missing:
    raise MissingInputsError(missing_weights_message(weights_root, missing))
  return paths


def template_hint(folder: Path) -> str:
  """How to get a template at `folder` when it is not one ('' when there is nothing to add)."""
  build = ("  python -m experiments.run --config=configs/build_template.py:333 "
           "--config.data=../shared/data/multiview/nersemble-333-48views --config.out_dir={out}")
  if (folder / "view_000.npz").exists() and not any((folder / n).exists()
                                                    for n in ("gaussians.ply", templates.OFFICIAL_PLY)):
    return ("\nThis looks like a view set without its 3DGS (like the shared nersemble-333-48views). Build a "
            f"template from it first:\n{build.format(out=f'templates/{folder.name}')}\nthen pass "
            f"--config.template=templates/{folder.name} (or, if you have the template's 3DGS, put it beside the "
            f"views as {templates.OFFICIAL_PLY}: official SplatShot template folders load as they are)")
  if not folder.exists():
    return f"\nBuild one from a calibrated multi-view head, e.g.:\n{build.format(out=folder)}"
  return ""


def template_folders(config) -> list[Path]:
  """The template folders config.template names (comma-separated); [] for "synthetic"."""
  if config.template == "synthetic":
    return []
  return [Path(f.strip()).expanduser() for f in config.template.split(",") if f.strip()]



# ----------------------------------------------------------------------------------------------
# The batch's photo list and its shards.


class BatchError(errors.UserInputError):
  """The batch's own inputs (config.photos, config.shard) are wrong; the message names the field."""


def list_photos(spec: str) -> list[Path]:
  """The batch's photos, sorted by path: every image file of a folder, or the files a glob matches.

  Raises BatchError when nothing matches or two photos would share an output folder (same stem).
  """
  if not spec:
    raise BatchError("config.photos is empty: give a folder of photos or a glob such as 'photos/*.jpg'")
  folder = Path(spec).expanduser()
  if folder.is_dir():
    files = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    where = f"folder {str(folder)!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
  else:
    files = [Path(f) for f in glob.glob(os.path.expanduser(spec), recursive=True) if Path(f).is_file()]
    where = f"{spec!r} is neither a folder nor a glob that matches files"
  if not files:
    raise BatchError(f"config.photos: {where}")
  files.sort(key=str)
  by_stem: dict[str, list[str]] = {}
  for f in files:
    by_stem.setdefault(f.stem, []).append(str(f))
  clashes = {s: fs for s, fs in by_stem.items() if len(fs) > 1}
  if clashes:
    raise BatchError("config.photos: each photo gets a folder named after it, but these share a name: "
                     + "; ".join(" and ".join(fs) for fs in clashes.values()))
  return files


def parse_shard(shard: str, environ=None) -> tuple[int, int]:
  """(index, count) of this process's share of the photos.

  "i/n" as given; "" is this process's place in a multi-host JAX job (jax.process_index(), jax.process_count()),
  or, in a single-process task of a SLURM job array (--array=0-7), the task's place in the array; else (0, 1).
  """
  if not shard:
    if jax.process_count() > 1:
      return jax.process_index(), jax.process_count()
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
      if env.get("SLURM_ARRAY_TASK_STEP", "1") != "1":
        raise BatchError("config.shard: this SLURM array has a step; give --config.shard=i/n explicitly")
      index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
      return index, int(env["SLURM_ARRAY_TASK_COUNT"])
    return 0, 1
  m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
  if not m or not int(m[1]) < int(m[2]):
    raise BatchError(f"config.shard={shard!r}: expected 'i/n' with 0 <= i < n (e.g. '0/4'), or '' for "
                     "(jax.process_index(), jax.process_count()) or the SLURM array task")
  return int(m[1]), int(m[2])


def photo_digest(path) -> str:
  """sha256 of a photo's bytes: a run records it (RUN.json "photo_sha256") so a batch rerun redoes a photo whose
  file was replaced under the same name."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def shard_photos(photos: list[Path], index: int, count: int) -> list[Path]:
  """Every count-th photo from the index-th: the shards partition the sorted list, whatever its order on disk."""
  return list(photos[index::count])
