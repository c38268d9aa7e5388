"""CLIP text and vision encoders in Flax (linen), loading transformers checkpoints.

The text encoder gives SD-1.5 its prompt conditioning (`last_hidden_state`); the vision encoder
(with projection) gives IP-Adapter its image features (`hidden_states[-2]` for IP-Adapter Plus,
`image_embeds` for the base IP-Adapter). Submodules are named exactly as in transformers'
`modeling_clip.py`, so `convert.torch_to_flax` maps a checkpoint with no key table.

Usage:

  from splatshot_jax.diffusion import clip, tokenizer

  tok = tokenizer.CLIPTokenizer.from_pretrained("sd15/tokenizer")
  text_model, text_params = clip.load_text_encoder("sd15/text_encoder")
  ids = tok(["high quality portrait, detailed face, photorealistic"])  # (1, 77) int32
  cond = text_model.apply({"params": text_params}, ids).last_hidden_state  # (1, 77, 768)

  vision, vision_params = clip.load_vision_encoder("IP-Adapter/models/image_encoder")
  pixels = clip.preprocess_image(photo)[None]  # (1, 224, 224, 3) float32, NHWC
  out = vision.apply({"params": vision_params}, pixels, output_hidden_states=True)
  out.image_embeds      # (1, 1024): base IP-Adapter input
  out.hidden_states[-2]  # (1, 257, 1280): IP-Adapter Plus input (penultimate layer)

  # A batch already on device (e.g. template renders), in pure JAX, within one 8-bit level of PIL:
  pixels = clip.preprocess_image_jax(renders)  # (B, H, W, 3) in [0, 1] -> (B, 224, 224, 3)

Layout: images are NHWC here (JAX convention), not transformers' NCHW.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from splatshot_jax.diffusion.convert import CheckpointError, bin_conversion_command, torch_to_flax

# OpenAI CLIP's normalisation constants (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------------------------
# Configs


def _sub_config(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
  """A full CLIPConfig nests the tower's fields under `key`; a tower config has them at top level."""
  return d[key] if isinstance(d.get(key), Mapping) else d


def _fields_from(cls, d: Mapping[str, Any]) -> dict:
  names = {f.name for f in dataclasses.fields(cls)}
  return {k: v for k, v in d.items() if k in names and v is not None}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """Fields of transformers' CLIPTextConfig that change the forward pass.

  Defaults are transformers' own (ViT-B/32), because a config.json may list only the fields that
  differ from them. SD-1.5's text_encoder/config.json sets ViT-L/14 (768 wide, 12 heads) and
  eos_token_id 2.
  """
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  # 2 = a legacy config (before transformers PR #24773): pooling then takes argmax(input_ids).
  eos_token_id: int = 49407

  @classmethod
  def from_json_dict(cls, d: Mapping[str, Any]) -> "CLIPTextConfig":
    """From a parsed `text_encoder/config.json` (or a full CLIPConfig with `text_config`)."""
    kw = _fields_from(cls, _sub_config(d, "text_config"))
    if isinstance(kw.get("eos_token_id"), (list, tuple)):
      kw["eos_token_id"] = int(kw["eos_token_id"][0])
    return cls(**kw)

  @classmethod
  def from_json_file(cls, path: str) -> "CLIPTextConfig":
    return cls.from_json_dict(_read_json(path))


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """Fields of transformers' CLIPVisionConfig that change the forward pass.

  Defaults are transformers' own (ViT-B/32). h94/IP-Adapter's models/image_encoder/config.json
  sets ViT-H/14: 1280 wide, 32 layers, 16 heads, patch 14, projection 1024, gelu.
  """
  hidden_size: int = 768
  intermediate_size: int = 3072
  projection_dim: int = 512
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  @classmethod
  def from_json_dict(cls, d: Mapping[str, Any]) -> "CLIPVisionConfig":
    """From a parsed `image_encoder/config.json` (or a full CLIPConfig with `vision_config`)."""
    sub = dict(_sub_config(d, "vision_config"))
    if sub.get("projection_dim") is None and d.get("projection_dim") is not None:
      sub["projection_dim"] = d["projection_dim"]
    for k in ("image_size", "patch_size"):
      if isinstance(sub.get(k), (list, tuple)):
        if sub[k][0] != sub[k][1]:
          raise CheckpointError(f"CLIPVisionConfig: non-square {k}={sub[k]} is not supported.")
        sub[k] = int(sub[k][0])
    return cls(**_fields_from(cls, sub))

  @classmethod
  def from_json_file(cls, path: str) -> "CLIPVisionConfig":
    return cls.from_json_dict(_read_json(path))


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise CheckpointError(f"{path}: config file not found.") from None


