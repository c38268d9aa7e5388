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

from splatshot_jax.render.project import ALPHA_MIN


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
      Entries past the listed pairs (padding, and pairs culled by the ellipse test) are never
      composited; their ids are spread over all Gaussians (slot i -> i mod N) so that a
      per-pair gradient sum (segment_sum) does not pile their zero rows onto one address.
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


def _pair_owners(ends: jax.Array, n_tiles: jax.Array, pair_budget: int) -> jax.Array:
  """(P,) int32 Gaussian owning each pair slot, in O(N + P).

  Each Gaussian with tiles marks its first slot with its index; a running maximum fills the rest
  of its slots (indices increase along the slots). Slots past the last pair get the last owner.
  """
  n = ends.shape[0]
  first = jnp.where(n_tiles > 0, ends - n_tiles, pair_budget)  # out of range: dropped
  marks = jnp.zeros((pair_budget,), jnp.int32).at[first].max(
      jnp.arange(n, dtype=jnp.int32), mode="drop")
  return jax.lax.cummax(marks, axis=0)


def _pair_owners_searchsorted(ends: jax.Array, n_tiles: jax.Array, pair_budget: int) -> jax.Array:
  """`_pair_owners` by binary search, O(P log N): the previous version (benchmark baseline)."""
  del n_tiles
  p = jnp.arange(pair_budget, dtype=jnp.int32)
  g = jnp.searchsorted(ends, p, side="right")
  return jnp.clip(g, 0, ends.shape[0] - 1).astype(jnp.int32)


def _tile_offsets(sorted_tile: jax.Array, num_tiles: int) -> jax.Array:
  """(T + 1,) int32 first slot of each tile in the sorted pairs (T: the sentinel), in O(P + T).

  The first slot of each run of equal tiles is written (no two writes hit one address); a tile
  with no pair starts where the next listed one does (reverse running minimum).
  """
  P = sorted_tile.shape[0]
  slot = jnp.arange(P, dtype=jnp.int32)
  first = jnp.concatenate([jnp.ones((1,), bool), sorted_tile[1:] != sorted_tile[:-1]])
  start = jnp.full((num_tiles + 1,), P, jnp.int32).at[jnp.where(first, sorted_tile, num_tiles + 1)].set(
      slot, mode="drop")
  return jax.lax.cummin(start, axis=0, reverse=True)


def _tile_offsets_searchsorted(sorted_tile: jax.Array, num_tiles: int) -> jax.Array:
  """`_tile_offsets` by binary search (the previous version, benchmark baseline)."""
  ids = jnp.arange(num_tiles + 1, dtype=jnp.int32)
  return jnp.searchsorted(sorted_tile, ids, side="left").astype(jnp.int32)


