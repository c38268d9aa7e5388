"""Rasterizer benchmark: forward, forward+backward and refit-iteration wall time per backend.

  JAX_PLATFORMS=cpu python -m experiments.bench_render                    # full table, appends docs
  JAX_PLATFORMS=cpu python -m experiments.bench_render --sizes 10000 --res 256 --no-append
  JAX_PLATFORMS=cpu python -m experiments.bench_render --glue --sizes 100000 300000 --res 816x560 \
      --repeats 5                                                      # binning / segment_sum
  python -m experiments.bench_render --backend xla triton --sizes 100000 300000 --res 816x560 \
      --refit-iters 20 --dense-max 0 --baseline 0 0 --no-append         # GPU: both compositors

With several --backend values the backends run one after another in the same process (all sizes
of the first, then the next; each row printed when measured), and the rows after the first
backend's report their parity: max |Δrgb| and ‖Δ∂means‖/‖∂means‖ against it. The
refit column is one full refit iteration (render + photometric loss + backward + Adam), timed as
`fit.fit` with --refit-iters iterations in one lax.scan, divided by the iteration count.

Scene: a head-like random shell (ellipsoid surface ± noise, surface-sized Gaussians, mixed
opacities) filling most of the frame of a camera 0.6 m away. Timings are medians over repeats
after one warm-up call (compilation excluded and reported separately).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from splatshot_jax import fit as fit_lib
from splatshot_jax.cameras import Camera
from splatshot_jax.gaussians import Gaussians
from splatshot_jax.render import check_overflow, render, render_dense
from splatshot_jax.render.project import project_gaussians
from splatshot_jax.render.tiles import bin_gaussians, scene_pair_budget, tile_grid

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks.md")


def head_scene(n: int, seed: int = 0) -> Gaussians:
  """n Gaussians on a noisy head-sized ellipsoid shell (metres), SH degree 3."""
  rng = np.random.default_rng(seed)
  d = rng.normal(size=(n, 3))
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  radii = np.array([0.08, 0.11, 0.10])
  means = d * radii * (1 + 0.05 * rng.normal(size=(n, 1)))
  area = 4 * np.pi * 0.1**2
  sigma = 0.6 * np.sqrt(area / n)  # neighbouring splats overlap, as in a fitted surface
  log_scales = np.log(sigma) + 0.5 * rng.normal(size=(n, 3))
  log_scales[:, 2] -= 1.0  # flattish, like surface splats
  return Gaussians(
      means=jnp.asarray(means, jnp.float32),
      log_scales=jnp.asarray(log_scales, jnp.float32),
      quats=jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
      opacity_logits=jnp.asarray(rng.normal(size=(n,)) * 2.0 + 1.0, jnp.float32),
      sh=jnp.asarray(rng.normal(size=(n, 16, 3)) * 0.2, jnp.float32),
  )


def front_camera(width: int, height: int | None = None) -> Camera:
  """Camera 0.6 m in front of the head; 30° field of view across the shorter side."""
  height = width if height is None else height
  viewmat = np.eye(4, dtype=np.float32)
  viewmat[2, 3] = 0.6
  f = min(width, height) / (2 * np.tan(np.deg2rad(30) / 2))  # the head fills ~75% of it
  K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], np.float32)
  return Camera(jnp.asarray(viewmat), jnp.asarray(K), width, height)


def parse_res(text: str) -> tuple[int, int]:
  """"512" -> (512, 512); "816x560" -> (816, 560) as (width, height)."""
  try:
    parts = [int(x) for x in text.lower().split("x")]
  except ValueError:
    parts = []
  if len(parts) not in (1, 2) or min(parts) <= 0:
    raise argparse.ArgumentTypeError(f"--res {text!r}: expected N or WxH (e.g. 512, 816x560)")
  return (parts[0], parts[-1])


def _time(fn, args, repeats):
  """(median wall s, median process-CPU s, first-call wall s incl. compile).

  Process CPU time is reported beside wall time because the benchmark machine is shared: wall
  time inflates with other jobs' load, CPU time (summed over threads) much less.
  """
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  walls, cpus = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
  return statistics.median(walls), statistics.median(cpus), first


def bench_one(n, res, repeats, dense_max, kw, backend="xla", refit_iters=0, ref=None,
              trace_dir=None):
  """One scene, one backend: a row dict (times in s).

  ref: a dict shared by the backends of one scene: the first fills it with its rgb and ∂means,
  later ones report their parity against it (d_rgb, d_grad). trace_dir: also save a profiler
  trace of one refit iteration there (needs refit_iters > 0).
  """
  width, height = res
  g = head_scene(n)
  cam = front_camera(width, height)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(height, width, 3)), jnp.float32)
  bkw = dict(kw, backend=backend)
  # Size the pair budget as the refit does: the frame's need × margin, a power of two (the
  # default 16·N + T is safe but sorts mostly padding).
  probe = render(g, cam, **dict(bkw, pair_budget=64 * n))
  bkw["pair_budget"] = scene_pair_budget(probe.overflow.num_pairs)
  fwd = jax.jit(lambda g: render(g, cam, **bkw).rgb)
  loss = lambda g: jnp.sum(render(g, cam, **bkw).rgb * w)
  fwdbwd = jax.jit(jax.value_and_grad(loss))
  out = render(g, cam, **bkw)
  check_overflow(out)
  row = dict(backend=backend, n=n, res=res, pairs=int(out.overflow.num_pairs),
             longest=int(out.overflow.max_tile_entries))
  row["fwd"], row["fwd_cpu"], row["fwd_first"] = _time(fwd, (g,), repeats)
  row["fwdbwd"], row["fwdbwd_cpu"], row["fwdbwd_first"] = _time(fwdbwd, (g,), repeats)
  rgb, (_, grad) = jax.device_get((out.rgb, fwdbwd(g)))
  if ref is not None and not ref:
    ref.update(rgb=rgb, grad=grad.means)
  elif ref:
    row["d_rgb"] = float(np.max(np.abs(rgb - ref["rgb"])))
    row["d_grad"] = float(np.linalg.norm(grad.means - ref["grad"]) / max(np.linalg.norm(ref["grad"]), 1e-30))
  if refit_iters > 0:
    row["refit"] = _time_refit(g, cam, jnp.clip(out.rgb, 0, 1), bkw, refit_iters, repeats, trace_dir)
  if dense_max > 0 and n * width * height <= dense_max:
    dfwd = jax.jit(lambda g: render_dense(g, cam)["rgb"])
    dbwd = jax.jit(jax.value_and_grad(lambda g: jnp.sum(render_dense(g, cam)["rgb"] * w)))
    row["dense_fwd"], _, _ = _time(dfwd, (g,), max(1, repeats // 2))
    row["dense_fwdbwd"], _, _ = _time(dbwd, (g,), max(1, repeats // 2))
  return row


def _time_refit(g, cam, image, render_kw, iters, repeats, trace_dir=None):
  """Median wall s per refit iteration: `fit.fit` (render + loss + backward + Adam) over one view.

  trace_dir: afterwards, a jax.profiler trace of one more call with a single iteration is saved
  there (its compile happens before the trace starts).
  """
  cams = jax.tree.map(lambda x: x[None], cam)
  kw = tuple((k, v) for k, v in render_kw.items() if k != "backend")
  cfg = fit_lib.FitConfig(num_iters=iters, backend=render_kw["backend"], render_kwargs=kw)
  run = lambda g, cfg=cfg: fit_lib.fit(g, cams, image[None], cfg, rng=jax.random.PRNGKey(0)).losses
  wall, _, _ = _time(run, (g,), repeats)
  if trace_dir:
    one = dataclasses.replace(cfg, num_iters=1)
    jax.block_until_ready(run(g, one))
    opts = jax.profiler.ProfileOptions()
    opts.python_tracer_level = 0  # device and XLA ops only: a small file to bring back
    with jax.profiler.trace(trace_dir, profiler_options=opts):
      jax.block_until_ready(run(g, one))
    print(f"profiler trace of one refit iteration: {trace_dir}", file=sys.stderr, flush=True)
  return wall / iters


def bench_glue(n, res, repeats):
  """The XLA glue around the compositor on one head scene: binning and the per-pair gradient sum.

  Rows (wall s, median after a warm-up), each in the same process:
    bin before: searchsorted expansion, square-only tiles, default budget 16·N + T, tile 16;
    bin after, tile 16 default budget: O(N + P) expansion and ellipse culling alone;
    bin after, tile 16 / 8: O(N + P) expansion, ellipse culling, scene-sized budget;
    segment_sum of (P, 6 + 4) rows, padding ids all N − 1 (before) vs spread (after).
  """
  width, height = res
  g, cam = head_scene(n), front_camera(width, height)
  proj = jax.jit(lambda g: project_gaussians(g, cam))(g)
  args = (proj.means2d, proj.radii, proj.depths)
  rows = []

  def binning(ts, budget, kw):
    f = jax.jit(lambda m, r, d, c, o: bin_gaussians(
        m, r, d, width=width, height=height, tile_size=ts, pair_budget=budget,
        tile_capacity=1 << 20, **kw(c, o)))
    return f, (*args, proj.conics, proj.opacities)

  before = lambda c, o: dict(expansion="searchsorted")
  after = lambda c, o: dict(conics=c, opacities=o)
  variants = (("before", 16, before, "default"), ("after", 16, after, "default"),
              ("after", 16, after, "scene"), ("after", 8, after, "scene"))
  for label, ts, kw, sizing in variants:
    tiles_x, tiles_y = tile_grid(width, height, ts)
    probe = bin_gaussians(*args, width=width, height=height, tile_size=ts, pair_budget=64 * n,
                          tile_capacity=1 << 20)
    need = int(probe.overflow.num_pairs)
    budget = 16 * n + tiles_x * tiles_y if sizing == "default" else scene_pair_budget(need)
    f, fargs = binning(ts, budget, kw)
    lists = f(*fargs)
    listed = int(jnp.sum(lists.tile_count))
    wall, _, _ = _time(f, fargs, repeats)
    rows.append(dict(part=f"bin {label}", ts=ts, budget=budget, pairs=need, listed=listed, s=wall))
    if ts == 8 or (label, sizing) == ("after", "default"):
      continue
    rec = jnp.ones((budget, 10), jnp.float32)
    ids = lists.gauss_ids
    piled = jnp.where(jnp.arange(budget) < listed, ids, n - 1)  # the previous padding
    for name, i in (("segment_sum padding→N−1", piled), ("segment_sum padding spread", ids)):
      if label == "before" and i is ids:
        continue
      h = jax.jit(lambda r, i: jax.ops.segment_sum(r, i, num_segments=n))
      wall, _, _ = _time(h, (rec, i), repeats)
      rows.append(dict(part=name, ts=ts, budget=budget, pairs=need, listed=listed, s=wall))
  return rows


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def append_section(path: str, heading: str, block: str) -> None:
  """Appends `block` at the end of the `heading` section of a markdown file (created if absent).

  Other engineers own other sections of docs/benchmarks.md: insert before the next "## " heading.
  """
  text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
  if heading not in text:
    text = text.rstrip("\n") + f"\n\n{heading}\n"
  start = text.index(heading) + len(heading)
  nxt = text.find("\n## ", start)
  end = len(text) if nxt < 0 else nxt + 1
  text = text[:end].rstrip("\n") + "\n" + block + ("\n" + text[end:] if nxt >= 0 else "")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
  p.add_argument("--res", type=parse_res, nargs="+", default=[(256, 256), (512, 512)],
                 help="N (square) or WxH, e.g. 816x560")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dense-max", type=float, default=2_000 * 128 * 128,
                 help="run the dense baseline when N·H·W ≤ this (its memory is O(N·H·W)); 0: never")
  p.add_argument("--baseline", type=int, nargs=2, default=[2_000, 128], metavar=("N", "RES"),
                 help="an extra small row where the dense renderer fits in memory (0 0: none)")
  p.add_argument("--tile-size", type=int, default=None,
                 help="default: the renderer's per backend (8 on Triton, 16 on XLA)")
  p.add_argument("--chunk", type=int, default=32)
  p.add_argument("--tiles-per-step", type=int, default=8)
  p.add_argument("--backend", nargs="+", default=["xla"],
                 choices=["auto", "xla", "triton", "triton_interpret"],
                 help="compositors to time, each on the same scenes (parity vs the first)")
  p.add_argument("--refit-iters", type=int, default=0,
                 help="also time a refit iteration (fit.fit over this many iterations); 0: skip")
  p.add_argument("--trace", default=None, metavar="DIR",
                 help="save a profiler trace of one refit iteration (first row with a refit) here")
  p.add_argument("--no-append", action="store_true")
  p.add_argument("--glue", action="store_true",
                 help="time only the XLA glue (binning, segment_sum) before/after issue 20; prints")
  args = p.parse_args(argv)
  if args.glue:
    print("| N | W×H | part | tile | pair budget | pairs needed | pairs listed | ms |\n" + "|---" * 8 + "|")
    for res in args.res:
      for n in args.sizes:
        for r in bench_glue(n, res, args.repeats):
          print(f"| {n} | {res[0]}×{res[1]} | {r['part']} | {r['ts']} | {r['budget']} | {r['pairs']} | "
                f"{r['listed']} | {1e3 * r['s']:.1f} |", flush=True)
    return
  kw = dict(tile_size=args.tile_size, chunk=args.chunk, tiles_per_step=args.tiles_per_step)

  header = ("| backend | N | W×H | pairs | longest tile | fwd ms (cpu ms) | fwd+bwd ms (cpu ms) "
            "| refit it ms | compile fwd / fwd+bwd s | max Δrgb / ∂means rel vs first "
            "| dense fwd ms | dense fwd+bwd ms |")
  lines = [header, "|" + "---|" * 12]
  print(header, flush=True)
  rows = [(n, res) for res in args.res for n in args.sizes]
  if args.baseline[0] > 0:
    rows.insert(0, (args.baseline[0], (args.baseline[1], args.baseline[1])))
  # Backends one after another, each row printed as soon as it is measured: a timeout in a later
  # (slower) backend cannot lose an earlier one's rows.
  refs = {}
  trace = args.trace
  for b in args.backend:
    for n, res in rows:
      r = bench_one(n, res, args.repeats, args.dense_max if b == args.backend[0] else 0, kw, b,
                    args.refit_iters, refs.setdefault((n, res), {}), trace)
      trace = None if "refit" in r else trace
      ms = lambda k: f"{1e3 * r[k]:.2f}" if k in r else "–"
      parity = f"{r['d_rgb']:.2g} / {r['d_grad']:.2g}" if "d_rgb" in r else "–"
      line = (f"| {r['backend']} | {n} | {res[0]}×{res[1]} | {r['pairs']} | {r['longest']} | "
              f"{ms('fwd')} ({ms('fwd_cpu')}) | {ms('fwdbwd')} ({ms('fwdbwd_cpu')}) | {ms('refit')} | "
              f"{r['fwd_first'] - r['fwd']:.1f} / {r['fwdbwd_first'] - r['fwdbwd']:.1f} | {parity} | "
              f"{ms('dense_fwd')} | {ms('dense_fwdbwd')} |")
      lines.append(line)
      print(line, flush=True)

  if args.no_append:
    return
  cmd = "python -m experiments.bench_render " + " ".join(sys.argv[1:] if argv is None else argv)
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  dev = jax.devices()[0]
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  machine = (f"{cpu_model()}, {os.cpu_count()} cores visible, shared with other jobs (load "
             f"average {load:.1f} at the end), jax {jax.__version__} on {dev.platform} "
             f"({dev.device_kind})")
  text = [f"\n### Rasterizer — {date}\n", f"Command: `{cmd.strip()}`  ", f"Machine: {machine}  ",
          f"Settings: tile {args.tile_size or 'per backend'}, pair budget = needed pairs × 1.25 rounded up to a power of 2, chunk {args.chunk}, tiles_per_step {args.tiles_per_step}, "
          f"median of {args.repeats} after warm-up; times in milliseconds.\n", *lines, ""]
  append_section(DOCS, "## Rasterizer", "\n".join(text) + "\n")
  print(f"appended to {os.path.normpath(DOCS)}")


if __name__ == "__main__":
  main()
