"""Platform-dependent choices follow the platform a program is compiled for; chunked attention equals the plain one.

`device.platform.compiling_for(target)` is what `experiments.aot_check` wraps a lowering in; the choices are checked
here on a CPU host without any plugin (the choice functions and the traced programs), and `test_aot.py` compiles for
real H100/TPU targets where the plugins are installed.
"""

import types

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from splatshot_jax import cameras as cam_lib
from splatshot_jax import synthetic
from splatshot_jax.device import platform
from splatshot_jax.diffusion import layers
from splatshot_jax.render import rasterize
from splatshot_jax.render.composite_triton import resolve_backend


def _devices(name, n=2):
  return [types.SimpleNamespace(platform=name, id=i) for i in range(n)]


def test_platform_of_devices_and_names():
  assert platform.platform_of(_devices("cuda")) == "gpu"
  assert platform.platform_of(_devices("tpu")[0]) == "tpu"
  assert platform.platform_of("rocm") == "gpu"
  assert platform.platform_of(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("views",))) == "cpu"
  with pytest.raises(ValueError, match="several platforms"):
    platform.platform_of(_devices("cuda") + _devices("tpu"))
  with pytest.raises(ValueError, match="expected one of"):
    platform.platform_of("metal")


def test_compiling_for_sets_the_choices_and_restores():
  host = platform.current()
  assert host == "cpu"
  with platform.compiling_for(_devices("cuda")) as name:
    assert name == "gpu" and platform.current() == "gpu"
    assert platform.use_cudnn_attention(jnp.bfloat16, 40)
    assert platform.use_cudnn_attention(jnp.float16, 80)
    assert not platform.use_cudnn_attention(jnp.float32, 40)  # cuDNN's kernel: half precision only
    assert not platform.use_cudnn_attention(jnp.bfloat16, 160)  # head size > 128
    assert platform.view_batch() == 1
  with platform.compiling_for("tpu"):
    assert not platform.use_cudnn_attention(jnp.bfloat16, 40)
    assert platform.view_batch() == platform.VIEW_BATCH["tpu"] > 1
  assert platform.view_batch() is None  # CPU host: every view at once
  assert platform.current() == host
  assert not platform.use_cudnn_attention(jnp.bfloat16, 40)


def _primitives(jaxpr):
  out = set()
  for eq in jaxpr.eqns:
    out.add(eq.primitive.name)
    for sub in jax.extend.core.jaxprs_in_params(eq.params):
      out |= _primitives(sub)
  return out


def test_render_views_maps_views_when_compiling_for_a_gpu():
  g, _ = synthetic.head_gaussians(50, sh_degree=0)
  cams = synthetic.head_rig(2, width=16, height=16)
  trace = lambda: jax.make_jaxpr(lambda gg, cc: rasterize.render_views(gg, cc, backend="xla").rgb)(g, cams)
  top = lambda: {eq.primitive.name for eq in trace().jaxpr.eqns}  # the rasterizer's own loops are inside
  assert "scan" not in top()  # CPU host: the views vmapped
  with platform.compiling_for(_devices("cuda")):
    assert "scan" in top()  # GPU target: lax.map over the views
    assert resolve_backend("auto", jnp.float32) in ("triton", "xla")  # triton only where jax_triton imports
  assert isinstance(cams, cam_lib.Camera)


def test_render_views_in_view_batches_on_a_tpu_equals_all_views_at_once(monkeypatch):
  """TPU target: lax.map over batches of views (a remainder batch too) renders what the vmap of all views does."""
  rng = np.random.default_rng()
  g, _ = synthetic.head_gaussians(80, sh_degree=1, seed=int(rng.integers(1 << 30)))
  cams = synthetic.head_rig(8, width=16, height=16)
  fn = lambda gg, cc: rasterize.render_views(gg, cc, backend="xla").rgb
  whole = jax.jit(fn)(g, cams)
  monkeypatch.setitem(platform.VIEW_BATCH, "tpu", 3)  # 8 views: batches of 3, 3 and the remainder 2
  with platform.compiling_for("tpu"):
    jaxpr = jax.make_jaxpr(fn)(g, cams)
    batched = jax.jit(fn)(g, cams)
  assert "scan" in {eq.primitive.name for eq in jaxpr.jaxpr.eqns}
  assert float(jnp.max(jnp.abs(whole))) > 0.05  # the views are not empty
  np.testing.assert_allclose(np.asarray(batched), np.asarray(whole), atol=1e-5, rtol=1e-5)


def _reference_attention(q, k, v):
  """float64 softmax(QK^T/sqrt(Dh))V per head, q (B, Lq, N, H)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  s = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bnqk,bknh->bqnh", p, v)


@pytest.mark.parametrize("lq,budget", [(37, 1), (37, 3 * 2 * 19 * 4 * 10), (16, 10**9)])
def test_chunked_attention_equals_plain_softmax(lq, budget):
  """Chunks of 1 query, of 10 (37 = 3x10 + 7: a padded last chunk) and no chunking, against float64."""
  seed = int(np.random.default_rng().integers(2**31))
  rng = np.random.default_rng(seed)
  b, n, h, lk = 3, 2, 8, 19
  q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((b, lq, n, h), (b, lk, n, h), (b, lk, n, h)))
  out = layers.chunked_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), budget)
  ref = _reference_attention(q, k, v)
  # float32 softmax of O(1) scores: measured ~2e-7 max abs error; a wrong chunk order or dropped padding is O(1).
  np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=0, err_msg=f"seed {seed}")

  # The VJP through the checkpointed chunks equals the unchunked attention's.
  w = rng.standard_normal(q.shape).astype(np.float32)
  loss = lambda fn: lambda *a: jnp.sum(fn(*a) * w)
  grads = jax.grad(loss(lambda *a: layers.chunked_attention(*a, budget)), argnums=(0, 1, 2))(q, k, v)
  grads_ref = jax.grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
  for a, r in zip(grads, grads_ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=1e-5, rtol=0, err_msg=f"seed {seed}")


def test_attention_chunks_only_above_the_budget():
  """The multi-head wrapper: chunked when the scores exceed the budget, equal to the unchunked result."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 33, 16)), jnp.float32) for _ in range(3))
  small = jax.make_jaxpr(lambda *a: layers.attention(*a, heads=2, score_budget=1000))(q, k, v)
  whole = jax.make_jaxpr(lambda *a: layers.attention(*a, heads=2))(q, k, v)
  assert "scan" in _primitives(small.jaxpr) and "scan" not in _primitives(whole.jaxpr)
  np.testing.assert_allclose(np.asarray(layers.attention(q, k, v, 2, score_budget=1000)),
                             np.asarray(layers.attention(q, k, v, 2)), atol=1e-6)
