"""Loading diffusers/transformers checkpoints from disk into our Flax modules.

This is the edge where files are validated: every error names the file (and where it was looked for),
the config field, or the first mismatched key with the expected shape (via `convert.torch_to_flax`).
Past this module the numerics assume well-formed params.

Layouts understood (what `huggingface_hub.snapshot_download` leaves on disk):

  sd15/                              a diffusers pipeline folder
    model_index.json
    scheduler/scheduler_config.json
    unet/config.json + diffusion_pytorch_model[.fp16].safetensors (or .bin)
    vae/config.json  + diffusion_pytorch_model[.fp16].safetensors (or .bin)
    text_encoder/config.json + model[.fp16].safetensors (or pytorch_model[.fp16].bin)
    tokenizer/vocab.json, merges.txt (+ tokenizer_config.json, special_tokens_map.json)
  sd-vae-ft-mse/                     a separate VAE folder (config.json + weights)
  control_v11p_sd15_openpose/        a single ControlNet folder (config.json + weights)
  IP-Adapter/models/ip-adapter-plus-face_sd15.bin (or .safetensors)   an IP-Adapter file
  IP-Adapter/models/image_encoder/   CLIP ViT-H vision tower (config.json + model.safetensors)

Safetensors are read with `safetensors.numpy` (no torch needed). `.bin` files are torch pickles and
need torch; without it the error says so and gives the one-line conversion to safetensors.

Every loader takes `dtype` ("float32", "bfloat16", "float16" or a jnp dtype): params are cast to it and the
module computes in it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from splatshot_jax.diffusion.convert import CheckpointError, bin_conversion_command, torch_to_flax

PathLike = str | os.PathLike

_DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
           "float16": jnp.float16, "fp16": jnp.float16}

# Weight file stems, diffusers' first, then transformers'.
DIFFUSERS_STEMS = ("diffusion_pytorch_model",)
TRANSFORMERS_STEMS = ("model", "pytorch_model")


def resolve_dtype(dtype: Any) -> Any:
  """'float32' | 'bfloat16' | 'float16' (or 'fp32'/'bf16'/'fp16', or a jnp dtype) -> jnp dtype."""
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise ValueError(f"dtype={dtype!r}; expected one of {sorted(_DTYPES)}.")
    return _DTYPES[dtype]
  dt = jnp.dtype(dtype)
  if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    raise ValueError(f"dtype={dt}; expected float32, bfloat16 or float16.")
  return dt.type


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  import safetensors.numpy

  try:
    return dict(safetensors.numpy.load_file(str(path)))
  except TypeError:
    # numpy has no bfloat16: read the raw buffers ourselves (ml_dtypes ships with jax).
    return _read_safetensors_raw(path)
  except Exception as e:  # SafetensorError is not importable under a stable name
    raise CheckpointError(
        f"{path}: not a readable safetensors file ({e}); it is probably truncated or an incomplete "
        "download: fetch it again."
    ) from e


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors_raw(path: Path) -> dict[str, np.ndarray]:
  """Minimal safetensors reader (8-byte header length, JSON header, raw little-endian data)."""
  import ml_dtypes

  data = path.read_bytes()
  n = int.from_bytes(data[:8], "little")
  header = json.loads(data[8 : 8 + n])
  base = 8 + n
  out = {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    dt = ml_dtypes.bfloat16 if info["dtype"] == "BF16" else _ST_DTYPES.get(info["dtype"])
    if dt is None:
      raise CheckpointError(f"{path}: tensor '{key}' has unsupported dtype {info['dtype']}.")
    start, end = info["data_offsets"]
    out[key] = np.frombuffer(data[base + start : base + end], dtype=dt).reshape(info["shape"])
  return out


def _read_bin(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise CheckpointError(
        f"{path}: a PyTorch pickle (.bin) needs torch to read, and torch is not installed. Either install torch, "
        f"or convert the file once on a machine that has it:\n  {bin_conversion_command(path)}\n"
        "then load the .safetensors file instead."
    ) from e
  try:
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:
    raise CheckpointError(f"{path}: torch.load failed ({e}); the file is probably truncated or not a "
                          "state dict.") from e
  if not isinstance(sd, Mapping):
    raise CheckpointError(f"{path}: expected a state dict (a dict of tensors), got {type(sd).__name__}.")
  out = {}
  for k, v in _flatten(sd).items():
    if not hasattr(v, "detach"):
      continue  # non-tensor entries (e.g. version counters)
    v = v.detach().cpu()
    out[k] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
  return out


def read_state_dict(path: PathLike) -> dict[str, np.ndarray]:
  """Reads one weights file: `.safetensors` (numpy, no torch) or `.bin` (torch pickle).

  Nested dicts are flattened to dotted keys. Returns {key: numpy array} in the file's dtype (bf16 as
  ml_dtypes.bfloat16 from safetensors, float32 from .bin).
  Raises CheckpointError naming the file when it is missing, truncated or unreadable.
  """
  path = Path(path)
  if not path.is_file():
    raise CheckpointError(f"{path}: file not found.")
  if path.name.endswith(".safetensors.index.json") or path.name.endswith(".bin.index.json"):
    return _read_sharded(path)
  if path.suffix == ".safetensors":
    return _read_safetensors(path)
  if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
    return _read_bin(path)
  raise CheckpointError(f"{path}: unknown weights format (expected .safetensors or .bin).")


def _read_sharded(index: Path) -> dict[str, np.ndarray]:
  try:
    weight_map = json.loads(index.read_text())["weight_map"]
  except (ValueError, KeyError) as e:
    raise CheckpointError(f"{index}: not a shard index (needs a 'weight_map' field): {e}") from e
  out = {}
  for shard in sorted(set(weight_map.values())):
    out.update(read_state_dict(index.parent / shard))
  return out


def find_weights(folder: PathLike, stems: Sequence[str] = DIFFUSERS_STEMS + TRANSFORMERS_STEMS,
                 variant: str | None = None) -> Path:
  """The weights file of a component folder.

  Preference: the requested variant (e.g. "fp16": `<stem>.fp16.safetensors`) over the plain file, safetensors
  over .bin, a single file over a shard index. Without a variant the plain file is preferred but a lone
  variant file is accepted (some repos ship only `*.fp16.safetensors`).

  Raises CheckpointError listing every name looked for in `folder`.
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise CheckpointError(f"{folder}: folder not found.")
  variants = [variant, None] if variant else [None, "fp16"]
  tried = []
  for var in variants:
    for ext in (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json"):
      for stem in stems:
        name = f"{stem}.{var}{ext}" if var else f"{stem}{ext}"
        tried.append(name)
        if (folder / name).is_file():
          return folder / name
  raise CheckpointError(f"{folder}: no weights file; looked for {', '.join(tried)}.")


def read_config(folder: PathLike, name: str = "config.json") -> dict:
  """Parses `folder/name`; raises CheckpointError naming the file if it is missing or not JSON."""
  path = Path(folder) / name
  if not path.is_file():
    raise CheckpointError(f"{path}: file not found (every model folder needs its {name}).")
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e}).") from e


