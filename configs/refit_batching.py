"""Refit batching ablation: B views per refit iteration at equal views seen, both LR rules, analytic prior, CPU.

  python -m experiments.run --config=configs/refit_batching.py
  python -m experiments.run --config=configs/refit_batching.py:smoke     # tiny, a few minutes on a CPU

The feedback ablation's setup (configs/feedback_ablation.py: 3 synthetic heads, 8 views of 32 px, the exact
analytic prior, paper schedule, refit 60/30 iterations), SplatShot with feedback for every B in batch_sizes and
LR rule, 3 seeds. Writes <out_dir>/refit_batching.json and the figure; the table goes to docs/benchmarks.md
("Refit batching"). Logic: splatshot_jax/jobs/refit_batching.py.
"""

from configs import feedback_ablation


def get_config(arg=None):
  config = feedback_ablation.get_config("smoke" if arg == "smoke" else None)
  config.job = "refit_batching"
  config.batch_sizes = (1, 2, 4, 8)
  config.lr_rules = ("none", "sqrt")  # FitConfig.lr_batch_scaling
  config.time_repeat = 3  # median of this many timed refits per length
  config.out_dir = "outputs/refit_batching"
  config.figure = "docs/figures/refit_batching.png"
  if arg == "smoke":
    config.batch_sizes = (1, 2, 4)  # smoke has 4 views
    config.time_repeat = 1
    config.out_dir = "outputs/refit_batching_smoke"
    config.figure = "outputs/refit_batching_smoke/refit_batching.png"
  elif arg not in (None, ""):
    raise ValueError(f"configs/refit_batching.py: unknown arg {arg!r}; expected '' or 'smoke'")
  return config
