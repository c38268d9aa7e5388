"""Time per avatar of the SplatShot run, split into UNet, VAE decode+VJP, refit and other.

  python -m experiments.bench_sampler                      # CPU: tiny random SD-shaped prior, 4 views, 32 px
  python -m experiments.bench_sampler --preset=sd15        # GPU: SD-1.5-sized random weights, paper settings
  python -m experiments.bench_sampler --views-per-iter=4    # the refit draws 4 views per iteration (equal views seen)
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m experiments.bench_sampler --devices=1,4
  python -m experiments.bench_sampler --preset=sd15 --compile-only --chunks=8x4,4x2   # XLA memory, no run

Random weights time exactly like real ones. The components are timed as separate jitted calls with the shapes the
step uses (eps twice per step with SDI; decode + its VJP once; the refit at its per-step length), then the whole run
is timed end to end (compiled); "other" = run - the sum (DDIM, confidence weights, renders, loss, host transfers).
Prints a markdown table for docs/benchmarks.md ("Sampler"), with the number of sequential refit iterations per avatar
(the part no hardware parallelises). `--devices` times the whole run per device count (views split over a mesh,
`splatshot_jax.device.sharding`); `--compile-only` lowers and compiles the step on abstract weights (no weights are made,
nothing runs) and prints XLA's memory analysis per view_chunk x decode_chunk.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from splatshot_jax import fit as fit_lib
from splatshot_jax import guidance, sampler, synthetic
from splatshot_jax.device import sharding
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


def refit_iterations(p: dict, steps: int, fit_cfg: fit_lib.FitConfig) -> int:
  """Sequential refit iterations of one avatar: the first step's plus (steps - 1) later ones (after /B)."""
  return int(fit_lib.num_iterations(fit_cfg, p["refit_first"]) + (steps - 1) * fit_lib.num_iterations(fit_cfg, p["refit"]))


