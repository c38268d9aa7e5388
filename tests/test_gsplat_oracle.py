"""Projection, SH colour and full renders against gsplat's pure-PyTorch reference (an independent oracle).

`test_render.py` checks the tile rasterizer against the dense renderer, but both share the projection, the SH
evaluation and the 3DGS constants, so a wrong constant there changes both. Here the reference is gsplat 1.5.3's
`gsplat.cuda._torch_impl` (`_fully_fused_projection`, `_quat_scale_to_covar_preci`, `_spherical_harmonics`):
written by others, run on CPU in float64. Its `_rasterize_to_pixels` needs CUDA (`rasterize_to_indices_in_range`)
and nerfacc, so the compositing step of the oracle is a sequential front-to-back loop written here from the 3DGS
rules (α = min(0.99, o·G), skip α < 1/255 or a positive exponent, stop before T < 1e-4), sharing no code with ours;
gradients of the oracle are torch autograd.

Conventions that differ on purpose (and how far):
  - α clamp: gsplat's CUDA kernels clamp at 0.999, 3DGS (and we) at 0.99. The oracle uses 0.99; with 0.999 the
    render differs only where some o·G > 0.99 (checked below: identical where no Gaussian reaches 0.99).
  - screen radius (tile cut-off): gsplat's torch reference uses a 3.33σ box per axis, its CUDA kernel
    ceil(min(3.33, sqrt(2 ln(255 o)))·sqrt(Σ'ᵢᵢ)) per axis; ours is ceil(sqrt(2 ln(255 o))·sqrt(λ_max(Σ'))) in every
    direction (no 3.33 cap), so ours ≥ gsplat-CUDA's on both axes, equal for a round Gaussian with o ≤ 0.99·e^{5.5}/255.
    Our cut-off is exact (α < 1/255 beyond it), so renders match a no-cut-off dense oracle to float error.
  - culling: gsplat's reference marks off-image Gaussians with radius 0; we cull them in the binning. gsplat
    clamps det ≥ 1e-10, we cull det ≤ 0 (the same set after eps2d > 0). We also cull o < 1/255 (as gsplat's CUDA).
  - SH: gsplat's `_spherical_harmonics` returns the raw sum; the renderer adds 0.5 and clamps at 0 (as ours).
    gsplat writes the l = 2, m = 0 basis as 0.946 z² − 0.315 (unit dirs), we as 0.315 (2z² − x² − y²): equal on
    the sphere. Coefficient layout (N, K, 3) with K in gsplat's / 3DGS order: same.
  - T stop: gsplat stops when T·(1 − α) ≤ 1e-4, 3DGS and we when < 1e-4: differ only at equality.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")

from splatshot_jax.cameras import Camera  # noqa: E402
from splatshot_jax.gaussians import Gaussians  # noqa: E402
from splatshot_jax.render import project_gaussians, render, sh_colors  # noqa: E402

W, H = 40, 32
NEAR = 0.01


def _seed() -> int:
  env = os.environ.get("RENDER_TEST_SEED")
  return int(env) if env else int(np.random.default_rng().integers(2**31))


def _camera(rng):
  """A camera 3 units from the origin looking at it (small random yaw/pitch), off-centre K."""
  yaw, pitch = rng.uniform(-0.4, 0.4), rng.uniform(-0.2, 0.2)
  cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
  R = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]]) @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
  vm = np.eye(4)
  vm[:3, :3] = R
  vm[:3, 3] = [rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), 3.0]
  f = rng.uniform(35, 50)
  K = np.array([[f, 0, W / 2 + rng.uniform(-2, 2)], [0, f * 1.1, H / 2 + rng.uniform(-2, 2)], [0, 0, 1]])
  return vm, K


def _scene(rng, vm, n=48, degree=3):
  """Random head-sized blob plus the hard cases: near-plane, needles, screen-filling, behind, off-image.

  Built in camera space and mapped to world with the camera's inverse, so the special cases sit where intended.
  """
  cam_pts = np.stack([rng.normal(size=n) * 0.5, rng.normal(size=n) * 0.4, 3.0 + rng.normal(size=n) * 0.3], -1)
  log_scales = rng.uniform(-3.0, -1.7, size=(n, 3))
  i = 0
  # Near plane: just in front of and just behind it (z in camera space), small and on the optical axis.
  for z in (NEAR * 1.5, NEAR * 3, NEAR * 0.5):
    cam_pts[i] = [rng.normal() * 1e-3, rng.normal() * 1e-3, z]
    log_scales[i] = np.log([2e-3, 2e-3, 2e-3])
    i += 1
  # Needles: one axis 300x longer than the others (the 2D covariance is eps2d-dominated across the needle).
  for _ in range(4):
    log_scales[i] = np.log(rng.permutation([3e-4, 3e-4, 0.3]))
    i += 1
  opacity_logits = rng.normal(size=n) * 1.5 + 0.5
  # Screen-filling: σ far larger than the view, and opaque enough (o > 0.9) to cover every pixel whatever the draw.
  for _ in range(2):
    log_scales[i] = np.log([3.0, 3.0, 3.0]) + rng.normal(size=3) * 0.1
    cam_pts[i, 2] = 4.0 + rng.uniform(0, 1)
    opacity_logits[i] = 2.5 + rng.uniform(0, 1)
    i += 1
  cam_pts[i, 2] = -1.0  # behind the camera
  cam_pts[i + 1, 0] = 6.0  # far off the image
  R, t = vm[:3, :3], vm[:3, 3]
  means = (cam_pts - t) @ R  # world = Rᵀ (p − t)
  return Gaussians(means=means, log_scales=log_scales, quats=rng.normal(size=(n, 4)),
                   opacity_logits=opacity_logits,
                   sh=rng.normal(size=(n, (degree + 1) ** 2, 3)) * 0.3)


def _jax(tree, dtype):
  return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def _t(x):
  return torch.tensor(np.asarray(x, np.float64), dtype=torch.float64)


def _gsplat_project(g, vm, K, eps2d=0.3):
  """gsplat reference projection in float64 torch. Returns radii (N, 2), means2d, depths, conics (N, ...)."""
  covars, _ = torch_impl._quat_scale_to_covar_preci(g["quats"], torch.exp(g["log_scales"]), compute_preci=False)
  radii, means2d, depths, conics, _ = torch_impl._fully_fused_projection(
      g["means"], covars, _t(vm)[None], _t(K)[None], W, H, eps2d=eps2d, near_plane=NEAR)
  return radii[0], means2d[0], depths[0], conics[0], covars


def _torch_params(g, requires_grad=False):
  return {k: _t(getattr(g, k)).requires_grad_(requires_grad)
          for k in ("means", "log_scales", "quats", "opacity_logits", "sh")}


def _oracle_render(g, vm, K, background, alpha_max=0.99):
  """Dense front-to-back compositing of gsplat's projection and SH colours (3DGS rules), float64 torch.

  Returns rgb (H, W, 3), alpha (H, W) as torch tensors (differentiable in g's tensors).
  """
  _, means2d, depths, conics, _ = _gsplat_project(g, vm, K)
  campos = -_t(vm[:3, :3]).T @ _t(vm[:3, 3])
  colors = torch.clamp_min(torch_impl._spherical_harmonics(3, g["means"] - campos, g["sh"]) + 0.5, 0.0)
  opac = torch.sigmoid(g["opacity_logits"])
  a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]
  det2d = 1.0 / (a * c - b * b)  # det of the covariance: the conic's inverse determinant
  valid = (depths > NEAR) & (det2d > 0) & (opac >= 1 / 255)
  ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5,
                          torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
  T = torch.ones(H, W, dtype=torch.float64)
  rgb = torch.zeros(H, W, 3, dtype=torch.float64)
  done = torch.zeros(H, W, dtype=torch.bool)
  for i in torch.argsort(depths.detach()).tolist():
    if not bool(valid[i]):
      continue
    dx, dy = xs - means2d[i, 0], ys - means2d[i, 1]
    sigma = 0.5 * (a[i] * dx * dx + c[i] * dy * dy) + b[i] * dx * dy
    alpha = torch.clamp_max(opac[i] * torch.exp(-sigma), alpha_max)
    use = (sigma >= 0) & (alpha >= 1 / 255) & ~done
    next_T = T * (1 - alpha)
    stop = use & (next_T < 1e-4)
    use = use & ~stop
    done = done | stop
    w = torch.where(use, alpha * T, torch.zeros_like(T))
    rgb = rgb + w[..., None] * colors[i]
    T = torch.where(use, next_T, T)
  rgb = rgb + T[..., None] * _t(background)
  return rgb, 1 - T


def test_projection_matches_gsplat():
  """means2d, depths, conics (float64, every valid Gaussian incl. near-plane, needle, huge) and radius conventions."""
  seed = _seed()
  rng = np.random.default_rng(seed)
  for _ in range(3):
    vm, K = _camera(rng)
    g = _scene(rng, vm)
    radii_g, m2d_g, depth_g, con_g, _ = _gsplat_project(_torch_params(g), vm, K)
    with jax.enable_x64(True):
      proj = project_gaussians(_jax(g, jnp.float64), Camera(jnp.asarray(vm), jnp.asarray(K), W, H),
                               near_plane=NEAR)
      ours = jax.tree.map(np.asarray, proj)
    # Our validity: in front, positive-definite, o ≥ 1/255. gsplat: in front and det > 0 (before its image cull).
    in_front = depth_g.numpy() > NEAR
    expect_valid = in_front & (ours.opacities >= 1 / 255)
    np.testing.assert_array_equal(ours.valid, expect_valid, err_msg=f"seed {seed}")
    v = ours.valid
    np.testing.assert_allclose(ours.depths, depth_g.numpy(), rtol=1e-12, atol=1e-12, err_msg=f"seed {seed}")
    np.testing.assert_allclose(ours.means2d[v], m2d_g.numpy()[v], rtol=1e-10, atol=1e-9, err_msg=f"seed {seed}")
    # Conics span ~10 orders of magnitude (needles vs screen-filling): compare relative to each Gaussian's scale.
    cg = con_g.numpy()[v]
    scale = np.abs(cg).max(-1, keepdims=True)
    err = np.max(np.abs(ours.conics[v] - cg) / scale)
    assert err < 1e-9, f"seed {seed}: conic rel err {err:.3g}"
    # Radii: ours ≥ gsplat CUDA's opacity-aware per-axis box (see module docstring) on every valid Gaussian.
    cov2d = np.linalg.inv(np.stack([np.stack([cg[:, 0], cg[:, 1]], -1), np.stack([cg[:, 1], cg[:, 2]], -1)], -2))
    extend = np.minimum(3.33, np.sqrt(2 * np.log(np.maximum(ours.opacities[v] * 255, 1.0))))
    box = np.ceil(extend[:, None] * np.sqrt(np.stack([cov2d[:, 0, 0], cov2d[:, 1, 1]], -1)))
    assert np.all(ours.radii[v] >= np.max(box, -1) - 1e-9), f"seed {seed}"
    # ... and ours is not loose: at most the λ_max-circle (no 3.33 cap) of the same opacity rule, +1 for the ceil.
    lam = np.linalg.eigvalsh(cov2d)[:, -1]
    tight = np.sqrt(2 * np.log(np.maximum(ours.opacities[v] * 255, 1.0)) * lam)
    assert np.all(ours.radii[v] <= np.ceil(tight) + 1e-9) and np.all(ours.radii[v] >= np.floor(tight)), seed
    # Where gsplat's torch reference has a non-zero radius, it agrees that the Gaussian is valid.
    assert np.all(v[(radii_g.numpy() > 0).all(-1) & (ours.opacities >= 1 / 255)]), f"seed {seed}"


def test_round_opaque_radius_equals_gsplat():
  """Round Gaussians on the optical axis, o = 0.9: our radius equals gsplat CUDA's rule exactly."""
  n = 5
  s = np.array([0.01, 0.03, 0.05, 0.1, 0.2])
  g = Gaussians(means=np.stack([np.zeros(n), np.zeros(n), np.full(n, 2.0)], -1), log_scales=np.log(s)[:, None] * np.ones(3),
                quats=np.tile([1.0, 0, 0, 0], (n, 1)), opacity_logits=np.full(n, np.log(0.9 / 0.1)),
                sh=np.zeros((n, 1, 3)))
  K = np.array([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]])
  with jax.enable_x64(True):
    proj = project_gaussians(_jax(g, jnp.float64), Camera(jnp.eye(4), jnp.asarray(K), W, H))
  sig2 = (40 * s / 2.0) ** 2 + 0.3
  expect = np.ceil(np.sqrt(2 * np.log(0.9 * 255)) * np.sqrt(sig2))
  np.testing.assert_array_equal(np.asarray(proj.radii), expect)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_colours_match_gsplat(degree):
  """sh_colors vs gsplat's `_spherical_harmonics` (+0.5, clamp at 0), all four degrees, random coefficients."""
  seed = _seed()
  rng = np.random.default_rng(seed)
  vm, K = _camera(rng)
  g = _scene(rng, vm, n=64, degree=3)
  g = g.replace(sh=rng.normal(size=g.sh.shape) * 0.8)  # large enough that the clamp at 0 is exercised
  campos = -vm[:3, :3].T @ vm[:3, 3]
  ref = torch.clamp_min(torch_impl._spherical_harmonics(degree, _t(g.means - campos), _t(g.sh)) + 0.5, 0).numpy()
  with jax.enable_x64(True):
    ours = np.asarray(sh_colors(_jax(g, jnp.float64), Camera(jnp.asarray(vm), jnp.asarray(K), W, H), degree))
  assert (ref == 0).any() or degree == 0, f"seed {seed}: clamp not exercised"
  # gsplat's basis constants are printed to 13-16 digits: 1e-12 is their precision, not ours.
  np.testing.assert_allclose(ours, ref, rtol=1e-11, atol=1e-12, err_msg=f"seed {seed} degree {degree}")


