"""IP-Adapter image projections in Flax: CLIP image features -> extra cross-attention tokens.

Two variants, named and laid out exactly as diffusers' `models/embeddings.py` so that
`convert.torch_to_flax` maps diffusers state dicts directly:

  ImageProjection               (ip-adapter_sd15): image_embeds (B, E) -> Linear -> LayerNorm -> (B, N, D)
  IPAdapterPlusImageProjection  (ip-adapter-plus[-face]_sd15): a perceiver Resampler over the CLIP
                                penultimate hidden states (B, 257, 1280) -> (B, num_queries, D)

The official checkpoints (tencent-ailab/IP-Adapter `.bin`) use the original module names
(`proj`, `layers.<i>.0.norm1`, `to_kv`, `layers.<i>.1.<j>` ...); `image_proj_params` accepts those
too (see `official_image_proj_key`).

Usage (the paper's ip-adapter-plus-face_sd15 with the ViT-H image encoder):

  from splatshot_jax.diffusion import clip, ip_adapter

  sd = ip_adapter.load_ip_adapter_file("ip-adapter-plus-face_sd15.bin")
  proj, proj_params = ip_adapter.load_image_proj(sd["image_proj"])   # picks the variant
  vision, vparams = clip.load_vision_encoder("IP-Adapter/models/image_encoder")
  feats = vision.apply({"params": vparams}, clip.preprocess_image(photo)[None],
                       output_hidden_states=True).hidden_states[-2]  # (1, 257, 1280)
  ip_tokens = proj.apply({"params": proj_params}, feats)              # (1, 16, 768)
  sd["ip_adapter"]  # {"1.to_k_ip.weight": ..., ...}: the UNet's extra k/v projections
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from splatshot_jax.diffusion.convert import CheckpointError, bin_conversion_command, torch_to_flax

# torch.nn.LayerNorm's default eps (flax's default is 1e-6).
_LN_EPS = 1e-5


# ----------------------------------------------------------------------------------------------
# Base IP-Adapter


@dataclasses.dataclass(frozen=True)
class ImageProjectionConfig:
  """diffusers ImageProjection(image_embed_dim, cross_attention_dim, num_image_text_embeds)."""
  image_embed_dim: int = 1024
  cross_attention_dim: int = 768
  num_image_text_embeds: int = 4

  @classmethod
  def from_json_dict(cls, d: Mapping[str, Any]) -> "ImageProjectionConfig":
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

  @classmethod
  def from_state_dict(cls, sd: Mapping[str, Any]) -> "ImageProjectionConfig":
    """Infers sizes from diffusers (`image_embeds.weight`) or official (`proj.weight`) keys."""
    w = sd["image_embeds.weight"] if "image_embeds.weight" in sd else sd["proj.weight"]
    d = sd["norm.weight"].shape[0]
    return cls(image_embed_dim=int(w.shape[1]), cross_attention_dim=int(d),
               num_image_text_embeds=int(w.shape[0] // d))


class ImageProjection(nn.Module):
  """Base IP-Adapter projection: a linear map to N tokens, then LayerNorm per token."""
  config: ImageProjectionConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image_embeds):
    """image_embeds: (B, image_embed_dim) CLIP projected embeddings. Returns (B, N, cross_attention_dim)."""
    c = self.config
    x = nn.Dense(c.num_image_text_embeds * c.cross_attention_dim, dtype=self.dtype,
                 name="image_embeds")(image_embeds)
    x = x.reshape(x.shape[0], c.num_image_text_embeds, c.cross_attention_dim)
    return nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="norm")(x)


# ----------------------------------------------------------------------------------------------
# IP-Adapter Plus (Resampler)


@dataclasses.dataclass(frozen=True)
class IPAdapterPlusConfig:
  """diffusers IPAdapterPlusImageProjection's arguments (defaults: ip-adapter-plus-face_sd15)."""
  embed_dims: int = 1280    # CLIP vision hidden size (ViT-H)
  output_dims: int = 768    # UNet cross_attention_dim
  hidden_dims: int = 768
  depth: int = 4
  dim_head: int = 64
  heads: int = 12
  num_queries: int = 16
  ffn_ratio: float = 4

  @classmethod
  def from_json_dict(cls, d: Mapping[str, Any]) -> "IPAdapterPlusConfig":
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

  @classmethod
  def from_state_dict(cls, sd: Mapping[str, Any], dim_head: int = 64) -> "IPAdapterPlusConfig":
    """Infers sizes from diffusers or official keys. The head count is not stored: like diffusers
    we assume dim_head = 64 (true of every released IP-Adapter Plus)."""
    sd = _as_diffusers_plus(sd)
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k)))
    q = sd["layers.0.attn.to_q.weight"]
    ff_in = sd["layers.0.ff.1.net.0.proj.weight"]
    return cls(embed_dims=int(sd["proj_in.weight"].shape[1]), output_dims=int(sd["proj_out.weight"].shape[0]),
               hidden_dims=int(sd["latents"].shape[2]), depth=depth, dim_head=dim_head,
               heads=int(q.shape[0] // dim_head), num_queries=int(sd["latents"].shape[1]),
               ffn_ratio=ff_in.shape[0] / ff_in.shape[1])


class PerceiverAttention(nn.Module):
  """diffusers `Attention` as the Plus block uses it: no q/k/v/out biases, softmax(q k^T / sqrt(d))."""
  heads: int
  dim_head: int
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, latents, context):
    """latents: (B, Q, H) queries; context: (B, S, H) keys/values. Returns (B, Q, out_dim)."""
    inner = self.heads * self.dim_head
    dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=self.dtype, name=name)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, self.dim_head)
    q = split(dense(inner, "to_q")(latents)) * (self.dim_head ** -0.5)
    k = split(dense(inner, "to_k")(context))
    v = split(dense(inner, "to_v")(context))
    w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", w.astype(self.dtype), v)
    return dense(self.out_dim, "to_out_0")(out.reshape(out.shape[0], out.shape[1], inner))


