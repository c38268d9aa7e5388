"""Triton backend of `composite`: record gather, launch, custom VJP and per-Gaussian gradient sum.

  image, T_final = composite_triton(cfg, lists, means2d, conics, opacities, features,
                                    interpret=False)

Same contract as `composite.composite` (see there); float32 only. Two launch routes share
everything but the launch itself (`launch`):
  - "triton": `jax_triton.triton_call` compiles and runs the kernels on a CUDA GPU;
  - "triton_interpret": `jax.pure_callback` hands the arrays to Triton's interpreter as torch CPU
    tensors (zero-copy), so the record gather, grid, launch arguments, custom VJP and segment_sum
    are exercised on a CPU exactly as they run on a GPU.
"""

from __future__ import annotations

import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from splatshot_jax.device import platform
from splatshot_jax.render.composite import (T_MIN, CompositeConfig, _group_tiles,
                                            image_to_tiles, tiles_to_image)
from splatshot_jax.render.project import ALPHA_MIN
from splatshot_jax.render.tiles import TileLists, tile_grid

BACKENDS = ("auto", "xla", "triton", "triton_interpret")
_REC = 6  # record columns before the features: mean x, y, conic a, b, c, opacity


@functools.cache
def _jax_triton():
  """The jax_triton module, or None where it does not import (no CUDA jaxlib, not installed)."""
  try:
    import jax_triton  # noqa: PLC0415 (optional [gpu] extra)
    return jax_triton
  except Exception:  # ImportError, or jax_triton failing against a CPU-only jaxlib
    return None


def resolve_backend(backend: str, dtype=jnp.float32) -> str:
  """"xla", "triton" or "triton_interpret" for a `backend` argument of `render`.

  "auto" is "triton" when compiling for a CUDA GPU (`device.platform.current()`) and jax_triton imports and the
  dtype is float32, else "xla".
  """
  if backend not in BACKENDS:
    raise ValueError(f"render backend={backend!r}: expected one of {BACKENDS}")
  if backend == "auto":
    gpu = platform.current() == "gpu"
    ok = gpu and jnp.dtype(dtype) == jnp.float32 and _jax_triton() is not None
    return "triton" if ok else "xla"
  if backend == "triton" and _jax_triton() is None:
    raise ValueError("render backend='triton' needs jax-triton on a CUDA jaxlib "
                     "(pip install 'splatshot_jax[gpu]'); use backend='xla' or 'auto'")
  return backend


def _kernels(interpret: bool):
  """(forward, backward) kernels from the one source, interpreted or jitted for the GPU."""
  try:
    from splatshot_jax.render import triton_kernels  # noqa: PLC0415 (needs triton)
  except ImportError as e:
    raise ImportError("the Triton compositor needs `triton` (pip install 'splatshot_jax[gpu]', "
                      "or the [test] extra for the CPU interpreter)") from e
  if not interpret and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise RuntimeError("render backend='triton' with TRITON_INTERPRET set: triton.jit makes "
                       "interpreted kernels, which jax_triton cannot launch; unset it, or use "
                       "backend='triton_interpret'")
  return triton_kernels.kernels(interpret)


def _interpret_call(kernel, grid, out_shapes, constexprs, *arrays):
  import torch  # noqa: PLC0415 (the interpreter runs on torch CPU tensors)
  with warnings.catch_warnings():
    # Callback inputs are read-only views; the kernels never write their inputs.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    ins = [torch.from_numpy(np.asarray(a)) for a in arrays]
  outs = [np.zeros(s.shape, s.dtype) for s in out_shapes]  # zeroed, as on the GPU route
  kernel[grid](*ins, *[torch.from_numpy(o) for o in outs], **constexprs)
  return tuple(outs)


def launch(kernel, grid: tuple[int, ...], inputs, out_shapes, *, interpret: bool, num_warps: int,
           **constexprs):
  """Runs `kernel[grid](*inputs, *outputs, **constexprs)`; returns the outputs (zero-initialised).

  The only route-specific code: everything feeding it is shared by the GPU and interpreter paths.
  """
  out_shapes = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in out_shapes]
  if interpret:
    return jax.pure_callback(
        functools.partial(_interpret_call, kernel, grid, out_shapes, constexprs), tuple(out_shapes),
        *inputs, vmap_method="sequential")
  return tuple(_jax_triton().triton_call(
      *inputs, kernel=kernel, out_shape=out_shapes, grid=grid, num_warps=num_warps,
      zeroed_outputs=tuple(range(len(out_shapes))), **constexprs))


def _constexprs(cfg: CompositeConfig, channels: int) -> dict:
  tiles_x, tiles_y = tile_grid(cfg.width, cfg.height, cfg.tile_size)
  return dict(C=channels, CP=max(2, 1 << (channels - 1).bit_length()), TS=cfg.tile_size,
              TILES_X=tiles_x, NPIX=tiles_x * tiles_y * cfg.tile_size**2, WIDTH=cfg.width, HEIGHT=cfg.height, ALPHA_MIN=ALPHA_MIN,
              ALPHA_MAX=cfg.alpha_max, T_MIN=T_MIN)


