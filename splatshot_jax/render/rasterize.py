"""`render`: the public entry of the tile rasterizer (gsplat-like API)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from splatshot_jax.cameras import Camera
from splatshot_jax.device import platform
from splatshot_jax.gaussians import Gaussians
from splatshot_jax.render.composite import ALPHA_MAX, CompositeConfig, composite
from splatshot_jax.render.composite_triton import TRITON_TILE_SIZE, composite_triton, resolve_backend
from splatshot_jax.render.project import project_gaussians, sh_colors
from splatshot_jax.render.tiles import Overflow, bin_gaussians, tile_grid

DEFAULT_TILE_CAPACITY = 16384  # lists are read in chunks up to their length: a large cap costs nothing


@struct.dataclass
class RenderOutput:
  """What `render` returns (add a leading V axis everywhere under `render_views`).

  Attributes:
    rgb: (H, W, 3) float, Σ cᵢαᵢTᵢ + T_final·background; None when render_rgb=False.
    alpha: (H, W) float, 1 − T_final.
    depth: (H, W) float, Σ zᵢαᵢTᵢ: alpha-weighted expected camera z, NOT normalised by alpha
      (divide by alpha for the depth of the visible surface); background contributes 0.
    features: (H, W, C) float, Σ fᵢαᵢTᵢ of the `features` argument (no background); or None.
    radii: (N,) int32, opacity-aware screen radius, 0 for culled Gaussians (incl. off-image).
    overflow: Overflow counts; `overflow.total == 0` means nothing was dropped.
  """

  rgb: jax.Array | None
  alpha: jax.Array
  depth: jax.Array
  features: jax.Array | None
  radii: jax.Array
  overflow: Overflow

  @property
  def overflow_total(self) -> jax.Array:
    """() int32 (or (V,)): pairs + tile entries dropped; nonzero means the image is wrong."""
    return self.overflow.total


class RenderOverflowError(RuntimeError):
  pass


def default_pair_budget(num_gaussians: int, width: int, height: int, tile_size: int) -> int:
  """Static pair budget when none is given: 16 tiles per Gaussian on average, plus one per tile.

  A head of 10k surface splats at 512² needs ≈ 8 pairs per Gaussian and large early-fit splats
  need more; the padding costs only sort time. Size it from `out.overflow.num_pairs` when tuning.
  """
  tiles_x, tiles_y = tile_grid(width, height, tile_size)
  return 16 * num_gaussians + tiles_x * tiles_y


@functools.partial(
    jax.jit,
    static_argnames=("render_rgb", "tile_size", "tile_capacity", "pair_budget", "near_plane",
                     "eps2d", "chunk", "tiles_per_step", "backend", "alpha_max"))
def render(
    gaussians: Gaussians,
    camera: Camera,
    *,
    background=(0.0, 0.0, 0.0),
    sh_degree=None,
    features: jax.Array | None = None,
    render_rgb: bool = True,
    tile_size: int | None = None,
    tile_capacity: int = DEFAULT_TILE_CAPACITY,
    pair_budget: int | None = None,
    near_plane: float = 0.01,
    eps2d: float = 0.3,
    chunk: int = 32,
    tiles_per_step: int = 8,
    backend: str = "auto",
    alpha_max: float = ALPHA_MAX,
) -> RenderOutput:
  """Differentiable tile rasterization of N Gaussians into one camera.

  Args:
    gaussians: N Gaussians; sh (N, K, 3). Float dtype of `means` is used throughout.
    camera: a single Camera (viewmat (4, 4), K (3, 3)); use `render_views` for a batch.
    background: (3,) float RGB added as T_final·background (traced, may vary per call).
    sh_degree: None (all stored bands) or an int (static or traced, e.g. progressive SH) ≤ stored.
    features: optional (N, C) float per-Gaussian features composited alongside (e.g. label logits
      or probabilities); gradients flow to them.
    render_rgb: static; False skips SH colour (rgb is None), e.g. to render only `features`.
    tile_size: static tile edge in pixels; None: 8 on the Triton backends (one warp per tile),
      16 on XLA.
    tile_capacity: static maximum entries composited per tile; longer lists are truncated and
      counted in overflow.entries_dropped.
    pair_budget: static number of (Gaussian, tile) pairs; None -> `default_pair_budget`. Excess
      pairs are dropped and counted in overflow.pairs_dropped.
    near_plane: Gaussians with camera z below it are culled.
    eps2d: px² added to the 2D covariance (3DGS low-pass).
    chunk, tiles_per_step: static vectorisation widths of the XLA compositor (speed only).
    backend: static compositor: "xla" (pure XLA, any device and dtype), "triton" (Triton kernels
      through jax_triton on a CUDA GPU; float32, power-of-two tile_size), "triton_interpret" (the
      same kernels in Triton's CPU interpreter, for tests: slow) or "auto" (triton on a CUDA GPU
      when jax_triton imports and the Gaussians are float32, xla otherwise).
    alpha_max: static α clamp, α = min(alpha_max, o·exp(power)) (3DGS 0.99; gsplat and the official
      SplatShot refit 0.999).
  Returns:
    RenderOutput. Call `check_overflow(out)` on the host to make sure nothing was dropped.
  """
  n = gaussians.means.shape[0]
  dtype = gaussians.means.dtype
  backend = resolve_backend(backend, dtype)
  if tile_size is None:
    tile_size = 16 if backend == "xla" else TRITON_TILE_SIZE
  if pair_budget is None:
    pair_budget = default_pair_budget(n, camera.width, camera.height, tile_size)
  proj = project_gaussians(gaussians, camera, near_plane=near_plane, eps2d=eps2d)
  lists = bin_gaussians(proj.means2d, proj.radii, proj.depths, width=camera.width,
                        height=camera.height, tile_size=tile_size, pair_budget=pair_budget,
                        tile_capacity=tile_capacity, conics=proj.conics, opacities=proj.opacities)

  # One composite over [rgb | depth | features]: all share α and T, so compute them once.
  channels = []
  if render_rgb:
    channels.append(sh_colors(gaussians, camera, sh_degree))
  channels.append(proj.depths[:, None])
  if features is not None:
    channels.append(features.astype(dtype))
  feats = jnp.concatenate(channels, -1)

  cfg = CompositeConfig(width=camera.width, height=camera.height, tile_size=tile_size,
                        chunk=chunk, tiles_per_step=tiles_per_step, alpha_max=alpha_max)
  if backend == "xla":
    image, T_final = composite(cfg, lists, proj.means2d, proj.conics, proj.opacities, feats)
  else:
    image, T_final = composite_triton(cfg, lists, proj.means2d, proj.conics, proj.opacities, feats,
                                      interpret=backend == "triton_interpret")

  c = 0
  rgb = None
  if render_rgb:
    bg = jnp.asarray(background, dtype)
    rgb = image[..., 0:3] + T_final[..., None] * bg
    c = 3
  depth = image[..., c]
  out_features = image[..., c + 1:] if features is not None else None
  return RenderOutput(rgb=rgb, alpha=1.0 - T_final, depth=depth, features=out_features,
                      radii=proj.radii, overflow=lists.overflow)


def render_views(gaussians: Gaussians, cameras: Camera, **kwargs) -> RenderOutput:
  """`render` over V cameras (viewmat (V, 4, 4), K (V, 3, 3)); same keyword arguments.

  With the XLA compositor: all views vmapped on a CPU, `platform.view_batch()` views per step of a lax.map
  elsewhere (GPU one, TPU 8); the platform is the one the program is compiled for (`device.platform.current()`).
  The Triton compositor: one view per step (its launches have no batching rule).

  Returns a RenderOutput with a leading V axis on every array (rgb (V, H, W, 3), ...).
  """
  one = lambda cam: render(gaussians, cam, **kwargs)
  backend = resolve_backend(kwargs.get("backend", "auto"), gaussians.means.dtype)
  batch = 1 if backend != "xla" else platform.view_batch()
  num_views = cameras.viewmat.shape[0]
  if batch is None or (batch > 1 and batch >= num_views):  # one batch: a plain vmap
    return jax.vmap(one)(cameras)
  # Per-view buffers (projections, pair lists, the per-pixel composite) then exist for `batch` views at a time,
  # not V; on a GPU (batch 1) the sort is also a plain sort, which XLA sends to CUB's radix sort.
  return jax.lax.map(one, cameras, batch_size=None if batch == 1 else batch)


def check_overflow(out: RenderOutput) -> None:
  """Host-side: raises RenderOverflowError when a static budget was too small.

  Works on single or batched (render_views) outputs; forces a device sync.
  """
  o = out.overflow
  pairs_dropped = int(np.max(np.asarray(o.pairs_dropped)))
  entries_dropped = int(np.max(np.asarray(o.entries_dropped)))
  msgs = []
  if pairs_dropped > 0:
    need = int(np.max(np.asarray(o.num_pairs)))
    msgs.append(
        f"pair budget exceeded: the frame needs {need} (Gaussian, tile) pairs but pair_budget="
        f"{o.pair_budget} ({pairs_dropped} dropped); pass pair_budget>={_round_up(need)}")
  if entries_dropped > 0:
    longest = int(np.max(np.asarray(o.max_tile_entries)))
    msgs.append(
        f"tile capacity exceeded: the longest tile list has {longest} entries but tile_capacity="
        f"{o.tile_capacity} ({entries_dropped} entries dropped); pass tile_capacity>="
        f"{_round_up(longest)}")
  if msgs:
    raise RenderOverflowError("render overflow, the image is wrong: " + "; ".join(msgs))


def _round_up(x: int) -> int:
  """Next power of two ≥ x (headroom so the next frame does not overflow again)."""
  return 1 << max(int(x) - 1, 1).bit_length()