# ----------------------------------------------------------------------------------------------
# Modules


def _activation(name: str):
  """transformers' ACT2FN for the activations CLIP configs use."""
  if name == "quick_gelu":  # OpenAI CLIP's sigmoid approximation (SD-1.5's ViT-L/14)
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == "gelu":  # exact erf GELU (OpenCLIP ViT-H/14)
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  raise CheckpointError(f"CLIP config: hidden_act '{name}' is not supported "
                        "(expected quick_gelu, gelu, gelu_new or gelu_pytorch_tanh).")


@struct.dataclass
class CLIPTextOutput:
  """last_hidden_state: (B, L, D) after final_layer_norm (what SD cross-attends to).
  pooler_output: (B, D) last_hidden_state at the EOS token.
  hidden_states: None, or L+1 arrays (B, L, D): embeddings, then each layer's output (no final norm).
  """
  last_hidden_state: jax.Array
  pooler_output: jax.Array
  hidden_states: tuple | None = None


@struct.dataclass
class CLIPVisionOutput:
  """image_embeds: (B, P) projected, post-layernormed CLS token.
  last_hidden_state: (B, 1 + n_patches, D) last layer output (no post_layernorm).
  pooler_output: (B, D) post_layernormed CLS token.
  hidden_states: None, or L+1 arrays (B, 1 + n_patches, D): pre_layrnorm output, then each layer.
  """
  image_embeds: jax.Array
  last_hidden_state: jax.Array
  pooler_output: jax.Array
  hidden_states: tuple | None = None


class CLIPAttention(nn.Module):
  """Multi-head self-attention (q/k/v/out projections with bias)."""
  hidden_size: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """x: (B, L, D); mask: None or (B or 1, 1, L, L) bool, True = may attend. Returns (B, L, D)."""
    b, l, d = x.shape
    hd = d // self.num_heads
    dense = lambda name: nn.Dense(d, dtype=self.dtype, name=name)
    split = lambda t: t.reshape(b, l, self.num_heads, hd)
    q = split(dense("q_proj")(x)) * (hd ** -0.5)
    k = split(dense("k_proj")(x))
    v = split(dense("v_proj")(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    # Softmax in float32 as transformers does, whatever the compute dtype.
    w = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, l, d)
    return dense("out_proj")(out)


class CLIPMLP(nn.Module):
  hidden_size: int
  intermediate_size: int
  hidden_act: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: (B, L, D) -> (B, L, D)."""
    x = nn.Dense(self.intermediate_size, dtype=self.dtype, name="fc1")(x)
    x = _activation(self.hidden_act)(x)
    return nn.Dense(self.hidden_size, dtype=self.dtype, name="fc2")(x)


class CLIPEncoderLayer(nn.Module):
  """Pre-norm transformer block."""
  config: Any  # CLIPTextConfig or CLIPVisionConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """x: (B, L, D); mask as CLIPAttention. Returns (B, L, D)."""
    c = self.config
    ln = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name=name)
    x = x + CLIPAttention(c.hidden_size, c.num_attention_heads, self.dtype, name="self_attn")(
        ln("layer_norm1")(x), mask)
    return x + CLIPMLP(c.hidden_size, c.intermediate_size, c.hidden_act, self.dtype, name="mlp")(
        ln("layer_norm2")(x))


class CLIPEncoder(nn.Module):
  config: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """x: (B, L, D). Returns the L+1 hidden states: the input, then each layer's output."""
    states = [x]
    for i in range(self.config.num_hidden_layers):
      x = CLIPEncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x, mask)
      states.append(x)
    return tuple(states)


class CLIPTextEmbeddings(nn.Module):
  config: CLIPTextConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids):
    """input_ids: (B, L) int, L <= max_position_embeddings. Returns (B, L, D)."""
    c = self.config
    tok = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, name="token_embedding")(input_ids)
    pos = nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=self.dtype,
                   name="position_embedding")(jnp.arange(input_ids.shape[-1]))
    return tok + pos[None]


