"""ControlNet (Zhang et al. 2023) for SD-1.x/2.x in Flax: diffusers' `ControlNetModel`.

A trainable copy of the UNet's encoder half (`unet.encoder_half`, the same code and param
names) plus a small conv net that embeds the control image, and zero-initialised 1x1 convs
(`controlnet_down_blocks_<i>`, `controlnet_mid_block`) whose outputs are added to the UNet's
skips. SplatShot uses two: openpose landmarks (scale 0.2) and a face-parsing map (scale 0.6).

Layout: NHWC. The control image is (B, 8H, 8W, 3) in [0, 1] for a (B, H, W, 4) latent.

Example:
  import json, jax.numpy as jnp
  from safetensors.numpy import load_file
  from splatshot_jax.diffusion import controlnet as cn, convert
  cfg = cn.ControlNetConfig.from_json_dict(json.load(open("openpose/config.json")))
  model = cn.ControlNetModel(cfg)
  params = convert.torch_to_flax(load_file("openpose/diffusion_pytorch_model.safetensors"),
                                 cn.init_params_shape(model), name="openpose")
  down, mid = model.apply({"params": params}, z, t, text_emb, cond_img, 0.2)
  eps = unet.apply({"params": unet_params}, z, t, text_emb, down, mid)
  # several nets: down, mid = cn.multi_controlnet_residuals([(model, params, img, 0.2), ...], z, t, text_emb)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from splatshot_jax.diffusion import layers
from splatshot_jax.diffusion import unet as unet_lib

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ControlNetConfig(unet_lib.UNetConfig):
  """A UNetConfig (its encoder-half fields) plus the control-image embedding fields."""
  up_block_types: tuple = ()  # no decoder
  conditioning_channels: int = 3
  conditioning_embedding_out_channels: tuple = (16, 32, 96, 256)
  controlnet_conditioning_channel_order: str = "rgb"
  global_pool_conditions: bool = False

  @classmethod
  def from_json_dict(cls, d: Mapping[str, Any], name: str = "config.json") -> "ControlNetConfig":
    """Parses a diffusers ControlNetModel config.json dict (errors name `name` and the field)."""
    kw = unet_lib._parse_common(cls, d, name, decoder=False)
    if "conditioning_embedding_out_channels" in d:
      kw["conditioning_embedding_out_channels"] = tuple(d["conditioning_embedding_out_channels"])
    if kw.get("controlnet_conditioning_channel_order", "rgb") not in ("rgb", "bgr"):
      raise ValueError(f"{name}: controlnet_conditioning_channel_order must be 'rgb' or 'bgr'")
    if kw.get("global_pool_conditions", False):
      raise ValueError(f"{name}: global_pool_conditions=True (shuffle ControlNets) is not supported")
    return cls(**kw)


class ControlNetConditioningEmbedding(nn.Module):
  """conv_in -> SiLU -> [conv (same ch), SiLU, conv stride 2, SiLU] x (n-1) -> conv_out (zero-init)."""
  embedding_channels: int
  block_out_channels: tuple = (16, 32, 96, 256)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, cond: jax.Array) -> jax.Array:
    """cond: (B, 8H, 8W, 3) -> (B, H, W, embedding_channels) (for 4 entries in block_out_channels)."""
    ch = self.block_out_channels
    x = nn.silu(layers._conv(ch[0], 3, "conv_in", self.dtype)(cond))
    for i in range(len(ch) - 1):
      x = nn.silu(layers._conv(ch[i], 3, f"blocks_{2 * i}", self.dtype)(x))
      x = nn.silu(layers._conv(ch[i + 1], 3, f"blocks_{2 * i + 1}", self.dtype, stride=2)(x))
    return layers._conv(self.embedding_channels, 3, "conv_out", self.dtype)(x)


class ControlNetModel(nn.Module):
  """Returns the residuals the UNet adds to its skips and mid block."""
  config: ControlNetConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
      self,
      sample: jax.Array,
      timestep: jax.Array | float,
      encoder_hidden_states: jax.Array,
      controlnet_cond: jax.Array,
      conditioning_scale: float | jax.Array = 1.0,
  ) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """
    Args:
      sample: (B, H, W, in_channels) noisy latent, NHWC.
      timestep: scalar or (B,).
      encoder_hidden_states: (B, L, cross_attention_dim).
      controlnet_cond: (B, 8H, 8W, conditioning_channels) control image in [0, 1], RGB.
      conditioning_scale: multiplies every residual.
    Returns:
      (down residuals: one (B, h_i, w_i, C_i) per UNet skip, mid residual (B, h, w, C_last)).
    """
    cfg = self.config
    dt = self.dtype
    unet_lib.check_layout(sample, cfg.in_channels, "ControlNet sample")
    unet_lib.check_layout(controlnet_cond, cfg.conditioning_channels, "controlnet_cond")
    if cfg.controlnet_conditioning_channel_order == "bgr":
      controlnet_cond = controlnet_cond[..., ::-1]
    context = encoder_hidden_states.astype(dt)
    temb = unet_lib.embed_time(cfg, timestep, sample.shape[0], dt)
    x = layers._conv(cfg.block_out_channels[0], 3, "conv_in", dt)(sample.astype(dt))
    x = x + ControlNetConditioningEmbedding(cfg.block_out_channels[0],
                                            cfg.conditioning_embedding_out_channels, dtype=dt,
                                            name="controlnet_cond_embedding")(controlnet_cond.astype(dt))
    x, skips = unet_lib.encoder_half(cfg, x, temb, context, None, 1.0, False, dt)
    scale = jnp.asarray(conditioning_scale, dt)
    down = tuple(layers._conv(s.shape[-1], 1, f"controlnet_down_blocks_{i}", dt)(s) * scale
                 for i, s in enumerate(skips))
    mid = layers._conv(x.shape[-1], 1, "controlnet_mid_block", dt)(x) * scale
    return down, mid


def init_params_shape(model: ControlNetModel, batch: int = 1, text_len: int = 77,
                      latent_hw: Sequence[int] = (8, 8)) -> dict:
  """The params pytree of `model` as ShapeDtypeStructs: the torch_to_flax template."""
  cfg = model.config
  f = 2 ** (len(cfg.conditioning_embedding_out_channels) - 1)
  sample = jnp.zeros((batch, *latent_hw, cfg.in_channels), jnp.float32)
  cond = jnp.zeros((batch, latent_hw[0] * f, latent_hw[1] * f, cfg.conditioning_channels), jnp.float32)
  ctx = jnp.zeros((batch, text_len, cfg.cross_attention_dim[0]), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample, 0, ctx, cond))["params"]


def multi_controlnet_residuals(
    nets: Sequence[tuple[ControlNetModel, Any, jax.Array, float | jax.Array]],
    sample: jax.Array,
    timestep: jax.Array | float,
    encoder_hidden_states: jax.Array,
) -> tuple[tuple[jax.Array, ...], jax.Array]:
  """Sums the scaled residuals of several ControlNets (diffusers' MultiControlNetModel).

  Args:
    nets: [(model, params, controlnet_cond (B, 8H, 8W, 3), conditioning_scale), ...].
    sample, timestep, encoder_hidden_states: as `ControlNetModel.__call__`.
  Returns:
    (down residuals, mid residual) to pass to `UNet2DConditionModel`.
  """
  down_sum, mid_sum = None, None
  for model, params, cond, scale in nets:
    down, mid = model.apply({"params": params}, sample, timestep, encoder_hidden_states, cond, scale)
    if down_sum is None:
      down_sum, mid_sum = down, mid
    else:
      down_sum = tuple(a + b for a, b in zip(down_sum, down))
      mid_sum = mid_sum + mid
  return down_sum, mid_sum
