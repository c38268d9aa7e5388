"""Triton compositing kernels, run in Triton's CPU interpreter, vs the XLA compositor.

The kernels are the same source the GPU runs (`render/triton_kernels.py`); here they execute on
torch CPU tensors through `jax.pure_callback` (backend "triton_interpret"), so everything around
the launch (record gather, tile order, grid, custom VJP, segment_sum) is what the GPU path runs.
The interpreter is slow (numpy per kernel statement): scenes are tiny. Fresh random scenes every
run; replay a failure with `TRITON_TEST_SEED=<seed>`. `TRITON_TEST_BACKEND=triton` runs the same
checks with the compiled kernels on a CUDA GPU (experiments/gpu_check.sh).
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("triton")

from splatshot_jax import fit as fit_lib  # noqa: E402
from splatshot_jax.cameras import Camera  # noqa: E402
from splatshot_jax.gaussians import Gaussians  # noqa: E402
from splatshot_jax.render import render, render_views  # noqa: E402
from splatshot_jax.render.composite import ALPHA_MAX, T_MIN, CompositeConfig, composite  # noqa: E402
from splatshot_jax.render.composite_triton import composite_triton, resolve_backend  # noqa: E402
from splatshot_jax.render.project import ALPHA_MIN  # noqa: E402
from splatshot_jax.render.tiles import bin_gaussians  # noqa: E402

BACKEND = os.environ.get("TRITON_TEST_BACKEND", "triton_interpret")
INTERPRET = BACKEND == "triton_interpret"
FWD_TOL = 1e-5  # max abs error of image and T_final vs the XLA compositor
VJP_TOL = 1e-4  # ‖triton − xla‖ / ‖xla‖ per input


def _seed() -> int:
  env = os.environ.get("TRITON_TEST_SEED")
  return int(env) if env else int(np.random.default_rng().integers(2**31))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _splats(rng, n, width, height, channels, ts):
  """n random 2D splats crowded left of the last tile column (which stays empty).

  Opacities up to 1 and centres on pixel centres make some α clamp at 0.99; the crowd makes
  pixels reach T < 1e-4. Returns (means2d, conics, opacities, features, radii, depths), float32.
  """
  means = np.stack([rng.uniform(-3, width, n), rng.uniform(-3, height + 3, n)], -1)
  sig = rng.uniform(0.8, 2.5, size=(n, 2))
  # A stack of wide, nearly opaque layers around one point: pixels there reach T < 1e-4.
  sig[:6] = rng.uniform(3.0, 4.0, size=(6, 2))
  means[:6] = [rng.uniform(0, width / 2), rng.uniform(4, height - 4)] + rng.normal(size=(6, 2)) * 0.5
  rho = rng.uniform(-0.6, 0.6, n)
  cov = np.stack([sig[:, 0]**2, rho * sig[:, 0] * sig[:, 1], sig[:, 1]**2], -1)
  det = cov[:, 0] * cov[:, 2] - cov[:, 1]**2
  conics = np.stack([cov[:, 2], -cov[:, 1], cov[:, 0]], -1) / det[:, None]
  opacities = np.where(rng.random(n) < 0.4, rng.uniform(0.99, 1.0, n), rng.uniform(0.05, 0.99, n))
  opacities[:6] = rng.uniform(0.9, 1.0, 6)
  features = rng.normal(size=(n, channels))
  radii = np.ceil(3.5 * sig.max(1)).astype(np.int32)
  last_col = (-(-width // ts) - 1) * ts
  means[:, 0] = np.minimum(means[:, 0], last_col - radii - 0.75)
  snap = (rng.random(n) < 0.5) & (means[:, 0] > 0) & (means[:, 1] > 0) & (means[:, 1] < height)
  means[snap] = np.floor(means[snap]) + 0.5  # exactly on a pixel centre: α = o there
  depths = rng.uniform(1.0, 5.0, n)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return (f32(means), f32(conics), f32(opacities), f32(features), jnp.asarray(radii), f32(depths))


def _sequential_events(lists, means, conics, opacities, width, height, ts):
  """Numpy statement of the 3DGS rules per pixel: (# pixels stopped by T, # clamped α used)."""
  means, conics, opacities = (np.asarray(x, np.float64) for x in (means, conics, opacities))
  ids, start, count = (np.asarray(x) for x in (lists.gauss_ids, lists.tile_start, lists.tile_count))
  tiles_x = -(-width // ts)
  stopped = clamped = 0
  for t in range(len(count)):
    ys, xs = np.meshgrid(np.arange(ts), np.arange(ts), indexing="ij")
    px = (t % tiles_x) * ts + xs.ravel() + 0.5
    py = (t // tiles_x) * ts + ys.ravel() + 0.5
    inside = (px < width) & (py < height)
    T = np.ones(px.shape)
    alive = inside.copy()
    for g in ids[start[t]:start[t] + count[t]]:
      dx, dy = px - means[g, 0], py - means[g, 1]
      a, b, c = conics[g]
      power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
      raw = opacities[g] * np.exp(power)
      alpha = np.minimum(ALPHA_MAX, raw)
      ok = alive & (power <= 0) & (alpha >= ALPHA_MIN)
      stop = ok & (T * (1 - alpha) < T_MIN)
      stopped += int(stop.sum())
      ok &= ~stop
      alive &= ~stop
      clamped += int((ok & (raw >= ALPHA_MAX)).sum())
      T = np.where(ok, T * (1 - alpha), T)
  return stopped, clamped


# (width, height, tile_size, channels, N): odd sizes with partial edge tiles; C = 4 is
# rgb + depth (no extra features), C = 9 adds 5 extra feature channels; lists far longer than the
# XLA compositor's 8-entry chunk (and than one kernel step).
CASES = [(23, 19, 8, 4, 60), (24, 21, 16, 9, 50)]


@pytest.mark.parametrize("width,height,ts,channels,n", CASES)
def test_composite_kernels_match_xla(width, height, ts, channels, n):
  seed = _seed()
  rng = np.random.default_rng(seed)
  means, conics, opacities, features, radii, depths = _splats(rng, n, width, height, channels, ts)
  lists = bin_gaussians(means, radii, depths, width=width, height=height, tile_size=ts,
                        pair_budget=8 * n + 64, tile_capacity=4096)
  assert int(lists.overflow.total) == 0, seed
  count = np.asarray(lists.tile_count)
  assert count.min() == 0 and count.max() > 8, f"seed {seed}: counts {count} (want empty + long)"
  stopped, clamped = _sequential_events(lists, means, conics, opacities, width, height, ts)
  assert stopped > 0 and clamped > 0, f"seed {seed}: stopped {stopped}, clamped {clamped}"

  cfg = CompositeConfig(width=width, height=height, tile_size=ts, chunk=8, tiles_per_step=2)
  args = (means, conics, opacities, features)
  out_x, vjp_x = jax.vjp(lambda *a: composite(cfg, lists, *a), *args)
  out_t, vjp_t = jax.vjp(lambda *a: composite_triton(cfg, lists, *a, interpret=INTERPRET), *args)
  for name, a, b in zip(("image", "T_final"), out_t, out_x):
    assert a.shape == b.shape, (name, a.shape, b.shape)
    err = float(jnp.max(jnp.abs(a - b)))
    assert err <= FWD_TOL, f"seed {seed}: {name} max abs err {err:.3g} > {FWD_TOL}"
  assert float(jnp.max(out_x[1])) == 1.0 and float(jnp.min(out_x[1])) < 1e-3, seed

  cts = (jnp.asarray(rng.normal(size=out_x[0].shape), jnp.float32),
         jnp.asarray(rng.normal(size=out_x[1].shape), jnp.float32))
  for name, a, b in zip(("means2d", "conics", "opacities", "features"), vjp_t(cts), vjp_x(cts)):
    err = _rel(a, b)
    assert np.linalg.norm(np.asarray(b)) > 0, f"seed {seed}: {name} has no gradient"
    assert err <= VJP_TOL, f"seed {seed}: ‖∂{name} triton − xla‖/‖xla‖ = {err:.3g} > {VJP_TOL}"


# A render-level scene: a small blob in front of a camera at 3 units.
W, H, TS, N, EXTRA = 23, 19, 8, 40, 3


def _scene(rng, n=N):
  means = rng.normal(size=(n, 3)) * [0.4, 0.35, 0.3]
  return Gaussians(
      means=jnp.asarray(means, jnp.float32),
      log_scales=jnp.asarray(rng.uniform(-2.8, -1.8, size=(n, 3)), jnp.float32),
      quats=jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
      opacity_logits=jnp.asarray(rng.normal(size=(n,)) * 2.0 + 0.5, jnp.float32),
      sh=jnp.asarray(rng.normal(size=(n, 4, 3)) * 0.3, jnp.float32),
  )


def _cameras(rng, v):
  vms, Ks = [], []
  for _ in range(v):
    yaw = rng.uniform(-0.4, 0.4)
    vm = np.eye(4)
    vm[:3, :3] = [[np.cos(yaw), 0, -np.sin(yaw)], [0, 1, 0], [np.sin(yaw), 0, np.cos(yaw)]]
    vm[2, 3] = 3.0
    vms.append(vm)
    f = rng.uniform(35, 45)
    Ks.append([[f, 0, W / 2 + rng.uniform(-1, 1)], [0, f, H / 2 + rng.uniform(-1, 1)], [0, 0, 1]])
  return Camera(jnp.asarray(np.stack(vms), jnp.float32), jnp.asarray(np.stack(Ks), jnp.float32),
                W, H)


KEYS = ("rgb", "alpha", "depth", "features")


def test_render_backend_values_and_grad():
  seed = _seed()
  rng = np.random.default_rng(seed)
  g = _scene(rng)
  feats = jnp.asarray(rng.normal(size=(N, EXTRA)), jnp.float32)
  cam = jax.tree.map(lambda x: x[0], _cameras(rng, 1))
  w = {k: jnp.asarray(rng.normal(size=s), jnp.float32)
       for k, s in zip(KEYS, ((H, W, 3), (H, W), (H, W), (H, W, EXTRA)))}

  def loss(g, feats, backend):
    out = render(g, cam, background=(0.2, 0.5, 0.9), features=feats, tile_size=TS, chunk=8,
                 backend=backend)
    return sum(jnp.sum(getattr(out, k) * w[k]) for k in KEYS), out

  grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  (_, out_x), g_x = grad(g, feats, "xla")
  (_, out_t), g_t = grad(g, feats, BACKEND)
  assert float(jnp.max(out_x.alpha)) > 0.9, f"seed {seed}: empty scene"
  for k in KEYS:
    err = float(jnp.max(jnp.abs(getattr(out_t, k) - getattr(out_x, k))))
    tol = FWD_TOL * (4.0 if k == "depth" else 1.0)  # depth is in units of z ≈ 3
    assert err <= tol, f"seed {seed}: {k} max abs err {err:.3g} > {tol}"
  for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
    err = _rel(getattr(g_t[0], name), getattr(g_x[0], name))
    assert err <= VJP_TOL, f"seed {seed}: ‖∂{name} triton − xla‖/‖xla‖ = {err:.3g}"
  err = _rel(g_t[1], g_x[1])
  assert err <= VJP_TOL, f"seed {seed}: ‖∂features triton − xla‖/‖xla‖ = {err:.3g}"


def test_render_views_and_fit_agree_across_backends():
  """render_views (lax.map over views for Triton) and a 3-iteration fit, Triton vs XLA."""
  seed = _seed()
  rng = np.random.default_rng(seed)
  target, g0 = _scene(rng), _scene(rng)
  cams = _cameras(rng, 2)
  kw = dict(tile_size=TS, chunk=8)
  outs = {b: render_views(target, cams, backend=b, **kw) for b in ("xla", BACKEND)}
  for k in ("rgb", "alpha", "depth"):
    err = float(jnp.max(jnp.abs(getattr(outs[BACKEND], k) - getattr(outs["xla"], k))))
    assert err <= 4 * FWD_TOL, f"seed {seed}: render_views {k} max abs err {err:.3g}"

  images = jnp.clip(outs["xla"].rgb, 0.0, 1.0)
  cfg = fit_lib.FitConfig(num_iters=3, render_kwargs=(("tile_size", TS), ("chunk", 8)))
  fitted = {b: fit_lib.fit(g0, cams, images, dataclasses.replace(cfg, backend=b),
                           rng=jax.random.PRNGKey(seed % 1000)).gaussians
            for b in ("xla", BACKEND)}
  for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
    a, b = getattr(fitted[BACKEND], name), getattr(fitted["xla"], name)
    moved = float(jnp.max(jnp.abs(b - getattr(g0, name))))
    assert moved > 1e-4, f"seed {seed}: {name} did not move in the fit"
    err = float(jnp.max(jnp.abs(a - b)))
    assert err <= 1e-4, f"seed {seed}: fitted {name} differ by {err:.3g} between backends"


def test_backend_errors_are_clear():
  with pytest.raises(ValueError, match="expected one of"):
    resolve_backend("cuda")
  if jax.default_backend() != "gpu":
    assert resolve_backend("auto") == "xla"
  assert resolve_backend("auto", jnp.float64) == "xla"
  cfg = CompositeConfig(width=12, height=12, tile_size=6)
  m, con, op, f, radii, depths = _splats(np.random.default_rng(0), 8, 12, 12, 2, 4)
  lists = bin_gaussians(m, radii, depths, width=12, height=12, tile_size=6, pair_budget=64,
                        tile_capacity=64)
  with pytest.raises(ValueError, match="power of two"):
    composite_triton(cfg, lists, m, con, op, f, interpret=INTERPRET)
  with pytest.raises(ValueError, match="features is float16, expected float32"):
    composite_triton(cfg._replace(tile_size=4), lists, m, con, op, f.astype(jnp.float16),
                     interpret=INTERPRET)
