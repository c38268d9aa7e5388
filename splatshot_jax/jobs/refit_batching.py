"""What does batching the refit do to SplatShot? The measurement behind `configs/refit_batching.py`.

The feedback ablation's setup (`splatshot_jax.jobs.ablation`: K synthetic heads, the exact analytic prior, the mean-palette
template), sampled with the 3D feedback on and the refit drawing B views per iteration (`FitConfig.views_per_iter`)
at equal views seen (`equal_views_seen`: ceil(n / B) iterations), under either learning-rate rule ("none", or gsplat's
"sqrt": every LR x sqrt(B)). Each run is scored as the feedback ablation scores it (`ablation.consistency`: PSNR of
a 3DGS fitted to the final views, and of its renders at held-out cameras against the closest subject), and the refit
alone is timed at the run's per-step lengths (compiled, median of repeats): the wall time the batching is meant to cut.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from splatshot_jax.jobs import ablation
from splatshot_jax import guidance, sampler
from splatshot_jax import fit as fit_lib
from splatshot_jax.diffusion import ddim

LR_RULES = fit_lib.LR_BATCH_SCALINGS


def variants(batch_sizes, lr_rules) -> list[tuple[int, str]]:
  """(B, rule) pairs to run; B = 1 once (both rules are the same fit there), as "none"."""
  out = []
  for b in batch_sizes:
    for rule in (("none",) if b == 1 else lr_rules):
      if rule not in LR_RULES:
        raise ValueError(f"config.lr_rules: {rule!r} unknown; expected a subset of {LR_RULES}")
      out.append((int(b), rule))
  return out


def refit_seconds(scene: guidance.Scene3D, template, lengths, repeat: int = 3) -> float:
  """Wall time of the refits of one run: sum over `lengths` (the per-step iteration counts) of the compiled refit's
  median time, on the template views with uniform weights (the time does not depend on the pixel values)."""
  refit = jax.jit(scene.refit)
  w = jnp.full((template.images.shape[0],), 1.0 / template.images.shape[0])
  args = (template.gaussians, template.cameras, jnp.asarray(template.images), w, jax.random.key(0))
  total = 0.0
  for n in sorted(set(lengths)):
    jax.block_until_ready(refit(*args, jnp.int32(n)))  # compile (once: the length is traced) and warm up
    times = []
    for _ in range(repeat):
      t = time.perf_counter()
      jax.block_until_ready(refit(*args, jnp.int32(n)))
      times.append(time.perf_counter() - t)
    total += float(np.median(times)) * list(lengths).count(n)
  return total


def run_variant(s, setup: ablation.AblationSetup, scfg: sampler.SamplerConfig, schedule, batch: int, rule: str,
                seed: int, *, time_repeat: int = 3) -> dict:
  """One SplatShot run (feedback on, SDI off) with B = batch views per refit iteration, scored and timed."""
  fit_cfg = fit_lib.FitConfig(views_per_iter=batch, lr_batch_scaling=rule, equal_views_seen=True)
  scene = guidance.gaussian_scene(fit_cfg)
  cfg = dataclasses.replace(scfg, guidance=dataclasses.replace(scfg.guidance, feedback=True, sdi=False))
  t0 = time.perf_counter()
  res = sampler.run_splatshot(s.prior, s.template, s.cond, cfg, jax.random.key(seed), scene=scene,
                              schedule=schedule)
  run_s = time.perf_counter() - t0
  score = ablation.consistency(res.final_images, s.base, s.cameras, s.heldout, s.heldout_images,
                               setup.consistency_iters, jax.random.key(seed + 1))
  steps = len(res.timesteps)
  lengths = [cfg.guidance.refit_iters_first] + [cfg.guidance.refit_iters] * (steps - 1)
  iters = [int(fit_lib.num_iterations(fit_cfg, n)) for n in lengths]
  return {"views_per_iter": batch, "lr_rule": rule, "seed": seed, "fit_psnr_db": score["fit_psnr"],
          "heldout_psnr_db": score["heldout_psnr"], "refit_iterations": int(sum(iters)),
          "views_seen": int(sum(iters)) * batch, "refit_seconds": refit_seconds(scene, s.template, lengths,
                                                                                  time_repeat),
          "run_seconds_incl_compile": run_s,
          "subject_per_view": [int(i) for i in ablation.nearest_subject(res.final_images, s.images)]}


def table(rows: list[dict]) -> list[dict]:
  """Mean over seeds per (B, rule), with the differences to B = 1 and the refit-time speed-up."""
  keys = sorted({(r["views_per_iter"], r["lr_rule"]) for r in rows})
  out = []
  for b, rule in keys:
    sel = [r for r in rows if (r["views_per_iter"], r["lr_rule"]) == (b, rule)]
    out.append({"views_per_iter": b, "lr_rule": rule, "seeds": sorted(r["seed"] for r in sel),
                "fit_psnr_db": float(np.mean([r["fit_psnr_db"] for r in sel])),
                "heldout_psnr_db": float(np.mean([r["heldout_psnr_db"] for r in sel])),
                "refit_seconds": float(np.mean([r["refit_seconds"] for r in sel])),
                "refit_iterations": sel[0]["refit_iterations"]})
  base = [t for t in out if t["views_per_iter"] == 1]
  for t in out:
    if base:
      t["fit_delta_db"] = t["fit_psnr_db"] - base[0]["fit_psnr_db"]
      t["heldout_delta_db"] = t["heldout_psnr_db"] - base[0]["heldout_psnr_db"]
      t["refit_speedup"] = base[0]["refit_seconds"] / t["refit_seconds"]
  return out


def best_within(summary: list[dict], tolerance_db: float = 0.3) -> dict | None:
  """The fastest B > 1 within tolerance_db of B = 1 on both PSNRs (None: no such variant)."""
  ok = [t for t in summary if t["views_per_iter"] > 1 and t.get("fit_delta_db", -1e9) >= -tolerance_db
        and t.get("heldout_delta_db", -1e9) >= -tolerance_db]
  return max(ok, key=lambda t: t["refit_speedup"]) if ok else None


def run_all(setup: ablation.AblationSetup, scfg: sampler.SamplerConfig, batch_sizes, lr_rules, seeds, *,
            time_repeat: int = 3, on_row=None) -> list[dict]:
  """Every (seed, B, rule), seed-major (a cut-short run still has whole seeds). on_row(row) after each."""
  schedule = ddim.make_schedule(scfg.num_inference_steps)
  s = ablation.make_setup(setup, schedule)
  todo = [(seed, b, rule) for seed in seeds for b, rule in variants(batch_sizes, lr_rules)]
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  rows = []
  for seed, b, rule in tqdm(todo, desc="refit batching", unit="run"):
    rows.append(run_variant(s, setup, scfg, schedule, b, rule, int(seed), time_repeat=time_repeat))
    if on_row is not None:
      on_row(rows[-1])
  return rows


def figure(rows: list[dict], path) -> np.ndarray:
  """Three panels over B (fit PSNR, held-out PSNR, refit seconds per avatar): one line per LR rule through the
  means over seeds, seeds as dots. Written atomically; returns the (H, W, 3) uint8 image."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  from splatshot_jax.io import images as image_io  # pylint: disable=import-outside-toplevel

  panels = (("fit PSNR (dB)", "fit_psnr_db"), ("held-out PSNR (dB)", "heldout_psnr_db"),
            ("refit s / avatar", "refit_seconds"))
  colors = {"none": (40, 110, 200), "sqrt": (220, 100, 30)}
  bs = sorted({r["views_per_iter"] for r in rows})
  pw, ph, m = 300, 240, 44
  im = Image.new("RGB", (pw * len(panels), ph + 30), "white")
  d = ImageDraw.Draw(im)
  for pi, (title, key) in enumerate(panels):
    x0 = pi * pw
    vals = [r[key] for r in rows]
    lo, hi = min(vals), max(vals)
    pad = 0.1 * (hi - lo) + 1e-3
    lo, hi = (0.0 if key == "refit_seconds" else lo - pad), hi + pad
    X = lambda b: x0 + m + (bs.index(b) + 0.5) * (pw - m - 10) / len(bs)
    Y = lambda v: 20 + (ph - 40) * (1 - (v - lo) / (hi - lo))
    d.text((x0 + m, 2), title, fill="black")
    d.line([(x0 + m, 20), (x0 + m, ph - 20), (x0 + pw - 10, ph - 20)], fill="black")
    for k in range(5):
      v = lo + k * (hi - lo) / 4
      d.text((x0 + 2, Y(v) - 6), f"{v:.1f}", fill="black")
      d.line([(x0 + m - 3, Y(v)), (x0 + m, Y(v))], fill="black")
    for b in bs:
      d.text((X(b) - 8, ph - 16), f"B={b}", fill="black")
    for rule, col in colors.items():
      pts = []
      for b in bs:
        sel = [r[key] for r in rows if r["views_per_iter"] == b and (r["lr_rule"] == rule or b == 1)]
        if not sel:
          continue
        off = 4 if rule == "sqrt" else -4
        for v in sel:
          d.ellipse([X(b) + off - 2, Y(v) - 2, X(b) + off + 2, Y(v) + 2], fill=col)
        pts.append((X(b) + off, Y(float(np.mean(sel)))))
      if len(pts) > 1:
        d.line(pts, fill=col, width=2)
  for i, (rule, col) in enumerate(colors.items()):
    d.rectangle([10 + 150 * i, ph + 10, 20 + 150 * i, ph + 20], fill=col)
    d.text((24 + 150 * i, ph + 9), f"LR rule {rule!r}", fill="black")
  d.text((320, ph + 9), "equal views seen; lines: mean over seeds, dots: seeds", fill="black")
  out = np.asarray(im)
  image_io.save_image(path, out)
  return out