def convert_params(state_dict: Mapping[str, np.ndarray], template: Any, *, name: str, dtype: Any,
                   key_map: Callable[[str], str | None] | None = None, ignore: Iterable[str] = ()) -> Any:
  """`torch_to_flax` then cast to `dtype` as jnp arrays (one host->device copy per leaf)."""
  import jax

  params = torch_to_flax(state_dict, template, name=name, key_map=key_map, ignore=ignore,
                         dtype=np.float32)
  dt = resolve_dtype(dtype)
  return jax.tree.map(lambda x: jnp.asarray(x, dtype=dt), params)


# ---------------------------------------------------------------------------------------------
# Components


def _load_component(folder: PathLike, variant: str | None, stems=DIFFUSERS_STEMS + TRANSFORMERS_STEMS):
  """(config dict, state dict, weights path) of a model folder; errors name the folder/file."""
  folder = Path(folder)
  if not folder.is_dir():
    raise CheckpointError(f"{folder}: folder not found.")
  config = read_config(folder)
  path = find_weights(folder, stems, variant)
  return config, read_state_dict(path), path


def _parse(parse: Callable[..., Any], config: dict, path: Path) -> Any:
  """Runs a module's config parser, naming the config file in any error."""
  import inspect

  try:
    if "name" in inspect.signature(parse).parameters:
      return parse(config, name=str(path))
    return parse(config)
  except (ValueError, TypeError, KeyError) as e:
    msg = str(e)
    raise CheckpointError(msg if str(path) in msg else f"{path}: {msg}") from e


