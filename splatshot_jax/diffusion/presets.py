"""Model shapes without checkpoints: SD-1.5's published configs and a tiny variant, with random weights.

Random weights time exactly like real ones (benchmarks) and exercise every code path (the install
check, `configs/splatshot_sd15.py:smoke`); they produce noise-like images, not faces. The install check's
photo goes the real identity path too (`random_image_conditioner`: CLIP vision -> IP-Adapter Plus tokens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from splatshot_jax.diffusion import clip as clip_lib
from splatshot_jax.diffusion import controlnet as cn_lib
from splatshot_jax.diffusion import denoiser
from splatshot_jax.diffusion import ip_adapter as ip_lib
from splatshot_jax.diffusion import unet as unet_lib
from splatshot_jax.diffusion import vae as vae_lib

# runwayml/stable-diffusion-v1-5 unet/config.json (architecture fields).
SD15_UNET = dict(
    in_channels=4, out_channels=4, sample_size=64, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True,
    freq_shift=0, downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", center_input_sample=False)
# lllyasviel/control_v11p_sd15_openpose (and _seg) config.json.
SD15_CONTROLNET = dict(
    in_channels=4, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True,
    freq_shift=0, downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", conditioning_channels=3,
    conditioning_embedding_out_channels=[16, 32, 96, 256], controlnet_conditioning_channel_order="rgb")
# stabilityai/sd-vae-ft-mse config.json (same architecture as SD-1.5's vae/).
SD15_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
    norm_num_groups=32, sample_size=256, scaling_factor=0.18215, act_fn="silu",
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)

TINY_UNET = dict(block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
                 attention_head_dim=4, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], sample_size=8)
# Four blocks: the same 8x spatial factor as SD's VAE, so image sizes carry over.
TINY_VAE = dict(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=4, latent_channels=4,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)

TINY_CONTROLNET = dict({k: v for k, v in TINY_UNET.items() if k != "up_block_types"},
                       conditioning_embedding_out_channels=[16, 32, 96, 256])

PRESETS = {"tiny": (TINY_UNET, TINY_CONTROLNET, TINY_VAE), "sd15": (SD15_UNET, SD15_CONTROLNET, SD15_VAE)}

# The IP-Adapter's image side, tiny: a 2-layer CLIP ViT on 32 px crops (16 patches of 8 px) and a one-block
# Plus Resampler to 4 tokens of the tiny UNet's cross_attention_dim (plus-face: ViT-H/14 at 224 px, 16 tokens).
TINY_VISION = dict(hidden_size=32, intermediate_size=64, projection_dim=16, num_hidden_layers=2,
                   num_attention_heads=2, image_size=32, patch_size=8, hidden_act="gelu")
TINY_IP_PLUS = dict(embed_dims=32, output_dims=TINY_UNET["cross_attention_dim"], hidden_dims=32, depth=1, dim_head=16,
                    heads=2, num_queries=4, ffn_ratio=2)


def random_params(template, rng: np.random.Generator, dtype) -> dict:
  """Random leaves shaped like `template` (e.g. `init_params_shape`, no compute): N(0, 0.02) weights,
  ones for norm scales, so activations stay O(1)."""
  def leaf(path, s):
    if jax.tree_util.keystr(path).endswith("['scale']"):
      return jnp.ones(s.shape, dtype)
    return jnp.asarray(rng.standard_normal(s.shape, dtype=np.float32) * 0.02, dtype)
  return jax.tree_util.tree_map_with_path(leaf, template)


def random_stable_diffusion(preset: str, seed: int = 0, *, num_controlnets: int = 2, dtype="float32",
                            view_chunk: int = 8, decode_chunk: int = 4) -> denoiser.StableDiffusion:
  """An SD-shaped prior (UNet + ControlNets + IP-Adapter + VAE) with random weights (`random_params`).

  Args:
    preset: "tiny" or "sd15" (`PRESETS`); any image size divisible by 8 works with either.
    seed: numpy seed of the weights.
  """
  rng = np.random.default_rng(seed)
  return _stable_diffusion(preset, num_controlnets, dtype, view_chunk, decode_chunk,
                           lambda template, dt: random_params(template, rng, dt))


def abstract_stable_diffusion(preset: str, *, num_controlnets: int = 2, dtype="float32", view_chunk: int = 8,
                              decode_chunk: int = 4) -> denoiser.StableDiffusion:
  """`random_stable_diffusion`'s prior with `jax.ShapeDtypeStruct` leaves: no weights are made, for lowering
  and compiling only (`experiments.aot_check`, `bench_sampler --compile-only`)."""
  return _stable_diffusion(preset, num_controlnets, dtype, view_chunk, decode_chunk,
                           lambda template, dt: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dt), template))


def _stable_diffusion(preset, num_controlnets, dtype, view_chunk, decode_chunk, make_params):
  """The prior of `preset` with params make_params(shape template, dtype) per module."""
  if preset not in PRESETS:
    raise ValueError(f"random_stable_diffusion: preset {preset!r} unknown; expected one of {sorted(PRESETS)}")
  unet_json, cn_json, vae_json = PRESETS[preset]
  dt = jnp.dtype(dtype)
  ucfg = unet_lib.UNetConfig.from_json_dict(unet_json)
  ccfg = cn_lib.ControlNetConfig.from_json_dict(cn_json)
  vcfg = vae_lib.VAEConfig.from_json_dict(vae_json)
  cn_template = cn_lib.init_params_shape(cn_lib.ControlNetModel(ccfg))
  params = {
      "unet": make_params(unet_lib.init_params_shape(unet_lib.UNet2DConditionModel(ucfg, with_ip_adapter=True)),
                          dt),
      "vae": make_params(vae_lib.init_params_shape(vae_lib.AutoencoderKL(vcfg)), dt),
      "controlnets": tuple(make_params(cn_template, dt) for _ in range(num_controlnets)),
  }
  spec = denoiser.SDSpec(unet=ucfg, vae=vcfg, controlnets=(ccfg,) * num_controlnets, with_ip_adapter=True,
                         dtype=dt, view_chunk=view_chunk, decode_chunk=decode_chunk)
  return denoiser.StableDiffusion(params=params, spec=spec)


def random_image_conditioner(preset: str = "tiny", seed: int = 0, *, dtype="float32") -> denoiser.SDConditioner:
  """The IP-Adapter's image encoders with random weights (`random_params`): CLIP vision + Plus Resampler.

  With it the install check's photo conditions the run as a real one does (photo -> CLIP preprocessing ->
  hidden_states[-2] -> Resampler -> IP tokens: `SDConditioner.ip_tokens`), so different photos give different
  avatars. It has no text side (tokenizer/text model are None): the install check's prompts stay random
  embeddings (`random_cond`).

  Args:
    preset: "tiny" (`TINY_VISION`, `TINY_IP_PLUS`; tokens fit `TINY_UNET`).
    seed: numpy seed of the weights.
  """
  if preset != "tiny":
    raise ValueError(f"random_image_conditioner: preset {preset!r} unknown; expected 'tiny'")
  dt = jnp.dtype(dtype)
  vcfg = clip_lib.CLIPVisionConfig.from_json_dict(TINY_VISION)
  pcfg = ip_lib.IPAdapterPlusConfig.from_json_dict(TINY_IP_PLUS)
  vision, proj = clip_lib.CLIPVisionModelWithProjection(vcfg, dt), ip_lib.IPAdapterPlusImageProjection(pcfg, dt)
  pixels = jnp.zeros((1, vcfg.image_size, vcfg.image_size, 3), dt)
  feats = jnp.zeros((1, (vcfg.image_size // vcfg.patch_size) ** 2 + 1, vcfg.hidden_size), dt)
  rng = np.random.default_rng(seed)
  shapes = lambda model, x: jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))["params"]
  return denoiser.SDConditioner(tokenizer=None, text_model=None, text_params=None, image_model=vision,
                                image_params=random_params(shapes(vision, pixels), rng, dt), image_proj=proj,
                                image_proj_params=random_params(shapes(proj, feats), rng, dt))


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
