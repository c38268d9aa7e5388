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


@pytest.mark.parametrize("expansion", ["scan", "searchsorted"])
@pytest.mark.parametrize("two_pass", [False, True])
def test_binning_order_matches_reference(monkeypatch, two_pass, expansion):
  seed = _seed()
  rng = np.random.default_rng(seed)
  width, height, ts, n = 61, 45, 8, 300
  if two_pass:  # pretend tiles × N overflows an int32
    monkeypatch.setattr(tiles, "_fits_int32_key", lambda num_tiles, n: False)
  means = rng.uniform([-10, -10], [width + 10, height + 10], size=(n, 2)).astype(np.float32)
  radii = rng.integers(0, 12, size=n).astype(np.int32)  # ~8% culled (radius 0)
  # Keep the bottom-right corner empty: tiles without pairs between listed ones.
  corner = (means[:, 0] > width - 30) & (means[:, 1] > height - 30)
  means[corner, 0] -= 40
  # Many exact ties (depths on a 0.25 grid), some negative, +0.0 and -0.0 among them.
  depths = (np.round(rng.uniform(-1, 4, size=n) * 4) / 4).astype(np.float32)
  depths[:4] = [0.0, -0.0, 0.0, -0.0]
  lists = bin_gaussians(jnp.asarray(means), jnp.asarray(radii), jnp.asarray(depths), width=width,
                        height=height, tile_size=ts, pair_budget=4096, tile_capacity=4096,
                        expansion=expansion)
  start, count, ids = _reference(means, radii, depths, width, height, ts)
  assert len(ids) > 500 and len(np.unique(depths)) < n // 2, seed
  assert count[-1] == 0 and count[-2] == 0, f"seed {seed}: no empty tile"
  num = int(lists.overflow.num_pairs)
  assert num == len(ids), f"seed {seed}: {num} pairs vs reference {len(ids)}"
  np.testing.assert_array_equal(np.asarray(lists.tile_count), count, err_msg=f"seed {seed}")
  np.testing.assert_array_equal(np.asarray(lists.tile_start), start, err_msg=f"seed {seed}")
  np.testing.assert_array_equal(np.asarray(lists.gauss_ids)[:num], ids, err_msg=f"seed {seed}")
  # Padding slots point at every Gaussian in turn, not all at one (segment_sum contention).
  np.testing.assert_array_equal(np.asarray(lists.gauss_ids)[num:], np.arange(num, 4096) % n)


def _splat_scene(rng, n, width, height):
  """Random 2D splats (means, radii, depths, conics, opacities) with 3-sigma-ish radii."""
  means = rng.uniform([-8, -8], [width + 8, height + 8], size=(n, 2))
  sig = rng.uniform(0.5, 4.0, size=(n, 2))
  rho = rng.uniform(-0.9, 0.9, n)
  cov = np.stack([sig[:, 0]**2, rho * sig[:, 0] * sig[:, 1], sig[:, 1]**2], -1)
  det = cov[:, 0] * cov[:, 2] - cov[:, 1]**2
  conics = np.stack([cov[:, 2], -cov[:, 1], cov[:, 0]], -1) / det[:, None]
  opacities = rng.uniform(0.0, 1.0, n)
  radii = np.ceil(3 * sig.max(1)).astype(np.int32)
  depths = rng.uniform(1, 5, n)
  f32 = lambda x: np.asarray(x, np.float32)
  return f32(means), radii, f32(depths), f32(conics), f32(opacities)


def test_ellipse_culling_drops_only_pairs_that_composite_nothing():
  """Culled lists = the square's lists minus pairs whose tile has no pixel with α ≥ 1/255.

  Reference: every pixel centre of every (Gaussian, tile) pair of the square binning, in float64.
  Kept pairs keep their order; every dropped pair reaches no pixel; and the test scene's
  anisotropic splats lose a good share of their square's pairs.
  """
  seed = _seed()
  rng = np.random.default_rng(seed)
  width, height, ts, n = 45, 37, 8, 200
  means, radii, depths, conics, opacities = _splat_scene(rng, n, width, height)
  kw = dict(width=width, height=height, tile_size=ts, pair_budget=4096, tile_capacity=4096)
  full = bin_gaussians(*map(jnp.asarray, (means, radii, depths)), **kw)
  cut = bin_gaussians(*map(jnp.asarray, (means, radii, depths)), conics=jnp.asarray(conics),
                      opacities=jnp.asarray(opacities), **kw)
  assert int(cut.overflow.num_pairs) == int(full.overflow.num_pairs)
  tiles_x = -(-width // ts)
  m64, c64, o64 = (np.asarray(x, np.float64) for x in (means, conics, opacities))
  dropped = kept = 0
  for t in range(len(np.asarray(full.tile_count))):
    s0, c0 = int(full.tile_start[t]), int(full.tile_count[t])
    s1, c1 = int(cut.tile_start[t]), int(cut.tile_count[t])
    ids_full = np.asarray(full.gauss_ids)[s0:s0 + c0]
    ids_cut = np.asarray(cut.gauss_ids)[s1:s1 + c1]
    ys, xs = np.meshgrid(np.arange(ts), np.arange(ts), indexing="ij")
    px = (t % tiles_x) * ts + xs.ravel() + 0.5
    py = (t // tiles_x) * ts + ys.ravel() + 0.5
    inside = (px < width) & (py < height)
    px, py = px[inside], py[inside]
    reach = []
    for g in ids_full:
      dx, dy = px - m64[g, 0], py - m64[g, 1]
      a, b, c = c64[g]
      alpha = o64[g] * np.exp(-0.5 * (a * dx * dx + 2 * b * dx * dy + c * dy * dy))
      reach.append(bool(np.any(np.minimum(alpha, 0.99) >= 1 / 255)))
    reach = np.array(reach, bool)
    assert set(ids_cut) <= set(ids_full), f"seed {seed}: tile {t} gained pairs"
    keep = np.isin(ids_full, ids_cut)
    np.testing.assert_array_equal(ids_full[keep], ids_cut, err_msg=f"seed {seed}: tile {t} order")
    missing = reach & ~keep
    assert not missing.any(), f"seed {seed}: tile {t} dropped reaching Gaussians {ids_full[missing]}"
    dropped += int((~keep).sum())
    kept += int(keep.sum())
  assert dropped > 0.2 * (dropped + kept), f"seed {seed}: only {dropped} of {dropped + kept} culled"


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
