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
from splatshot_jax.diffusion import ddim, denoiser, presets

PRESETS = {
    # CPU: everything tiny, the paper's schedule (13 steps) and a short refit.
    "tiny": dict(model="tiny", views=4, width=32, height=32, gaussians=600, refit_first=20,
                 refit=10, text_len=5, ip_tokens=4, dtype="float32", view_chunk=4, decode_chunk=4),
    # Paper settings: 48 views of 560x816 (padded), 1000/500 refit iterations.
    "sd15": dict(model="sd15", views=48, width=560, height=816, gaussians=100_000, refit_first=1000,
                 refit=500, text_len=77, ip_tokens=16, dtype="bfloat16", view_chunk=8, decode_chunk=4),
}


def random_sd_prior(p: dict, key) -> denoiser.StableDiffusion:
  """An SD-shaped prior (UNet + 2 ControlNets + IP-Adapter + VAE) with random weights."""
  del key  # numpy-seeded weights
  return presets.random_stable_diffusion(p["model"], 0, dtype=p["dtype"], view_chunk=p["view_chunk"],
                                         decode_chunk=p["decode_chunk"])


def random_cond(p: dict, key) -> denoiser.SDCond:
  return presets.random_cond(p["model"], key, num_views=p["views"], height=p["height"], width=p["width"],
                             text_len=p["text_len"], ip_tokens=p["ip_tokens"])


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
