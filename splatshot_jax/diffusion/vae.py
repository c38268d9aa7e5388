"""The SD image autoencoder: diffusers' `AutoencoderKL` in Flax (NHWC).

SplatShot encodes template renders to latents (a latent *sample*), and decodes x̂0 both for
the refit targets and, with gradient, for the photometric discrepancy (paper step 5): the
decoder must be differentiable, which it is (pure jnp).

Example:
  import json, jax, jax.numpy as jnp
  from safetensors.numpy import load_file
  from splatshot_jax.diffusion import convert, vae as vae_lib
  cfg = vae_lib.VAEConfig.from_json_dict(json.load(open("sd15/vae/config.json")))
  vae = vae_lib.AutoencoderKL(cfg)
  params = convert.torch_to_flax(load_file("sd15/vae/diffusion_pytorch_model.safetensors"),
                                 vae_lib.init_params_shape(vae), name="sd15/vae")
  z = vae_lib.encode_latents(vae, params, images, jax.random.PRNGKey(0))  # images (B,H,W,3) in [-1,1]
  x = vae_lib.decode_latents(vae, params, z)                              # (B, H, W, 3) in ~[-1, 1]
  dist = vae.apply({"params": params}, images, method=vae.encode)          # DiagonalGaussian
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from splatshot_jax.diffusion import layers

Dtype = Any


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Fields of a diffusers AutoencoderKL config.json."""
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  sample_size: int = 512
  scaling_factor: float = 0.18215
  shift_factor: Optional[float] = None
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True

  @classmethod
  def from_json_dict(cls, d: Mapping[str, Any], name: str = "config.json") -> "VAEConfig":
    """Parses a diffusers AutoencoderKL config dict; errors name `name` and the field."""
    for f, ok in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
      for t in d.get(f, ()):
        if t != ok:
          raise ValueError(f"{name}: {f} entry '{t}' is not supported (only {ok})")
    if d.get("act_fn", "silu") not in ("silu", "swish"):
      raise ValueError(f"{name}: act_fn '{d['act_fn']}' is not supported (only silu)")
    if d.get("latents_mean") is not None or d.get("latents_std") is not None:
      raise ValueError(f"{name}: latents_mean/latents_std normalisation is not supported")
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    if "block_out_channels" in kw:
      kw["block_out_channels"] = tuple(kw["block_out_channels"])
    n = len(kw.get("block_out_channels", cls.block_out_channels))
    for f in ("down_block_types", "up_block_types"):
      if f in d and len(d[f]) != n:
        raise ValueError(f"{name}: {f} has {len(d[f])} entries, expected {n}")
    if isinstance(kw.get("sample_size"), (list, tuple)):
      kw["sample_size"] = tuple(kw["sample_size"])
    return cls(**kw)