class FeedForward(nn.Module):
  """diffusers FeedForward(activation_fn="gelu", bias=False): net.0.proj -> exact GELU -> net.2."""
  dim: int
  inner_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: (..., dim) -> (..., dim)."""
    h = _GELUProj(self.inner_dim, self.dtype, name="net_0")(x)
    return nn.Dense(self.dim, use_bias=False, dtype=self.dtype, name="net_2")(h)


class _GELUProj(nn.Module):
  """diffusers' `GELU` activation module: a bias-free projection then erf GELU."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.features, use_bias=False, dtype=self.dtype, name="proj")(x)
    return jax.nn.gelu(x, approximate=False)


class IPAdapterPlusImageProjectionBlock(nn.Module):
  """One resampler layer: latents attend to [ln0(x); ln1(latents)], then a pre-norm FF."""
  config: IPAdapterPlusConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, latents):
    """x: (B, S, H) projected image features; latents: (B, Q, H). Returns (B, Q, H)."""
    c = self.config
    ln = lambda name: nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name=name)
    residual = latents
    q_in = ln("ln1")(latents)
    # The queries also attend to themselves (perceiver: keys = image tokens + latents).
    context = jnp.concatenate([ln("ln0")(x), q_in], axis=1)
    latents = PerceiverAttention(c.heads, c.dim_head, c.hidden_dims, self.dtype, name="attn")(
        q_in, context) + residual
    # diffusers' `ff` is nn.Sequential(LayerNorm, FeedForward): members ff_0, ff_1.
    h = ln("ff_0")(latents)
    h = FeedForward(c.hidden_dims, int(c.hidden_dims * c.ffn_ratio), self.dtype, name="ff_1")(h)
    return h + latents


class IPAdapterPlusImageProjection(nn.Module):
  """IP-Adapter Plus Resampler: learned query latents cross-attend to CLIP hidden states."""
  config: IPAdapterPlusConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: (B, S, embed_dims) CLIP vision hidden_states[-2]. Returns (B, num_queries, output_dims)."""
    c = self.config
    latents = self.param("latents", nn.initializers.normal(c.hidden_dims ** -0.5),
                         (1, c.num_queries, c.hidden_dims))
    latents = jnp.broadcast_to(latents.astype(self.dtype), (x.shape[0],) + latents.shape[1:])
    x = nn.Dense(c.hidden_dims, dtype=self.dtype, name="proj_in")(x)
    for i in range(c.depth):
      latents = IPAdapterPlusImageProjectionBlock(c, self.dtype, name=f"layers_{i}")(x, latents)
    latents = nn.Dense(c.output_dims, dtype=self.dtype, name="proj_out")(latents)
    return nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="norm_out")(latents)


# ----------------------------------------------------------------------------------------------
# Official (tencent-ailab) key names -> diffusers names

_OFFICIAL_PLUS = [
    # Resampler.layers[i] = ModuleList([PerceiverAttention, FeedForward(Sequential)])
    (re.compile(r"^layers\.(\d+)\.0\.norm1\."), r"layers.\1.ln0."),
    (re.compile(r"^layers\.(\d+)\.0\.norm2\."), r"layers.\1.ln1."),
    (re.compile(r"^layers\.(\d+)\.0\.to_(q|k|v)\."), r"layers.\1.attn.to_\2."),
    (re.compile(r"^layers\.(\d+)\.0\.to_out\."), r"layers.\1.attn.to_out.0."),
    # FeedForward = Sequential(LayerNorm, Linear, GELU, Linear)
    (re.compile(r"^layers\.(\d+)\.1\.0\."), r"layers.\1.ff.0."),
    (re.compile(r"^layers\.(\d+)\.1\.1\."), r"layers.\1.ff.1.net.0.proj."),
    (re.compile(r"^layers\.(\d+)\.1\.3\."), r"layers.\1.ff.1.net.2."),
]


def official_image_proj_key(key: str) -> str:
  """Renames one official image_proj key to diffusers' name (a `torch_to_flax` key_map).

  Base: `proj.*` -> `image_embeds.*`. Plus: `layers.i.0.norm1` -> `layers.i.ln0`, `norm2` -> `ln1`,
  `layers.i.0.to_{q,k,v,out}` -> `layers.i.attn.to_{q,k,v,out.0}`, `layers.i.1.{0,1,3}` ->
  `layers.i.ff.{0, 1.net.0.proj, 1.net.2}`. Diffusers names pass through unchanged. The fused
  `to_kv` must be split first (`split_to_kv`): a key map renames, it cannot split.
  """
  key = re.sub(r"^image_proj\.", "", key)
  if key.startswith("proj."):
    return "image_embeds." + key[len("proj."):]
  for pat, rep in _OFFICIAL_PLUS:
    if pat.match(key):
      return pat.sub(rep, key)
  return key


def split_to_kv(sd: Mapping[str, Any]) -> dict:
  """Splits each official fused `layers.i.0.to_kv.weight` (2*inner, H) into `to_k` / `to_v`
  (first half = keys, as the official `to_kv(x).chunk(2, dim=-1)`)."""
  out = {}
  for k, v in sd.items():
    if k.endswith(".to_kv.weight"):
      v = np.asarray(v)
      half = v.shape[0] // 2
      out[k.replace(".to_kv.", ".to_k.")] = v[:half]
      out[k.replace(".to_kv.", ".to_v.")] = v[half:]
    else:
      out[k] = v
  return out


def _as_diffusers_plus(sd: Mapping[str, Any]) -> dict:
  return {official_image_proj_key(k): v for k, v in split_to_kv(sd).items()}


def _np(v):
  return v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v)


def image_proj_params(sd: Mapping[str, Any], config, *, name: str = "image_proj",
                      dtype=jnp.float32) -> dict:
  """Converts an image_proj state dict (official or diffusers names) into params for `config`'s module."""
  sd = {k: _np(v) for k, v in split_to_kv({k: _np(v) for k, v in sd.items()}).items()}
  if isinstance(config, ImageProjectionConfig):
    model = ImageProjection(config, dtype)
    x = jnp.zeros((1, config.image_embed_dim))
  else:
    model = IPAdapterPlusImageProjection(config, dtype)
    x = jnp.zeros((1, 1, config.embed_dims))
  tmpl = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))["params"]
  return torch_to_flax(sd, tmpl, name=name, key_map=official_image_proj_key, dtype=dtype)


