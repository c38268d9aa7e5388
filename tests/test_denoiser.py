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


def _randomize(params, key, scale=0.2):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [scale * jax.random.normal(k, x.shape, x.dtype) + (x if x.ndim == 1 else 0)
                                   for k, x in zip(keys, leaves)])


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
  cps = [_randomize(presets.random_params(cn_t, rng, jnp.float32), k)
         for k in jax.random.split(jax.random.PRNGKey(0), 2)]
  vp = presets.random_params(vae_lib.init_params_shape(vae_lib.AutoencoderKL(vcfg)), rng, jnp.float32)
  return denoiser.StableDiffusion(params={"unet": up, "vae": vp, "controlnets": tuple(cps)}, spec=spec)


def _cond(v, key, g=3.0):
  k = jax.random.split(key, 5)
  return denoiser.SDCond(
      text=jax.random.normal(k[0], (v, 5, 16)), uncond_text=jax.random.normal(k[1], (v, 5, 16)),
      controls=(jax.random.uniform(k[2], (v, 8, 8, 3)), jax.random.uniform(k[3], (v, 8, 8, 3))),
      ip=jax.random.normal(k[4], (v, 3, 16)), uncond_ip=jnp.zeros((v, 3, 16)),
      guidance_scale=g, control_scales=(0.2, 0.6), ip_scale=0.8)


def test_eps_matches_manual_composition(prior):
  v = 3
  z = jax.random.normal(jax.random.PRNGKey(1), (v, 4, 4, 4))
  cond = _cond(v, jax.random.PRNGKey(2))
  out = prior.eps(z, jnp.int32(500), cond)
  unet = prior.unet
  cns = prior.controlnets
  ref = []
  for text, ip in ((cond.uncond_text, cond.uncond_ip), (cond.text, cond.ip)):
    down, mid = None, None
    for m, p, c, s in zip(cns, prior.params["controlnets"], cond.controls, (0.2, 0.6)):
      d, mm = m.apply({"params": p}, z, 500, text, c, s)
      down = d if down is None else tuple(a + b for a, b in zip(down, d))
      mid = mm if mid is None else mid + mm
    ref.append(unet.apply({"params": prior.params["unet"]}, z, 500, text, down, mid,
                          ip_hidden_states=ip, ip_scale=0.8))
  expected = ref[0] + 3.0 * (ref[1] - ref[0])
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  # The ControlNets matter (non-zero residuals): a check that the test can fail.
  no_cn = prior.eps(z, jnp.int32(500), cond.replace(control_scales=(0.0, 0.0)))
  assert float(jnp.abs(no_cn - out).max()) > 1e-3


def test_eps_chunking_is_exact(prior, chunk=2):
  # V = 5 in chunks of 2: three lax.map steps, the last padded by repeating view 5.
  v = 5
  z = jax.random.normal(jax.random.PRNGKey(3), (v, 4, 4, 4))
  cond = _cond(v, jax.random.PRNGKey(4))
  full = prior.replace(spec=dataclasses.replace(prior.spec, view_chunk=8))
  chunked = prior.replace(spec=dataclasses.replace(prior.spec, view_chunk=chunk))
  eps = jax.jit(lambda p, z, c: p.eps(z, jnp.int32(321), c))
  np.testing.assert_allclose(eps(chunked, z, cond), eps(full, z, cond), rtol=1e-5, atol=1e-5)


def test_no_cfg_is_cond_branch(prior):
  z = jax.random.normal(jax.random.PRNGKey(5), (2, 4, 4, 4))
  cond = _cond(2, jax.random.PRNGKey(6), g=1.0)
  one = prior.eps(z, jnp.int32(100), cond)
  via_cfg = prior.eps(z, jnp.int32(100), cond.replace(guidance_scale=1.0 + 1e-9))
  np.testing.assert_allclose(one, via_cfg, rtol=1e-4, atol=1e-5)


def test_remat_decode_equals_vae_decode(prior):
  z = jax.random.normal(jax.random.PRNGKey(7), (3, 4, 4, 4))
  ref = vae_lib.decode_latents(prior.vae, prior.params["vae"], z)
  ours = denoiser.remat_decode(prior.spec.vae, prior.params["vae"], z, jnp.float32)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(prior.decode(z), jnp.clip(ref / 2 + 0.5, 0, 1), rtol=1e-5, atol=1e-5)


def test_decode_vjp_and_custom_vjp_match_autodiff(prior):
  v = 3
  z = 0.3 * jax.random.normal(jax.random.PRNGKey(8), (v, 4, 4, 4))
  g = jax.random.normal(jax.random.PRNGKey(9), (v, 8, 8, 3))

  def plain(z):
    x = vae_lib.decode_latents(prior.vae, prior.params["vae"], z)
    return jnp.clip(x / 2 + 0.5, 0, 1)

  _, pb = jax.vjp(plain, z)
  (ref,) = pb(g)
  np.testing.assert_allclose(prior.decode_vjp(z, g), ref, rtol=1e-4, atol=1e-6)
  images, pb2 = jax.vjp(jax.jit(prior.decode), z)
  np.testing.assert_allclose(pb2(g)[0], ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(images, plain(z), rtol=1e-5, atol=1e-6)
  # Through jit and grad of a scalar loss too.
  gl = jax.jit(jax.grad(lambda z: jnp.sum(prior.decode(z) * g)))(z)
  np.testing.assert_allclose(gl, ref, rtol=1e-4, atol=1e-6)


def test_encode_mean_and_sample(prior):
  imgs = jax.random.uniform(jax.random.PRNGKey(10), (3, 8, 8, 3))
  d = vae_lib.encode_latents(prior.vae, prior.params["vae"], 2 * imgs - 1)
  np.testing.assert_allclose(prior.encode(imgs), d, rtol=1e-5, atol=1e-6)
  noise = jax.random.normal(jax.random.PRNGKey(11), d.shape)
  mom = prior.encode_moments(imgs)
  np.testing.assert_allclose(prior.encode(imgs, noise=noise),
                             (mom.mean + mom.std * noise) * prior.spec.vae.scaling_factor, rtol=1e-5, atol=1e-6)
  a = prior.encode(imgs, rng=jax.random.PRNGKey(0))
  assert a.shape == d.shape and not np.allclose(a, d)


def test_prior_is_a_pytree_through_jit(prior):
  z = jax.random.normal(jax.random.PRNGKey(12), (2, 4, 4, 4))
  cond = _cond(2, jax.random.PRNGKey(13))
  f = jax.jit(lambda p, z, t, c: p.eps(z, t, c))
  np.testing.assert_allclose(f(prior, z, jnp.int32(7), cond), prior.eps(z, jnp.int32(7), cond),
                             rtol=1e-5, atol=1e-5)