class UNetMidBlock2D(nn.Module):
  """VAE mid block: resnets_0 -> attentions_0 (one-head self-attn, GroupNorm, residual) -> resnets_1."""
  groups: int
  add_attention: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, H, W, C) -> (B, H, W, C)."""
    b, h, w, c = x.shape
    x = layers.ResnetBlock2D(c, self.groups, eps=1e-6, dtype=self.dtype, name="resnets_0")(x, None)
    if self.add_attention:
      # diffusers builds it with attention_head_dim = C: a single head over all channels,
      # softmax upcast to fp32 (upcast_softmax=True).
      attn = layers.Attention(heads=1, head_dim=c, qkv_bias=True, upcast=True, norm_groups=self.groups,
                              norm_eps=1e-6, residual=True, dtype=self.dtype, name="attentions_0")
      x = attn(x.reshape(b, h * w, c)).reshape(b, h, w, c)
    return layers.ResnetBlock2D(c, self.groups, eps=1e-6, dtype=self.dtype, name="resnets_1")(x, None)


class DownEncoderBlock2D(nn.Module):
  """`layers` ResnetBlock2Ds (no temb) then an optional bottom/right-padded stride-2 conv."""
  out_channels: int
  layers: int
  groups: int
  add_downsample: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.layers):
      x = layers.ResnetBlock2D(self.out_channels, self.groups, eps=1e-6, dtype=self.dtype,
                               name=f"resnets_{j}")(x, None)
    if self.add_downsample:
      x = layers.Downsample2D(self.out_channels, padding=0, dtype=self.dtype, name="downsamplers_0")(x)
    return x


class UpDecoderBlock2D(nn.Module):
  """`layers` ResnetBlock2Ds (no temb, no skips) then an optional nearest-2x + conv."""
  out_channels: int
  layers: int
  groups: int
  add_upsample: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.layers):
      x = layers.ResnetBlock2D(self.out_channels, self.groups, eps=1e-6, dtype=self.dtype,
                               name=f"resnets_{j}")(x, None)
    if self.add_upsample:
      x = layers.Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers_0")(x)
    return x


class Encoder(nn.Module):
  """Image (B, H, W, 3) -> moments (B, H/2^k, W/2^k, 2*latent) (before quant_conv)."""
  config: VAEConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, dt = self.config, self.dtype
    ch = cfg.block_out_channels
    x = layers._conv(ch[0], 3, "conv_in", dt)(x)
    for i, c in enumerate(ch):
      x = DownEncoderBlock2D(c, cfg.layers_per_block, cfg.norm_num_groups, i < len(ch) - 1,
                             dtype=dt, name=f"down_blocks_{i}")(x)
    x = UNetMidBlock2D(cfg.norm_num_groups, cfg.mid_block_add_attention, dtype=dt, name="mid_block")(x)
    x = nn.silu(layers.group_norm(cfg.norm_num_groups, 1e-6, "conv_norm_out", dt)(x))
    return layers._conv(2 * cfg.latent_channels, 3, "conv_out", dt)(x)


class Decoder(nn.Module):
  """Latent (B, h, w, latent) -> image (B, h*2^k, w*2^k, out_channels) (after post_quant_conv)."""
  config: VAEConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg, dt = self.config, self.dtype
    ch = cfg.block_out_channels[::-1]
    x = layers._conv(ch[0], 3, "conv_in", dt)(z)
    x = UNetMidBlock2D(cfg.norm_num_groups, cfg.mid_block_add_attention, dtype=dt, name="mid_block")(x)
    for i, c in enumerate(ch):
      x = UpDecoderBlock2D(c, cfg.layers_per_block + 1, cfg.norm_num_groups, i < len(ch) - 1,
                           dtype=dt, name=f"up_blocks_{i}")(x)
    x = nn.silu(layers.group_norm(cfg.norm_num_groups, 1e-6, "conv_norm_out", dt)(x))
    return layers._conv(cfg.out_channels, 3, "conv_out", dt)(x)


@flax.struct.dataclass
class DiagonalGaussian:
  """The encoder's latent distribution (diffusers' DiagonalGaussianDistribution).

  mean, logvar: (B, h, w, latent_channels); logvar is clipped to [-30, 20] as diffusers.
  """
  mean: jax.Array
  logvar: jax.Array

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def sample(self, rng: jax.Array) -> jax.Array:
    """mean + std * N(0, I); (B, h, w, latent)."""
    eps = jax.random.normal(rng, self.mean.shape, jnp.float32).astype(self.mean.dtype)
    return self.mean + self.std * eps

  def mode(self) -> jax.Array:
    return self.mean


class AutoencoderKL(nn.Module):
  """SD VAE. `__call__` (used for init) encodes and decodes the mode; use `encode`/`decode`."""
  config: VAEConfig
  dtype: Dtype = jnp.float32

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg, dtype=self.dtype)
    self.decoder = Decoder(cfg, dtype=self.dtype)
    if cfg.use_quant_conv:
      self.quant_conv = layers._conv(2 * cfg.latent_channels, 1, None, self.dtype)
    if cfg.use_post_quant_conv:
      self.post_quant_conv = layers._conv(cfg.latent_channels, 1, None, self.dtype)

  def encode(self, images: jax.Array) -> DiagonalGaussian:
    """images: (B, H, W, in_channels) in [-1, 1] -> latent_dist over (B, H/8, W/8, latent) for SD."""
    _check_nhwc(images, self.config.in_channels, "VAE images")
    m = self.encoder(images.astype(self.dtype))
    if self.config.use_quant_conv:
      m = self.quant_conv(m)
    mean, logvar = jnp.split(m, 2, axis=-1)
    return DiagonalGaussian(mean, jnp.clip(logvar, -30.0, 20.0))

  def decode(self, latents: jax.Array) -> jax.Array:
    """latents: (B, h, w, latent) unscaled -> (B, 8h, 8w, out_channels), nominally [-1, 1]."""
    _check_nhwc(latents, self.config.latent_channels, "VAE latents")
    z = latents.astype(self.dtype)
    if self.config.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.decode(self.encode(images).mode())


def _check_nhwc(x: jax.Array, channels: int, what: str) -> None:
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(f"{what} must be NHWC (B, H, W, {channels}); got shape {x.shape}")


def init_params_shape(vae: AutoencoderKL, hw: Sequence[int] = (16, 16)) -> dict:
  """Params pytree as ShapeDtypeStructs (no compute): the torch_to_flax template."""
  x = jnp.zeros((1, *hw, vae.config.in_channels), jnp.float32)
  return jax.eval_shape(lambda: vae.init(jax.random.PRNGKey(0), x))["params"]


def encode_latents(vae: AutoencoderKL, params: Any, images: jax.Array,
                   rng: Optional[jax.Array] = None) -> jax.Array:
  """Images -> diffusion-space latents (z - shift) * scaling_factor.

  Args:
    images: (B, H, W, 3) float in [-1, 1], NHWC.
    rng: PRNG key to draw a latent sample (as the official code); None uses the mean.
  Returns:
    (B, H/8, W/8, latent_channels) for SD.
  """
  dist = vae.apply({"params": params}, images, method=AutoencoderKL.encode)
  z = dist.mode() if rng is None else dist.sample(rng)
  shift = vae.config.shift_factor or 0.0
  return (z - shift) * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, params: Any, latents: jax.Array) -> jax.Array:
  """Diffusion-space latents (B, h, w, latent) -> images (B, 8h, 8w, 3), nominally [-1, 1]
  (not clipped: gradients of the photometric loss flow through unclipped values)."""
  shift = vae.config.shift_factor or 0.0
  z = latents / vae.config.scaling_factor + shift
  return vae.apply({"params": params}, z, method=AutoencoderKL.decode)