def load_image_proj(sd: Mapping[str, Any], *, name: str = "image_proj", dtype=jnp.float32):
  """Builds the right projection for an image_proj state dict (official or diffusers names).

  Returns:
    (ImageProjection | IPAdapterPlusImageProjection, params).
  Raises:
    CheckpointError for variants we do not implement (Full, FaceID).
  """
  sd = {re.sub(r"^image_proj\.", "", k): v for k, v in sd.items()}
  if "proj.weight" in sd or "image_embeds.weight" in sd:
    config = ImageProjectionConfig.from_state_dict(sd)
    return ImageProjection(config, dtype), image_proj_params(sd, config, name=name, dtype=dtype)
  if "latents" in sd and "proj_in.weight" in sd:
    config = IPAdapterPlusConfig.from_state_dict(sd)
    return IPAdapterPlusImageProjection(config, dtype), image_proj_params(sd, config, name=name, dtype=dtype)
  raise CheckpointError(
      f"{name}: not a base or Plus IP-Adapter image projection (keys: {sorted(sd)[:4]}...); "
      "IP-Adapter Full / FaceID variants are not implemented.")


# ----------------------------------------------------------------------------------------------
# Files


def load_ip_adapter_file(path: str) -> dict[str, dict[str, np.ndarray]]:
  """Reads an official IP-Adapter checkpoint.

  Args:
    path: `.bin` (a torch pickle {"image_proj": {...}, "ip_adapter": {...}}; needs torch) or
      `.safetensors` (flat keys prefixed `image_proj.` / `ip_adapter.`).
  Returns:
    {"image_proj": {key: array}, "ip_adapter": {key: array}} with the prefixes stripped; arrays
    keep the file's dtype (bfloat16 becomes float32).
  """
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: IP-Adapter file not found.")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    flat = load_file(path)
    out: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
    for k, v in flat.items():
      group, _, rest = k.partition(".")
      if group not in out or not rest:
        raise CheckpointError(f"{path}: key '{k}' is neither image_proj.* nor ip_adapter.*.")
      out[group][rest] = v
    return out
  try:
    import torch
  except ImportError:
    raise CheckpointError(
        f"{path}: torch is needed to read a pickled .bin IP-Adapter; convert it once where torch is "
        f"installed: {bin_conversion_command(path)}") from None
  obj = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(obj, Mapping) or "image_proj" not in obj or "ip_adapter" not in obj:
    raise CheckpointError(f"{path}: expected a dict with 'image_proj' and 'ip_adapter', got "
                          f"{sorted(obj)[:4] if isinstance(obj, Mapping) else type(obj).__name__}.")

  def to_np(t):
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
  return {g: {k: to_np(v) for k, v in obj[g].items()} for g in ("image_proj", "ip_adapter")}
