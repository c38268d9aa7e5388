"""The Stable Diffusion denoiser: diffusers' `UNet2DConditionModel` in Flax (SD-1.x and SD-2.x).

Built from the checkpoint's `unet/config.json`; parameter names mirror diffusers so that
`convert.torch_to_flax` loads `diffusion_pytorch_model.safetensors` directly. Extras used by
SplatShot: ControlNet residuals (`down_block_additional_residuals`, `mid_block_additional_residual`)
and IP-Adapter decoupled cross-attention (`with_ip_adapter=True`, `ip_hidden_states`, `ip_scale`).

Layout: NHWC. `sample` is (B, H, W, C_latent); the public Denoiser transposes from NCHW if needed.

Example:
  import json, jax, jax.numpy as jnp
  from safetensors.numpy import load_file
  from splatshot_jax.diffusion import convert, unet as unet_lib
  cfg = unet_lib.UNetConfig.from_json_dict(json.load(open("sd15/unet/config.json")))
  model = unet_lib.UNet2DConditionModel(cfg)                     # with_ip_adapter=False
  template = unet_lib.init_params_shape(model, batch=1, text_len=77)
  params = convert.torch_to_flax(load_file("sd15/unet/diffusion_pytorch_model.safetensors"),
                                 template, name="sd15/unet")
  eps = model.apply({"params": params}, z, jnp.array([999]), text_emb)   # z: (B, 64, 64, 4)
  # IP-Adapter: model = UNet2DConditionModel(cfg, with_ip_adapter=True); map the official keys
  # with ip_adapter_key_map(cfg) and call apply(..., ip_hidden_states=tokens, ip_scale=0.8).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from splatshot_jax.diffusion import layers

Dtype = Any

_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")


def _per_block(value: Any, n: int, field: str) -> tuple:
  """An int (or None) broadcast to n blocks, or a list checked to have n entries."""
  if isinstance(value, (list, tuple)):
    if len(value) != n:
      raise ValueError(f"config field '{field}' has {len(value)} entries, expected {n} (one per block)")
    return tuple(value)
  return (value,) * n


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """The fields of a diffusers UNet2DConditionModel config.json that SD-1.x/2.x use.

  `attention_head_dim` keeps diffusers' quirk: when `num_attention_heads` is None (every SD-1/2
  config) it is the number of heads per block, not the head size; see `heads_per_block`.
  """
  in_channels: int = 4
  out_channels: int = 4
  sample_size: Optional[int] = None
  flip_sin_to_cos: bool = True
  freq_shift: int = 0
  down_block_types: tuple = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
  up_block_types: tuple = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
  block_out_channels: tuple = (320, 640, 1280, 1280)
  layers_per_block: tuple = (2, 2, 2, 2)
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1.0
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  cross_attention_dim: tuple = (768, 768, 768, 768)
  transformer_layers_per_block: tuple = (1, 1, 1, 1)
  attention_head_dim: tuple = (8, 8, 8, 8)
  num_attention_heads: Optional[tuple] = None
  use_linear_projection: bool = False
  upcast_attention: bool = False

  # Fields whose non-default values change the architecture in ways we do not implement.
  _UNSUPPORTED = {
      "center_input_sample": False, "only_cross_attention": False, "dual_cross_attention": False,
      "class_embed_type": None, "addition_embed_type": None, "num_class_embeds": None,
      "encoder_hid_dim": None, "encoder_hid_dim_type": None, "resnet_time_scale_shift": "default",
      "time_embedding_type": "positional", "time_embedding_dim": None, "time_embedding_act_fn": None,
      "timestep_post_act": None, "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
      "attention_type": "default", "mid_block_type": "UNetMidBlock2DCrossAttn", "act_fn": "silu",
      "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "cross_attention_norm": None,
      "class_embeddings_concat": False, "reverse_transformer_layers_per_block": None,
      "mid_block_only_cross_attention": None,
  }

  @classmethod
  def from_json_dict(cls, d: Mapping[str, Any], name: str = "config.json") -> "UNetConfig":
    """Parses a diffusers config dict; raises ValueError naming `name` and the field on anything
    we cannot build (unknown block types, extra embeddings, ...)."""
    return cls(**_parse_common(cls, d, name))

  @property
  def num_blocks(self) -> int:
    return len(self.block_out_channels)

  @property
  def heads_per_block(self) -> tuple:
    """Heads per down block, as diffusers resolves them: num_attention_heads or attention_head_dim."""
    return self.num_attention_heads or self.attention_head_dim

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.block_out_channels[0]


def _parse_common(cls, d: Mapping[str, Any], name: str, decoder: bool = True) -> dict:
  """Shared UNet/ControlNet config parsing: validation + per-block broadcasting.

  decoder=False (ControlNet) skips the up-block fields, which a ControlNet does not have.
  """
  for field, default in UNetConfig._UNSUPPORTED.items():
    v = d.get(field, default)
    if v != default and not (field == "act_fn" and v == "swish"):
      if isinstance(default, bool) and isinstance(v, (list, tuple)) and not any(v):
        continue
      raise ValueError(f"{name}: field '{field}' = {v!r} is not supported (expected {default!r})")
  fields = {f.name for f in dataclasses.fields(cls)}
  kw = {k: d[k] for k in fields if k in d and d[k] is not None}
  down = tuple(d.get("down_block_types", cls.down_block_types))
  n = len(down)
  for t in down:
    if t not in _DOWN_TYPES:
      raise ValueError(f"{name}: down_block_types entry '{t}' is not supported (use one of {_DOWN_TYPES})")
  kw["down_block_types"] = down
  if decoder:
    up = tuple(d.get("up_block_types", cls.up_block_types))
    for t in up:
      if t not in _UP_TYPES:
        raise ValueError(f"{name}: up_block_types entry '{t}' is not supported (use one of {_UP_TYPES})")
    if len(up) != n:
      raise ValueError(f"{name}: {len(up)} up_block_types for {n} down_block_types")
    kw["up_block_types"] = up
  kw["block_out_channels"] = tuple(d.get("block_out_channels", cls.block_out_channels))
  if len(kw["block_out_channels"]) != n:
    raise ValueError(f"{name}: block_out_channels has {len(kw['block_out_channels'])} entries, "
                     f"expected {n}")
  for f, default in (("layers_per_block", 2), ("cross_attention_dim", 1280),
                     ("transformer_layers_per_block", 1), ("attention_head_dim", 8)):
    kw[f] = _per_block(d.get(f, default), n, f)
  if d.get("num_attention_heads") is not None:
    kw["num_attention_heads"] = _per_block(d["num_attention_heads"], n, "num_attention_heads")
  if any(isinstance(t, (list, tuple)) for t in kw["transformer_layers_per_block"]):
    raise ValueError(f"{name}: nested transformer_layers_per_block is not supported")
  if kw.get("norm_num_groups") is None and "norm_num_groups" in d:
    raise ValueError(f"{name}: norm_num_groups = None is not supported")
  return kw


def check_layout(x: jax.Array, channels: int, what: str) -> None:
  """Raises if x is not (B, H, W, channels): catches NCHW passed to our NHWC models."""
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(f"{what} must be NHWC (B, H, W, {channels}); got shape {x.shape}")


# ---------------------------------------------------------------------------------------------
# Blocks (shared with controlnet.py)


class CrossAttnDownBlock2D(nn.Module):
  """`layers` x (ResnetBlock2D -> Transformer2DModel), then an optional Downsample2D."""
  out_channels: int
  layers: int
  heads: int
  transformer_layers: int
  add_downsample: bool
  groups: int
  eps: float
  use_linear_projection: bool
  upcast: bool
  downsample_padding: int = 1
  with_ip_adapter: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, context, ip_tokens=None, ip_scale=1.0, residual=None):
    """x: (B, H, W, Cin) -> (x', skips); residual is added to the last layer's output (T2I-Adapter
    style `additional_residuals`, unused by SplatShot but kept for parity)."""
    skips = []
    for i in range(self.layers):
      x = layers.ResnetBlock2D(self.out_channels, self.groups, eps=self.eps, dtype=self.dtype,
                               name=f"resnets_{i}")(x, temb)
      x = layers.Transformer2DModel(
          self.heads, self.out_channels // self.heads, self.transformer_layers, self.groups,
          self.use_linear_projection, self.upcast, self.with_ip_adapter, dtype=self.dtype,
          name=f"attentions_{i}")(x, context, ip_tokens, ip_scale)
      if i == self.layers - 1 and residual is not None:
        x = x + residual
      skips.append(x)
    if self.add_downsample:
      x = layers.Downsample2D(self.out_channels, self.downsample_padding, dtype=self.dtype,
                              name="downsamplers_0")(x)
      skips.append(x)
    return x, tuple(skips)


class DownBlock2D(nn.Module):
  """`layers` ResnetBlock2Ds, then an optional Downsample2D."""
  out_channels: int
  layers: int
  add_downsample: bool
  groups: int
  eps: float
  downsample_padding: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, context=None, ip_tokens=None, ip_scale=1.0, residual=None):
    skips = []
    for i in range(self.layers):
      x = layers.ResnetBlock2D(self.out_channels, self.groups, eps=self.eps, dtype=self.dtype,
                               name=f"resnets_{i}")(x, temb)
      skips.append(x)
    if self.add_downsample:
      x = layers.Downsample2D(self.out_channels, self.downsample_padding, dtype=self.dtype,
                              name="downsamplers_0")(x)
      skips.append(x)
    return x, tuple(skips)


class UNetMidBlock2DCrossAttn(nn.Module):
  """resnets_0 -> (attentions_0 -> resnets_1)."""
  heads: int
  transformer_layers: int
  groups: int
  eps: float
  use_linear_projection: bool
  upcast: bool
  output_scale_factor: float = 1.0
  with_ip_adapter: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, context, ip_tokens=None, ip_scale=1.0):
    c = x.shape[-1]
    res = lambda i: layers.ResnetBlock2D(c, self.groups, eps=self.eps,
                                         output_scale_factor=self.output_scale_factor,
                                         dtype=self.dtype, name=f"resnets_{i}")
    x = res(0)(x, temb)
    x = layers.Transformer2DModel(self.heads, c // self.heads, self.transformer_layers, self.groups,
                                  self.use_linear_projection, self.upcast, self.with_ip_adapter,
                                  dtype=self.dtype, name="attentions_0")(x, context, ip_tokens, ip_scale)
    return res(1)(x, temb)


class CrossAttnUpBlock2D(nn.Module):
  """`layers` x (concat skip -> ResnetBlock2D -> Transformer2DModel), optional Upsample2D."""
  out_channels: int
  layers: int
  heads: int
  transformer_layers: int
  add_upsample: bool
  groups: int
  eps: float
  use_linear_projection: bool
  upcast: bool
  with_ip_adapter: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skips, temb, context, ip_tokens=None, ip_scale=1.0, upsample_size=None):
    """skips: this block's skip tensors, consumed from the end (as diffusers)."""
    for i in range(self.layers):
      x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
      x = layers.ResnetBlock2D(self.out_channels, self.groups, eps=self.eps, dtype=self.dtype,
                               name=f"resnets_{i}")(x, temb)
      x = layers.Transformer2DModel(
          self.heads, self.out_channels // self.heads, self.transformer_layers, self.groups,
          self.use_linear_projection, self.upcast, self.with_ip_adapter, dtype=self.dtype,
          name=f"attentions_{i}")(x, context, ip_tokens, ip_scale)
    if self.add_upsample:
      x = layers.Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers_0")(x, upsample_size)
    return x


class UpBlock2D(nn.Module):
  """`layers` x (concat skip -> ResnetBlock2D), optional Upsample2D."""
  out_channels: int
  layers: int
  add_upsample: bool
  groups: int
  eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skips, temb, context=None, ip_tokens=None, ip_scale=1.0, upsample_size=None):
    for i in range(self.layers):
      x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
      x = layers.ResnetBlock2D(self.out_channels, self.groups, eps=self.eps, dtype=self.dtype,
                               name=f"resnets_{i}")(x, temb)
    if self.add_upsample:
      x = layers.Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers_0")(x, upsample_size)
    return x