def test_render_and_gradients_match_gsplat_oracle():
  """Tile renderer (float64) vs the gsplat-projected dense oracle: rgb, alpha and the gradient of a random
  linear loss w.r.t. every parameter (torch autograd of the oracle, incl. through the α clamp)."""
  seed = _seed()
  rng = np.random.default_rng(seed)
  bg = rng.uniform(0, 1, 3)
  vm, K = _camera(rng)
  g = _scene(rng, vm, n=40)
  # A few Gaussians opaque enough that o·G hits the 0.99 clamp at their centre.
  g = g.replace(opacity_logits=np.concatenate([np.full(4, 8.0), g.opacity_logits[4:]]))
  wts = rng.normal(size=(H, W, 3)), rng.normal(size=(H, W))
  tp = _torch_params(g, requires_grad=True)
  rgb_ref, alpha_ref = _oracle_render(tp, vm, K, bg)
  (torch.sum(rgb_ref * _t(wts[0])) + torch.sum(alpha_ref * _t(wts[1]))).backward()
  with jax.enable_x64(True):
    cam = Camera(jnp.asarray(vm), jnp.asarray(K), W, H)
    gj = _jax(g, jnp.float64)

    def loss(gj):
      out = render(gj, cam, background=tuple(bg), near_plane=NEAR, chunk=8)
      return jnp.sum(out.rgb * wts[0]) + jnp.sum(out.alpha * wts[1]), out

    (_, out), grads = jax.value_and_grad(loss, has_aux=True)(gj)
    rgb, alpha = np.asarray(out.rgb), np.asarray(out.alpha)
  assert float(alpha_ref.detach().max()) > 0.9, f"seed {seed}: empty scene"
  assert float(alpha_ref.detach().min()) > 0.5, f"seed {seed}: the screen-filling Gaussians are missing"
  # Measured (float64 both, 3 seeds, 2026-12-01): max abs rgb error 0.8-1.1e-14; bound 2e-13 (~20x).
  np.testing.assert_allclose(rgb, rgb_ref.detach().numpy(), atol=2e-13, err_msg=f"seed {seed}")
  np.testing.assert_allclose(alpha, alpha_ref.detach().numpy(), atol=2e-13, err_msg=f"seed {seed}")
  for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
    ref = tp[name].grad.numpy()
    ours = np.asarray(getattr(grads, name))
    rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    # Measured relative errors 3e-15-4e-14 (float64, 3 seeds); bound 1e-12. The clamped Gaussians get
    # ∂α/∂o = 0 in both (torch's clamp_max passes no gradient to the clamped branch).
    assert rel < 1e-12, f"seed {seed}: ∂{name} rel err {rel:.3g}"


