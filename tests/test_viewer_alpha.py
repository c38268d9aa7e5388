"""The viewer page's α clamp, isolated: a scene where the clamp alone decides the picture.

A dark, fully opaque Gaussian (o = 1) covers the image in front of a very bright, half-transparent one (colour far
above 1: red 100, green 4000). Everything the eye sees is what leaks through the front Gaussian, (1 − α) · 0.5 ·
colour, clipped to [0, 1] at the end: with α clamped at 0.99 the red channel is 0.5 over the whole image; at 0.999
it drops to 0.05 inside a disk; at 1.0 (no clamp) the green channel goes dark at the centre as well. So pages that
differ only in the clamp give screenshots that differ by far more than the viewer test's bound (PSNR_BAR), and the
page as shipped must match the renderer (whose clamp is `render.composite.ALPHA_MAX`) within it.

The renderer's clamp is read from its module, not written here; the pages with other clamps are made by passing
`alpha_max=` to `viewer_html` when it takes one, else by replacing the clamp's literal in the shipped script.
"""

import inspect
import re

import jax.numpy as jnp
import numpy as np
import pytest

from splatshot_jax.cameras import Camera
from splatshot_jax.gaussians import SH_C0, Gaussians
from splatshot_jax.metrics import psnr
from splatshot_jax.render import render
from splatshot_jax.render.composite import ALPHA_MAX
from splatshot_jax.render.rasterize import check_overflow
from splatshot_jax.viewer import browser, viewer_html

from test_viewer import PSNR_BAR  # the viewer-vs-renderer bound of tests/test_viewer.py

W = H = 96
CLAMPS = (0.99, 0.999, 1.0)
needs_chromium = pytest.mark.skipif(browser.find_chromium() is None,
                                    reason="no chromium on PATH (.ci/run installs it with apt-get)")


def _scene():
  """Front: dark, o = 1, sigma ~ 1500 px; back: colour (100, 4000, 0), o = 0.5, wider still."""
  colours = np.array([[0.0, 0.0, 0.0], [100.0, 4000.0, 0.0]])
  return Gaussians(
      means=jnp.asarray([[0.02, -0.01, 2.0], [0.0, 0.0, 3.0]], jnp.float32),
      log_scales=jnp.asarray(np.log([[30.0, 30.0, 1e-3], [60.0, 60.0, 1e-3]]), jnp.float32),
      quats=jnp.asarray([[1.0, 0, 0, 0], [1.0, 0, 0, 0]], jnp.float32),
      opacity_logits=jnp.asarray([20.0, 0.0], jnp.float32),  # sigmoid(20) is 1.0 in float32 and float16
      sh=jnp.asarray(((colours - 0.5) / SH_C0)[:, None, :], jnp.float32),
  )


def _camera():
  K = np.array([[100.0, 0, W / 2], [0, 100.0, H / 2], [0, 0, 1]])
  return Camera(jnp.asarray(np.eye(4)[None], jnp.float32), jnp.asarray(K[None], jnp.float32), W, H)


def _page(g, cams, clamp=None):
  """The viewer page as shipped (clamp None), or with α clamped at `clamp`."""
  if clamp is not None and "alpha_max" in inspect.signature(viewer_html).parameters:
    return viewer_html(g, cams, background=(0.0, 0.0, 0.0), alpha_max=clamp)
  page = viewer_html(g, cams, background=(0.0, 0.0, 0.0))
  if clamp is None:
    return page
  pattern = r"min\(\s*[0-9.]+\s*,\s*v_conic\.w \* exp\(power\)\)"
  assert len(re.findall(pattern, page)) == 1, "the α clamp in viewer.js: min(<literal>, v_conic.w * exp(power))"
  return re.sub(pattern, f"min({clamp!r}, v_conic.w * exp(power))", page)


def _psnr(a, b):
  return float(psnr(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))


@needs_chromium
def test_alpha_clamp_alone_moves_the_screenshot_past_the_bound(tmp_path):
  g, cams = _scene(), _camera()
  out = render(g, cams[0], background=jnp.zeros(3), pair_budget=1024)  # each Gaussian covers every tile
  check_overflow(out)
  ref = np.clip(np.asarray(out.rgb), 0.0, 1.0)
  shots = {}
  for clamp in (None,) + CLAMPS:
    path = tmp_path / f"clamp_{clamp}.html"
    path.write_text(_page(g, cams, clamp))
    shots[clamp] = browser.screenshot(path, W, H, f"camera=0&bg=black&w={W}&h={H}&ui=0").astype(np.float32) / 255
  # The scene isolates α: any two clamps give pictures further apart than the viewer test's bound.
  for i, a in enumerate(CLAMPS):
    for b in CLAMPS[i + 1:]:
      p = _psnr(shots[a], shots[b])
      assert p < PSNR_BAR - 10, f"clamps {a} and {b}: screenshots {p:.1f} dB apart (bound {PSNR_BAR})"
  # The shipped page matches the renderer (clamp ALPHA_MAX); a page with any other clamp does not.
  p = _psnr(shots[None], ref)
  assert p >= PSNR_BAR, f"viewer page as shipped vs render (clamp {ALPHA_MAX}): {p:.1f} dB < {PSNR_BAR}"
  for clamp in CLAMPS:
    if clamp != ALPHA_MAX:
      p = _psnr(shots[clamp], ref)
      assert p < PSNR_BAR, f"a page with clamp {clamp} still scores {p:.1f} dB against render (clamp {ALPHA_MAX})"
