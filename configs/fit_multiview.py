"""Fit 3D Gaussians to a calibrated multi-view set and evaluate on held-out views.

  python -m experiments.run --config=configs/fit_multiview.py \
      --config.data=../shared/data/multiview/nersemble-128-16views

`--config=configs/fit_multiview.py:smoke` is the same job, tiny (seconds on a CPU). With
`config.data=''` the job fits a synthetic head the project renders itself (no download needed).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.job = "fit_multiview"
  config.compilation_cache = "auto"  # persistent XLA cache (splatshot_jax/device/compile_cache.py); "" = off
  config.data = ""  # a multiview folder (SplatShot npz / transforms.json / COLMAP); '' = synthetic
  config.scale = 0.5  # image resolution factor (the target is at half resolution)
  config.holdout = (8,)  # held-out view indices (NeRSemble camera 8 is the frontal, val view)
  config.background = (1.0, 1.0, 1.0)  # NeRSemble captures have a white background
  config.seed = 0
  config.out_dir = "outputs/fit_multiview"
  config.overwrite = False  # replace a finished run in out_dir (else refused up front)

  config.init = common.init_section()
  config.fit = common.fit_section()

  config.turntable_frames = 60

  if arg == "smoke":
    common.shrink_fit_for_smoke(config)
    config.turntable_frames = 8
  return config
