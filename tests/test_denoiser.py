"""The SD prior's plumbing on tiny random Flax weights: chunking, CFG, ControlNet sum, decode VJP.

(Parity of the whole thing against diffusers is tests/test_pipeline_parity.py.)
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splatshot_jax.diffusion import controlnet as cn_lib
from splatshot_jax.diffusion import denoiser, presets
from splatshot_jax.diffusion import unet as unet_lib
from splatshot_jax.diffusion import vae as vae_lib

UNET = dict(block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
            attention_head_dim=4, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], sample_size=8)
CN = dict(UNET, conditioning_embedding_out_channels=[8, 16])
del CN["up_block_types"]
VAE = dict(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4, latent_channels=4,
           down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)


def _randomize(params, rng, scale=0.2):
  # numpy, not jax.random: one jax.random.normal per leaf shape compiles ~100 tiny programs (~10 s on 2 cores).
  return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape, np.float32)
                                            + (np.asarray(x) if x.ndim == 1 else 0), x.dtype), params)


# One jitted eps shared by the tests, with the prior passed as an argument (a pytree): identical static settings
# and shapes hit the same compiled program, so each distinct program is compiled once per module.
_EPS = jax.jit(lambda p, z, t, c: p.eps(z, t, c))


@pytest.fixture(scope="module")
def prior():
  ucfg = unet_lib.UNetConfig.from_json_dict(UNET)
  ccfg = cn_lib.ControlNetConfig.from_json_dict(CN)
  vcfg = vae_lib.VAEConfig.from_json_dict(VAE)
  spec = denoiser.SDSpec(unet=ucfg, vae=vcfg, controlnets=(ccfg, ccfg), with_ip_adapter=True,
                         view_chunk=2, decode_chunk=2)
  # Random leaves of the right shapes (no eager flax init: it costs minutes on a CPU); the ControlNets'
  # zero convs get random weights too, so their residuals matter.
  rng = np.random.default_rng(0)
  up = presets.random_params(unet_lib.init_params_shape(unet_lib.UNet2DConditionModel(ucfg, with_ip_adapter=True)),
                             rng, jnp.float32)
  cn_t = cn_lib.init_params_shape(cn_lib.ControlNetModel(ccfg))
  cps = [_randomize(presets.random_params(cn_t, rng, jnp.float32), rng) for _ in range(2)]
  vp = presets.random_params(vae_lib.init_params_shape(vae_lib.AutoencoderKL(vcfg)), rng, jnp.float32)
  return denoiser.StableDiffusion(params={"unet": up, "vae": vp, "controlnets": tuple(cps)}, spec=spec)


def _cond(v, key, g=3.0):
  k = jax.random.split(key, 5)
  return denoiser.SDCond(
      text=jax.random.normal(k[0], (v, 5, 16)), uncond_text=jax.random.normal(k[1], (v, 5, 16)),
      controls=(jax.random.uniform(k[2], (v, 8, 8, 3)), jax.random.uniform(k[3], (v, 8, 8, 3))),
      ip=jax.random.normal(k[4], (v, 3, 16)), uncond_ip=jnp.zeros((v, 3, 16)),
      guidance_scale=g, control_scales=(0.2, 0.6), ip_scale=0.8)


@jax.jit
def _manual_eps(prior, z, t, cond, scales):
  """CFG over UNet(z; text, ip, sum of scaled ControlNet residuals), written out module by module, unchunked.

  `scales` is traced, so scales 0 (no ControlNet) reuses the same compiled program.
  """
  ref = []
  for text, ip in ((cond.uncond_text, cond.uncond_ip), (cond.text, cond.ip)):
    down, mid = None, None
    for m, p, c, s in zip(prior.controlnets, prior.params["controlnets"], cond.controls, scales):
      d, mm = m.apply({"params": p}, z, t, text, c, s)
      down = d if down is None else tuple(a + b for a, b in zip(down, d))
      mid = mm if mid is None else mid + mm
    ref.append(prior.unet.apply({"params": prior.params["unet"]}, z, t, text, down, mid,
                                ip_hidden_states=ip, ip_scale=cond.ip_scale))
  return ref[0] + cond.guidance_scale * (ref[1] - ref[0])


def test_eps_matches_manual_composition(prior):
  # V = 5 in chunks of 2 (view_chunk): three lax.map steps, the last padded by repeating view 5.
  v = 5
  z = jax.random.normal(jax.random.PRNGKey(1), (v, 4, 4, 4))
  cond = _cond(v, jax.random.PRNGKey(2))
  t = jnp.int32(500)
  out = _EPS(prior, z, t, cond)
  expected = _manual_eps(prior, z, t, cond, jnp.array([0.2, 0.6]))
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  # The ControlNets matter (non-zero residuals): a check that the test can fail.
  no_cn = _manual_eps(prior, z, t, cond, jnp.zeros(2))
  assert float(jnp.abs(no_cn - out).max()) > 1e-3


def test_eps_chunking_is_exact(prior, chunk=2):
  # V = 5 in chunks of 2: three lax.map steps, the last padded by repeating view 5 (the chunked program is the
  # one test_eps_matches_manual_composition compiled).
  v = 5
  z = jax.random.normal(jax.random.PRNGKey(3), (v, 4, 4, 4))
  cond = _cond(v, jax.random.PRNGKey(4))
  full = prior.replace(spec=dataclasses.replace(prior.spec, view_chunk=8))
  chunked = prior.replace(spec=dataclasses.replace(prior.spec, view_chunk=chunk))
  t = jnp.int32(321)
  np.testing.assert_allclose(_EPS(chunked, z, t, cond), _EPS(full, z, t, cond), rtol=1e-5, atol=1e-5)


def test_no_cfg_is_cond_branch(prior):
  z = jax.random.normal(jax.random.PRNGKey(5), (2, 4, 4, 4))
  cond = _cond(2, jax.random.PRNGKey(6), g=1.0)
  one = _EPS(prior, z, jnp.int32(100), cond)
  via_cfg = _EPS(prior, z, jnp.int32(100), cond.replace(guidance_scale=1.0 + 1e-9))
  np.testing.assert_allclose(one, via_cfg, rtol=1e-4, atol=1e-5)


@jax.jit
def _vae_decode(prior, z):
  """The plain Flax decoder (no remat, no chunking, no custom VJP), unclipped, in [-1, 1] nominally."""
  return vae_lib.decode_latents(prior.vae, prior.params["vae"], z)


_DECODE = jax.jit(lambda p, z: p.decode(z))  # the prior's decode (chunked, remat, custom VJP), shared


def _plain(prior, z):
  return jnp.clip(_vae_decode(prior, z) / 2 + 0.5, 0, 1)


def test_remat_decode_equals_vae_decode(prior):
  z = jax.random.normal(jax.random.PRNGKey(7), (3, 4, 4, 4))
  ref = _vae_decode(prior, z)
  ours = jax.jit(denoiser.remat_decode, static_argnums=(0, 3))(prior.spec.vae, prior.params["vae"], z, jnp.float32)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(_DECODE(prior, z), jnp.clip(ref / 2 + 0.5, 0, 1), rtol=1e-5, atol=1e-5)


def test_decode_vjp_and_custom_vjp_match_autodiff(prior):
  v = 3
  z = 0.3 * jax.random.normal(jax.random.PRNGKey(8), (v, 4, 4, 4))
  g = jax.random.normal(jax.random.PRNGKey(9), (v, 8, 8, 3))
  # Reference: plain autodiff through the plain decoder.
  ref = jax.jit(lambda z, g: jax.vjp(lambda z: _plain(prior, z), z)[1](g)[0])(z, g)
  np.testing.assert_allclose(jax.jit(prior.decode_vjp)(z, g), ref, rtol=1e-4, atol=1e-6)
  images, pb2 = jax.vjp(lambda z: _DECODE(prior, z), z)
  np.testing.assert_allclose(pb2(g)[0], ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(images, _plain(prior, z), rtol=1e-5, atol=1e-6)
  # Through jit and grad of a scalar loss too.
  gl = jax.jit(jax.grad(lambda z: jnp.sum(prior.decode(z) * g)))(z)
  np.testing.assert_allclose(gl, ref, rtol=1e-4, atol=1e-6)


def test_encode_mean_and_sample(prior):
  imgs = jax.random.uniform(jax.random.PRNGKey(10), (3, 8, 8, 3))
  d = jax.jit(lambda p, x: vae_lib.encode_latents(p.vae, p.params["vae"], x))(prior, 2 * imgs - 1)
  np.testing.assert_allclose(prior.encode(imgs), d, rtol=1e-5, atol=1e-6)
  noise = jax.random.normal(jax.random.PRNGKey(11), d.shape)
  mom = prior.encode_moments(imgs)
  np.testing.assert_allclose(prior.encode(imgs, noise=noise),
                             (mom.mean + mom.std * noise) * prior.spec.vae.scaling_factor, rtol=1e-5, atol=1e-6)
  a = prior.encode(imgs, rng=jax.random.PRNGKey(0))
  assert a.shape == d.shape and not np.allclose(a, d)


def test_prior_is_a_pytree_through_jit(prior):
  # The prior's weights enter jit as traced leaves (a pytree argument), its spec as static: the result is the
  # module-by-module composition (both programs already compiled by test_eps_matches_manual_composition).
  z = jax.random.normal(jax.random.PRNGKey(12), (5, 4, 4, 4))
  cond = _cond(5, jax.random.PRNGKey(13))
  np.testing.assert_allclose(_EPS(prior, z, jnp.int32(7), cond),
                             _manual_eps(prior, z, jnp.int32(7), cond, jnp.array([0.2, 0.6])), rtol=1e-5, atol=1e-5)
