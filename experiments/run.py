"""The one entry point: `python -m experiments.run --config=configs/<name>.py [--config.key=value ...]`.

Each config names its job (`config.job`); the job's module in `experiments/` exposes `run(config)`.
With no --config, the default config is the README's install check.
"""

from __future__ import annotations

import importlib
import sys

from absl import app, flags
from ml_collections import config_flags

DEFAULT_CONFIG = "configs/splatshot_sd15.py:smoke"

_CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Path to a config file (and :arg).")

JOBS = {
    "fit_multiview": "experiments.fit_multiview",
    "splatshot": "experiments.splatshot",
    "build_template": "experiments.build_template",
    "feedback_ablation": "experiments.feedback_ablation",
}


def main(argv):
  del argv
  config = _CONFIG.value
  job = config.get("job")
  if job not in JOBS:
    sys.exit(f"config field 'job' is {job!r}; expected one of {sorted(JOBS)}")
  module = importlib.import_module(JOBS[job])
  module.run(config)


if __name__ == "__main__":
  app.run(main)