class CLIPTextModel(nn.Module):
  """transformers' CLIPTextModel: causal transformer over token + position embeddings."""
  config: CLIPTextConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, output_hidden_states: bool = False):
    """Encodes token ids.

    Args:
      input_ids: (B, L) int32 token ids, L <= max_position_embeddings (77), as CLIPTokenizer pads them.
      attention_mask: optional (B, L) {0,1} padding mask; SD passes none (pads attend causally).
      output_hidden_states: also return the L+1 per-layer states.
    Returns:
      CLIPTextOutput; `last_hidden_state` (B, L, D) is SD's text conditioning.
    """
    c = self.config
    l = input_ids.shape[-1]
    if l > c.max_position_embeddings:
      raise ValueError(f"CLIPTextModel: sequence length {l} > max_position_embeddings "
                       f"{c.max_position_embeddings}.")
    x = CLIPTextEmbeddings(c, self.dtype, name="embeddings")(input_ids)
    mask = jnp.tril(jnp.ones((l, l), bool))[None, None]  # CLIP's text tower is causal
    if attention_mask is not None:
      mask = mask & attention_mask.astype(bool)[:, None, None, :]
    states = CLIPEncoder(c, self.dtype, name="encoder")(x, mask)
    last = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="final_layer_norm")(states[-1])
    if c.eos_token_id == 2:
      # Legacy configs (SD-1.5): the EOS id 49407 is the largest id in the vocab, so argmax finds it.
      eos_pos = jnp.argmax(input_ids, axis=-1)
    else:
      # First occurrence of EOS (the pad token may equal EOS).
      eos_pos = jnp.argmax((input_ids == c.eos_token_id).astype(jnp.int32), axis=-1)
    pooled = jnp.take_along_axis(last, eos_pos[:, None, None], axis=1)[:, 0]
    return CLIPTextOutput(last, pooled, states if output_hidden_states else None)


class CLIPVisionEmbeddings(nn.Module):
  config: CLIPVisionConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixel_values):
    """pixel_values: (B, H, W, C) normalised, H = W = image_size. Returns (B, 1 + n_patches, D)."""
    c = self.config
    b = pixel_values.shape[0]
    p = c.patch_size
    patches = nn.Conv(c.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                      dtype=self.dtype, name="patch_embedding")(pixel_values)
    patches = patches.reshape(b, -1, c.hidden_size)  # row-major over the grid, as torch flatten(2)
    cls = self.param("class_embedding", nn.initializers.normal(c.hidden_size ** -0.5), (c.hidden_size,))
    cls = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, c.hidden_size))
    x = jnp.concatenate([cls, patches], axis=1)
    n = (c.image_size // p) ** 2 + 1
    pos = nn.Embed(n, c.hidden_size, dtype=self.dtype, name="position_embedding")(jnp.arange(n))
    return x + pos[None]


class CLIPVisionTransformer(nn.Module):
  """transformers' CLIPVisionModel.vision_model (note the `pre_layrnorm` spelling)."""
  config: CLIPVisionConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixel_values):
    """pixel_values: (B, H, W, C). Returns (hidden_states tuple, pooled (B, D))."""
    c = self.config
    if pixel_values.shape[1:3] != (c.image_size, c.image_size):
      raise ValueError(f"CLIPVisionModel: input image size {pixel_values.shape[1:3]} does not match "
                       f"the model's {c.image_size}x{c.image_size} (expects NHWC).")
    ln = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name=name)
    x = CLIPVisionEmbeddings(c, self.dtype, name="embeddings")(pixel_values)
    x = ln("pre_layrnorm")(x)
    states = CLIPEncoder(c, self.dtype, name="encoder")(x)
    pooled = ln("post_layernorm")(states[-1][:, 0])
    return states, pooled


class CLIPVisionModelWithProjection(nn.Module):
  """transformers' CLIPVisionModelWithProjection: ViT + linear projection of the CLS token."""
  config: CLIPVisionConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixel_values, output_hidden_states: bool = False):
    """Encodes images.

    Args:
      pixel_values: (B, image_size, image_size, 3) float, normalised as `preprocess_image` does.
      output_hidden_states: also return the L+1 per-layer states (IP-Adapter Plus needs [-2]).
    Returns:
      CLIPVisionOutput with image_embeds (B, projection_dim).
    """
    states, pooled = CLIPVisionTransformer(self.config, self.dtype, name="vision_model")(pixel_values)
    embeds = nn.Dense(self.config.projection_dim, use_bias=False, dtype=self.dtype,
                      name="visual_projection")(pooled)
    return CLIPVisionOutput(embeds, states[-1], pooled, states if output_hidden_states else None)


# ----------------------------------------------------------------------------------------------
# Image preprocessing (CLIPImageProcessor, PIL backend)


