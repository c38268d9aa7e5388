"""Closed-form checks of the renderer's constants and rules, and of the step's view-confidence weights.

Each value here is derived by hand (or from the published formulas), not from another renderer: the tile and
dense renderers share the projection, SH code and 3DGS constants, so only a closed form catches a wrong one.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splatshot_jax import guidance
from splatshot_jax.cameras import Camera
from splatshot_jax.gaussians import Gaussians
from splatshot_jax.render import eval_sh, project_gaussians, render, render_dense
from splatshot_jax.render import project as project_lib

W, H = 24, 20
PX, PY = 11, 9  # the pixel the single Gaussians are centred on
F, Z = 30.0, 2.0


def _camera(dtype=jnp.float32, fx=F, fy=F):
  """Identity pose; the principal point puts the optical axis through the centre of pixel (PX, PY)."""
  K = jnp.asarray([[fx, 0, PX + 0.5], [0, fy, PY + 0.5], [0, 0, 1]], dtype)
  return Camera(jnp.eye(4, dtype=dtype), K, W, H)


def _gaussians(means, scales, opacities, colors, dtype=jnp.float32):
  n = len(means)
  op = np.asarray(opacities, np.float64)
  return Gaussians(
      means=jnp.asarray(means, dtype),
      log_scales=jnp.asarray(np.log(np.broadcast_to(np.asarray(scales, np.float64)[:, None], (n, 3))), dtype),
      quats=jnp.asarray(np.tile([1.0, 0, 0, 0], (n, 1)), dtype),
      opacity_logits=jnp.asarray(np.log(op) - np.log1p(-op), dtype),
      sh=jnp.asarray((np.asarray(colors, np.float64) - 0.5)[:, None, :] / project_lib.SH_C0, dtype),
  )


def _on_axis(s, o, color=(0.3, 0.6, 0.9), dtype=jnp.float32):
  return _gaussians([[0.0, 0.0, Z]], [s], [o], [color], dtype)


def _offsets():
  """(H, W, 2) pixel-centre offsets from the centre of pixel (PX, PY)."""
  i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
  return np.stack([j - PX, i - PY], -1).astype(np.float64)


def test_round_gaussian_conic_on_the_optical_axis():
  """Σ' = (f s / z)² I + 0.3 I: conic = (1/σ², 0, 1/σ²) per axis, with fx ≠ fy."""
  s = 0.05
  with jax.enable_x64(True):
    proj = project_gaussians(_on_axis(s, 0.5, dtype=jnp.float64), _camera(jnp.float64, fx=F, fy=1.3 * F))
  a, b, c = np.asarray(proj.conics[0])
  np.testing.assert_allclose(a, 1 / ((F * s / Z) ** 2 + 0.3), rtol=1e-12)
  np.testing.assert_allclose(c, 1 / ((1.3 * F * s / Z) ** 2 + 0.3), rtol=1e-12)
  assert b == 0.0
  np.testing.assert_allclose(np.asarray(proj.means2d[0]), [PX + 0.5, PY + 0.5], atol=1e-12)
  np.testing.assert_allclose(float(proj.depths[0]), Z)


@pytest.mark.parametrize("renderer", ["tile", "dense"])
def test_opaque_gaussian_alpha_is_clamped_to_099_with_zero_gradient(renderer):
  """o ≈ 1 centred on a pixel: α there is exactly 0.99 (3DGS clamp), and that pixel sends no gradient to the
  opacity or the mean (min() passes none to the clamped branch). Neighbours follow o·exp(−½ d²/σ²)."""
  s, o = 0.1, 1 - 1e-6
  sig2 = (F * s / Z) ** 2 + 0.3
  bg = jnp.asarray([0.1, 0.2, 0.3])
  with jax.enable_x64(True):
    cam = _camera(jnp.float64)
    g = _on_axis(s, o, dtype=jnp.float64)

    @jax.jit  # the dense renderer is plain jnp: eager op-by-op autodiff of it is several times slower
    def alpha_img(g):
      if renderer == "tile":
        return render(g, cam, background=bg).alpha
      return render_dense(g, cam, background=bg)["alpha"]

    alpha = np.asarray(alpha_img(g))
    assert alpha[PY, PX] == pytest.approx(0.99, abs=1e-12)
    d2 = np.sum(_offsets() ** 2, -1)
    expect = np.minimum(0.99, o * np.exp(-0.5 * d2 / sig2))
    expect = np.where(expect >= 1 / 255, expect, 0.0)
    np.testing.assert_allclose(alpha, expect, atol=1e-12)
    grad_at = jax.jit(jax.grad(lambda g, i, j: alpha_img(g)[i, j]))
    grad = grad_at(g, PY, PX)
    assert float(grad.opacity_logits[0]) == 0.0
    assert np.all(np.asarray(grad.means) == 0.0)
    # One pixel right of centre is unclamped: α = o·e^{−1/(2σ²)} and ∂α/∂logit = α(1 − o).
    grad1 = grad_at(g, PY, PX + 1)
    a1 = o * np.exp(-0.5 / sig2)
    np.testing.assert_allclose(float(grad1.opacity_logits[0]), a1 * (1 - o), rtol=1e-6)
    # ∂α/∂x_world = α · (dx/σ²) · f/z with dx = 1 px.
    np.testing.assert_allclose(float(grad1.means[0, 0]), a1 / sig2 * F / Z, rtol=1e-9)


