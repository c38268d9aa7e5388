"""Front-to-back alpha compositing over tile lists, with a memory-light custom VJP.

This is the one function a hand-written kernel (CUDA/Triton/Warp behind XLA FFI) would replace:
`composite(cfg, lists, means2d, conics, opacities, features) -> (image, T_final)` has no other
dependency on the rest of the renderer. The pure-XLA version here is vectorised for CPU/GPU:
tiles are processed `tiles_per_step` at a time (sorted by list length so a step's tiles need about
the same number of chunks) and each tile's list is read `chunk` entries at a time, with the
in-chunk transmittance products done as a triangular matmul on log(1 − α).

3DGS rules (Kerbl et al. 2023, gsplat):
  α = min(α_max, o·exp(−½ dᵀ conic d)), d = pixel centre − mean (α_max = cfg.alpha_max: 3DGS 0.99,
  gsplat and the official SplatShot refit 0.999);
  skip when α < 1/255 or the exponent is positive;
  stop before the Gaussian whose inclusion would make T < 1e-4 (it and all later ones are dropped);
  C = Σ fᵢ αᵢ Tᵢ, returned together with T_final (the caller adds T_final·background).

Backward (gsplat's): keep only T_final and the stop position per pixel; walk each tile's list back
to front, recovering Tᵢ = Tᵢ₊₁ / (1 − αᵢ) and the "behind" sum Σ_{j>i} fⱼαⱼTⱼ (projected on the
output cotangent, so it is one scalar per pixel). Memory: O(pixels + Gaussians + pairs).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from splatshot_jax.render.project import ALPHA_MIN
from splatshot_jax.render.tiles import TileLists, tile_grid

ALPHA_MAX = 0.99  # default clamp (3DGS); keeps 1 − α invertible for the backward walk. gsplat: 0.999.
T_MIN = 1e-4  # early-stop transmittance.


class CompositeConfig(NamedTuple):
  """Static settings of the compositor (hashable: used as a nondiff argument)."""

  width: int
  height: int
  tile_size: int = 16
  chunk: int = 32  # list entries per vectorised step
  tiles_per_step: int = 8  # tiles composited side by side per step
  alpha_max: float = ALPHA_MAX  # α clamp (3DGS 0.99; gsplat, hence the official SplatShot refit, 0.999)


def _tile_pixels(cfg: CompositeConfig, dtype) -> jax.Array:
  """(T, tile_size², 2) pixel-centre coordinates of every tile, row-major tiles and pixels."""
  ts = cfg.tile_size
  tiles_x, tiles_y = tile_grid(cfg.width, cfg.height, ts)
  t = jnp.arange(tiles_x * tiles_y)
  i, j = jnp.meshgrid(jnp.arange(ts), jnp.arange(ts), indexing="ij")
  px = (t % tiles_x)[:, None] * ts + j.reshape(-1)[None] + 0.5
  py = (t // tiles_x)[:, None] * ts + i.reshape(-1)[None] + 0.5
  return jnp.stack([px, py], -1).astype(dtype)


def image_to_tiles(img: jax.Array, cfg: CompositeConfig) -> jax.Array:
  """(H, W, ...) -> (T, tile_size², ...), zero-padded to whole tiles."""
  ts = cfg.tile_size
  tiles_x, tiles_y = tile_grid(cfg.width, cfg.height, ts)
  rest = img.shape[2:]
  pad = [(0, tiles_y * ts - cfg.height), (0, tiles_x * ts - cfg.width)] + [(0, 0)] * len(rest)
  x = jnp.pad(img, pad).reshape((tiles_y, ts, tiles_x, ts) + rest)
  x = jnp.moveaxis(x, 2, 1)
  return x.reshape((tiles_y * tiles_x, ts * ts) + rest)


def tiles_to_image(x: jax.Array, cfg: CompositeConfig) -> jax.Array:
  """(T, tile_size², ...) -> (H, W, ...), inverse of image_to_tiles (crops the padding)."""
  ts = cfg.tile_size
  tiles_x, tiles_y = tile_grid(cfg.width, cfg.height, ts)
  rest = x.shape[2:]
  x = x.reshape((tiles_y, tiles_x, ts, ts) + rest)
  x = jnp.moveaxis(x, 2, 1).reshape((tiles_y * ts, tiles_x * ts) + rest)
  return x[:cfg.height, :cfg.width]


def _group_tiles(tile_count: jax.Array, b: int) -> jax.Array:
  """(G, b) int32 tile indices, longest lists first; padding slots point at tile index T."""
  num_tiles = tile_count.shape[0]
  groups = -(-num_tiles // b)
  order = jnp.argsort(-tile_count, stable=True).astype(jnp.int32)
  order = jnp.concatenate([order, jnp.full((groups * b - num_tiles,), num_tiles, jnp.int32)])
  return order.reshape(groups, b)


def _entry_alpha(pix, mu, con, op):
  """Per (pixel, entry) α quantities.

  Args:
    pix: (B, PP, 2) pixel centres; mu: (B, K, 2); con: (B, K, 3); op: (B, K).
  Returns:
    dx, dy, power, raw = o·exp(power), all (B, PP, K).
  """
  dx = pix[:, :, None, 0] - mu[:, None, :, 0]
  dy = pix[:, :, None, 1] - mu[:, None, :, 1]
  ca, cb, cc = con[:, None, :, 0], con[:, None, :, 1], con[:, None, :, 2]
  power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
  raw = op[:, None, :] * jnp.exp(power)
  return dx, dy, power, raw


class _Gathered(NamedTuple):
  valid: jax.Array  # (B, K) bool, entry inside the tile's list
  gid: jax.Array  # (B, K) int32
  mu: jax.Array
  con: jax.Array
  op: jax.Array
  feat: jax.Array


def _gather_chunk(k, start, count, gauss_ids, means2d, conics, opacities, features, chunk):
  pos = k * chunk + jnp.arange(chunk, dtype=jnp.int32)
  valid = pos[None, :] < count[:, None]
  idx = jnp.clip(start[:, None] + pos[None, :], 0, gauss_ids.shape[0] - 1)
  gid = gauss_ids[idx]
  return pos, _Gathered(valid, gid, means2d[gid], conics[gid], opacities[gid], features[gid])


def _padded_lists(lists_start, lists_count, tiles):
  """Start/count per grouped tile slot; padding slots (index T) get an empty list."""
  start = jnp.concatenate([lists_start, jnp.zeros((1,), jnp.int32)])[tiles]
  count = jnp.concatenate([lists_count, jnp.zeros((1,), jnp.int32)])[tiles]
  return start, count


def _forward(cfg, gauss_ids, tile_start, tile_count, means2d, conics, opacities, features):
  dtype = features.dtype
  K, B = cfg.chunk, cfg.tiles_per_step
  C = features.shape[-1]
  pix_all = _tile_pixels(cfg, dtype)
  PP = pix_all.shape[1]
  pix_all = jnp.concatenate([pix_all, jnp.zeros((1, PP, 2), dtype)])  # slot for padding tiles
  tri_incl = jnp.triu(jnp.ones((K, K), dtype))  # [j, k] = 1 if j ≤ k: inclusive prefix sum
  groups = _group_tiles(tile_count, B)
  big = jnp.iinfo(jnp.int32).max

  def group(tiles):
    start, count = _padded_lists(tile_start, tile_count, tiles)
    pix = pix_all[tiles]
    n_chunks = (jnp.max(count) + K - 1) // K

    def cond(s):
      k, _, _, done, _ = s
      return (k < n_chunks) & ~jnp.all(done)

    def body(s):
      k, T, acc, done, stop_pos = s
      _, e = _gather_chunk(k, start, count, gauss_ids, means2d, conics, opacities, features, K)
      _, _, power, raw = _entry_alpha(pix, e.mu, e.con, e.op)
      alpha = jnp.minimum(cfg.alpha_max, raw)
      ok = e.valid[:, None, :] & (power <= 0) & (alpha >= ALPHA_MIN)
      a = jnp.where(ok, alpha, 0)
      L = jnp.log1p(-a)
      cum = L @ tri_incl  # log of Π_{j≤k}(1 − αⱼ) within the chunk
      T_incl = T[..., None] * jnp.exp(cum)
      stop = T_incl < T_MIN  # monotone in k, so ~stop is a prefix
      contrib = ~stop & ~done[..., None]
      # For a contributing entry every earlier entry in the chunk contributes too, so its T is
      # the inclusive product divided by its own factor (1 − α ≥ 0.01).
      w = jnp.where(contrib, a * T_incl / (1 - a), 0)
      # Broadcast-and-sum, not einsum: XLA:CPU runs this tiny-C batched dot slower than a fusion.
      acc = acc + jnp.sum(w[..., None] * e.feat[:, None], 2)
      T = jnp.min(jnp.where(contrib, T_incl, T[..., None]), -1)  # T_incl is monotone in k
      newly = ~done & jnp.any(stop, -1)
      stop_pos = jnp.where(newly, k * K + jnp.sum(~stop, -1, dtype=jnp.int32), stop_pos)
      return k + 1, T, acc, done | newly, stop_pos

    init = (jnp.int32(0), jnp.ones((B, PP), dtype), jnp.zeros((B, PP, C), dtype),
            jnp.zeros((B, PP), bool), jnp.full((B, PP), big, jnp.int32))
    _, T, acc, _, stop_pos = jax.lax.while_loop(cond, body, init)
    return acc, T, stop_pos

  acc, T, stop_pos = jax.lax.map(group, groups)
  num_tiles = tile_count.shape[0]
  flat = groups.reshape(-1)
  # Undo the longest-first ordering; padding slots scatter into a dropped row.
  def unsort(x):
    x = x.reshape((-1,) + x.shape[2:])
    out = jnp.zeros((num_tiles + 1,) + x.shape[1:], x.dtype).at[flat].set(x)
    return out[:num_tiles]
  return unsort(acc), unsort(T), unsort(stop_pos)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _composite(cfg, gauss_ids, tile_start, tile_count, means2d, conics, opacities, features):
  acc, T, _ = _forward(cfg, gauss_ids, tile_start, tile_count, means2d, conics, opacities, features)
  return tiles_to_image(acc, cfg), tiles_to_image(T, cfg)


def _composite_fwd(cfg, gauss_ids, tile_start, tile_count, means2d, conics, opacities, features):
  acc, T, stop_pos = _forward(cfg, gauss_ids, tile_start, tile_count, means2d, conics, opacities,
                              features)
  res = (gauss_ids, tile_start, tile_count, means2d, conics, opacities, features, T, stop_pos)
  return (tiles_to_image(acc, cfg), tiles_to_image(T, cfg)), res


def _composite_bwd(cfg, res, cts):
  gauss_ids, tile_start, tile_count, means2d, conics, opacities, features, T_fin, stop_pos = res
  g_img, g_T_img = cts
  dtype = features.dtype
  K, B = cfg.chunk, cfg.tiles_per_step
  N, C = features.shape
  pix_all = _tile_pixels(cfg, dtype)
  PP = pix_all.shape[1]
  pad1 = lambda x: jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])
  pix_all = pad1(pix_all)
  g_feat_all = pad1(image_to_tiles(g_img.astype(dtype), cfg))
  g_T_all = pad1(image_to_tiles(g_T_img.astype(dtype), cfg))
  T_fin_all = pad1(T_fin)
  stop_all = pad1(stop_pos)
  tri_strict_lower = jnp.tril(jnp.ones((K, K), dtype), -1)  # [j, k] = 1 if j > k
  tri_lower = jnp.tril(jnp.ones((K, K), dtype))  # [j, k] = 1 if j ≥ k: suffix sum
  groups = _group_tiles(tile_count, B)
  D = 2 + 3 + 1 + C  # packed per-Gaussian gradient: means2d, conics, opacity, features

  def group(grads, tiles):
    start, count = _padded_lists(tile_start, tile_count, tiles)
    pix, g_feat, g_T = pix_all[tiles], g_feat_all[tiles], g_T_all[tiles]
    T_final, stop_p = T_fin_all[tiles], stop_all[tiles]
    limit = jnp.minimum(stop_p, count[:, None])
    n_chunks = (jnp.max(limit) + K - 1) // K
    # dT_final/dαᵢ = −T_final/(1 − αᵢ): folds into the behind-sum term.
    g_T_term = g_T * T_final

    def body(s):
      k, T, gS, grads = s
      pos, e = _gather_chunk(k, start, count, gauss_ids, means2d, conics, opacities, features, K)
      dx, dy, power, raw = _entry_alpha(pix, e.mu, e.con, e.op)
      alpha = jnp.minimum(cfg.alpha_max, raw)
      ok = (e.valid[:, None, :] & (pos[None, None, :] < stop_p[..., None]) & (power <= 0)
            & (alpha >= ALPHA_MIN))
      a = jnp.where(ok, alpha, 0)
      L = jnp.log1p(-a)
      T_k = T[..., None] * jnp.exp(-(L @ tri_lower))  # T before entry k = T_after / Π_{j≥k}(1−αⱼ)
      w = a * T_k
      gc = jnp.sum(g_feat[:, :, None] * e.feat[:, None], -1)  # ⟨∂L/∂C, fₖ⟩ per pixel
      wgc = w * gc
      gS_k = gS[..., None] + wgc @ tri_strict_lower  # ⟨∂L/∂C, Σ_{j>k} fⱼαⱼTⱼ⟩
      dA = jnp.where(ok, gc * T_k - (gS_k + g_T_term[..., None]) / (1 - a), 0)
      d_feat = jnp.einsum("bpk,bpc->bkc", w, g_feat)
      unclamped = raw < cfg.alpha_max  # min() passes no gradient to the clamped branch
      d_op = jnp.sum(jnp.where(unclamped, dA * jnp.exp(power), 0), 1)
      d_pow = jnp.where(unclamped, dA * alpha, 0)
      ca, cb, cc = e.con[:, None, :, 0], e.con[:, None, :, 1], e.con[:, None, :, 2]
      d_mx = jnp.sum(d_pow * (ca * dx + cb * dy), 1)
      d_my = jnp.sum(d_pow * (cb * dx + cc * dy), 1)
      d_ca = jnp.sum(d_pow * dx * dx, 1) * -0.5
      d_cb = -jnp.sum(d_pow * dx * dy, 1)
      d_cc = jnp.sum(d_pow * dy * dy, 1) * -0.5
      packed = jnp.concatenate(
          [jnp.stack([d_mx, d_my, d_ca, d_cb, d_cc, d_op], -1), d_feat], -1)  # (B, K, D)
      packed = jnp.where(e.valid[..., None], packed, 0)
      grads = grads.at[e.gid.reshape(-1)].add(packed.reshape(-1, D))
      return k - 1, T_k[..., 0], gS + jnp.sum(wgc, -1), grads

    init = (n_chunks - 1, T_final, jnp.zeros((B, PP), dtype), grads)
    _, _, _, grads = jax.lax.while_loop(lambda s: s[0] >= 0, body, init)
    return grads, None

  grads, _ = jax.lax.scan(group, jnp.zeros((N, D), dtype), groups)
  d_means2d = grads[:, 0:2].astype(means2d.dtype)
  d_conics = grads[:, 2:5].astype(conics.dtype)
  d_op = grads[:, 5].astype(opacities.dtype)
  d_feat = grads[:, 6:]
  return None, None, None, d_means2d, d_conics, d_op, d_feat


_composite.defvjp(_composite_fwd, _composite_bwd)


def composite(
    cfg: CompositeConfig,
    lists: TileLists,
    means2d: jax.Array,
    conics: jax.Array,
    opacities: jax.Array,
    features: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """Composites per-Gaussian features front to back over the tile lists.

  Args:
    cfg: static CompositeConfig (image size, tile size, vectorisation widths).
    lists: TileLists from `bin_gaussians` (same tile size); integer, not differentiated.
    means2d: (N, 2) float pixel coordinates.
    conics: (N, 3) float inverse 2D covariance (a, b, c) of [[a, b], [b, c]].
    opacities: (N,) float in [0, 1].
    features: (N, C) float, anything to composite (colour, depth, label probabilities...).
  Returns:
    image: (H, W, C) Σᵢ fᵢ αᵢ Tᵢ (no background).
    T_final: (H, W) transmittance left after the last composited Gaussian (1 − alpha).
  """
  return _composite(cfg, lists.gauss_ids, lists.tile_start, lists.tile_count, means2d, conics,
                    opacities, features)