def load_unet(folder: PathLike, *, dtype: Any = "float32", variant: str | None = None,
              ip_adapter_state: Mapping[str, np.ndarray] | None = None):
  """A diffusers UNet2DConditionModel folder (`config.json` + weights) -> (UNet2DConditionModel, params).

  ip_adapter_state: the `ip_adapter.*` part of an IP-Adapter file (see `read_ip_adapter`); when given, the UNet is
  built with IP-Adapter cross-attention and the `to_k_ip`/`to_v_ip` weights are mapped onto its `attn2` layers.
  """
  from splatshot_jax.diffusion import unet as unet_lib

  config, sd, path = _load_component(folder, variant, DIFFUSERS_STEMS)
  cfg = _parse(unet_lib.UNetConfig.from_json_dict, config, Path(folder) / "config.json")
  dt = resolve_dtype(dtype)
  model = unet_lib.UNet2DConditionModel(cfg, with_ip_adapter=ip_adapter_state is not None, dtype=dt)
  template = unet_lib.init_params_shape(model)
  name = str(path)
  if ip_adapter_state is not None:
    key_map = unet_lib.ip_adapter_key_map(cfg)
    n_ip = len(cross := unet_lib.cross_attention_layers(cfg))
    found = {key_map[k] for k in ip_adapter_state if k in key_map}
    if len(found) != 2 * n_ip:
      missing = sorted(set(key_map.values()) - found)
      raise CheckpointError(
          f"IP-Adapter: expected to_k_ip/to_v_ip for {n_ip} cross-attention layers of the UNet in {folder} "
          f"({cross[0]} ...), found {len(found)} tensors; first missing: {missing[:1]}. Is the IP-Adapter for "
          "this base model (SD-1.5 vs SDXL)?")
    sd = {**sd, **{key_map[k]: v for k, v in ip_adapter_state.items() if k in key_map}}
    name = f"{path} + IP-Adapter"
  return model, convert_params(sd, template, name=name, dtype=dt)


def _load_diffusers_model(folder: PathLike, variant: str | None, dtype: Any, config_cls, model_cls, params_shape):
  """A diffusers model folder (`config.json` + weights) -> (model, params) for the given classes."""
  config, sd, path = _load_component(folder, variant, DIFFUSERS_STEMS)
  cfg = _parse(config_cls.from_json_dict, config, Path(folder) / "config.json")
  dt = resolve_dtype(dtype)
  model = model_cls(cfg, dtype=dt)
  return model, convert_params(sd, params_shape(model), name=str(path), dtype=dt)


def load_vae(folder: PathLike, *, dtype: Any = "float32", variant: str | None = None):
  """A diffusers AutoencoderKL folder (`config.json` + weights) -> (AutoencoderKL, params)."""
  from splatshot_jax.diffusion import vae as vae_lib

  return _load_diffusers_model(folder, variant, dtype, vae_lib.VAEConfig, vae_lib.AutoencoderKL,
                               vae_lib.init_params_shape)


def load_controlnet(folder: PathLike, *, dtype: Any = "float32", variant: str | None = None):
  """A diffusers ControlNetModel folder (`config.json` + weights) -> (ControlNetModel, params)."""
  from splatshot_jax.diffusion import controlnet as cn_lib

  return _load_diffusers_model(folder, variant, dtype, cn_lib.ControlNetConfig, cn_lib.ControlNetModel,
                               cn_lib.init_params_shape)


def load_text_encoder(folder: PathLike, *, dtype: Any = "float32", variant: str | None = None):
  """A transformers CLIPTextModel folder (`config.json` + `model.safetensors`) -> (CLIPTextModel, params)."""
  from splatshot_jax.diffusion import clip

  config, sd, path = _load_component(folder, variant, TRANSFORMERS_STEMS)
  cfg = _parse(clip.CLIPTextConfig.from_json_dict, config, Path(folder) / "config.json")
  dt = resolve_dtype(dtype)
  params = clip.text_params_from_state_dict(sd, cfg, name=str(path), dtype=np.float32)
  return clip.CLIPTextModel(cfg, dt), _cast(params, dt)


