"""The one entry point: `python -m experiments.run --config=configs/<name>.py [--config.key=value ...]`.

Each config names its job (`config.job`); the job's module in `experiments/` exposes `run(config)`.
With no --config, the default config is the README's install check. Each job module can also be run
directly (`python -m experiments.build_template --config=...`); its default config is its own.
Both set up the persistent compilation cache first (`config.compilation_cache`, `splatshot_jax.compile_cache`).
"""

from __future__ import annotations

import importlib
import sys

from absl import app
from ml_collections import config_flags

from splatshot_jax import compile_cache

DEFAULT_CONFIG = "configs/splatshot_sd15.py:smoke"

JOBS = {
    "fit_multiview": "experiments.fit_multiview",
    "splatshot": "experiments.splatshot",
    "build_template": "experiments.build_template",
    "feedback_ablation": "experiments.feedback_ablation",
    "refit_batching": "experiments.refit_batching",
}


def launch(default_config: str = DEFAULT_CONFIG) -> None:
  """Parses --config (default `default_config`) and runs the job the config names."""
  config_flag = config_flags.DEFINE_config_file("config", default_config, "Path to a config file (and :arg).")

  def main(argv):
    del argv
    config = config_flag.value
    job = config.get("job")
    if job not in JOBS:
      sys.exit(f"config field 'job' is {job!r}; expected one of {sorted(JOBS)}")
    # Every job, before its first compile: reuse what earlier runs compiled ("" turns it off).
    compile_cache.setup(config.get("compilation_cache", "auto"))
    importlib.import_module(JOBS[job]).run(config)

  app.run(main)


if __name__ == "__main__":
  launch()
