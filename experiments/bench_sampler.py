"""Time per avatar of the SplatShot run, split into UNet, VAE decode+VJP, refit and other.

  python -m experiments.bench_sampler                      # CPU: tiny random SD-shaped prior, 4 views, 32 px
  python -m experiments.bench_sampler --preset=sd15        # GPU: SD-1.5-sized random weights, paper settings

Random weights time exactly like real ones. The components are timed as separate jitted calls with the shapes the
step uses (eps twice per step with SDI; decode + its VJP once; the refit at its per-step length), then the whole run
is timed end to end (compiled); "other" = run - the sum (DDIM, confidence weights, renders, loss, host transfers).
Prints a markdown table for docs/benchmarks.md ("Sampler").
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from splatshot_jax import guidance, sampler, synthetic
from splatshot_jax.diffusion import controlnet as cn_lib
from splatshot_jax.diffusion import ddim, denoiser
from splatshot_jax.diffusion import unet as unet_lib
from splatshot_jax.diffusion import vae as vae_lib

TINY_UNET = dict(block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
                 attention_head_dim=4, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], sample_size=8)
TINY_VAE = dict(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=4, latent_channels=4,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
# SD-1.5's published configs (unet/config.json, vae/config.json).
SD15_UNET = dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, norm_num_groups=32,
                 cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, sample_size=64)
SD15_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32, latent_channels=4,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)

PRESETS = {
    # CPU: everything tiny, the paper's schedule (13 steps) and a short refit.
    "tiny": dict(unet=TINY_UNET, vae=TINY_VAE, views=4, width=32, height=32, gaussians=600, refit_first=20,
                 refit=10, text_len=5, ip_tokens=4, dtype="float32", view_chunk=4, decode_chunk=4),
    # Paper settings: 48 views of 560x816 (padded), 1000/500 refit iterations.
    "sd15": dict(unet=SD15_UNET, vae=SD15_VAE, views=48, width=560, height=816, gaussians=100_000, refit_first=1000,
                 refit=500, text_len=77, ip_tokens=16, dtype="bfloat16", view_chunk=8, decode_chunk=4),
}


def random_sd_prior(p: dict, key) -> denoiser.StableDiffusion:
  """An SD-shaped prior (UNet + 2 ControlNets + IP-Adapter + VAE) with random weights."""
  dtype = jnp.dtype(p["dtype"])
  ucfg = unet_lib.UNetConfig.from_json_dict(p["unet"])
  cn = dict(p["unet"], conditioning_embedding_out_channels=[16, 32, 96, 256][: len(p["vae"]["block_out_channels"])])
  del cn["up_block_types"]
  ccfg = cn_lib.ControlNetConfig.from_json_dict(cn)
  vcfg = vae_lib.VAEConfig.from_json_dict(p["vae"])
  spec = denoiser.SDSpec(unet=ucfg, vae=vcfg, controlnets=(ccfg, ccfg), with_ip_adapter=True, dtype=dtype,
                         view_chunk=p["view_chunk"], decode_chunk=p["decode_chunk"])
  f = 2 ** (len(p["vae"]["block_out_channels"]) - 1)
  h, w, c = p["height"] // f, p["width"] // f, p["unet"]["cross_attention_dim"]
  keys = jax.random.split(key, 4)
  z, txt = jnp.zeros((1, h, w, 4)), jnp.zeros((1, p["text_len"], c))
  up = unet_lib.UNet2DConditionModel(ucfg, with_ip_adapter=True).init(keys[0], z, 0, txt)["params"]
  cp = cn_lib.ControlNetModel(ccfg).init(keys[1], z, 0, txt, jnp.zeros((1, p["height"], p["width"], 3)))["params"]
  vp = vae_lib.AutoencoderKL(vcfg).init(keys[2], jnp.zeros((1, p["height"], p["width"], 3)))["params"]
  cast = lambda t: jax.tree.map(lambda x: x.astype(dtype), t)
  return denoiser.StableDiffusion(params={"unet": cast(up), "vae": cast(vp), "controlnets": (cast(cp), cast(cp))},
                                  spec=spec)


def random_cond(p: dict, key) -> denoiser.SDCond:
  v, c = p["views"], p["unet"]["cross_attention_dim"]
  k = jax.random.split(key, 5)
  return denoiser.SDCond(
      text=jax.random.normal(k[0], (v, p["text_len"], c)), uncond_text=jax.random.normal(k[1], (v, p["text_len"], c)),
      controls=tuple(jax.random.uniform(kk, (v, p["height"], p["width"], 3)) for kk in k[2:4]),
      ip=jax.random.normal(k[4], (v, p["ip_tokens"], c)), uncond_ip=jnp.zeros((v, p["ip_tokens"], c)),
      guidance_scale=4.0, control_scales=(0.2, 0.6), ip_scale=0.8)


def _time(fn, *args, repeat=2):
  jax.block_until_ready(fn(*args))  # compile
  t = time.perf_counter()
  for _ in range(repeat):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t) / repeat


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
  ap.add_argument("--views", type=int, default=None)
  args = ap.parse_args()
  p = dict(PRESETS[args.preset])
  if args.views:
    p["views"] = args.views
  key = jax.random.key(0)
  prior = random_sd_prior(p, key)
  cond_photo, cond_tmpl = random_cond(p, jax.random.key(1)), random_cond(p, jax.random.key(2))
  g, _ = synthetic.head_gaussians(p["gaussians"], sh_degree=3)
  cams = synthetic.head_rig(p["views"], width=p["width"], height=p["height"])
  scene = guidance.gaussian_scene()
  images = scene.render(g, cams)
  template = types.SimpleNamespace(gaussians=g, cameras=cams, images=images)
  gcfg = guidance.GuidanceConfig(refit_iters_first=p["refit_first"], refit_iters=p["refit"])
  scfg = sampler.SamplerConfig(guidance=gcfg, progress=False)
  schedule = ddim.make_schedule(scfg.num_inference_steps)
  steps = len(sampler.sampler_timesteps(schedule, scfg.strength, scfg.start))

  z = prior.encode(images, jax.random.key(3))
  t = jnp.int32(481)
  unet = _time(jax.jit(lambda pr, z, c: pr.eps(z, t, c)), prior, z, cond_photo)

  @jax.jit
  def decode_vjp(pr, x0):
    imgs, vjp = jax.vjp(pr.decode, x0)
    return vjp(imgs)[0]
  vae = _time(decode_vjp, prior, z)
  w = jnp.full((p["views"],), 1.0 / p["views"])
  refit = jax.jit(scene.refit, static_argnums=(5,))
  refit_first = _time(refit, g, cams, images, w, jax.random.key(4), p["refit_first"], repeat=1)
  refit_later = _time(refit, g, cams, images, w, jax.random.key(4), p["refit"], repeat=1)

  run = lambda: sampler.run_splatshot(prior, template, cond_photo, scfg, jax.random.key(5), scene=scene,
                                      template_cond=cond_tmpl, schedule=schedule)
  t0 = time.perf_counter()
  run()
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  run()
  total = time.perf_counter() - t0
  parts = {"UNet (eps x2, CFG, 2 ControlNets)": 2 * steps * unet, "VAE decode + VJP": steps * vae,
           "refit": refit_first + (steps - 1) * refit_later}
  parts["other"] = total - sum(parts.values())
  dev = jax.devices()[0]
  print(f"\nSplatShot run, preset {args.preset}: {p['views']} views {p['width']}x{p['height']}, {steps} steps, "
        f"refit {p['refit_first']}/{p['refit']} its, {p['gaussians']} Gaussians, {p['dtype']}, "
        f"device {dev.device_kind} ({dev.platform})")
  print("| part | s per avatar | share |\n| --- | ---: | ---: |")
  for name, sec in parts.items():
    print(f"| {name} | {sec:.2f} | {100 * sec / total:.0f}% |")
  print(f"| **total (compiled)** | **{total:.2f}** | |")
  print(f"| first run (incl. compile) | {first:.2f} | |")


if __name__ == "__main__":
  main()
