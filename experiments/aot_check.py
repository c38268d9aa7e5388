"""Will a paper-settings run fit this accelerator? XLA's compiled memory for a GPU or TPU that is not present.

  # in an environment with the plugins (pip install 'splatshot_jax[aot]'; keep them out of a CPU-only one):
  JAX_PLATFORMS=cpu TPU_SKIP_MDS_QUERY=1 python -m experiments.aot_check --target=v5e
  python -m experiments.aot_check --target=h100 --dtype=fp16 --gaussians=300000 --part=eps,decode_vjp
  python -m experiments.aot_check --target=h100 --chunks=8x4,4x2 --part=step
  python -m experiments.aot_check --target=h100 --host-branches --score-budget=0   # main's choices, for comparison

Lowers and compiles, for the named target (`splatshot_jax.device.targets`: vendors' published figures), the
SplatShot step at preset settings on abstract weights (nothing is allocated, nothing runs) and its parts: eps (UNet +
2 ControlNets + IP-Adapter, CFG, all views in view_chunk chunks), decode and decode-VJP (all views in decode_chunk
chunks), the 48-view renders (confidence weights + photometric-loss gradient), one refit (traced length) and the
whole step. Prints per part XLA's memory analysis (arguments, outputs, temporaries, peak), whether it fits the chip,
the compile time, and the 10 largest buffers of the optimized program with the JAX op that makes them.

These are XLA's compiled figures (its buffer assignment for that device), not measurements: the CUDA context,
cuDNN workspaces, CUB sort scratch and allocator fragmentation come on top on a GPU. JAX_PLATFORMS=cpu is set here
(the CUDA plugin registers its compile-only topology only then). Compile one target at a time: the whole step takes
minutes and several GB of host memory.
"""

from __future__ import annotations

import argparse
import os
import re
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
# libtpu holds a lockfile for one process per host; compile-only use touches no chip, so several may run.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# Both need a device (Triton GEMM autotuning, the CUB sort probe); without them the GPU compile is deviceless.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_gpu_enable_triton_gemm=false --xla_gpu_enable_cub_radix_sort=false").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from experiments import bench_sampler  # noqa: E402
from splatshot_jax import guidance  # noqa: E402
from splatshot_jax.device import platform, targets  # noqa: E402
from splatshot_jax.diffusion import layers  # noqa: E402
from splatshot_jax.errors import UserError  # noqa: E402

PARTS = ("eps", "decode", "decode_vjp", "render", "refit", "step")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8}
_SKIP_OPS = {"parameter", "get-tuple-element", "bitcast", "tuple", "constant"}
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def part_functions(a) -> dict:
  """{part: (fn, args)} on the abstract inputs a (`bench_sampler.abstract_step_inputs`)."""
  t = jax.ShapeDtypeStruct((), jnp.int32)
  views = a.images.shape[0]
  z = a.state.z
  weights = jax.ShapeDtypeStruct((views,), jnp.float32)

  def decode_vjp(prior, x0, ct):
    return jax.vjp(prior.decode, x0)[1](ct)[0]

  def render(model, cams, images):
    # As the step: confidence weights of the current model's renders, then the discrepancy's image gradient.
    w = guidance.confidence_weights(a.scene.render(model, cams), images, a.cfg.confidence_temperature)
    renders = a.scene.render(model, cams)
    grad = jax.grad(lambda imgs: jnp.sum(jax.vmap(guidance.default_photometric_loss)(renders, imgs)))(images)
    return w, grad

  return {
      "eps": (lambda prior, zz, tt, c: prior.eps(zz, tt, c), (a.prior, z, t, a.cond)),
      "decode": (lambda prior, x0: prior.decode(x0), (a.prior, z)),
      "decode_vjp": (decode_vjp, (a.prior, z, a.images)),
      "render": (render, (a.state.model, a.cameras, a.images)),
      "refit": (lambda g, c, im, w, k, n: a.scene.refit(g, c, im, w, k, n),
                (a.state.model, a.cameras, a.images, weights, a.state.rng, t)),
  }


def on_mesh(tree, mesh: Mesh):
  """Every array leaf of tree as a ShapeDtypeStruct placed (replicated) on the target mesh."""
  sharding = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def largest_buffers(hlo_text: str, top: int = 10) -> list[tuple[int, str, str, str]]:
  """The `top` largest array values of an optimized HLO module: (bytes, shape, HLO op, JAX op name).

  Candidates for the temporaries (XLA's buffer assignment may share or alias some of them); the op name is the JAX
  source op from the instruction's metadata, which says which layer made the buffer.
  """
  found = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m or m.group(4) in _SKIP_OPS or m.group(2) not in _BYTES:
      continue
    dims = [int(d) for d in m.group(3).split(",") if d]
    size = int(np.prod(dims, dtype=np.int64)) * _BYTES[m.group(2)]
    op = _OP_NAME.search(line)
    name = op.group(1) if op else m.group(1)
    key = (size, name)
    if key not in found:
      found[key] = (size, f"{m.group(2)}[{m.group(3)}]", m.group(4), name)
  return sorted(found.values(), key=lambda r: -r[0])[:top]


