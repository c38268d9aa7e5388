"""The feedback ablation: is SplatShot's per-step 3D feedback what makes the views consistent? (CPU-sized.)

  python -m experiments.run --config=configs/feedback_ablation.py [--config.seeds='(0,1,2)']

For each seed, samples the views twice from the same noise (plain DDIM img2img vs SplatShot), fits a 3DGS to each
run's final views and reports PSNR of that fit and at held-out cameras; prints a table, writes
<out_dir>/ablation.json and the README figure (config.figure). The logic lives in `splatshot_jax.jobs.ablation`.
"""

from __future__ import annotations

import time

import numpy as np

from splatshot_jax.jobs import ablation
from splatshot_jax import guidance, sampler
from splatshot_jax.jobs.outputs import write_json


def run(config) -> dict:
  setup = ablation.AblationSetup(**config.setup.to_dict())
  scfg = sampler.sampler_config(config)
  scene = guidance.refit_scene(config.refit.to_dict())  # built once: a static argument of the jitted step
  all_runs, seconds = [], []
  for seed in config.seeds:
    t0 = time.time()
    all_runs.append(ablation.run_ablation(setup, scfg, seed=int(seed), scene=scene))
    seconds.append(time.time() - t0)
  rows = [ablation.summary(r) for r in all_runs]
  print("seed | fit PSNR plain / feedback (dB) | held-out PSNR plain / feedback (dB) | subjects per view")
  for seed, r in zip(config.seeds, rows):
    print(f"{seed:4d} | {r['plain']['fit_psnr_db']:6.2f} / {r['feedback']['fit_psnr_db']:6.2f} | "
          f"{r['plain']['heldout_psnr_db']:6.2f} / {r['feedback']['heldout_psnr_db']:6.2f} | "
          f"{r['plain']['subject_per_view']} -> {r['feedback']['subject_per_view']}")
  gain_fit = float(np.mean([r["gain_fit_db"] for r in rows]))
  gain_held = float(np.mean([r["gain_heldout_db"] for r in rows]))
  print(f"mean gain: fit PSNR {gain_fit:+.2f} dB, held-out PSNR {gain_held:+.2f} dB "
        f"({len(rows)} seeds, {np.mean(seconds):.0f} s per seed)")
  ablation.ablation_figure(all_runs, config.figure)
  report = {"seeds": list(config.seeds), "per_seed": rows, "mean_gain_fit_db": gain_fit,
            "mean_gain_heldout_db": gain_held, "seconds_per_seed": seconds, "config": config.to_dict()}
  write_json(f"{config.out_dir}/ablation.json", report)
  print(f"wrote {config.figure} and {config.out_dir}/ablation.json")
  return report


if __name__ == "__main__":
  from experiments import run as _run
  _run.launch("configs/feedback_ablation.py")
