"""Times the SD-1.5 prior's pieces: one CFG eps call (UNet + 2 ControlNets + IP tokens), VAE decode, decode VJP.

  python -m experiments.bench_denoiser                           # CPU: SD-1.5-sized weights, 32x32 latents, V=1
  python -m experiments.bench_denoiser --latent=64 --views=8     # GPU: 512x512, 8 views (+ diffusers baseline)
  python -m experiments.bench_denoiser --no-append               # print only

SD-1.5-sized random weights (the published unet/vae/ControlNet-v1.1 configs, written out below): random weights time
exactly like real ones. Each row is one jitted call on V views, so eps runs the UNet and each ControlNet on a batch
of 2V (CFG). Reported: compile (first call) and the median of --reps calls after one warm-up, for each dtype.
With CUDA available (or --torch=on) the same eps step and decode are timed in diffusers/PyTorch for comparison
(fp16 on GPU in place of bf16, as the official code). Appends a block to the "Denoiser" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from splatshot_jax.diffusion import denoiser, presets

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks.md")
SECTION = "## Denoiser"

SD15_UNET, SD15_CONTROLNET, SD15_VAE = presets.SD15_UNET, presets.SD15_CONTROLNET, presets.SD15_VAE
TEXT_LEN, IP_TOKENS = 77, 16  # CLIP context; ip-adapter-plus-face_sd15 num_queries


def build_prior(dtype, view_chunk: int, decode_chunk: int, seed: int = 0) -> denoiser.StableDiffusion:
  return presets.random_stable_diffusion("sd15", seed, dtype=dtype, view_chunk=view_chunk, decode_chunk=decode_chunk)


def time_call(fn, args, reps: int) -> tuple[float, float]:
  """(compile + first call seconds, median seconds of `reps` calls after one warm-up)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return first, statistics.median(ts)


def bench_jax(dtype_name: str, views: int, latent: int, reps: int, view_chunk: int, decode_chunk: int,
              parts: list[str]) -> list[tuple]:
  dtype = jnp.dtype(dtype_name).type
  prior = build_prior(dtype, view_chunk, decode_chunk)
  key = jax.random.split(jax.random.PRNGKey(0), 8)
  hw = 8 * latent
  z = jax.random.normal(key[0], (views, latent, latent, 4))
  cond = denoiser.SDCond(
      text=jax.random.normal(key[1], (views, TEXT_LEN, 768)), uncond_text=jax.random.normal(key[2], (views, TEXT_LEN, 768)),
      controls=(jax.random.uniform(key[3], (views, hw, hw, 3)), jax.random.uniform(key[4], (views, hw, hw, 3))),
      ip=jax.random.normal(key[5], (views, IP_TOKENS, 768)), uncond_ip=jax.random.normal(key[6], (views, IP_TOKENS, 768)),
      guidance_scale=4.0, control_scales=(0.2, 0.6), ip_scale=0.8)
  rows = []
  if "eps" in parts:
    eps = jax.jit(lambda p, z, t, c: p.eps(z, t, c))
    rows.append(("jax", dtype_name, "eps: UNet + 2 ControlNets, CFG (2V)", *time_call(eps, (prior, z, jnp.int32(481), cond), reps)))
  if "decode" in parts:
    dec = jax.jit(lambda p, z: p.decode(z))
    rows.append(("jax", dtype_name, "VAE decode", *time_call(dec, (prior, z), reps)))
  if "vjp" in parts:
    g = jax.random.normal(key[7], (views, hw, hw, 3))
    vjp = jax.jit(lambda p, z, g: p.decode_vjp(z, g))
    rows.append(("jax", dtype_name, "VAE decode VJP (remat)", *time_call(vjp, (prior, z, g), reps)))
  del prior
  return rows