def check_part(name: str, fn, args, mesh: Mesh, target: targets.Target, top: int) -> dict:
  """Lowers + compiles fn(*args) for the mesh's devices; prints its table; returns the memory figures."""
  gib = lambda b: f"{b / 2**30:.2f}"
  t0 = time.perf_counter()
  try:
    compiled = jax.jit(fn).lower(*on_mesh(args, mesh)).compile()
  except Exception as e:  # XLA refuses a program that does not fit: its message is the answer
    msg = str(e).splitlines()[0][:400]
    print(f"\n### {name}: does not compile ({time.perf_counter() - t0:.0f} s)\n{msg}", flush=True)
    return dict(part=name, error=msg)
  sec = time.perf_counter() - t0
  m = bench_sampler.compiled_memory(compiled)
  text = compiled.as_text()
  m["fused_attention"] = text.count('custom_call_target="__cudnn$fmha')
  fits = "yes" if m["peak"] <= target.memory_bytes else "NO"
  print(f"\n### {name}\n| peak GiB | temporaries GiB | arguments GiB | outputs GiB | fits {target.name} "
        f"({gib(target.memory_bytes)} GiB) | cuDNN fused attention calls | compile s |\n|---:|---:|---:|---:|---|---:|---:|")
  print(f"| {gib(m['peak'])} | {gib(m['temporaries'])} | {gib(m['arguments'])} | {gib(m['outputs'])} | {fits} | "
        f"{m['fused_attention']} | {sec:.0f} |")
  print("\n| largest buffers MiB | shape | HLO op | JAX op |\n|---:|---|---|---|")
  for size, shape, hlo_op, op in largest_buffers(text, top):
    print(f"| {size / 2**20:.0f} | {shape} | {hlo_op} | `{op[-110:]}` |")
  print(flush=True)
  return dict(part=name, compile_s=sec, **m)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--target", required=True, help=f"one of {', '.join(targets.TARGETS)}")
  ap.add_argument("--preset", default="sd15", choices=sorted(bench_sampler.PRESETS))
  ap.add_argument("--gaussians", type=int, default=None, help="Gaussians of the model (preset: 100000)")
  ap.add_argument("--views", type=int, default=None)
  ap.add_argument("--chunks", default=None, help="view_chunk x decode_chunk settings, e.g. 8x4,4x2 (preset's)")
  ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
  ap.add_argument("--part", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
  ap.add_argument("--score-budget", type=int, default=None,
                  help="bytes of attention scores per query chunk on the XLA path (0: unchunked)")
  ap.add_argument("--host-branches", action="store_true",
                  help="let the host (CPU) pick the platform-dependent paths, as main did before issue 19")
  ap.add_argument("--top", type=int, default=10, help="largest buffers listed per part")
  args = ap.parse_args(argv)

  target = targets.get(args.target)
  parts = [p for p in args.part.split(",") if p]
  bad = [p for p in parts if p not in PARTS]
  if bad:
    raise UserError(f"--part={args.part}: unknown {bad}; expected some of {PARTS}")
  p = dict(bench_sampler.PRESETS[args.preset], dtype=DTYPES[args.dtype])
  if args.gaussians:
    p["gaussians"] = args.gaussians
  if args.views:
    p["views"] = args.views
  chunks = ([tuple(int(v) for v in c.split("x")) for c in args.chunks.split(",")] if args.chunks
            else [(p["view_chunk"], p["decode_chunk"])])
  if args.score_budget is not None:
    layers.ATTENTION_SCORE_BUDGET = args.score_budget if args.score_budget > 0 else 2**62

  devices = targets.topology_devices(target)
  mesh = Mesh(np.array(devices[:1]), ("views",))
  branches = platform.current() if args.host_branches else platform.platform_of(mesh)
  print(f"# aot_check --target={target.name}: {target.description}; compile-only device "
        f"{devices[0].device_kind or devices[0].platform}; code paths for {branches}\n"
        f"preset {args.preset}: {p['views']} views {p['width']}x{p['height']}, {p['dtype']}, {p['gaussians']} "
        f"Gaussians, attention score budget {layers.ATTENTION_SCORE_BUDGET / 2**20:.0f} MiB per chunk; "
        f"jax {jax.__version__}. XLA's compiled memory figures, not a measurement on a device.")
  results = []
  for vc, dc in chunks:
    print(f"\n## view_chunk {vc}, decode_chunk {dc}")
    a = bench_sampler.abstract_step_inputs(p, vc, dc)
    fns = part_functions(a)
    with platform.compiling_for(branches):
      for name in parts:
        if name == "step":
          fn = lambda state, t, refit_iters, kw: guidance.splatshot_step(
              state, t, scene=a.scene, cfg=a.cfg, refit_iters=refit_iters, **kw)
          kw = dict(prior=a.prior, schedule=a.schedule, cameras=a.cameras, cond_photo=a.cond, cond_template=a.cond)
          t = jax.ShapeDtypeStruct((), jnp.int32)
          res = check_part(name, fn, (a.state, t, t, kw), mesh, target, args.top)
        else:
          res = check_part(name, *fns[name], mesh, target, args.top)
        results.append(dict(res, view_chunk=vc, decode_chunk=dc))
  print("\n## summary (XLA's compiled figures)\n| view_chunk x decode_chunk | part | peak GiB | temporaries GiB |"
        "\n|---|---|---:|---:|")
  for r in results:
    if "error" in r:
      print(f"| {r['view_chunk']}x{r['decode_chunk']} | {r['part']} | does not compile | |")
    else:
      print(f"| {r['view_chunk']}x{r['decode_chunk']} | {r['part']} | {r['peak'] / 2**30:.2f} | "
            f"{r['temporaries'] / 2**30:.2f} |")
  if any("error" in r or r["peak"] > target.memory_bytes for r in results):
    print(f"\nSomething does not fit {target.name}. Levers that change no result: a smaller decode_chunk (the "
          "decode-VJP's full-resolution activations scale with it; a v5e needs 2 at paper settings), a smaller "
          "view_chunk (eps), e.g. --chunks=8x2,4x2; in a run: --config.sd.decode_chunk / --config.sd.view_chunk.")
  return results


if __name__ == "__main__":
  main()
