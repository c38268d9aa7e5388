"""Static-shape tile binning: (Gaussian, tile) pairs sorted by tile then depth.

One global pair list with per-tile [start, start + count) offsets, rather than a dense
tiles × capacity table: trained heads put thousands of Gaussians in a few tiles and almost
none in most, so the table would be mostly padding. The compositor reads each tile's slice in
fixed-size chunks, up to a static per-tile capacity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Overflow:
  """Counts that say whether the static budgets were large enough (all () int32, or (V,) batched).

  Attributes:
    num_pairs: (Gaussian, tile) pairs the frame needs.
    pairs_dropped: pairs beyond `pair_budget` (dropped: Gaussians with the largest indices lose tiles).
    max_tile_entries: the longest tile list (after the pair budget).
    entries_dropped: entries beyond `tile_capacity`, summed over tiles (dropped: the farthest ones).
    pair_budget, tile_capacity: the static settings used (Python ints).
  """

  num_pairs: jax.Array
  pairs_dropped: jax.Array
  max_tile_entries: jax.Array
  entries_dropped: jax.Array
  pair_budget: int = struct.field(pytree_node=False)
  tile_capacity: int = struct.field(pytree_node=False)

  @property
  def total(self) -> jax.Array:
    """() int32: everything dropped; 0 means the render is exact."""
    return self.pairs_dropped + self.entries_dropped


@struct.dataclass
class TileLists:
  """Per-tile depth-sorted Gaussian lists for one camera.

  Attributes:
    gauss_ids: (P,) int32, Gaussian index per sorted pair; tile-major, front-to-back within a tile.
      Entries past the used pairs are padding (pointing at Gaussian 0, never read unmasked).
    tile_start: (T,) int32, first index into gauss_ids of each tile's list (T = tiles_y·tiles_x,
      row-major).
    tile_count: (T,) int32, list length per tile, already capped at the tile capacity.
    overflow: Overflow.
  """

  gauss_ids: jax.Array
  tile_start: jax.Array
  tile_count: jax.Array
  overflow: Overflow


def tile_grid(width: int, height: int, tile_size: int) -> tuple[int, int]:
  """(tiles_x, tiles_y) covering the image."""
  return -(-width // tile_size), -(-height // tile_size)


def depth_sort_key(depths: jax.Array) -> jax.Array:
  """(N,) float depths -> (N,) integer keys in the same order (int32; int64 for float64 depths).

  IEEE floats of one sign order like their bit patterns read as integers: positive depths keep
  their order bit-cast to int32; negative ones (behind the camera) get their magnitude bits
  flipped so that they order below, and ascending, too. -0.0 is first made +0.0 (jnp.sort treats
  them as equal). NaN depths are not supported.
  """
  wide = depths.dtype == jnp.float64
  itype = jnp.int64 if wide else jnp.int32
  d = jnp.where(depths == 0, 0, depths).astype(jnp.float64 if wide else jnp.float32)
  bits = jax.lax.bitcast_convert_type(d, itype)
  return bits ^ ((bits >> (63 if wide else 31)) & jnp.array(jnp.iinfo(itype).max, itype))


def _fits_int32_key(num_tiles: int, n: int) -> bool:
  """Whether tile · N + rank (sentinel tile included) fits in an int32."""
  return (num_tiles + 1) * n < 2**31


def bin_gaussians(
    means2d: jax.Array,
    radii: jax.Array,
    depths: jax.Array,
    *,
    width: int,
    height: int,
    tile_size: int,
    pair_budget: int,
    tile_capacity: int,
) -> TileLists:
  """Expands each Gaussian to the tiles its square [mean ± radius] touches, sorts by (tile, depth).

  Args:
    means2d: (N, 2) float pixel coordinates.
    radii: (N,) int32 screen radius; 0 marks a culled Gaussian.
    depths: (N,) float camera z (sort key within a tile).
    width, height, tile_size: static image and tile size in pixels.
    pair_budget: static number of (Gaussian, tile) pairs materialised.
    tile_capacity: static maximum list length composited per tile.
  Returns:
    TileLists; Gaussians whose square misses the image get no pair (that is the image cull).
  """
  tiles_x, tiles_y = tile_grid(width, height, tile_size)
  num_tiles = tiles_x * tiles_y
  m = jax.lax.stop_gradient(means2d)
  r = radii.astype(m.dtype)
  # A pixel centre c with |c − mean| ≤ r lies in tile floor(c / ts), so these ranges cover every
  # pixel the Gaussian can reach. Clip in float first: culled-but-huge values must not wrap ints.
  def tile_range(center, n):
    lo = jnp.clip(jnp.floor((center - r) / tile_size), 0, n)
    hi = jnp.clip(jnp.floor((center + r) / tile_size) + 1, 0, n)
    return lo.astype(jnp.int32), hi.astype(jnp.int32)
  x0, x1 = tile_range(m[:, 0], tiles_x)
  y0, y1 = tile_range(m[:, 1], tiles_y)
  w = x1 - x0
  n_tiles = jnp.where(radii > 0, w * (y1 - y0), 0)  # (N,) int32

  ends = jnp.cumsum(n_tiles, dtype=jnp.int32)  # inclusive prefix sum
  num_pairs = ends[-1]
  p = jnp.arange(pair_budget, dtype=jnp.int32)
  # Pair p belongs to the first Gaussian whose inclusive end exceeds p.
  g = jnp.clip(jnp.searchsorted(ends, p, side="right"), 0, means2d.shape[0] - 1).astype(jnp.int32)
  local = p - (ends[g] - n_tiles[g])
  wg = jnp.maximum(w[g], 1)
  tile = (y0[g] + local // wg) * tiles_x + (x0[g] + local % wg)
  used = p < num_pairs
  tile = jnp.where(used, tile, num_tiles)  # sentinel sorts past every real tile

  n = means2d.shape[0]
  # Depth rank per Gaussian (ties by index): the only per-Gaussian sort, on an int32 key.
  by_depth = jnp.argsort(depth_sort_key(jax.lax.stop_gradient(depths)), stable=True).astype(jnp.int32)
  rank = jnp.zeros((n,), jnp.int32).at[by_depth].set(jnp.arange(n, dtype=jnp.int32))
  # Every pair sort below is a one- or two-operand sort of int32 keys, which XLA sends to CUB's
  # radix sort on NVIDIA GPUs (three operands or float keys take the slow comparator sort).
  if _fits_int32_key(num_tiles, n):
    # One int32 key, tile in the high part (tile · N + depth rank): no payload to move, and the
    # Gaussian id is recovered from the rank.
    key = jax.lax.sort(tile * n + rank[g])
    sorted_tile = key // n
    sorted_g = by_depth[key % n]
  else:
    # Too many tiles × Gaussians for one int32: two stable passes (depth rank, then tile), each
    # an int32 key with the pair index as payload, give the same (tile, rank) order.
    _, perm = jax.lax.sort((rank[g], p), num_keys=1, is_stable=True)
    sorted_tile, perm = jax.lax.sort((tile[perm], perm), num_keys=1, is_stable=True)
    sorted_g = g[perm]
  tile_ids = jnp.arange(num_tiles, dtype=jnp.int32)
  start = jnp.searchsorted(sorted_tile, tile_ids, side="left").astype(jnp.int32)
  end = jnp.searchsorted(sorted_tile, tile_ids, side="right").astype(jnp.int32)
  count = end - start

  overflow = Overflow(
      num_pairs=num_pairs,
      pairs_dropped=jnp.maximum(num_pairs - pair_budget, 0),
      max_tile_entries=jnp.max(count),
      entries_dropped=jnp.sum(jnp.maximum(count - tile_capacity, 0)),
      pair_budget=pair_budget,
      tile_capacity=tile_capacity,
  )
  return TileLists(
      gauss_ids=sorted_g,
      tile_start=start,
      tile_count=jnp.minimum(count, tile_capacity),
      overflow=overflow,
  )