def bench_torch(views: int, latent: int, reps: int, parts: list[str]) -> list[tuple]:
  """The same calls in diffusers / PyTorch (random weights), fp32 and fp16 (GPU) or fp32 (CPU)."""
  import torch
  from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
  from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

  dev = "cuda" if torch.cuda.is_available() else "cpu"
  dtypes = [torch.float32, torch.float16] if dev == "cuda" else [torch.float32]
  strip = lambda d: {k: v for k, v in d.items() if k not in ("act_fn",)}
  rows = []
  for dt in dtypes:
    unet = UNet2DConditionModel(**strip(SD15_UNET)).to(dev, dt).eval()
    cns = MultiControlNetModel([ControlNetModel(**strip(SD15_CONTROLNET)).to(dev, dt).eval() for _ in range(2)])
    vae = AutoencoderKL(**strip(SD15_VAE)).to(dev, dt).eval()
    hw = 8 * latent
    z = torch.randn(2 * views, 4, latent, latent, device=dev, dtype=dt)
    text = torch.randn(2 * views, TEXT_LEN, 768, device=dev, dtype=dt)
    ctrl = [torch.rand(2 * views, 3, hw, hw, device=dev, dtype=dt) for _ in range(2)]
    t = torch.tensor(481, device=dev)

    def sync():
      if dev == "cuda":
        torch.cuda.synchronize()

    def timed(fn):
      with torch.no_grad():
        t0 = time.perf_counter(); fn(); sync(); first = time.perf_counter() - t0
        fn(); sync()
        ts = []
        for _ in range(reps):
          t0 = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t0)
      return first, statistics.median(ts)

    def eps():
      down, mid = cns(z, t, text, ctrl, [0.2, 0.6], return_dict=False)
      return unet(z, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

    name = "float16" if dt == torch.float16 else "float32"
    if "eps" in parts:
      rows.append(("diffusers", name, "eps: UNet + 2 ControlNets, CFG (2V) (no IP)", *timed(eps)))
    if "decode" in parts:
      zz = z[:views]
      rows.append(("diffusers", name, "VAE decode", *timed(lambda: vae.decode(zz / 0.18215).sample)))
    if "vjp" in parts:
      zz = z[:views].clone().float().to(dt).requires_grad_(True)
      g = torch.randn(views, 3, hw, hw, device=dev, dtype=dt)

      def vjp():
        with torch.enable_grad():
          zz.grad = None
          vae.decode(zz / 0.18215).sample.backward(g)
      rows.append(("diffusers", name, "VAE decode VJP (autograd)", *timed(vjp)))
    del unet, cns, vae
  return rows


def machine() -> str:
  d = jax.devices()[0]
  kind = getattr(d, "device_kind", d.platform)
  load = " ".join(f"{x:.1f}" for x in os.getloadavg())
  # The load average says how contended a shared machine was (timings scale with it on CPU).
  return (f"{d.platform} ({kind}), {os.cpu_count()} CPU threads, {platform.processor() or platform.machine()}, "
          f"load average {load}")


def append_to_docs(block: str) -> None:
  """Inserts `block` at the end of the Denoiser section (creating it at the end of the file if absent)."""
  os.makedirs(os.path.dirname(DOCS), exist_ok=True)
  text = open(DOCS).read() if os.path.exists(DOCS) else "# Benchmarks\n"
  lines = text.rstrip("\n").split("\n")
  if SECTION not in lines:
    lines += ["", SECTION, ""]
  start = lines.index(SECTION)
  end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
  lines[end:end] = [""] + block.rstrip("\n").split("\n") + [""]
  open(DOCS, "w").write("\n".join(lines).rstrip("\n") + "\n")
  print(f"appended to {os.path.normpath(DOCS)} ({SECTION})")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--views", type=int, default=1)
  ap.add_argument("--latent", type=int, default=32, help="latent side (64 = 512x512 images)")
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--parts", default="eps,decode,vjp")
  ap.add_argument("--view-chunk", type=int, default=8)
  ap.add_argument("--decode-chunk", type=int, default=4)
  ap.add_argument("--torch", choices=["auto", "on", "off"], default="auto",
                  help="diffusers baseline: auto = only when CUDA is available")
  ap.add_argument("--no-append", action="store_true")
  args = ap.parse_args()
  parts = args.parts.split(",")
  rows = []
  for dt in args.dtypes.split(","):
    rows += bench_jax(dt, args.views, args.latent, args.reps, args.view_chunk, args.decode_chunk, parts)
    print(rows[-1])
  use_torch = args.torch == "on"
  if args.torch == "auto":
    try:
      import torch
      use_torch = torch.cuda.is_available()
    except ImportError:
      use_torch = False
  if use_torch:
    rows += bench_torch(args.views, args.latent, args.reps, parts)
  cmd = "python -m experiments.bench_denoiser " + " ".join(
      a for a in os.sys.argv[1:] if a != "--no-append")
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  out = [f"### {date}: V={args.views}, {args.latent}x{args.latent} latents ({8 * args.latent}px), "
         f"SD-1.5-sized random weights", "",
         f"Command: `{cmd.strip()}`  ", f"Machine: {machine()}; jax {jax.__version__}", "",
         "| impl | dtype | call | compile+first (s) | median (s) |", "|---|---|---|---|---|"]
  out += [f"| {impl} | {dt} | {name} | {first:.2f} | {med:.3f} |" for impl, dt, name, first, med in rows]
  block = "\n".join(out)
  print(block)
  if not args.no_append:
    append_to_docs(block)


if __name__ == "__main__":
  main()