def test_gsplat_alpha_clamp_is_the_only_difference():
  """With gsplat's 0.999 clamp the oracle equals ours where no o·G exceeds 0.99, and differs where one does."""
  seed = _seed()
  rng = np.random.default_rng(seed)
  vm, K = _camera(rng)
  g = _scene(rng, vm, n=30)
  g = g.replace(opacity_logits=np.clip(g.opacity_logits, -5, 3.0))  # o ≤ 0.953 < 0.99: no clamp anywhere
  tp = _torch_params(g)
  rgb99, _ = _oracle_render(tp, vm, K, (0, 0, 0), alpha_max=0.99)
  rgb999, _ = _oracle_render(tp, vm, K, (0, 0, 0), alpha_max=0.999)
  np.testing.assert_allclose(rgb99.numpy(), rgb999.numpy(), atol=1e-15)
  g2 = g.replace(opacity_logits=np.full_like(g.opacity_logits, 9.0))  # o ≈ 0.9999: clamp everywhere
  tp2 = _torch_params(g2)
  a99 = _oracle_render(tp2, vm, K, (0, 0, 0), alpha_max=0.99)[1].numpy()
  a999 = _oracle_render(tp2, vm, K, (0, 0, 0), alpha_max=0.999)[1].numpy()
  assert np.max(np.abs(a99 - a999)) > 1e-4, f"seed {seed}: the clamps should differ here"
