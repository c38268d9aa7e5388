"""Fit 3D Gaussians to a calibrated multi-view set and evaluate on held-out views.

  python -m experiments.run --config=configs/fit_multiview.py \
      --config.data=../shared/data/multiview/nersemble-128-16views

`--config=configs/fit_multiview.py:smoke` is the same job, tiny (seconds on a CPU). With
`config.data=''` the job fits a synthetic head the project renders itself (no download needed).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.job = "fit_multiview"
  config.compilation_cache = "auto"  # persistent XLA cache (splatshot_jax/compile_cache.py); "" = off
  config.data = ""  # a multiview folder (SplatShot npz / transforms.json / COLMAP); '' = synthetic
  config.scale = 0.5  # image resolution factor (the target is at half resolution)
  config.holdout = (8,)  # held-out view indices (NeRSemble camera 8 is the frontal, val view)
  config.background = (1.0, 1.0, 1.0)  # NeRSemble captures have a white background
  config.seed = 0
  config.out_dir = "outputs/fit_multiview"
  config.overwrite = False  # replace a finished run in out_dir (else refused up front)

  config.init = ml_collections.ConfigDict()
  config.init.sh_degree = 3
  config.init.opacity = 0.1
  config.init.hull_points = 20_000  # used when the set has no points3d.ply

  config.fit = ml_collections.ConfigDict()
  config.fit.num_iters = 7000
  config.fit.sh_degree_interval = 1000  # progressive SH, as in 3DGS
  config.fit.densify = True
  config.fit.refine_start_iter = 500
  config.fit.refine_stop_iter = 5000
  config.fit.refine_every = 100
  config.fit.reset_every = 3000
  config.fit.max_gaussians = 200_000
  config.fit.means_lr_final = 0.01  # exponential means-LR decay over the fit, as gsplat
  # Rasterizer tiles: 16 px as in 3DGS; 8 px with 32 tiles per step is ~1.6x faster on CPU.
  config.fit.tile_size = 16
  config.fit.tiles_per_step = 8
  config.fit.backend = "auto"  # compositor: auto (Triton on a CUDA GPU, else XLA) | xla | triton

  config.turntable_frames = 60

  if arg == "smoke":
    config.scale = 0.125
    config.fit.num_iters = 60
    config.fit.refine_start_iter = 20
    config.fit.refine_every = 20
    config.fit.refine_stop_iter = 50
    config.fit.sh_degree_interval = 20
    config.turntable_frames = 8
    config.overwrite = True  # smoke runs are rerun into the same folder
  return config
