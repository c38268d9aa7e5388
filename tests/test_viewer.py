"""viewer.html draws what splatshot_jax.render draws: headless-Chromium screenshots vs the renderer.

The avatar is a fresh random head (synthetic.head_gaussians) with random SH bands 1-3 strong enough
that dropping them costs ~10 dB; the seed is in every message (replay with VIEWER_TEST_SEED=<seed>).
Browser tests skip when no chromium is installed (.ci/run installs Debian's).
"""

import json
import os
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splatshot_jax.jobs import outputs
from splatshot_jax import synthetic
from splatshot_jax.cameras import Camera
from splatshot_jax.io import ply
from splatshot_jax.metrics import psnr
from splatshot_jax.render import render
from splatshot_jax.viewer import browser, decode_gaussians, encode_gaussians, viewer_html, write_viewer

W = H = 128
N = 2000
# The issue asks for 30 dB; the viewer reaches ~58-62 dB here (float16 data, float16 accumulation,
# 8-bit output), so 45 dB is held: a single flipped SH term or Jacobian sign then fails (28-37 dB).
PSNR_BAR = 45.0
needs_chromium = pytest.mark.skipif(browser.find_chromium() is None,
                                    reason="no chromium on PATH (.ci/run installs it with apt-get)")


def _seed() -> int:
  env = os.environ.get("VIEWER_TEST_SEED")
  return int(env) if env else int(np.random.default_rng().integers(2**31))


def _avatar(seed: int, n: int = N):
  """Head surfels with SH degree 3: random bands 1-3 (std 0.15) and opacities in ~(0.4, 0.99)."""
  g, _ = synthetic.head_gaussians(n, sh_degree=3, seed=seed % 1000)
  rs = np.random.default_rng(seed)
  sh = np.asarray(g.sh).copy()
  sh[:, 1:] = rs.normal(scale=0.15, size=sh[:, 1:].shape)
  return g.replace(sh=jnp.asarray(sh, jnp.float32),
                   opacity_logits=jnp.asarray(rs.normal(1.5, 1.0, g.num), jnp.float32))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
  seed = _seed()
  g = _avatar(seed)
  cams = synthetic.head_rig(16, width=W, height=H)
  path = write_viewer(tmp_path_factory.mktemp("viewer") / "viewer.html", g, cams)
  return types.SimpleNamespace(seed=seed, g=g, cams=cams, path=path)


def _ref(g, cam, bg, sh_degree=None):
  return np.clip(np.asarray(render(g, cam, background=jnp.asarray(bg, jnp.float32),
                                   sh_degree=sh_degree).rgb), 0.0, 1.0)


def _shot(path, camera, bg="white"):
  img = browser.screenshot(path, W, H, f"camera={camera}&bg={bg}&w={W}&h={H}&ui=0")
  return img.astype(np.float32) / 255.0


def _psnr(a, b):
  return float(psnr(jnp.asarray(a), jnp.asarray(b)))


@needs_chromium
@pytest.mark.parametrize("camera, bg", [(0, "white"), (11, "black")])
def test_viewer_matches_renderer(scene, camera, bg):
  """PSNR ≥ PSNR_BAR against the renderer with SH degree 3, and it is the SH that makes it match."""
  state = browser.page_state(scene.path, f"camera={camera}&w={W}&h={H}")
  assert state.get("data-state") == "ready", f"seed {scene.seed}: page state {state}"
  rgb = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}[bg]
  shot = _shot(scene.path, camera, bg)
  cam = scene.cams[camera]
  p3 = _psnr(shot, _ref(scene.g, cam, rgb))
  p0 = _psnr(shot, _ref(scene.g, cam, rgb, sh_degree=0))
  ref_gap = _psnr(_ref(scene.g, cam, rgb), _ref(scene.g, cam, rgb, sh_degree=0))
  msg = f"seed {scene.seed}, camera {camera}: PSNR vs SH-3 {p3:.2f} dB, vs SH-0 {p0:.2f} dB"
  assert p3 >= PSNR_BAR, msg
  # SH guard: the view-dependent part matters here (SH-0 is far off) and the viewer reproduces it.
  assert ref_gap < 30.0, msg + f"; SH-3 vs SH-0 renders differ by only {ref_gap:.2f} dB"
  assert p3 >= p0 + 8.0, msg