def preprocess_image(image, *, size: int = 224, crop_size: int = 224,
                     mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> np.ndarray:
  """What transformers' CLIPImageProcessor (PIL backend) does to one image, in numpy + PIL.

  Resize so the shortest side is `size` (PIL bicubic, long side int(size * long / short)), centre
  crop `crop_size` (zero-pad if smaller), scale to [0, 1], normalise with CLIP mean/std. The resize
  is PIL's own, so the result matches transformers to float32 rounding.

  Args:
    image: PIL.Image (converted to RGB), or (H, W, 3) uint8, or (H, W, 3) float in [0, 1]
      (rounded to uint8 first: PIL resamples 8-bit images, as the reference does).
  Returns:
    (crop_size, crop_size, 3) float32, NHWC-ready (add a batch axis).
  """
  from PIL import Image

  if isinstance(image, Image.Image):
    image = np.asarray(image.convert("RGB"))
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"preprocess_image: expected an (H, W, 3) image, got shape {image.shape}.")
  if image.dtype != np.uint8:
    if image.min() < 0 or image.max() > 1:
      raise ValueError("preprocess_image: float images must lie in [0, 1] "
                       f"(got [{image.min()}, {image.max()}]).")
    image = np.round(image.astype(np.float64) * 255.0).astype(np.uint8)
  h, w = image.shape[:2]
  short, long = (w, h) if w <= h else (h, w)
  new_long = int(size * long / short)  # transformers' get_resize_output_image_size truncates
  new_h, new_w = (new_long, size) if w <= h else (size, new_long)
  resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=Image.BICUBIC))
  top, left = (new_h - crop_size) // 2, (new_w - crop_size) // 2
  if top < 0 or left < 0:  # smaller than the crop: centre it on zeros as transformers' center_crop
    ph, pw = max(crop_size, new_h), max(crop_size, new_w)
    canvas = np.zeros((ph, pw, 3), np.uint8)
    t0, l0 = -(-(ph - new_h) // 2), -(-(pw - new_w) // 2)
    canvas[t0:t0 + new_h, l0:l0 + new_w] = resized
    resized, top, left = canvas, top + t0, left + l0
  crop = resized[top:top + crop_size, left:left + crop_size]
  # Same dtypes as transformers: rescale in float64 then cast, normalise in float32.
  x = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def preprocess_image_jax(images, *, size: int = 224, crop_size: int = 224, quantize: bool = True,
                         mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
  """`preprocess_image` for a batch already on device, in pure JAX (jit with static shapes).

  PIL's bicubic (Keys a=-0.5, kernel widened by the downscale factor) is separable and runs
  horizontally then vertically, rounding to 8 bits after each pass; jax.image.resize(antialias=True)
  uses the same kernel, so with `quantize=True` we round the same way and agree with PIL to within
  one 8-bit level on a few pixels (PIL's fixed-point weights): <= 1/255/std ~= 0.015 after
  normalisation. `quantize=False` skips the rounding and is differentiable.

  Args:
    images: (B, H, W, 3) uint8, or float in [0, 1]. Needs H, W large enough that the resized
      image covers the crop (true whenever size >= crop_size).
  Returns:
    (B, crop_size, crop_size, 3) float32, normalised.
  """
  b, h, w, _ = images.shape
  x = images.astype(jnp.float32)
  if not jnp.issubdtype(images.dtype, jnp.integer):
    x = x * 255.0
  q = (lambda t: jnp.clip(jnp.floor(t + 0.5), 0.0, 255.0)) if quantize else (lambda t: t)
  short, long = (w, h) if w <= h else (h, w)
  new_long = int(size * long / short)
  new_h, new_w = (new_long, size) if w <= h else (size, new_long)
  x = q(x)
  if (new_h, new_w) != (h, w):
    x = q(jax.image.resize(x, (b, h, new_w, 3), "bicubic", antialias=True))
    x = q(jax.image.resize(x, (b, new_h, new_w, 3), "bicubic", antialias=True))
  top, left = (new_h - crop_size) // 2, (new_w - crop_size) // 2
  x = x[:, top:top + crop_size, left:left + crop_size] / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# ----------------------------------------------------------------------------------------------
# Loading


def read_state_dict(path: str, variant: str | None = None) -> dict[str, np.ndarray]:
  """Reads a transformers weights file or folder into {torch key: numpy array}.

  Args:
    path: a `.safetensors` / `.bin` file, or a folder holding `model[.variant].safetensors`, a
      sharded `model.safetensors.index.json`, or `pytorch_model[.variant].bin` (needs torch).
    variant: e.g. "fp16" for `model.fp16.safetensors`.
  """
  if os.path.isdir(path):
    v = f".{variant}" if variant else ""
    for fname in (f"model{v}.safetensors", f"model{v}.safetensors.index.json", f"pytorch_model{v}.bin"):
      if os.path.exists(os.path.join(path, fname)):
        return read_state_dict(os.path.join(path, fname))
    raise CheckpointError(f"{path}: no model{v}.safetensors or pytorch_model{v}.bin in this folder.")
  if path.endswith(".index.json"):
    shards = sorted(set(_read_json(path)["weight_map"].values()))
    out: dict[str, np.ndarray] = {}
    for s in shards:
      out.update(read_state_dict(os.path.join(os.path.dirname(path), s)))
    return out
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return load_file(path)
  if path.endswith((".bin", ".pt", ".pth")):
    return _torch_load_numpy(path)
  raise CheckpointError(f"{path}: unknown weights format (expected .safetensors or .bin).")


def _torch_load_numpy(path: str) -> dict:
  """torch.load (weights only) and convert tensors to numpy, recursively."""
  try:
    import torch
  except ImportError:
    raise CheckpointError(
        f"{path}: reading a pickled .bin needs torch (pip install torch), or convert it once to "
        f"safetensors elsewhere: {bin_conversion_command(path)}") from None
  obj = torch.load(path, map_location="cpu", weights_only=True)

  def to_np(o):
    if isinstance(o, Mapping):
      return {k: to_np(v) for k, v in o.items()}
    if hasattr(o, "detach"):
      t = o.detach().cpu()
      return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    return o
  return to_np(obj)


_OTHER_TOWER_TEXT = ("vision_model.", "visual_projection.", "text_projection.", "logit_scale")
_OTHER_TOWER_VISION = ("text_model.", "text_projection.", "logit_scale")


def _text_key(key: str) -> str | None:
  """transformers 4 saved CLIPTextModel under `text_model.`; transformers 5 saves it bare."""
  if key.startswith(_OTHER_TOWER_TEXT):
    return None  # a full CLIPModel checkpoint: skip the vision tower
  return key[len("text_model."):] if key.startswith("text_model.") else key


def _vision_key(key: str) -> str | None:
  return None if key.startswith(_OTHER_TOWER_VISION) else key


def text_params_from_state_dict(state_dict: Mapping[str, Any], config: CLIPTextConfig, *,
                                name: str = "text_encoder", dtype=jnp.float32) -> dict:
  """Converts a transformers CLIPTextModel (or CLIPModel) state dict to our params."""
  model = CLIPTextModel(config, dtype)
  tmpl = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
  return torch_to_flax(state_dict, tmpl["params"], name=name, key_map=_text_key,
                       ignore=[r"position_ids$"], dtype=dtype)


def vision_params_from_state_dict(state_dict: Mapping[str, Any], config: CLIPVisionConfig, *,
                                  name: str = "image_encoder", dtype=jnp.float32) -> dict:
  """Converts a transformers CLIPVisionModelWithProjection (or CLIPModel) state dict to our params."""
  model = CLIPVisionModelWithProjection(config, dtype)
  x = jnp.zeros((1, config.image_size, config.image_size, config.num_channels))
  tmpl = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  return torch_to_flax(state_dict, tmpl["params"], name=name, key_map=_vision_key,
                       ignore=[r"position_ids$"], dtype=dtype)


def load_text_encoder(folder: str, *, dtype=jnp.float32, variant: str | None = None):
  """Loads `folder/config.json` + weights (e.g. an SD checkpoint's `text_encoder/`).

  Returns:
    (CLIPTextModel, params) ready for `model.apply({"params": params}, input_ids)`.
  """
  config = CLIPTextConfig.from_json_file(os.path.join(folder, "config.json"))
  params = text_params_from_state_dict(read_state_dict(folder, variant), config, name=folder, dtype=dtype)
  return CLIPTextModel(config, dtype), params


def load_vision_encoder(folder: str, *, dtype=jnp.float32, variant: str | None = None):
  """Loads `folder/config.json` + weights (e.g. h94/IP-Adapter's `models/image_encoder/`).

  Returns:
    (CLIPVisionModelWithProjection, params).
  """
  config = CLIPVisionConfig.from_json_file(os.path.join(folder, "config.json"))
  params = vision_params_from_state_dict(read_state_dict(folder, variant), config, name=folder, dtype=dtype)
  return CLIPVisionModelWithProjection(config, dtype), params
