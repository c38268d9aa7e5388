"""The Triton compositor's launch layout on tile grids that are not square (tiles_x != tiles_y), in the interpreter.

Every case before this one had as many tile rows as columns, where reading a tile's row as its column (or the
grid's height as its width) still lands every tile on the image. Here a wide and a tall grid, each with partial
edge tiles, are composited by the Triton kernels (Triton's CPU interpreter) and compared with a float64 numpy
statement of the 3DGS rules per pixel that knows nothing of tiles (each pixel walks all Gaussians front to back);
on the wide grid also the kernels' VJP against the XLA compositor's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("triton")

from splatshot_jax.render.composite import ALPHA_MAX, T_MIN, CompositeConfig, composite  # noqa: E402
from splatshot_jax.render.composite_triton import composite_triton  # noqa: E402
from splatshot_jax.render.project import ALPHA_MIN  # noqa: E402
from splatshot_jax.render.tiles import bin_gaussians, tile_grid  # noqa: E402

TS = 8
CHANNELS = 4
FWD_TOL = 1e-5
VJP_TOL = 1e-4


def _splats(rng, n, width, height):
  """n random splats over the whole image (edge tiles included); radius where α < 1/255 for any opacity ≤ 1."""
  means = np.stack([rng.uniform(0, width, n), rng.uniform(0, height, n)], -1)
  sig = rng.uniform(1.0, 3.0, size=(n, 2))
  rho = rng.uniform(-0.5, 0.5, n)
  cov = np.stack([sig[:, 0]**2, rho * sig[:, 0] * sig[:, 1], sig[:, 1]**2], -1)
  det = cov[:, 0] * cov[:, 2] - cov[:, 1]**2
  conics = np.stack([cov[:, 2], -cov[:, 1], cov[:, 0]], -1) / det[:, None]
  radii = np.ceil(3.5 * sig.max(1)).astype(np.int32)
  opacities = rng.uniform(0.3, 1.0, n)
  features = rng.uniform(-1, 1, size=(n, CHANNELS))
  depths = rng.permutation(n) + 1.0
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return f32(means), f32(conics), f32(opacities), f32(features), jnp.asarray(radii), f32(depths)


def _per_pixel(means, conics, opacities, features, depths, width, height):
  """(H, W, C) image and (H, W) T_final, float64, every pixel over every Gaussian by depth (no tiles)."""
  means, conics, opacities, features = (np.asarray(x, np.float64) for x in (means, conics, opacities, features))
  ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  T = np.ones((height, width))
  img = np.zeros((height, width, features.shape[1]))
  alive = np.ones((height, width), bool)
  for g in np.argsort(np.asarray(depths), kind="stable"):
    dx, dy = xs - means[g, 0], ys - means[g, 1]
    a, b, c = conics[g]
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    alpha = np.minimum(ALPHA_MAX, opacities[g] * np.exp(power))
    ok = alive & (power <= 0) & (alpha >= ALPHA_MIN)
    stop = ok & (T * (1 - alpha) < T_MIN)
    alive &= ~stop
    ok &= ~stop
    img += np.where(ok, alpha * T, 0.0)[..., None] * features[g]
    T = np.where(ok, T * (1 - alpha), T)
  return img, T


@pytest.mark.parametrize("width,height,check_vjp", [(37, 17, True), (17, 37, False)])
def test_triton_kernels_on_a_non_square_tile_grid(width, height, check_vjp):
  tiles_x, tiles_y = tile_grid(width, height, TS)
  assert tiles_x != tiles_y and width % TS and height % TS
  rng = np.random.default_rng(width * 100 + height)
  n = 24
  means, conics, opacities, features, radii, depths = _splats(rng, n, width, height)
  lists = bin_gaussians(means, radii, depths, width=width, height=height, tile_size=TS, pair_budget=16 * n,
                        tile_capacity=256)
  assert int(lists.overflow.total) == 0
  want_img, want_T = _per_pixel(means, conics, opacities, features, depths, width, height)
  # The scene reaches every tile row and column (so a swapped row/column lands somewhere visible).
  assert np.asarray(lists.tile_count).min() > 0

  cfg = CompositeConfig(width=width, height=height, tile_size=TS, chunk=8, tiles_per_step=2)
  args = (means, conics, opacities, features)
  out_t, vjp_t = jax.vjp(lambda *a: composite_triton(cfg, lists, *a, interpret=True), *args)
  for name, got, want in zip(("image", "T_final"), out_t, (want_img, want_T)):
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
    assert err <= FWD_TOL, f"{width}x{height}: {name} max abs err {err:.3g} vs the per-pixel statement"

  if not check_vjp:  # the backward kernel shares the layout; once is enough (the interpreter is slow)
    return
  out_x, vjp_x = jax.vjp(lambda *a: composite(cfg, lists, *a), *args)
  cts = (jnp.asarray(rng.normal(size=out_x[0].shape), jnp.float32),
         jnp.asarray(rng.normal(size=out_x[1].shape), jnp.float32))
  for name, a, b in zip(("means2d", "conics", "opacities", "features"), vjp_t(cts), vjp_x(cts)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
    assert np.linalg.norm(b) > 0 and err <= VJP_TOL, f"{width}x{height}: d{name} rel err {err:.3g}"
