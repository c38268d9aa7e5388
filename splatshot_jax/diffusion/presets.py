"""Model shapes without checkpoints: SD-1.5's published configs and a tiny variant, with random weights.

Random weights time exactly like real ones (benchmarks) and exercise every code path (the install
check, `configs/splatshot_sd15.py:smoke`); they produce noise-like images, not faces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from splatshot_jax.diffusion import controlnet as cn_lib
from splatshot_jax.diffusion import denoiser
from splatshot_jax.diffusion import unet as unet_lib
from splatshot_jax.diffusion import vae as vae_lib

# SD-1.5's unet/config.json and vae/config.json (the fields that shape the network).
SD15_UNET = dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, norm_num_groups=32,
                 cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, sample_size=64)
SD15_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
                latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4)
# control_v11p_sd15_*: the UNet's encoder half plus the conditioning embedding.
SD15_CONTROLNET_EMBEDDING = [16, 32, 96, 256]

TINY_UNET = dict(block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
                 attention_head_dim=4, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], sample_size=8)
# Four blocks: the same 8x spatial factor as SD's VAE, so image sizes carry over.
TINY_VAE = dict(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=4, latent_channels=4,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)

PRESETS = {"tiny": (TINY_UNET, TINY_VAE), "sd15": (SD15_UNET, SD15_VAE)}


def controlnet_config(unet: dict) -> dict:
  """The ControlNet config.json that goes with a UNet config (same encoder half)."""
  cn = dict(unet, conditioning_embedding_out_channels=SD15_CONTROLNET_EMBEDDING)
  del cn["up_block_types"]
  return cn


def random_stable_diffusion(preset: str, key: jax.Array, *, height: int, width: int,
                            num_controlnets: int = 2, dtype="float32", view_chunk: int = 8,
                            decode_chunk: int = 4) -> denoiser.StableDiffusion:
  """An SD-shaped prior (UNet + ControlNets + IP-Adapter + VAE) with random (flax-init) weights.

  Args:
    preset: "tiny" or "sd15" (`PRESETS`).
    key: PRNG key of the weights.
    height, width: image size the shapes are initialised with (any multiple of 8 works later too).
  """
  if preset not in PRESETS:
    raise ValueError(f"random_stable_diffusion: preset {preset!r} unknown; expected one of {sorted(PRESETS)}")
  unet_json, vae_json = PRESETS[preset]
  dt = jnp.dtype(dtype)
  ucfg = unet_lib.UNetConfig.from_json_dict(unet_json)
  ccfg = cn_lib.ControlNetConfig.from_json_dict(controlnet_config(unet_json))
  vcfg = vae_lib.VAEConfig.from_json_dict(vae_json)
  spec = denoiser.SDSpec(unet=ucfg, vae=vcfg, controlnets=(ccfg,) * num_controlnets, with_ip_adapter=True,
                         dtype=dt, view_chunk=view_chunk, decode_chunk=decode_chunk)
  f = 2 ** (len(vae_json["block_out_channels"]) - 1)
  z = jnp.zeros((1, height // f, width // f, 4))
  txt = jnp.zeros((1, 4, unet_json["cross_attention_dim"]))
  image = jnp.zeros((1, height, width, 3))
  keys = jax.random.split(key, 2 + num_controlnets)
  cast = lambda tree: jax.tree.map(lambda x: x.astype(dt), tree)
  unet_params = unet_lib.UNet2DConditionModel(ucfg, with_ip_adapter=True).init(keys[0], z, 0, txt)["params"]
  vae_params = vae_lib.AutoencoderKL(vcfg).init(keys[1], image)["params"]
  cn_params = tuple(cast(cn_lib.ControlNetModel(ccfg).init(k, z, 0, txt, image)["params"]) for k in keys[2:])
  return denoiser.StableDiffusion(
      params={"unet": cast(unet_params), "vae": cast(vae_params), "controlnets": cn_params}, spec=spec)


def random_cond(preset: str, key: jax.Array, *, num_views: int, height: int, width: int, text_len: int = 77,
                ip_tokens: int = 16, guidance_scale: float = 4.0, control_scales=(0.2, 0.6),
                ip_scale: float = 0.8) -> denoiser.SDCond:
  """Random prompt embeddings, control maps and IP tokens of the right shapes for `preset`."""
  dim = PRESETS[preset][0]["cross_attention_dim"]
  k = jax.random.split(key, 3 + len(control_scales))
  return denoiser.SDCond(
      text=jax.random.normal(k[0], (num_views, text_len, dim)),
      uncond_text=jax.random.normal(k[1], (num_views, text_len, dim)),
      controls=tuple(jax.random.uniform(kk, (num_views, height, width, 3)) for kk in k[3:]),
      ip=jax.random.normal(k[2], (num_views, ip_tokens, dim)),
      uncond_ip=jnp.zeros((num_views, ip_tokens, dim)),
      guidance_scale=guidance_scale, control_scales=tuple(control_scales), ip_scale=ip_scale)