# Each mutation breaks one piece of viewer.js; the parity check above must then fail.
_MUTATIONS = {
    "sh_band1_sign": ("- C1 * x * sh(3)", "+ C1 * x * sh(3)"),
    "sh_band3_sign": ("+ 2.890611442640554 * xy * z * sh(10)", "- 2.890611442640554 * xy * z * sh(10)"),
    "jacobian_sign": ("- (fx * tx / (p.z * p.z)) * u_R2", "+ (fx * tx / (p.z * p.z)) * u_R2"),
    "view_dir_sign": ("normalize(m - u_center)", "normalize(u_center - m)"),
    "depth_order": ("keys[i] = 65535 - Math.min(", "keys[i] = Math.min("),
}


@needs_chromium
@pytest.mark.parametrize("name", ["sh_band1_sign", "jacobian_sign"])
def test_parity_check_catches_a_broken_viewer(scene, tmp_path, name):
  old, new = _MUTATIONS[name]
  page = scene.path.read_text()
  assert page.count(old) == 1, f"mutation {name}: {old!r} not found once in viewer.js"
  broken = tmp_path / "broken.html"
  broken.write_text(page.replace(old, new))
  camera = 0
  p3 = _psnr(_shot(broken, camera), _ref(scene.g, scene.cams[camera], (1.0, 1.0, 1.0)))
  assert p3 < PSNR_BAR, f"seed {scene.seed}: viewer with {name} still scores {p3:.2f} dB"


def test_mutations_apply_to_the_shipped_script():
  """Every mutation (also those not screenshotted in CI) names code that exists exactly once."""
  page = viewer_html(_avatar(0, 50), synthetic.head_rig(2, width=8, height=8, pitches=(0.0,)))
  for name, (old, _) in _MUTATIONS.items():
    assert page.count(old) == 1, name


@needs_chromium
def test_unreadable_data_shows_an_error(scene, tmp_path):
  page = scene.path.read_text()
  bad = tmp_path / "bad.html"
  # Drop 4 base64 characters: still valid base64, three bytes short of what the metadata says.
  bad.write_text(re.sub(r'(<script id="splat-data" type="application/octet-stream">)(....)', r"\1", page))
  state = browser.page_state(bad)
  assert state.get("data-state") == "error" and "bytes" in state.get("data-error", ""), state
  state = browser.page_state(scene.path, "camera=99")
  assert state.get("data-state") == "error" and "camera=99" in state.get("data-error", ""), state


def test_encoding_round_trip_within_quantisation():
  seed = _seed()
  g = _avatar(seed, 300)
  meta, blob = encode_gaussians(g)
  assert len(blob) == meta["num_bytes"] == 300 * 2 * (3 + 3 + 4 + 1 + 48)
  d = decode_gaussians(meta, blob)
  span = np.ptp(np.asarray(g.means), 0)
  msg = f"seed {seed}"
  assert np.all(np.abs(np.asarray(d.means) - np.asarray(g.means)) <= span / 65535 * 0.5 + 1e-7), msg
  f16 = lambda a: np.abs(a) * 2.0 ** -11 + 2.0 ** -24  # float16 rounding: half an ulp
  np.testing.assert_array_less(np.abs(np.asarray(d.log_scales) - np.asarray(g.log_scales)),
                               f16(np.asarray(g.log_scales)) * 1.01, msg)
  np.testing.assert_array_less(np.abs(np.asarray(d.sh) - np.asarray(g.sh)), f16(np.asarray(g.sh)) * 1.01, msg)
  q = np.asarray(g.quats) / np.linalg.norm(np.asarray(g.quats), axis=-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(d.quats), q, atol=2.0 ** -11, err_msg=msg)
  op = 1 / (1 + np.exp(-np.asarray(g.opacity_logits, np.float64)))
  np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(d.opacity_logits, np.float64))), op,
                             atol=2.0 ** -11, err_msg=msg)


