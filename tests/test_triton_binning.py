"""GPU-friendly binning (int32 sort keys, no three-operand sort) vs a numpy statement of the order.

`bin_gaussians` must list, per tile, the Gaussians whose [mean ± radius] square touches it, front to
back, ties in depth by Gaussian index (what the float argsort of the previous version gave), in
both its single-key path and its two-pass path for tiles × N beyond int32.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splatshot_jax.render import tiles
from splatshot_jax.render.tiles import bin_gaussians, depth_sort_key


def _seed() -> int:
  env = os.environ.get("BINNING_TEST_SEED")
  return int(env) if env else int(np.random.default_rng().integers(2**31))


def _reference(means, radii, depths, width, height, ts):
  """(tile_start, tile_count, ids) from explicit loops and np.lexsort on (tile, depth, index)."""
  tiles_x, tiles_y = -(-width // ts), -(-height // ts)
  pairs = []
  for i in range(len(radii)):
    if radii[i] <= 0:
      continue
    r = float(radii[i])
    lo = [int(np.clip(np.floor((means[i, a] - r) / ts), 0, n)) for a, n in ((0, tiles_x), (1, tiles_y))]
    hi = [int(np.clip(np.floor((means[i, a] + r) / ts) + 1, 0, n)) for a, n in ((0, tiles_x), (1, tiles_y))]
    for ty in range(lo[1], hi[1]):
      for tx in range(lo[0], hi[0]):
        pairs.append((ty * tiles_x + tx, depths[i], i))
  pairs = np.array(pairs, dtype=np.float64).reshape(-1, 3)
  order = np.lexsort((pairs[:, 2], pairs[:, 1], pairs[:, 0]))
  t, ids = pairs[order, 0].astype(int), pairs[order, 2].astype(int)
  count = np.bincount(t, minlength=tiles_x * tiles_y)
  start = np.concatenate([[0], np.cumsum(count)[:-1]])
  return start, count, ids


@pytest.mark.parametrize("two_pass", [False, True])
def test_binning_order_matches_reference(monkeypatch, two_pass):
  seed = _seed()
  rng = np.random.default_rng(seed)
  width, height, ts, n = 61, 45, 8, 300
  if two_pass:  # pretend tiles × N overflows an int32
    monkeypatch.setattr(tiles, "_fits_int32_key", lambda num_tiles, n: False)
  means = rng.uniform([-10, -10], [width + 10, height + 10], size=(n, 2)).astype(np.float32)
  radii = rng.integers(0, 12, size=n).astype(np.int32)  # ~8% culled (radius 0)
  # Many exact ties (depths on a 0.25 grid), some negative, +0.0 and -0.0 among them.
  depths = (np.round(rng.uniform(-1, 4, size=n) * 4) / 4).astype(np.float32)
  depths[:4] = [0.0, -0.0, 0.0, -0.0]
  lists = bin_gaussians(jnp.asarray(means), jnp.asarray(radii), jnp.asarray(depths), width=width,
                        height=height, tile_size=ts, pair_budget=4096, tile_capacity=4096)
  start, count, ids = _reference(means, radii, depths, width, height, ts)
  assert len(ids) > 500 and len(np.unique(depths)) < n // 2, seed
  num = int(lists.overflow.num_pairs)
  assert num == len(ids), f"seed {seed}: {num} pairs vs reference {len(ids)}"
  np.testing.assert_array_equal(np.asarray(lists.tile_count), count, err_msg=f"seed {seed}")
  np.testing.assert_array_equal(np.asarray(lists.tile_start), start, err_msg=f"seed {seed}")
  np.testing.assert_array_equal(np.asarray(lists.gauss_ids)[:num], ids, err_msg=f"seed {seed}")


def test_depth_sort_key_orders_like_floats():
  seed = _seed()
  rng = np.random.default_rng(seed)
  d = np.concatenate([rng.normal(size=200) * 10.0 ** rng.integers(-6, 6, size=200), [0.0, -0.0,
                      np.finfo(np.float32).max, -np.finfo(np.float32).max, 1e-40, -1e-40]])
  for dtype in (jnp.float32, jnp.float64):
    with jax.enable_x64(dtype == jnp.float64):
      x = jnp.asarray(d, dtype)
      key = depth_sort_key(x)
      assert key.dtype == (jnp.int64 if dtype == jnp.float64 else jnp.int32)
      np.testing.assert_array_equal(np.asarray(jnp.argsort(key, stable=True)),
                                    np.asarray(jnp.argsort(x, stable=True)), err_msg=f"seed {seed}")