def abstract_step_inputs(p: dict, view_chunk: int, decode_chunk: int) -> types.SimpleNamespace:
  """Everything `splatshot_step` takes at preset p, as `jax.ShapeDtypeStruct`s where it is an array (no weights,
  no renders are made): state, prior, cameras, cond, scene, schedule, cfg, images (V, H, W, 3)."""
  abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  prior = presets.abstract_stable_diffusion(p["model"], dtype=p["dtype"], view_chunk=view_chunk,
                                            decode_chunk=decode_chunk)
  cond = abstract(jax.eval_shape(lambda: random_cond(p, jax.random.key(1))))
  g, _ = synthetic.head_gaussians(p["gaussians"], sh_degree=3)
  cams = synthetic.head_rig(p["views"], width=p["width"], height=p["height"])
  factor = prior.spec.vae_factor
  zs = jax.ShapeDtypeStruct((p["views"], p["height"] // factor, p["width"] // factor, 4), jnp.float32)
  scene = guidance.gaussian_scene()
  # The official run carries the refit's Adam state across steps (GuidanceConfig.carry_adam): part of the state.
  state = guidance.SplatShotState(z=zs, eps_gt=zs, model=abstract(g), rng=jax.eval_shape(lambda: jax.random.key(0)),
                                  refit_state=jax.eval_shape(scene.init_refit_state, g),
                                  refit_iter=jax.ShapeDtypeStruct((), jnp.int32))
  return types.SimpleNamespace(
      state=state, prior=prior, cameras=abstract(cams), cond=cond, scene=scene,
      schedule=abstract(ddim.make_schedule(25)), cfg=guidance.GuidanceConfig(),
      images=jax.ShapeDtypeStruct((p["views"], p["height"], p["width"], 3), jnp.float32))


def compiled_memory(compiled) -> dict:
  """XLA's memory analysis of a compiled executable in bytes: arguments, outputs, temporaries, peak."""
  m = compiled.memory_analysis()
  peak = getattr(m, "peak_memory_in_bytes", 0) or (m.argument_size_in_bytes + m.output_size_in_bytes
                                                   + m.temp_size_in_bytes - m.alias_size_in_bytes)
  return dict(arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes, temporaries=m.temp_size_in_bytes,
              peak=peak)


def lower_step(a: types.SimpleNamespace):
  """`splatshot_step` lowered on the abstract inputs a (`abstract_step_inputs`)."""
  return guidance.splatshot_step.lower(a.state, jax.ShapeDtypeStruct((), jnp.int32), prior=a.prior,
                                       schedule=a.schedule, cameras=a.cameras, cond_photo=a.cond,
                                       cond_template=a.cond, scene=a.scene, cfg=a.cfg,
                                       refit_iters=jax.ShapeDtypeStruct((), jnp.int32))


def compile_only(p: dict, chunks: list[tuple[int, int]]) -> None:
  """Lowers + compiles `splatshot_step` at preset p on abstract SD weights and prints XLA's memory analysis."""
  gib = lambda b: f"{b / 2**30:.2f}"
  print(f"compile only, preset {p['model']}: {p['views']} views {p['width']}x{p['height']}, {p['dtype']}, "
        f"{p['gaussians']} Gaussians, device {jax.devices()[0].device_kind}")
  print("| view_chunk | decode_chunk | arguments GiB | outputs GiB | temporaries GiB | peak GiB | compile s |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for vc, dc in chunks:
    t0 = time.perf_counter()
    m = compiled_memory(lower_step(abstract_step_inputs(p, vc, dc)).compile())
    sec = time.perf_counter() - t0
    print(f"| {vc} | {dc} | {gib(m['arguments'])} | {gib(m['outputs'])} | {gib(m['temporaries'])} | "
          f"{gib(m['peak'])} | {sec:.0f} |", flush=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
  ap.add_argument("--views", type=int, default=None)
  ap.add_argument("--views-per-iter", type=int, default=1, help="refit views per iteration B (equal views seen)")
  ap.add_argument("--lr-batch-scaling", default="none", choices=fit_lib.LR_BATCH_SCALINGS)
  ap.add_argument("--devices", default="1", help="comma-separated device counts to time the run on, e.g. 1,4")
  ap.add_argument("--compile-only", action="store_true", help="lower + compile the step, print memory, no run")
  ap.add_argument("--chunks", default="8x4", help="view_chunk x decode_chunk settings for --compile-only")
  args = ap.parse_args()
  p = dict(PRESETS[args.preset])
  if args.views:
    p["views"] = args.views
  if args.compile_only:
    compile_only(p, [tuple(int(v) for v in c.split("x")) for c in args.chunks.split(",")])
    return
  fit_cfg = fit_lib.FitConfig(views_per_iter=args.views_per_iter, lr_batch_scaling=args.lr_batch_scaling,
                              equal_views_seen=True)
  key = jax.random.key(0)
  prior = random_sd_prior(p, key)
  cond_photo, cond_tmpl = random_cond(p, jax.random.key(1)), random_cond(p, jax.random.key(2))
  g, _ = synthetic.head_gaussians(p["gaussians"], sh_degree=3)
  cams = synthetic.head_rig(p["views"], width=p["width"], height=p["height"])
  scene = guidance.gaussian_scene(fit_cfg)
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
  refit = jax.jit(scene.refit)  # the length is traced: one compile for both
  refit_first = _time(refit, g, cams, images, w, jax.random.key(4), jnp.int32(p["refit_first"]), repeat=1)
  refit_later = _time(refit, g, cams, images, w, jax.random.key(4), jnp.int32(p["refit"]), repeat=1)

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
  iters = refit_iterations(p, steps, fit_cfg)
  print(f"\nSplatShot run, preset {args.preset}: {p['views']} views {p['width']}x{p['height']}, {steps} steps, "
        f"refit {p['refit_first']}/{p['refit']} its, {p['gaussians']} Gaussians, {p['dtype']}, "
        f"device {dev.device_kind} ({dev.platform}), refit views per iteration {args.views_per_iter} "
        f"({args.lr_batch_scaling})")
  print("| part | s per avatar | share |\n| --- | ---: | ---: |")
  for name, sec in parts.items():
    extra = f" ({iters} sequential iterations)" if name == "refit" else ""
    print(f"| {name}{extra} | {sec:.2f} | {100 * sec / total:.0f}% |")
  print(f"| **total (compiled)** | **{total:.2f}** | |")
  print(f"| first run (incl. compile) | {first:.2f} | |")
  counts = [int(c) for c in args.devices.split(",")]
  if counts != [1]:
    print("\n| devices | run s (compiled) | first run s |\n| ---: | ---: | ---: |")
    for n in counts:
      mesh = sharding.make_mesh(n)
      sc = guidance.gaussian_scene(dataclasses.replace(fit_cfg, mesh=mesh))
      pr = sharding.shard_prior(prior, mesh)
      cp, ct = sharding.put_views(cond_photo, mesh), sharding.put_views(cond_tmpl, mesh)
      go = lambda: sampler.run_splatshot(pr, template, cp, scfg, jax.random.key(5), scene=sc, template_cond=ct,
                                         schedule=schedule)
      t0 = time.perf_counter()
      go()
      t1 = time.perf_counter()
      go()
      print(f"| {n} | {time.perf_counter() - t1:.2f} | {t1 - t0:.2f} |")


if __name__ == "__main__":
  main()
