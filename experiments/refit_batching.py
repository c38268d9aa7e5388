"""The refit batching ablation: B views per refit iteration vs the paper's one, at equal views seen (CPU-sized).

  python -m experiments.run --config=configs/refit_batching.py [--config.seeds='(0,)']

For each seed, B and LR rule, samples the views with the 3D feedback, fits a 3DGS to the final views (fit and
held-out PSNR, as the feedback ablation measures) and times the refit; prints a table, writes
<out_dir>/refit_batching.json (rows appended as they finish) and the figure. Logic: `splatshot_jax.jobs.refit_batching`.
"""

from __future__ import annotations

from splatshot_jax.jobs import ablation, refit_batching
from splatshot_jax import sampler
from splatshot_jax.jobs.outputs import write_json


def run(config) -> dict:
  setup = ablation.AblationSetup(**config.setup.to_dict())
  scfg = sampler.sampler_config(config)
  refit_batching.variants(config.batch_sizes, config.lr_rules)  # bad rules fail before any work
  rows = []
  path = f"{config.out_dir}/refit_batching.json"

  def keep(row):
    rows.append(row)
    print(f"seed {row['seed']} B={row['views_per_iter']} {row['lr_rule']}: fit {row['fit_psnr_db']:.2f} dB, "
          f"held-out {row['heldout_psnr_db']:.2f} dB, refit {row['refit_seconds']:.2f} s "
          f"({row['refit_iterations']} iterations)", flush=True)
    write_json(path, {"rows": rows, "config": config.to_dict()})

  refit_batching.run_all(setup, scfg, config.batch_sizes, config.lr_rules, config.seeds,
                         time_repeat=config.time_repeat, on_row=keep)
  summary = refit_batching.table(rows)
  print("| B | LR rule | fit PSNR (dB) | held-out PSNR (dB) | refit s / avatar | refit iterations | speed-up |")
  print("|---:|---|---:|---:|---:|---:|---:|")
  for t in summary:
    print(f"| {t['views_per_iter']} | {t['lr_rule']} | {t['fit_psnr_db']:.2f} ({t.get('fit_delta_db', 0):+.2f}) | "
          f"{t['heldout_psnr_db']:.2f} ({t.get('heldout_delta_db', 0):+.2f}) | {t['refit_seconds']:.2f} | "
          f"{t['refit_iterations']} | {t.get('refit_speedup', 1):.2f}x |")
  best = refit_batching.best_within(summary)
  print("best B > 1 within 0.3 dB of B = 1 on both:", best and f"B={best['views_per_iter']} {best['lr_rule']}")
  refit_batching.figure(rows, config.figure)
  report = {"rows": rows, "summary": summary, "best_within_0.3db": best, "config": config.to_dict()}
  write_json(path, report)
  print(f"wrote {config.figure} and {path}")
  return report


if __name__ == "__main__":
  from experiments import run as _run
  _run.launch("configs/refit_batching.py")