def embed_time(cfg: UNetConfig, timestep: jax.Array, batch: int, dtype: Dtype) -> jax.Array:
  """Timestep (scalar or (B,)) -> (B, time_embed_dim) through a `time_embedding` submodule.

  Must be called inside a compact method: it creates `time_embedding` on the caller.
  """
  t = jnp.broadcast_to(jnp.asarray(timestep).reshape(-1), (batch,))
  feat = layers.timestep_embedding(t, cfg.block_out_channels[0], flip_sin_to_cos=cfg.flip_sin_to_cos,
                                   freq_shift=cfg.freq_shift).astype(dtype)
  return layers.TimestepEmbedding(cfg.time_embed_dim, dtype=dtype, name="time_embedding")(feat)


def encoder_half(cfg: UNetConfig, x, temb, context, ip_tokens, ip_scale, with_ip_adapter: bool,
                 dtype: Dtype, down_residuals: Optional[Sequence[jax.Array]] = None):
  """down_blocks_* and mid_block of a UNet or ControlNet (called inside the owner's compact).

  Args:
    x: (B, H, W, C0) after conv_in (and, for a ControlNet, the condition embedding).
  Returns:
    (mid-block output (B, H/2^k, W/2^k, C_last), skips: tuple of every down-path tensor
    starting with x, the order diffusers' `down_block_res_samples` has).
  """
  skips = [x]
  heads = cfg.heads_per_block
  n = cfg.num_blocks
  for i, kind in enumerate(cfg.down_block_types):
    common = dict(out_channels=cfg.block_out_channels[i], layers=cfg.layers_per_block[i],
                  add_downsample=i < n - 1, groups=cfg.norm_num_groups, eps=cfg.norm_eps,
                  downsample_padding=cfg.downsample_padding, dtype=dtype, name=f"down_blocks_{i}")
    if kind == "CrossAttnDownBlock2D":
      blk = CrossAttnDownBlock2D(heads=heads[i], transformer_layers=cfg.transformer_layers_per_block[i],
                                 use_linear_projection=cfg.use_linear_projection,
                                 upcast=cfg.upcast_attention, with_ip_adapter=with_ip_adapter, **common)
    else:
      blk = DownBlock2D(**common)
    x, s = blk(x, temb, context, ip_tokens, ip_scale)
    skips.extend(s)
  if down_residuals is not None:
    if len(down_residuals) != len(skips):
      raise ValueError(f"got {len(down_residuals)} down_block_additional_residuals, "
                       f"the UNet has {len(skips)} skip connections")
    skips = [s + r for s, r in zip(skips, down_residuals)]
  x = UNetMidBlock2DCrossAttn(heads[-1], cfg.transformer_layers_per_block[-1], cfg.norm_num_groups,
                              cfg.norm_eps, cfg.use_linear_projection, cfg.upcast_attention,
                              cfg.mid_block_scale_factor, with_ip_adapter, dtype=dtype,
                              name="mid_block")(x, temb, context, ip_tokens, ip_scale)
  return x, tuple(skips)


