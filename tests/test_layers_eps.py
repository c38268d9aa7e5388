"""Normalisation ε of the denoiser's ResNet block against diffusers, on inputs where ε matters.

The VAE/UNet parity tests see activations of variance O(0.01-1), where GroupNorm's ε (1e-6) moves outputs by
~1e-6 relative: a wrong ε hides under any float32 bound. Here the input's per-group variance is ~1e-6, i.e. the
size of ε, so ε = 1e-5 instead of 1e-6 changes the output by tens of percent. Both sides use their constructor
defaults (a fork that builds a block without passing eps gets diffusers' behaviour).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
resnet = pytest.importorskip("diffusers.models.resnet")

from parity import assert_close, nchw, randomize_, to_nhwc  # noqa: E402
from splatshot_jax.diffusion import convert, layers  # noqa: E402


@pytest.mark.parametrize("scale", [1e-3, 1.0])
def test_resnet_block_defaults_match_diffusers(scale):
  seed = int(np.random.default_rng().integers(2**31))
  rng = np.random.default_rng(seed)
  ref = resnet.ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=None, groups=4).eval()
  randomize_(ref, torch.Generator().manual_seed(seed))
  with torch.no_grad():  # zero biases: the block's input statistics are then the input's own (variance scale²)
    for name, p in ref.named_parameters():
      if name.endswith("bias") and "norm" not in name:
        p.zero_()
  ours = layers.ResnetBlock2D(out_channels=16, groups=4)
  x = (rng.standard_normal((2, 6, 5, 8)) * scale).astype(np.float32)
  template = jax.eval_shape(lambda: ours.init(jax.random.PRNGKey(0), jnp.asarray(x), None))["params"]
  sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  params = convert.torch_to_flax(sd, template, name="resnet block")
  y = ours.apply({"params": params}, jnp.asarray(x), None)
  with torch.no_grad():
    y_ref = to_nhwc(ref(nchw(x), None))
  # Measured 2026-12-01: rel L2 ~1e-7 at both scales; with eps 1e-5 the 1e-3 case is off by 2.5e-1
  # (and the 1.0 case by 1e-5).
  assert_close(y, y_ref, f"resnet block (input scale {scale})", seed, rtol=2e-6)