def load_image_encoder(folder: PathLike, *, dtype: Any = "float32", variant: str | None = None):
  """A transformers CLIPVisionModelWithProjection folder (e.g. h94/IP-Adapter `models/image_encoder`, ViT-H/14)
  -> (CLIPVisionModelWithProjection, params)."""
  from splatshot_jax.diffusion import clip

  config, sd, path = _load_component(folder, variant, TRANSFORMERS_STEMS)
  cfg = _parse(clip.CLIPVisionConfig.from_json_dict, config, Path(folder) / "config.json")
  dt = resolve_dtype(dtype)
  params = clip.vision_params_from_state_dict(sd, cfg, name=str(path), dtype=np.float32)
  return clip.CLIPVisionModelWithProjection(cfg, dt), _cast(params, dt)


def _cast(params: Any, dt: Any) -> Any:
  import jax

  return jax.tree.map(lambda x: jnp.asarray(x, dtype=dt), params)


def read_ip_adapter(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """An IP-Adapter file -> (image_proj state dict, ip_adapter state dict with keys '<k>.to_k_ip.weight').

  Reads with `ip_adapter.load_ip_adapter_file`: the official `.bin` ({"image_proj": {...}, "ip_adapter": {...}},
  needs torch) or the flattened `.safetensors` ("image_proj.*" / "ip_adapter.*", what `bin_conversion_command`
  writes). Raises CheckpointError naming the file if it is missing, unreadable or lacks either part.
  """
  from splatshot_jax.diffusion import ip_adapter

  path = Path(path)
  if not path.is_file():
    raise CheckpointError(f"{path}: IP-Adapter file not found.")
  if path.suffix == ".bin":
    try:
      import torch  # noqa: F401
    except ImportError as e:
      raise CheckpointError(
          f"{path}: a PyTorch pickle (.bin) needs torch to read, and torch is not installed. Either install "
          f"torch, or convert the file once on a machine that has it:\n  {bin_conversion_command(path)}\n"
          "then load the .safetensors file instead.") from e
  try:
    sd = ip_adapter.load_ip_adapter_file(str(path))
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(f"{path}: not a readable IP-Adapter file ({e}); it may be truncated.") from e
  proj, ip = sd.get("image_proj") or {}, sd.get("ip_adapter") or {}
  if not proj or not ip:
    raise CheckpointError(f"{path}: no '{'image_proj' if not proj else 'ip_adapter'}' weights; an IP-Adapter "
                          "file holds both 'image_proj' and 'ip_adapter'.")
  return dict(proj), dict(ip)


def load_image_proj(image_proj_state: Mapping[str, np.ndarray], *, name: str, dtype: Any = "float32"):
  """IP-Adapter image projection (Resampler for Plus, Linear+LayerNorm for base) -> (module, params)."""
  from splatshot_jax.diffusion import ip_adapter

  dt = resolve_dtype(dtype)
  model, params = ip_adapter.load_image_proj(image_proj_state, name=name, dtype=np.float32)
  return type(model)(model.config, dt), _cast(params, dt)


def load_scheduler(folder: PathLike, num_inference_steps: int):
  """`scheduler/scheduler_config.json` of a pipeline folder -> `ddim.DDIMSchedule` (any scheduler class's
  config works: DDIM reads only the noise-schedule fields)."""
  from splatshot_jax.diffusion import ddim

  path = Path(folder) / "scheduler_config.json"
  config = read_config(folder, "scheduler_config.json")
  try:
    return ddim.schedule_from_config(config, num_inference_steps)
  except ValueError as e:
    raise CheckpointError(f"{path}: {e}") from e


def load_stable_diffusion(
    root: PathLike,
    *,
    vae: PathLike | None = None,
    controlnets: Sequence[PathLike] = (),
    ip_adapter: PathLike | None = None,
    image_encoder: PathLike | None = None,
    dtype: Any = "float32",
    variant: str | None = None,
    num_inference_steps: int = 25,
    view_chunk: int = 8,
    decode_chunk: int = 4,
):
  """A diffusers SD-1.x/2.x pipeline folder (+ extras) -> (`StableDiffusion` prior, `SDConditioner`).

  Args:
    root: the pipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).
    vae: a separate AutoencoderKL folder (e.g. sd-vae-ft-mse) replacing root/vae.
    controlnets: ControlNet folders, in the order cond.controls will follow.
    ip_adapter: an IP-Adapter file (.bin official layout or .safetensors).
    image_encoder: the CLIP vision folder for the IP-Adapter (h94/IP-Adapter models/image_encoder); required with
      ip_adapter.
    dtype: "float32" | "bfloat16" | "float16" for every module (params are cast).
    variant: weights variant to prefer, e.g. "fp16" (`*.fp16.safetensors`).
    num_inference_steps: for the DDIM schedule read from root/scheduler (stored on the prior as `.schedule`).
    view_chunk, decode_chunk: see `denoiser.SDSpec`.
  """
  from splatshot_jax.diffusion import denoiser
  from splatshot_jax.diffusion import tokenizer as tok_lib

  root = Path(root)
  index = read_config(root, "model_index.json")
  for sub in ("unet", "vae", "text_encoder", "tokenizer"):
    if sub not in index and not (root / sub).is_dir():
      raise CheckpointError(f"{root / 'model_index.json'}: no '{sub}' component (and no {root / sub}/ folder).")
  if ip_adapter is not None and image_encoder is None:
    raise ValueError("load_stable_diffusion: ip_adapter needs image_encoder (the CLIP vision folder it was "
                     "trained with, e.g. h94/IP-Adapter models/image_encoder).")
  dt = resolve_dtype(dtype)
  proj_sd = ip_sd = None
  if ip_adapter is not None:
    proj_sd, ip_sd = read_ip_adapter(ip_adapter)
  unet_model, unet_params = load_unet(root / "unet", dtype=dt, variant=variant, ip_adapter_state=ip_sd)
  vae_model, vae_params = load_vae(Path(vae) if vae is not None else root / "vae", dtype=dt, variant=variant)
  cns = [load_controlnet(c, dtype=dt, variant=variant) for c in controlnets]
  for c, (m, _) in zip(controlnets, cns):
    if m.config.cross_attention_dim[0] != unet_model.config.cross_attention_dim[0]:
      raise CheckpointError(f"{Path(c) / 'config.json'}: cross_attention_dim {m.config.cross_attention_dim[0]} "
                            f"!= the UNet's {unet_model.config.cross_attention_dim[0]} (a ControlNet for another "
                            "base model?).")
  text_model, text_params = load_text_encoder(root / "text_encoder", dtype=dt, variant=variant)
  tok_dir = root / "tokenizer"
  if not tok_dir.is_dir():
    raise CheckpointError(f"{tok_dir}: folder not found.")
  try:
    tokenizer = tok_lib.CLIPTokenizer.from_pretrained(str(tok_dir))
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(f"{tok_dir}: could not build the tokenizer ({e}).") from e
  image_model = image_params = proj_model = proj_params = None
  if ip_adapter is not None:
    image_model, image_params = load_image_encoder(image_encoder, dtype=dt, variant=variant)
    proj_model, proj_params = load_image_proj(proj_sd, name=f"{ip_adapter} (image_proj)", dtype=dt)
  schedule = None
  if (root / "scheduler").is_dir():
    schedule = load_scheduler(root / "scheduler", num_inference_steps)
  spec = denoiser.SDSpec(unet=unet_model.config, vae=vae_model.config,
                         controlnets=tuple(m.config for m, _ in cns), with_ip_adapter=ip_adapter is not None,
                         dtype=dt, view_chunk=view_chunk, decode_chunk=decode_chunk)
  prior = denoiser.StableDiffusion(
      params={"unet": unet_params, "vae": vae_params, "controlnets": tuple(p for _, p in cns)},
      spec=spec, schedule=schedule)
  conditioner = denoiser.SDConditioner(tokenizer, text_model, text_params, image_model, image_params,
                                       proj_model, proj_params)
  return prior, conditioner
