"""Differentiable tile-based Gaussian rasterizer (pure JAX) and its dense reference.

  out = render(gaussians, camera, background=..., features=...)   # RenderOutput
  check_overflow(out)                                             # host side, raises if truncated
  outs = render_views(gaussians, cameras)                         # leading V axis
"""

from splatshot_jax.render.composite import CompositeConfig, composite
from splatshot_jax.render.dense import render_dense
from splatshot_jax.render.project import Projected, eval_sh, project_gaussians, sh_colors
from splatshot_jax.render.rasterize import (RenderOutput, RenderOverflowError, check_overflow,
                                            default_pair_budget, render, render_views)
from splatshot_jax.render.tiles import Overflow, TileLists, bin_gaussians

__all__ = [
    "CompositeConfig", "composite", "render_dense", "Projected", "eval_sh", "project_gaussians",
    "sh_colors", "RenderOutput", "RenderOverflowError", "check_overflow", "default_pair_budget",
    "render", "render_views", "Overflow", "TileLists", "bin_gaussians",
]
