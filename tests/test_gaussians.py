"""Tests for splatshot_jax.gaussians: kNN scale init against brute force, DC colours, random sets."""

import jax
import numpy as np
import pytest

from splatshot_jax import gaussians as gs


def _brute_sqdist(p, k):
  d2 = np.sum((p[:, None] - p[None]) ** 2, -1)
  np.fill_diagonal(d2, np.inf)
  return np.sort(d2, axis=1)[:, :k]


@pytest.mark.parametrize("kind", ["surface", "clustered"])
def test_knn_grid_matches_brute_force(kind):
  rs = np.random.default_rng(0)
  p = rs.normal(size=(5000, 3))
  if kind == "surface":
    p /= np.linalg.norm(p, axis=1, keepdims=True)
  else:  # dense clump, far outliers and exact duplicates exercise the fallback paths
    p[:1000] *= 1e-3
    p[1000:1010] *= 50.0
    p[1010:1015] = p[1015]
  np.testing.assert_allclose(gs.knn_sqdist(p, 3), _brute_sqdist(p, 3), rtol=1e-9, atol=1e-12)


def test_init_from_points_scales_and_colours():
  rs = np.random.default_rng(1)
  p = rs.uniform(size=(300, 3)).astype(np.float32)
  col = rs.integers(0, 256, size=(300, 3), dtype=np.uint8)
  g = gs.init_from_points(p, col, sh_degree=2, init_opacity=0.1)
  assert g.sh.shape == (300, 9, 3) and g.means.dtype == np.float32
  expect = 0.5 * np.log(np.maximum(_brute_sqdist(p.astype(np.float64), 3).mean(1), 1e-7))
  np.testing.assert_allclose(np.asarray(g.log_scales), np.repeat(expect[:, None], 3, 1), atol=1e-5)
  np.testing.assert_allclose(np.asarray(gs.sh_dc_to_rgb(g.sh[:, 0])), col / 255.0, atol=1e-5)
  assert np.all(np.asarray(g.sh[:, 1:]) == 0)
  np.testing.assert_allclose(np.asarray(g.opacities), 0.1, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(g.quats), np.tile([1.0, 0, 0, 0], (300, 1)))


def test_init_from_points_missing_colours():
  p = np.random.default_rng(2).uniform(size=(50, 3))
  g = gs.init_from_points(p, np.zeros((50, 3)))
  np.testing.assert_allclose(np.asarray(g.sh[:, 0]), 0.0, atol=1e-7)  # grey = DC 0
  g = gs.init_from_points(p, None, missing_colors="random", rng=jax.random.PRNGKey(0))
  rgb = np.asarray(gs.sh_dc_to_rgb(g.sh[:, 0]))
  assert rgb.min() >= 0 and rgb.max() <= 1 and rgb.std() > 0.1
  with pytest.raises(ValueError, match="rng"):
    gs.init_from_points(p, None, missing_colors="random")
  with pytest.raises(ValueError, match=r"\(N, 3\)"):
    gs.init_from_points(p[:, :2])


def test_random_gaussians_shapes():
  g = gs.random_gaussians(jax.random.PRNGKey(0), 64, sh_degree=1)
  assert g.means.shape == (64, 3) and g.sh.shape == (64, 4, 3) and g.sh_degree == 1
  o = np.asarray(g.opacities)
  assert o.min() >= 0.3 - 1e-6 and o.max() <= 0.95 + 1e-6