@pytest.mark.parametrize("renderer", ["tile", "dense"])
def test_alpha_below_1_over_255_contributes_nothing(renderer):
  """Pixels where o·G < 1/255 get exactly the background; a Gaussian with o < 1/255 is culled entirely.

  Both renderers: the tile one also cuts at its radius (derived from 255 separately), the dense one only by α.
  """
  s, o = 0.05, 0.6
  sig2 = (F * s / Z) ** 2 + 0.3
  col = np.array([0.9, 0.1, 0.4])
  bg = np.array([0.25, 0.5, 0.75])

  def draw(g):
    if renderer == "tile":
      out = render(g, _camera(), background=tuple(bg))
      return np.asarray(out.rgb, np.float64), np.asarray(out.alpha)
    out = jax.jit(lambda g: render_dense(g, _camera(), background=tuple(bg)))(g)
    return np.asarray(out["rgb"], np.float64), np.asarray(out["alpha"])

  rgb, alpha = draw(_on_axis(s, o, col))
  raw = o * np.exp(-0.5 * np.sum(_offsets() ** 2, -1) / sig2)
  faint = raw < 1 / 255
  assert faint.any() and (~faint).sum() > 4
  np.testing.assert_array_equal(rgb[faint], np.broadcast_to(bg.astype(np.float32), rgb[faint].shape))
  np.testing.assert_array_equal(alpha[faint], 0.0)
  np.testing.assert_allclose(alpha[~faint], raw[~faint], rtol=1e-5)
  lit = raw[~faint][:, None]
  np.testing.assert_allclose(rgb[~faint], lit * col + (1 - lit) * bg, atol=1e-6)  # background weighted by T
  # Just under the threshold even at its centre: no pixel changes.
  rgb, alpha = draw(_on_axis(0.5, 0.998 / 255, col))
  assert np.all(alpha == 0.0)
  if renderer == "tile":
    assert int(render(_on_axis(0.5, 0.998 / 255, col), _camera()).radii[0]) == 0
  # Just over it at its centre: that pixel is touched.
  rgb, alpha = draw(_on_axis(0.5, 1.05 / 255, col))
  assert float(alpha[PY, PX]) == pytest.approx(1.05 / 255, rel=1e-3)


@pytest.mark.parametrize("renderer", ["tile", "dense"])
def test_early_termination_on_a_stack_of_identical_layers(renderer):
  """k identical screen-filling layers with α = o at the centre pixel: compositing keeps the first m layers with
  (1 − o)^m ≥ 1e-4 (m = 13 for o = 0.5) and stops; colour = Σ_{j<m} c_j o (1 − o)^j + (1 − o)^m · bg."""
  n, o = 20, 0.5
  rng = np.random.default_rng(0)
  colors = rng.uniform(0, 1, (n, 3))
  depths = 2.0 + 0.1 * np.arange(n)
  bg = np.array([0.2, 0.4, 0.6])
  with jax.enable_x64(True):
    g = _gaussians(np.stack([np.zeros(n), np.zeros(n), depths], -1), np.full(n, 50.0), np.full(n, o), colors,
                   dtype=jnp.float64)
    cam = _camera(jnp.float64)
    if renderer == "tile":
      out = render(g, cam, background=tuple(bg), chunk=4)  # the stop falls in the 4th chunk
      rgb, alpha = np.asarray(out.rgb), np.asarray(out.alpha)
    else:
      out = jax.jit(lambda g: render_dense(g, cam, background=tuple(bg)))(g)
      rgb, alpha = np.asarray(out["rgb"]), np.asarray(out["alpha"])
  m = math.floor(math.log(1e-4) / math.log(1 - o))
  assert m == 13
  T = (1 - o) ** np.arange(n + 1)
  expect = np.sum(colors[:m] * (o * T[:m])[:, None], 0) + T[m] * bg
  np.testing.assert_allclose(rgb[PY, PX], expect, atol=1e-12)
  np.testing.assert_allclose(alpha[PY, PX], 1 - T[m], atol=1e-12)