def test_bad_input_is_rejected_with_the_field_name(tmp_path):
  g = _avatar(0, 20)
  bad = g.replace(log_scales=g.log_scales.at[3, 1].set(jnp.nan))
  with pytest.raises(ValueError, match="log_scales"):
    write_viewer(tmp_path / "v.html", bad)
  cams = synthetic.head_rig(2, width=8, height=8, pitches=(0.0,))
  with pytest.raises(ValueError, match="camera names"):
    write_viewer(tmp_path / "v.html", g, cams, names=["a"])
  assert not (tmp_path / "v.html").exists()


def test_page_is_self_contained(tmp_path):
  """No network: nothing in the page is loaded from a URL; the embedded metadata is valid JSON."""
  g = _avatar(1, 30)
  page = write_viewer(tmp_path / "v.html", g).read_text()
  assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
  assert not re.search(r"\b(fetch|XMLHttpRequest|importScripts)\s*\(", page)
  meta = json.loads(re.search(r'<script id="splat-meta" type="application/json">(.*?)</script>', page,
                              re.S).group(1))
  assert meta["num_gaussians"] == 30 and len(meta["cameras"]) == 8  # default ring


def test_run_outputs_and_view_entry_point(tmp_path):
  """write_outputs puts viewer.html next to avatar.ply and base.ply; experiments.view reads a .ply
  and the cameras.json beside it."""
  g = _avatar(2, 40)
  cams = synthetic.head_rig(2, width=8, height=8, pitches=(0.0,))
  res = types.SimpleNamespace(
      gaussians=g, base=g, final_images=np.zeros((2, 8, 8, 3), np.float32),
      view_weights=np.full(2, 0.5, np.float32), x0_images=np.zeros((1, 2, 4, 4, 3), np.uint8),
      renders=np.zeros((1, 2, 4, 4, 3), np.uint8), discrepancy=np.ones(1), eps_correction=np.ones(1),
      timesteps=np.array([1]))
  written = outputs.write_outputs(res, tmp_path / "run", cameras=cams)
  for key in ("viewer", "base_viewer", "splat", "transforms", "colmap"):
    assert written[key].exists(), key
  assert written["viewer"] == tmp_path / "run" / "viewer.html"
  meta = json.loads(re.search(r'"splat-meta" type="application/json">(.*?)</script>',
                              written["viewer"].read_text(), re.S).group(1))
  np.testing.assert_allclose(np.asarray(meta["cameras"][1]["viewmat"]).reshape(4, 4), cams.viewmat[1],
                             atol=1e-6)

  from experiments import view
  out = view.main([str(written["avatar"])])
  assert out == tmp_path / "run" / "viewer.html" and out.exists()
  meta = json.loads(re.search(r'"splat-meta" type="application/json">(.*?)</script>', out.read_text(),
                              re.S).group(1))
  assert len(meta["cameras"]) == 2 and meta["num_gaussians"] == 40
  lone = tmp_path / "lone" / "g.ply"
  lone.parent.mkdir()
  ply.write_gaussians(lone, g)
  assert len(json.loads(re.search(r'"splat-meta" type="application/json">(.*?)</script>',
                                  view.main([str(lone)]).read_text(), re.S).group(1))["cameras"]) == 8


@needs_chromium
def test_orbit_matches_the_rig(scene):
  """Orbiting from camera 1 by the rig's yaw step lands on camera 2 (cameras.orbit_rig built the rig
  by yawing about up through the target), and pitch 24 deg from row 0 lands on row 1."""
  step = 140.0 / 7  # head_rig(16): 8 yaws in [-70, 70] per pitch row, pitch rows -12 and +12
  for frag, want in ((f"camera=1&yaw={step}", 2), ("camera=3&pitch=24", 11)):
    state = browser.page_state(scene.path, frag)
    got = np.array(state["data-viewmat"].split(","), float).reshape(3, 4)
    np.testing.assert_allclose(got, np.asarray(scene.cams.viewmat[want])[:3], atol=2e-5,
                               err_msg=f"#{frag} vs camera {want}")
