"""Config sections that several jobs share, so that their defaults cannot drift apart.

`build_template` and `fit_multiview` fit a 3DGS to a multi-view set the same way: one owner for the
initialisation and fit fields and for their `:smoke` shrink.
"""

import ml_collections


def init_section() -> ml_collections.ConfigDict:
  """config.init: Gaussians initialised from the set's points (or a visual-hull sample when it has none)."""
  init = ml_collections.ConfigDict()
  init.sh_degree = 3
  init.opacity = 0.1
  init.hull_points = 20_000  # used when the set has no points3d.ply
  return init


def fit_section() -> ml_collections.ConfigDict:
  """config.fit: the multi-view 3DGS fit (fit.FitConfig's fields and the densification schedule)."""
  fit = ml_collections.ConfigDict()
  fit.num_iters = 7000
  fit.sh_degree_interval = 1000  # progressive SH, as in 3DGS
  fit.densify = True
  fit.refine_start_iter = 500
  fit.refine_stop_iter = 5000
  fit.refine_every = 100
  fit.reset_every = 3000
  fit.max_gaussians = 200_000
  fit.means_lr_final = 0.01  # exponential means-LR decay over the fit, as gsplat
  # Rasterizer tiles: 16 px as in 3DGS; 8 px with 32 tiles per step is ~1.6x faster on CPU.
  fit.tile_size = 16
  fit.tiles_per_step = 8
  fit.backend = "auto"  # compositor: auto (Triton on a CUDA GPU, else XLA) | xla | triton
  return fit


def shrink_fit_for_smoke(config: ml_collections.ConfigDict) -> None:
  """The `:smoke` variant of a fitting job: 1/8 resolution, 60 iterations, rerun into the same folder."""
  config.scale = 0.125
  config.fit.num_iters = 60
  config.fit.refine_start_iter = 20
  config.fit.refine_every = 20
  config.fit.refine_stop_iter = 50
  config.fit.sh_degree_interval = 20
  config.overwrite = True  # smoke runs are rerun into the same folder