# ----------------------------------------------------------------------------------------------
# SH: the basis constants against their published closed forms, and orthonormality of eval_sh.

_SQ = math.sqrt
_PI = math.pi
SH_C0_PUBLISHED = 0.28209479177387814  # 1 / (2√π)
SH_C1_PUBLISHED = 0.4886025119029199  # √3 / (2√π)
# Real SH normalisations (3DGS `sh_utils.py`, plenoctree), as closed forms.
SH_C2_PUBLISHED = (_SQ(15 / _PI) / 2, -_SQ(15 / _PI) / 2, _SQ(5 / _PI) / 4, -_SQ(15 / _PI) / 2, _SQ(15 / _PI) / 4)
SH_C3_PUBLISHED = (-_SQ(35 / (2 * _PI)) / 4, _SQ(105 / _PI) / 2, -_SQ(21 / (2 * _PI)) / 4, _SQ(7 / _PI) / 4,
                   -_SQ(21 / (2 * _PI)) / 4, _SQ(105 / _PI) / 4, -_SQ(35 / (2 * _PI)) / 4)


def test_sh_constants_are_the_published_values():
  assert project_lib.SH_C0 == pytest.approx(SH_C0_PUBLISHED, rel=1e-15)
  assert project_lib.SH_C0 == pytest.approx(1 / (2 * _SQ(_PI)), rel=1e-15)
  assert project_lib.SH_C1 == pytest.approx(SH_C1_PUBLISHED, rel=1e-15)
  assert project_lib.SH_C1 == pytest.approx(_SQ(3) / (2 * _SQ(_PI)), rel=1e-15)
  np.testing.assert_allclose(project_lib.SH_C2, SH_C2_PUBLISHED, rtol=1e-15)
  np.testing.assert_allclose(project_lib.SH_C3, SH_C3_PUBLISHED, rtol=1e-15)
  from splatshot_jax import gaussians as gs  # the colour <-> DC map has its own copy of C0
  assert gs.SH_C0 == project_lib.SH_C0


def test_sh_basis_is_orthonormal_on_the_sphere():
  """∫ Y_i Y_j dΩ = δ_ij for the 16 functions eval_sh evaluates (Gauss-Legendre in cos θ × uniform φ: exact for
  these polynomials). Catches a wrong constant or polynomial in any band; the sign convention is gsplat's (oracle)."""
  nodes, weights = np.polynomial.legendre.leggauss(12)
  phi = np.arange(24) * 2 * np.pi / 24
  ct, ph = np.meshgrid(nodes, phi, indexing="ij")
  st = np.sqrt(1 - ct ** 2)
  dirs = np.stack([st * np.cos(ph), st * np.sin(ph), ct], -1).reshape(-1, 3)
  w = (np.broadcast_to(weights[:, None], ct.shape) * (2 * np.pi / 24)).reshape(-1)
  with jax.enable_x64(True):
    basis = []
    for k in range(16):
      sh = np.zeros((len(dirs), 16, 3))
      sh[:, k, 0] = 1.0
      basis.append(np.asarray(eval_sh(jnp.asarray(sh), jnp.asarray(dirs), 3))[:, 0])
  Y = np.stack(basis, -1)
  gram = (Y * w[:, None]).T @ Y
  np.testing.assert_allclose(gram, np.eye(16), atol=1e-12)


# ----------------------------------------------------------------------------------------------
# View-confidence weights of the step.


def test_confidence_weights_are_softmax_of_minus_t_l1():
  rng = np.random.default_rng(0)
  V = 4
  images = rng.uniform(0, 1, (V, 6, 5, 3))
  renders = images + rng.normal(size=images.shape) * np.array([0.02, 0.1, 0.3, 0.05])[:, None, None, None]
  for temp in (10.0, 3.0):
    w = np.asarray(guidance.confidence_weights(jnp.asarray(renders), jnp.asarray(images), temp), np.float64)
    l1 = np.abs(renders - images).mean(axis=(1, 2, 3))
    e = np.exp(-temp * (l1 - l1.min()))
    np.testing.assert_allclose(w, e / e.sum(), rtol=1e-5)
    assert np.argmax(w) == 0 and np.argmin(w) == 2  # the view the model explains best gets the most say
  assert guidance.GuidanceConfig().confidence_temperature == 10.0  # the paper's softmax(−10 L1)
