"""Triton compositing kernels: the forward and backward of `composite.composite`, one tile a program.

Importable only where `triton` is installed. The same source runs compiled on a CUDA GPU (launched
through `jax_triton.triton_call`) and on CPU torch tensors in Triton's interpreter: `kernels(False)`
wraps the plain functions below with `triton.jit`, `kernels(True)` with the interpreter's
`InterpretedFunction` (whatever TRITON_INTERPRET said when triton was imported).

Data layout (prepared in XLA by `composite_triton`):
  rec:    (P, R) float32 per-pair records in sorted pair order, R = 6 + C:
          [mean x, mean y, conic a, b, c, opacity, feature 0..C-1] of the pair's Gaussian, so a
          tile reads one contiguous slice instead of chasing id → parameters.
  start, count: (T,) int32 slice of each tile in `rec` (count already capped at the capacity).
  order:  (T,) int32 tile index per program, longest list first (the heaviest tile sets the time).
  images: tiled and channel-major: channel k of pixel p of tile t at k·NPIX + t·TS² + p
          (row-major pixels inside the tile, NPIX = T·TS²), so that every per-pixel access,
          the per-entry loops' included, is a pixel vector in one layout.
Signature order is (inputs..., outputs..., constexprs): `jax_triton.triton_call` appends the
output buffers after the inputs, and the interpreter launcher passes them the same way.

Rules are those of `composite.py` (3DGS): α = min(ALPHA_MAX, o·exp(power)), skipped when power > 0 or
α < 1/255, and a pixel stops at the first entry whose inclusion would make T < 1e-4.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# Reductions through tl.reduce with the standard library's own combine functions, not tl.sum /
# tl.max: those are @triton.jit library functions, and a process that imported triton without
# TRITON_INTERPRET (any that imports diffusers) cannot call them from an interpreted kernel. The
# interpreter recognises these combine functions and reduces with numpy.
_SUM = tl.standard._sum_combine
_MAX = tl.standard._elementwise_max
STOP_CHECK = tl.constexpr(16)


def composite_fwd_kernel(rec_ptr, start_ptr, count_ptr, order_ptr,  # inputs
                         img_ptr, t_ptr, last_ptr,  # outputs
                         C: tl.constexpr, CP: tl.constexpr, TS: tl.constexpr,
                         TILES_X: tl.constexpr, NPIX: tl.constexpr, WIDTH: tl.constexpr,
                         HEIGHT: tl.constexpr,
                         ALPHA_MIN: tl.constexpr, ALPHA_MAX: tl.constexpr, T_MIN: tl.constexpr):
  """One program per tile; writes img (T·TS², C), T_final (T·TS²) and last (T·TS²) int32.

  last = 1 + index (in the tile's list) of the last entry that contributed to the pixel, 0 if none:
  the backward walks the list from there.
  """
  R: tl.constexpr = 6 + C
  PP: tl.constexpr = TS * TS
  tile = tl.load(order_ptr + tl.program_id(0))
  start = tl.load(start_ptr + tile)
  n = tl.load(count_ptr + tile)
  p = tl.arange(0, PP)
  px = ((tile % TILES_X) * TS + p % TS).to(tl.float32) + 0.5
  py = ((tile // TILES_X) * TS + p // TS).to(tl.float32) + 0.5
  # Padding pixels of edge tiles never composite (their rows are cropped anyway).
  alive = (px < WIDTH) & (py < HEIGHT)
  c = tl.arange(0, CP)
  cmask = c < C
  T = tl.full((PP,), 1.0, tl.float32)
  # (channels, pixels), not (pixels, channels): with pixels on the fast axis Triton keeps the
  # accumulator in the pixel vectors' own layout; the transposed shape made it convert layouts
  # through shared memory (2 block barriers per entry on sm_90, Triton 3.6).
  acc = tl.full((CP, PP), 0.0, tl.float32)
  last = tl.full((PP,), 0, tl.int32)
  n_alive = tl.reduce(alive.to(tl.int32), 0, _SUM)
  # Whether any pixel is still alive is a block-wide reduction: check it once per STOP_CHECK
  # entries rather than per entry (the per-pixel `alive` mask keeps the rule exact).
  i = 0
  while (i < n) & (n_alive > 0):
    end = tl.minimum(i + STOP_CHECK, n)
    for j in range(i, end):
      r = rec_ptr + (start + j).to(tl.int64) * R
      mx = tl.load(r)
      my = tl.load(r + 1)
      ca = tl.load(r + 2)
      cb = tl.load(r + 3)
      cc = tl.load(r + 4)
      op = tl.load(r + 5)
      f = tl.load(r + 6 + c, mask=cmask, other=0.0)
      dx = px - mx
      dy = py - my
      power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
      alpha = tl.minimum(ALPHA_MAX, op * tl.exp(power))
      ok = alive & (power <= 0) & (alpha >= ALPHA_MIN)
      t_next = T * (1 - alpha)
      stop = ok & (t_next < T_MIN)
      alive = alive & ~stop
      ok = ok & ~stop
      w = tl.where(ok, alpha * T, 0.0)
      acc += f[:, None] * w[None, :]
      T = tl.where(ok, t_next, T)
      last = tl.where(ok, j + 1, last)
    n_alive = tl.reduce(alive.to(tl.int32), 0, _SUM)
    i = end
  row = tile * PP + p
  tl.store(img_ptr + c[:, None] * NPIX + row[None, :], acc, mask=cmask[:, None])
  tl.store(t_ptr + row, T)
  tl.store(last_ptr + row, last)


def composite_bwd_kernel(rec_ptr, start_ptr, order_ptr, t_ptr, last_ptr, gimg_ptr,
                         gt_ptr,  # inputs
                         grad_ptr,  # output: (P, R) zero-initialised gradient rows
                         C: tl.constexpr, CP: tl.constexpr, TS: tl.constexpr,
                         TILES_X: tl.constexpr, NPIX: tl.constexpr, WIDTH: tl.constexpr,
                         HEIGHT: tl.constexpr,
                         ALPHA_MIN: tl.constexpr, ALPHA_MAX: tl.constexpr, T_MIN: tl.constexpr):
  """One program per tile, back to front from the last contributing entry.

  Recovers Tᵢ = Tᵢ₊₁ / (1 − αᵢ) and the cotangent-projected "behind" sum per pixel, reduces each
  entry's gradient over the tile's pixels and stores it as the entry's row of grad (d mean x, y,
  d conic a, b, c, d opacity, d features): each pair belongs to one tile, so no two programs
  write the same row and the result is deterministic (rows are summed per Gaussian in XLA).
  """
  R: tl.constexpr = 6 + C
  PP: tl.constexpr = TS * TS
  tile = tl.load(order_ptr + tl.program_id(0))
  start = tl.load(start_ptr + tile)
  p = tl.arange(0, PP)
  px = ((tile % TILES_X) * TS + p % TS).to(tl.float32) + 0.5
  py = ((tile // TILES_X) * TS + p // TS).to(tl.float32) + 0.5
  row = tile * PP + p
  c = tl.arange(0, CP)
  cmask = c < C
  last = tl.load(last_ptr + row)
  T = tl.load(t_ptr + row)
  # (channels, pixels) like the forward's accumulator, read from channel-major memory, so the
  # load is coalesced along pixels and the pixel vectors' layout needs no conversion per entry.
  g = tl.load(gimg_ptr + c[:, None] * NPIX + row[None, :], mask=cmask[:, None], other=0.0)
  # dT_final/dαᵢ = −T_final/(1 − αᵢ): folds into the behind-sum term.
  g_t_term = tl.load(gt_ptr + row) * T
  behind = tl.full((PP,), 0.0, tl.float32)
  i = tl.reduce(last, 0, _MAX) - 1
  while i >= 0:
    r = rec_ptr + (start + i).to(tl.int64) * R
    mx = tl.load(r)
    my = tl.load(r + 1)
    ca = tl.load(r + 2)
    cb = tl.load(r + 3)
    cc = tl.load(r + 4)
    op = tl.load(r + 5)
    f = tl.load(r + 6 + c, mask=cmask, other=0.0)
    dx = px - mx
    dy = py - my
    power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
    g_exp = tl.exp(power)
    raw = op * g_exp
    alpha = tl.minimum(ALPHA_MAX, raw)
    ok = (i < last) & (power <= 0) & (alpha >= ALPHA_MIN)
    one_minus = 1 - alpha
    T = tl.where(ok, T / one_minus, T)  # T before this entry
    w = tl.where(ok, alpha * T, 0.0)
    gc = tl.reduce(g * f[:, None], 0, _SUM)  # ⟨∂L/∂C, f⟩ per pixel
    d_alpha = tl.where(ok, gc * T - (behind + g_t_term) / one_minus, 0.0)
    behind += w * gc
    d_feat = tl.reduce(g * w[None, :], 1, _SUM)
    unclamped = raw < ALPHA_MAX  # min() passes no gradient to the clamped branch
    d_op = tl.reduce(tl.where(unclamped, d_alpha * g_exp, 0.0), 0, _SUM)
    d_pow = tl.where(unclamped, d_alpha * alpha, 0.0)
    d_mx = tl.reduce(d_pow * (ca * dx + cb * dy), 0, _SUM)
    d_my = tl.reduce(d_pow * (cb * dx + cc * dy), 0, _SUM)
    d_ca = -0.5 * tl.reduce(d_pow * dx * dx, 0, _SUM)
    d_cb = -tl.reduce(d_pow * dx * dy, 0, _SUM)
    d_cc = -0.5 * tl.reduce(d_pow * dy * dy, 0, _SUM)
    out = grad_ptr + (start + i).to(tl.int64) * R
    tl.store(out, d_mx)
    tl.store(out + 1, d_my)
    tl.store(out + 2, d_ca)
    tl.store(out + 3, d_cb)
    tl.store(out + 4, d_cc)
    tl.store(out + 5, d_op)
    tl.store(out + 6 + c, d_feat, mask=cmask)
    i -= 1


@functools.cache
def kernels(interpret: bool):
  """(forward, backward) kernels: interpreted on CPU torch tensors, or jitted for the GPU."""
  wrap = InterpretedFunction if interpret else triton.jit
  return wrap(composite_fwd_kernel), wrap(composite_bwd_kernel)
