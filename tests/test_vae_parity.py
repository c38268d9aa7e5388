"""Flax AutoencoderKL vs diffusers (PyTorch CPU oracle) on a tiny random VAE.

Random weights everywhere, saved with save_pretrained and loaded through convert.torch_to_flax;
fresh random inputs (seed in the message); fp32 relative L2 error ≤ 5e-6 (VAE_RTOL; measured ≤ 9.5e-7), VJP ≤ 1e-5 (measured ≤ 1.3e-6).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from safetensors.numpy import load_file  # noqa: E402

from parity import randomize_, assert_close, nchw, to_nhwc  # noqa: E402
from splatshot_jax.diffusion import convert  # noqa: E402
from splatshot_jax.diffusion import vae as vae_lib  # noqa: E402

torch.set_num_threads(1)

# Measured 2026-12-01 (6 random seeds, CPU fp32): rel L2 encode mean/logvar 6.1e-7-8.9e-7, decode 6.9e-7-9.5e-7,
# decode VJP 1.0e-6-1.3e-6. Bounds ~5-8x the worst: parity.RTOL (1e-4) let a wrong GroupNorm eps through (the
# mid block's eps 1e-5 instead of 1e-6 gives rel L2 7e-6-1.1e-5 on the forward outputs, 1.5e-5 on the VJP).
VAE_RTOL = 5e-6
VAE_GRAD_RTOL = 1e-5

VAE_TINY = dict(
    block_out_channels=(8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    sample_size=32)


@pytest.mark.parametrize("safe,extra", [(True, {}), (False, {"use_quant_conv": False,
                                                             "use_post_quant_conv": False})])
def test_vae_parity(safe, extra, tmp_path):
  seed = int(np.random.default_rng().integers(2**31))
  rng = np.random.default_rng(seed)
  tv = diffusers.AutoencoderKL(**VAE_TINY, **extra).eval()
  randomize_(tv, torch.Generator().manual_seed(seed))
  tv.save_pretrained(tmp_path / "vae", safe_serialization=safe)
  cfg = vae_lib.VAEConfig.from_json_dict(json.loads((tmp_path / "vae/config.json").read_text()))
  if safe:
    sd = load_file(str(tmp_path / "vae/diffusion_pytorch_model.safetensors"))
  else:
    sd = {k: v.numpy() for k, v in torch.load(tmp_path / "vae/diffusion_pytorch_model.bin",
                                              map_location="cpu", weights_only=True).items()}
  vae = vae_lib.AutoencoderKL(cfg)
  params = convert.torch_to_flax(sd, vae_lib.init_params_shape(vae), name="tiny vae")

  # Non-square, odd after one downsample (18 -> 9 -> 4): exercises the bottom/right-only padding.
  images = rng.uniform(-1, 1, (2, 18, 26, 3)).astype(np.float32)
  dist = vae.apply({"params": params}, jnp.asarray(images), method=vae_lib.AutoencoderKL.encode)
  latents = rng.standard_normal((2, 5, 7, 4)).astype(np.float32)
  decoded = vae.apply({"params": params}, jnp.asarray(latents), method=vae_lib.AutoencoderKL.decode)
  with torch.no_grad():
    ref_dist = tv.encode(nchw(images)).latent_dist
    ref_dec = tv.decode(nchw(latents)).sample
  assert_close(dist.mean, to_nhwc(ref_dist.mean), "vae encode mean", seed, rtol=VAE_RTOL)
  assert_close(dist.logvar, to_nhwc(ref_dist.logvar), "vae encode logvar", seed, rtol=VAE_RTOL)
  assert_close(decoded, to_nhwc(ref_dec), "vae decode", seed, rtol=VAE_RTOL)

  # Helpers: scaling_factor in/out; a sample is mean + std * N(0, 1).
  z = vae_lib.encode_latents(vae, params, jnp.asarray(images))
  np.testing.assert_allclose(z, dist.mean * cfg.scaling_factor, rtol=1e-6, atol=1e-7)
  zs = vae_lib.encode_latents(vae, params, jnp.asarray(images), jax.random.PRNGKey(seed))
  eps = (zs / cfg.scaling_factor - dist.mean) / dist.std
  assert abs(float(eps.std()) - 1.0) < 0.2 and abs(float(eps.mean())) < 0.2, f"seed {seed}"
  x = vae_lib.decode_latents(vae, params, jnp.asarray(latents) * cfg.scaling_factor)
  np.testing.assert_allclose(x, decoded, rtol=1e-5, atol=1e-5)

  # SplatShot back-propagates a photometric loss through the decoder into x̂0: check the VJP too.
  w = rng.standard_normal(decoded.shape).astype(np.float32)
  loss = lambda z: jnp.sum(vae.apply({"params": params}, z, method=vae_lib.AutoencoderKL.decode) * w)
  g = jax.grad(loss)(jnp.asarray(latents))
  zt = nchw(latents).requires_grad_(True)
  (tv.decode(zt).sample * nchw(w)).sum().backward()
  assert_close(g, to_nhwc(zt.grad), "vae decode grad", seed, rtol=VAE_GRAD_RTOL)


def test_vae_mismatched_checkpoint_raises(tmp_path):
  tv = diffusers.AutoencoderKL(**VAE_TINY)
  tv.save_pretrained(tmp_path / "vae")
  sd = load_file(str(tmp_path / "vae/diffusion_pytorch_model.safetensors"))
  cfg = vae_lib.VAEConfig.from_json_dict({**VAE_TINY, "latent_channels": 8})
  template = vae_lib.init_params_shape(vae_lib.AutoencoderKL(cfg))
  with pytest.raises(convert.CheckpointError, match=r"key 'decoder\.conv_in\.weight' has shape \(16, 4, 3, 3\)"):
    convert.torch_to_flax(sd, template, name="tiny vae")


def test_vae_config_rejects_unsupported():
  with pytest.raises(ValueError, match="AttnDownEncoderBlock2D"):
    vae_lib.VAEConfig.from_json_dict({**VAE_TINY, "down_block_types": ["AttnDownEncoderBlock2D"] * 3})