class UNet2DConditionModel(nn.Module):
  """SD-1.x / SD-2.x UNet (epsilon or v prediction: the head is the same).

  Attributes:
    config: the parsed `UNetConfig`.
    with_ip_adapter: give every cross-attention (`attn2`) IP-Adapter `to_k_ip`/`to_v_ip` params.
    dtype: compute dtype (params stay in their own dtype; pass fp16/bf16 for speed).
  """
  config: UNetConfig
  with_ip_adapter: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
      self,
      sample: jax.Array,
      timestep: jax.Array | float,
      encoder_hidden_states: jax.Array,
      down_block_additional_residuals: Optional[Sequence[jax.Array]] = None,
      mid_block_additional_residual: Optional[jax.Array] = None,
      ip_hidden_states: Optional[jax.Array] = None,
      ip_scale: float | jax.Array = 1.0,
  ) -> jax.Array:
    """Predicts the noise (or v) for a latent.

    Args:
      sample: (B, H, W, in_channels) noisy latent, NHWC. H, W need not be multiples of 2^k.
      timestep: scalar or (B,) diffusion timestep.
      encoder_hidden_states: (B, L, cross_attention_dim) text tokens.
      down_block_additional_residuals: ControlNet residuals, one per skip, NHWC (see
        `ControlNetModel`); mid_block_additional_residual: (B, h, w, C_last).
      ip_hidden_states: (B, Lip, cross_attention_dim) projected IP-Adapter image tokens, or None.
      ip_scale: weight of the image cross-attention (official SplatShot: 0.8).
    Returns:
      (B, H, W, out_channels) in `dtype`.
    """
    cfg = self.config
    check_layout(sample, cfg.in_channels, "UNet sample")
    if ip_hidden_states is not None and not self.with_ip_adapter:
      raise ValueError("ip_hidden_states given but the UNet was built with with_ip_adapter=False")
    dt = self.dtype
    sample = sample.astype(dt)
    context = encoder_hidden_states.astype(dt)
    ip = None if ip_hidden_states is None else ip_hidden_states.astype(dt)
    temb = embed_time(cfg, timestep, sample.shape[0], dt)
    x = layers._conv(cfg.block_out_channels[0], 3, "conv_in", dt)(sample)
    x, skips = encoder_half(cfg, x, temb, context, ip, ip_scale, self.with_ip_adapter, dt,
                            down_block_additional_residuals)
    if mid_block_additional_residual is not None:
      x = x + mid_block_additional_residual.astype(dt)

    rev_ch = cfg.block_out_channels[::-1]
    rev_heads = cfg.heads_per_block[::-1]
    rev_layers = cfg.layers_per_block[::-1]
    rev_tl = cfg.transformer_layers_per_block[::-1]
    n = cfg.num_blocks
    for i, kind in enumerate(cfg.up_block_types):
      nl = rev_layers[i] + 1
      block_skips, skips = skips[-nl:], skips[:-nl]
      # Upsample to the next skip's size, which is diffusers' forward_upsample_size for odd sizes.
      up_size = skips[-1].shape[1:3] if i < n - 1 else None
      common = dict(out_channels=rev_ch[i], layers=nl, add_upsample=i < n - 1,
                    groups=cfg.norm_num_groups, eps=cfg.norm_eps, dtype=dt, name=f"up_blocks_{i}")
      if kind == "CrossAttnUpBlock2D":
        blk = CrossAttnUpBlock2D(heads=rev_heads[i], transformer_layers=rev_tl[i],
                                 use_linear_projection=cfg.use_linear_projection,
                                 upcast=cfg.upcast_attention, with_ip_adapter=self.with_ip_adapter,
                                 **common)
      else:
        blk = UpBlock2D(**common)
      x = blk(x, block_skips, temb, context, ip, ip_scale, upsample_size=up_size)

    x = nn.silu(layers.group_norm(cfg.norm_num_groups, cfg.norm_eps, "conv_norm_out", dt)(x))
    return layers._conv(cfg.out_channels, 3, "conv_out", dt)(x)


