"""Scene-sized static pair budget for a refit: measured over the views, not 16 per Gaussian.

  budget = measure_pair_budget(template.gaussians, template.cameras, backend="auto")
  fit_cfg = FitConfig(..., render_kwargs=(("pair_budget", budget), ...))

`render`'s default budget, 16·N + T pairs, is 5–7× what a fitted head needs at 560×816 (issue
20): every pair slot is sorted, so the excess is paid on every refit iteration. Overflow is still
counted by every render (`check_overflow`, `FitResult.overflow`) when the refit moves Gaussians
beyond the margin.
"""

from __future__ import annotations

import numpy as np

from splatshot_jax.cameras import Camera
from splatshot_jax.gaussians import Gaussians
from splatshot_jax.render.rasterize import render_views
from splatshot_jax.render.tiles import scene_pair_budget


def measure_pair_budget(gaussians: Gaussians, cameras: Camera, *, margin: float = 1.25,
                        **render_kwargs) -> int:
  """Power of two ≥ margin × the most (Gaussian, tile) pairs any of the V views needs.

  Args:
    gaussians: the scene (N Gaussians) the refit starts from.
    cameras: (V,) cameras of the refit's views.
    margin: headroom for the Gaussians moving and growing during the refit.
    render_kwargs: the refit's rasterizer settings (tile_size, backend, ...), pair_budget excluded.
  Returns:
    A Python int, to pass as render's static `pair_budget`.
  """
  n = gaussians.means.shape[0]
  probe = 16 * n + 4096
  while True:  # the probe must not drop pairs itself: double it until nothing is dropped
    out = render_views(gaussians, cameras, render_rgb=False, pair_budget=probe, **render_kwargs)
    if int(np.max(np.asarray(out.overflow.pairs_dropped))) == 0:
      return scene_pair_budget(out.overflow.num_pairs, margin)
    probe = 2 * int(np.max(np.asarray(out.overflow.num_pairs)))