def ellipse_reaches_tile(means2d, conics, opacities, tx, ty, *, width: int, height: int,
                         tile_size: int) -> jax.Array:
  """Whether some pixel centre of tile (tx, ty) may get α ≥ 1/255 from the Gaussian (per pair).

  α = o·exp(−q/2) with q = dᵀ conic d ≥ 0 reaches 1/255 iff q ≤ 2·ln(255·o). q is minimised over
  the box spanned by the tile's pixel centres (clipped to the image): a convex quadratic is
  smallest at its centre when that is inside the box, else on an edge, where the minimum over one
  free coordinate is closed form. The box contains every pixel centre, so a pair that fails has no
  pixel that composites it; a relative and absolute margin absorbs float32 rounding, so removing
  the failing pairs cannot change an image.

  Args:
    means2d: (P, 2), conics: (P, 3) (a, b, c), opacities: (P,), float; tx, ty: (P,) int32 tiles.
  Returns:
    (P,) bool.
  """
  ts = tile_size
  f = means2d.dtype
  x0 = (tx * ts).astype(f) + 0.5
  x1 = jnp.minimum((tx + 1) * ts, width).astype(f) - 0.5
  y0 = (ty * ts).astype(f) + 0.5
  y1 = jnp.minimum((ty + 1) * ts, height).astype(f) - 0.5
  a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]
  dx0, dx1 = x0 - means2d[:, 0], x1 - means2d[:, 0]
  dy0, dy1 = y0 - means2d[:, 1], y1 - means2d[:, 1]
  q = lambda dx, dy: a * dx * dx + 2 * b * dx * dy + c * dy * dy
  safe = lambda v: jnp.where(v > 0, v, 1)
  # On an edge x = X the best y-offset is −b·X/c clipped to the edge; symmetric for y = Y.
  edge_x = lambda dx: q(dx, jnp.clip(-b * dx / safe(c), dy0, dy1))
  edge_y = lambda dy: q(jnp.clip(-b * dy / safe(a), dx0, dx1), dy)
  q_min = jnp.minimum(jnp.minimum(edge_x(dx0), edge_x(dx1)), jnp.minimum(edge_y(dy0), edge_y(dy1)))
  inside = (dx0 <= 0) & (dx1 >= 0) & (dy0 <= 0) & (dy1 >= 0)
  q_min = jnp.where(inside, 0, q_min)
  thresh = 2 * jnp.log(jnp.maximum(opacities, 1e-30) / ALPHA_MIN)
  return q_min <= thresh + 1e-3 * (1 + jnp.abs(thresh))


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
    conics: jax.Array | None = None,
    opacities: jax.Array | None = None,
    expansion: str = "scan",
) -> TileLists:
  """Expands each Gaussian to the tiles its square [mean ± radius] touches, sorts by (tile, depth).

  Args:
    means2d: (N, 2) float pixel coordinates.
    radii: (N,) int32 screen radius; 0 marks a culled Gaussian.
    depths: (N,) float camera z (sort key within a tile).
    width, height, tile_size: static image and tile size in pixels.
    pair_budget: static number of (Gaussian, tile) pairs materialised (< 2³¹).
    tile_capacity: static maximum list length composited per tile.
    conics: optional (N, 3) float inverse 2D covariances and opacities (N,): with both, pairs whose
      tile no pixel can composite (`ellipse_reaches_tile`) are left out of the lists (they still
      count in num_pairs, which is what the pair budget must hold). Images do not change.
    expansion: "scan" (O(N + P) running max/min) or "searchsorted" (the previous O(P log N)
      binary searches, kept as the benchmark's baseline); same result.
  Returns:
    TileLists; Gaussians whose square misses the image get no pair (that is the image cull).
  """
  if pair_budget >= 2**31:
    raise ValueError(f"bin_gaussians: pair_budget={pair_budget} must be < 2**31 (int32 pair slots)")
  if expansion not in ("scan", "searchsorted"):
    raise ValueError(f"bin_gaussians: expansion={expansion!r}, expected 'scan' or 'searchsorted'")
  owners = _pair_owners if expansion == "scan" else _pair_owners_searchsorted
  offsets = _tile_offsets if expansion == "scan" else _tile_offsets_searchsorted
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
  g = owners(ends, n_tiles, pair_budget)  # pair p belongs to the Gaussian whose range holds p
  local = p - (ends[g] - n_tiles[g])
  wg = jnp.maximum(w[g], 1)
  tx, ty = x0[g] + local % wg, y0[g] + local // wg
  listed = p < num_pairs
  if conics is not None and opacities is not None:
    sg = jax.lax.stop_gradient
    listed &= ellipse_reaches_tile(m[g], sg(conics)[g], sg(opacities)[g], tx, ty, width=width,
                                   height=height, tile_size=tile_size)
  tile = jnp.where(listed, ty * tiles_x + tx, num_tiles)  # sentinel sorts past every real tile

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
    # Too many tiles × Gaussians for one int32 (≈ 300k Gaussians at 560×816 with 8-px tiles):
    # two stable passes (depth rank, then tile), each an int32 key with the pair index as
    # payload, give the same (tile, rank) order.
    _, perm = jax.lax.sort((rank[g], p), num_keys=1, is_stable=True)
    sorted_tile, perm = jax.lax.sort((tile[perm], perm), num_keys=1, is_stable=True)
    sorted_g = g[perm]
  start = offsets(sorted_tile, num_tiles)  # (T + 1,): start[T] = number of listed pairs
  count = start[1:] - start[:-1]
  sorted_g = jnp.where(p < start[num_tiles], sorted_g, p % n)  # spread the unlisted slots

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
      tile_start=start[:num_tiles],
      tile_count=jnp.minimum(count, tile_capacity),
      overflow=overflow,
  )


def scene_pair_budget(num_pairs, margin: float = 1.25) -> int:
  """Static pair budget sized to a scene: the largest need over its views × margin, power of two.

  Args:
    num_pairs: pairs the scene's views need (`out.overflow.num_pairs` of a probe render with a
      generous budget, any shape; the maximum is taken).
    margin: headroom for the Gaussians moving during a refit; overflow is still counted and
      reported by every render (`check_overflow`).
  Returns:
    A Python int ≥ 1: the next power of two ≥ margin · max(num_pairs).
  """
  need = max(1, int(-(-float(jnp.max(jnp.asarray(num_pairs))) * margin // 1)))
  return 1 << (need - 1).bit_length()