def init_params_shape(model: UNet2DConditionModel, batch: int = 1, text_len: int = 77,
                      latent_hw: Sequence[int] = (8, 8)) -> dict:
  """The params pytree of `model` as ShapeDtypeStructs (no compute): the torch_to_flax template."""
  cfg = model.config
  sample = jnp.zeros((batch, *latent_hw, cfg.in_channels), jnp.float32)
  ctx = jnp.zeros((batch, text_len, cfg.cross_attention_dim[0]), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample, 0, ctx))
  return shapes["params"]


def cross_attention_layers(cfg: UNetConfig) -> list[str]:
  """Dotted (torch-style) names of every `attn2`, in diffusers' `unet.attn_processors` order.

  torch registers down_blocks, then up_blocks, then mid_block (the UNet's __init__ order), and
  inside a block `attentions` before `resnets`; attn1 precedes attn2 in every transformer block.
  """
  out = []

  def blocks(prefix, n_attn, n_tl):
    for a in range(n_attn):
      for t in range(n_tl):
        out.append(f"{prefix}.attentions.{a}.transformer_blocks.{t}.attn2")

  for i, kind in enumerate(cfg.down_block_types):
    if kind.startswith("CrossAttn"):
      blocks(f"down_blocks.{i}", cfg.layers_per_block[i], cfg.transformer_layers_per_block[i])
  rev_layers = cfg.layers_per_block[::-1]
  rev_tl = cfg.transformer_layers_per_block[::-1]
  for i, kind in enumerate(cfg.up_block_types):
    if kind.startswith("CrossAttn"):
      blocks(f"up_blocks.{i}", rev_layers[i] + 1, rev_tl[i])
  blocks("mid_block", 1, cfg.transformer_layers_per_block[-1])
  return out


def ip_adapter_key_map(cfg: UNetConfig) -> dict[str, str]:
  """Official IP-Adapter keys -> our UNet's torch-style keys (for `convert.torch_to_flax`).

  The official `.bin` is {"image_proj": ..., "ip_adapter": {"<k>.to_k_ip.weight", ...}} where k
  numbers ALL attention processors (attn1, attn2 interleaved) so the cross-attentions are
  k = 1, 3, 5, ... (diffusers `_convert_ip_adapter_attn_to_diffusers`). Both the nested key
  ("1.to_k_ip.weight") and the flattened one ("ip_adapter.1.to_k_ip.weight") are mapped.

  Returns:
    {"ip_adapter.1.to_k_ip.weight": "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_ip.weight", ...}
  Usage: sd = {**unet_sd, **{m[k]: v for k, v in ip_sd.items() if k in m}}; torch_to_flax(sd, template).
  """
  m = {}
  for j, layer in enumerate(cross_attention_layers(cfg)):
    k = 2 * j + 1
    for proj in ("to_k_ip", "to_v_ip"):
      m[f"ip_adapter.{k}.{proj}.weight"] = f"{layer}.{proj}.weight"
      m[f"{k}.{proj}.weight"] = f"{layer}.{proj}.weight"
  return m
