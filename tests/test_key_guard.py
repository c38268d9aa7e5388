"""The binning's int32 sort key at its boundary: tiles x N just below and just above 2^31, the sentinel tile included.

`bin_gaussians` sorts (tile, depth) pairs; when tile · N + rank fits in an int32 it sorts one combined key, else it
falls back to two stable passes. The unused pairs of the budget carry the sentinel tile T (one past the last), so
the largest key is T · N + (N - 1): the guard must count T + 1 tiles. A guard off by the sentinel wraps the
padding's keys negative (they sort before every real pair); a guard off by more wraps real pairs of the last tiles.

Each case bins a handful of visible Gaussians (the rest culled) on a tile grid of T = tiles_x · tiles_y tiles with
N Gaussians chosen around the boundary, and compares the lists with a numpy statement of the contract: the used
pairs first, sorted by tile then depth (ties by index), each tile's [start, start + count) slice.
"""

import numpy as np
import pytest

from splatshot_jax.render.tiles import bin_gaussians, tile_grid

TS = 16
INT32_LIMIT = 2**31


def _reference(x0, x1, y0, y1, tiles_x, depth_rank):
  """Sorted (tile, gaussian) pairs of the visible Gaussians' tile rectangles ({gaussian: first/end tile})."""
  pairs = [(ty * tiles_x + tx, depth_rank[g], g) for g in sorted(x0)
           for ty in range(y0[g], y1[g]) for tx in range(x0[g], x1[g])]
  pairs.sort()
  return [(t, g) for t, _, g in pairs]


# (tiles_x, tiles_y, N): where the largest real key and the sentinel's key fall relative to 2^31.
CASES = {
    "all_keys_fit": (1324, 35, 46340),          # (T + 1) N = 2147441940 < 2^31
    "sentinel_crosses": (1324, 35, 46341),      # T N < 2^31 <= (T + 1) N - 1: only padding keys overflow
    "real_keys_cross": (331, 141, 46341),       # T N > 2^31: the last tiles' own keys overflow
}


@pytest.mark.parametrize("case", list(CASES))
def test_pair_order_at_the_int32_key_boundary(case):
  tiles_x, tiles_y, n = CASES[case]
  num_tiles = tiles_x * tiles_y
  largest_key = (num_tiles + 1) * n - 1  # the sentinel tile T with depth rank N - 1
  if case == "all_keys_fit":
    assert largest_key < INT32_LIMIT
  elif case == "sentinel_crosses":
    assert num_tiles * n - 1 < INT32_LIMIT <= largest_key
  else:
    assert num_tiles * n - 1 >= INT32_LIMIT
  width, height = tiles_x * TS, tiles_y * TS
  assert tile_grid(width, height, TS) == (tiles_x, tiles_y)

  means = np.full((n, 2), -1e4, np.float32)
  radii = np.zeros(n, np.int32)
  depths = np.linspace(1.0, 50.0, n).astype(np.float32)  # rank = index: the last Gaussian is the farthest
  # Visible Gaussians: the far ones in the last tiles (largest real keys), some near ones elsewhere.
  vis = np.array([n - 1, n - 2, n - 3, 5, 17, n // 2])
  centres = np.array([[width - 3.5, height - 3.5], [width - 20.5, height - 9.5], [width - 40.5, height - 40.5],
                      [10.5, 10.5], [width / 2 + 0.5, height / 2 + 0.5], [100.5, height - 5.5]])
  means[vis] = centres
  radii[vis] = [3, 12, 30, 20, 5, 9]
  rank = np.arange(n)
  lo = lambda c, r, m: np.clip(np.floor((c - r) / TS), 0, m).astype(int)
  hi = lambda c, r, m: np.clip(np.floor((c + r) / TS) + 1, 0, m).astype(int)
  x0 = {g: lo(means[g, 0], radii[g], tiles_x) for g in vis}
  x1 = {g: hi(means[g, 0], radii[g], tiles_x) for g in vis}
  y0 = {g: lo(means[g, 1], radii[g], tiles_y) for g in vis}
  y1 = {g: hi(means[g, 1], radii[g], tiles_y) for g in vis}
  want = _reference(x0, x1, y0, y1, tiles_x, rank)
  assert want[-1][0] == num_tiles - 1 and want[-1][1] == n - 1  # the largest real key is in the case
  budget = len(want) + 37  # padding pairs, which carry the sentinel tile

  lists = bin_gaussians(means, radii, depths, width=width, height=height, tile_size=TS, pair_budget=budget,
                        tile_capacity=64)
  assert int(lists.overflow.num_pairs) == len(want) and int(lists.overflow.total) == 0
  ids = np.asarray(lists.gauss_ids)
  np.testing.assert_array_equal(ids[:len(want)], [g for _, g in want], err_msg=f"{case}: sorted pair order")
  start, count = np.asarray(lists.tile_start), np.asarray(lists.tile_count)
  for t in sorted({t for t, _ in want}):
    got = ids[start[t]:start[t] + count[t]].tolist()
    assert got == [g for tt, g in want if tt == t], f"{case}: tile {t}"
  assert count.sum() == len(want), f"{case}: {count.sum()} listed entries, {len(want)} pairs"
