"""Tiny random Stable Diffusion checkpoints on disk, in the exact layouts the real ones use.

`build(root)` writes (with torch + diffusers + transformers, all random weights, no download):

  root/sd/            diffusers pipeline folder: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/
  root/cn_pose/, root/cn_seg/   two ControlNet folders
  root/ip/models/ip-adapter-plus_sd15.bin      IP-Adapter Plus in the official (tencent-ailab) nested .bin layout
  root/ip/models/image_encoder/                a CLIPVisionModelWithProjection folder

Sizes: latents 8x8x4 <-> images 16x16 (VAE and ControlNet embeddings downsample by 2, not 8), text 77x32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LATENT_HW = 8
IMAGE_HW = 16
TEXT_DIM = 32
VISION_SIZE = 32

UNET = dict(sample_size=LATENT_HW, in_channels=4, out_channels=4, block_out_channels=[32, 64], layers_per_block=1,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=8)
CONTROLNET = dict(in_channels=4, block_out_channels=[32, 64], layers_per_block=1,
                  down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], cross_attention_dim=TEXT_DIM,
                  attention_head_dim=4, norm_num_groups=8, conditioning_embedding_out_channels=[8, 16])
VAE = dict(in_channels=3, out_channels=3, block_out_channels=[8, 16], layers_per_block=1, latent_channels=4,
           norm_num_groups=4, sample_size=IMAGE_HW, down_block_types=["DownEncoderBlock2D"] * 2,
           up_block_types=["UpDecoderBlock2D"] * 2)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
# IP-Adapter Plus Resampler: CLIP width 32 -> 64-wide perceiver (1 head of 64, the official dim_head) -> 32;
# depth 4 because diffusers' official-layout converter assumes 4 layers.
IP = dict(embed_dims=32, hidden_dims=64, output_dims=TEXT_DIM, num_queries=4, depth=4, ff_mult=4)


def _bytes_to_unicode() -> list[str]:
  """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to 256+."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return [chr(c) for c in cs]


def tiny_tokenizer():
  """A CLIP BPE tokenizer over the byte alphabet plus a few merges (vocab 521; ids 519/520 = BOS/EOS)."""
  from transformers import CLIPTokenizer

  alphabet = _bytes_to_unicode()
  vocab = {c: i for i, c in enumerate(alphabet)}
  vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
  merges = [("h", "i"), ("g", "h</w>"), ("hi", "gh</w>"), ("q", "u"), ("qu", "a"), ("p", "o"), ("po", "r")]
  for a, b in merges:
    vocab.setdefault(a + b, len(vocab))
  vocab["<|startoftext|>"] = len(vocab)
  vocab["<|endoftext|>"] = len(vocab)
  return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def randomize(module, seed: int, scale: float = 0.1):
  """Perturbs every parameter so zero-initialised layers (ControlNet zero convs, ...) are non-trivial."""
  import torch

  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in sorted(module.named_parameters()):
      p.add_(scale * torch.randn(p.shape, generator=g))
  return module


def official_ip_adapter_plus(unet, seed: int) -> dict:
  """A tencent-ailab-layout IP-Adapter Plus state dict {"image_proj": {...}, "ip_adapter": {...}} for `unet`."""
  import torch

  g = torch.Generator().manual_seed(seed)
  r = lambda *s: 0.2 * torch.randn(s, generator=g)
  c = IP
  d, e, o, inner, ff = c["hidden_dims"], c["embed_dims"], c["output_dims"], c["hidden_dims"], c["hidden_dims"] * c["ff_mult"]
  proj = {"latents": torch.randn(1, c["num_queries"], d, generator=g) / d**0.5,
          "proj_in.weight": r(d, e), "proj_in.bias": r(d), "proj_out.weight": r(o, d), "proj_out.bias": r(o),
          "norm_out.weight": 1 + r(o), "norm_out.bias": r(o)}
  for i in range(c["depth"]):
    p = f"layers.{i}."
    proj.update({p + "0.norm1.weight": 1 + r(d), p + "0.norm1.bias": r(d), p + "0.norm2.weight": 1 + r(d),
                 p + "0.norm2.bias": r(d), p + "0.to_q.weight": r(inner, d), p + "0.to_kv.weight": r(2 * inner, d),
                 p + "0.to_out.weight": r(d, inner), p + "1.0.weight": 1 + r(d), p + "1.0.bias": r(d),
                 p + "1.1.weight": r(ff, d), p + "1.3.weight": r(d, ff)})
  ip = {}
  k = 1
  for name, _ in unet.attn_processors.items():  # diffusers numbers every processor; attn2 are the odd ones
    if name.endswith("attn2.processor"):
      mod = unet.get_submodule(name[: -len(".processor")])
      ip[f"{k}.to_k_ip.weight"] = r(mod.to_k.out_features, TEXT_DIM)
      ip[f"{k}.to_v_ip.weight"] = r(mod.to_v.out_features, TEXT_DIM)
      k += 2
  return {"image_proj": proj, "ip_adapter": ip}


def build(root: str | Path, seed: int = 0) -> dict[str, Path]:
  """Writes all tiny checkpoints under root; returns their paths (keys: sd, cn_pose, cn_seg, ip_root, ip_file,
  image_encoder)."""
  import torch
  from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
  from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

  root = Path(root)
  torch.manual_seed(seed)
  tok = tiny_tokenizer()
  unet = randomize(UNet2DConditionModel(**UNET), seed + 1)
  vae = randomize(AutoencoderKL(**VAE), seed + 2, scale=0.05)
  text = randomize(CLIPTextModel(CLIPTextConfig(
      vocab_size=len(tok), hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
      max_position_embeddings=77, bos_token_id=519, eos_token_id=520, pad_token_id=520)), seed + 3, scale=0.02)
  pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                 scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None,
                                 feature_extractor=None, requires_safety_checker=False)
  pipe.save_pretrained(root / "sd")
  paths = {"sd": root / "sd"}
  for i, name in enumerate(("cn_pose", "cn_seg")):
    randomize(ControlNetModel(**CONTROLNET), seed + 10 + i).save_pretrained(root / name)
    paths[name] = root / name
  vision = randomize(CLIPVisionModelWithProjection(CLIPVisionConfig(
      hidden_size=IP["embed_dims"], intermediate_size=37, projection_dim=TEXT_DIM, num_hidden_layers=2,
      num_attention_heads=4, image_size=VISION_SIZE, patch_size=8, hidden_act="gelu")), seed + 20, scale=0.02)
  vision.save_pretrained(root / "ip" / "models" / "image_encoder")
  ip_file = root / "ip" / "models" / "ip-adapter-plus_sd15.bin"
  torch.save(official_ip_adapter_plus(unet, seed + 30), ip_file)
  paths.update(ip_root=root / "ip", ip_file=ip_file, image_encoder=root / "ip" / "models" / "image_encoder")
  return paths