# Tile edge the Triton backend uses when `render` is given none: 8×8 tiles, one warp each. Every
# per-entry reduction of the backward stays inside the warp (shuffles, no block barrier), and a
# tile's list is composited over 64 pixels instead of 256, which halves the pixel × entry work on
# the benchmark heads (docs/benchmarks.md, issue 20). 16 remains available (8 warps).
TRITON_TILE_SIZE = 8


def num_warps_for(tile_size: int) -> int:
  """Warps per program: one for an 8×8 tile (64 pixels, 2 per thread), else a pixel per thread."""
  return min(8, max(1, tile_size**2 // 64 if tile_size <= 8 else tile_size**2 // 32))


def _num_warps(cfg: CompositeConfig) -> int:
  return num_warps_for(cfg.tile_size)


def _forward(cfg, interpret, gauss_ids, tile_start, tile_count, means2d, conics, opacities,
             features):
  num_tiles, pp, ch = tile_count.shape[0], cfg.tile_size**2, features.shape[-1]
  # Records in sorted pair order: a tile's program reads one contiguous slice.
  rec = jnp.concatenate([means2d, conics, opacities[:, None], features], -1)[gauss_ids]
  order = _group_tiles(tile_count, 1).reshape(-1)  # heaviest tile first
  img, t_fin, last = launch(
      _kernels(interpret)[0], (num_tiles,), (rec, tile_start, tile_count, order),
      [jax.ShapeDtypeStruct((ch, num_tiles * pp), jnp.float32),
       jax.ShapeDtypeStruct((num_tiles * pp,), jnp.float32),
       jax.ShapeDtypeStruct((num_tiles * pp,), jnp.int32)],
      interpret=interpret, num_warps=_num_warps(cfg), **_constexprs(cfg, ch))
  image = tiles_to_image(img.T.reshape(num_tiles, pp, ch), cfg)
  T_final = tiles_to_image(t_fin.reshape(num_tiles, pp), cfg)
  return (image, T_final), (rec, order, t_fin, last)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _composite(cfg, interpret, gauss_ids, tile_start, tile_count, means2d, conics, opacities,
               features):
  return _forward(cfg, interpret, gauss_ids, tile_start, tile_count, means2d, conics, opacities,
                  features)[0]


def _composite_fwd(cfg, interpret, gauss_ids, tile_start, tile_count, means2d, conics, opacities,
                   features):
  out, (rec, order, t_fin, last) = _forward(cfg, interpret, gauss_ids, tile_start, tile_count,
                                            means2d, conics, opacities, features)
  return out, (gauss_ids, tile_start, order, rec, t_fin, last, means2d)


def _composite_bwd(cfg, interpret, res, cts):
  gauss_ids, tile_start, order, rec, t_fin, last, means2d = res
  g_img, g_T = cts
  num_tiles, pp = order.shape[0], cfg.tile_size**2
  ch = rec.shape[1] - _REC
  g_img = image_to_tiles(g_img.astype(jnp.float32), cfg).reshape(num_tiles * pp, ch).T
  g_T = image_to_tiles(g_T.astype(jnp.float32), cfg).reshape(num_tiles * pp)
  (rows,) = launch(
      _kernels(interpret)[1], (num_tiles,),
      (rec, tile_start, order, t_fin, last, g_img, g_T), [jax.ShapeDtypeStruct(rec.shape, rec.dtype)],
      interpret=interpret, num_warps=_num_warps(cfg), **_constexprs(cfg, ch))
  # One row per pair (zero where not composited, incl. padding pairs): sum them per Gaussian.
  grads = jax.ops.segment_sum(rows, gauss_ids, num_segments=means2d.shape[0])
  return (None, None, None, grads[:, 0:2], grads[:, 2:5], grads[:, 5], grads[:, _REC:])


_composite.defvjp(_composite_fwd, _composite_bwd)


def composite_triton(
    cfg: CompositeConfig,
    lists: TileLists,
    means2d: jax.Array,
    conics: jax.Array,
    opacities: jax.Array,
    features: jax.Array,
    *,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """`composite.composite` on the Triton kernels (same arguments and returns; float32).

  Args:
    cfg: CompositeConfig; tile_size must be a power of two (a tile's pixels are one Triton block);
      chunk and tiles_per_step are XLA-only settings and ignored.
    interpret: run the kernels in Triton's CPU interpreter through `jax.pure_callback` instead
      of compiling them for the GPU with jax_triton.
  """
  ts = cfg.tile_size
  if ts < 1 or ts & (ts - 1):
    raise ValueError(f"Triton compositor: tile_size={ts} must be a power of two")
  arrays = dict(means2d=means2d, conics=conics, opacities=opacities, features=features)
  for name, x in arrays.items():
    if x.dtype != jnp.float32:
      raise ValueError(f"Triton compositor: {name} is {x.dtype}, expected float32 "
                       "(use backend='xla' for other dtypes)")
  return _composite(cfg, bool(interpret), lists.gauss_ids, lists.tile_start, lists.tile_count,
                    means2d, conics, opacities, features)
