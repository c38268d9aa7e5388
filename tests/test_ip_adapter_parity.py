"""Parity of our Flax IP-Adapter image projections against diffusers on CPU.

The oracle for the official key names is diffusers itself: a random checkpoint is written with the
ORIGINAL tencent-ailab names (the `image_proj` / `ip_adapter` dict of `ip-adapter-plus-face_sd15.bin`),
diffusers' own `_convert_ip_adapter_image_proj_to_diffusers` builds and strictly loads its module from
it, and we load the same file with `load_ip_adapter_file` + `load_image_proj`. Every weight (LayerNorm
scales and the query latents included) is random, inputs are fresh (unseeded; seed in the messages).
fp32 bound: ||ours - ref|| / ||ref|| <= 1e-4; max abs error reported alongside.
"""

import builtins
import secrets

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers.loaders.unet import UNet2DConditionLoadersMixin  # noqa: E402

from parity import assert_close  # noqa: E402
from splatshot_jax.diffusion import ip_adapter  # noqa: E402
from splatshot_jax.diffusion.convert import CheckpointError  # noqa: E402

# Tiny Plus: diffusers' converter fixes depth 4 and infers heads = rows(to_q) / 64.
EMBED, HIDDEN, HEADS, OUT, QUERIES, DEPTH = 48, 64, 2, 40, 6, 4


def _official_plus(g):
  """A random `image_proj` dict with the official Resampler's names and shapes."""
  r = lambda *s: torch.randn(*s, generator=g) * 0.3
  inner = 64 * HEADS
  sd = {"latents": r(1, QUERIES, HIDDEN), "proj_in.weight": r(HIDDEN, EMBED), "proj_in.bias": r(HIDDEN),
        "proj_out.weight": r(OUT, HIDDEN), "proj_out.bias": r(OUT),
        "norm_out.weight": 1 + r(OUT), "norm_out.bias": r(OUT)}
  for i in range(DEPTH):
    p = f"layers.{i}."
    sd.update({
        p + "0.norm1.weight": 1 + r(HIDDEN), p + "0.norm1.bias": r(HIDDEN),
        p + "0.norm2.weight": 1 + r(HIDDEN), p + "0.norm2.bias": r(HIDDEN),
        p + "0.to_q.weight": r(inner, HIDDEN), p + "0.to_kv.weight": r(2 * inner, HIDDEN),
        p + "0.to_out.weight": r(HIDDEN, inner),
        p + "1.0.weight": 1 + r(HIDDEN), p + "1.0.bias": r(HIDDEN),
        p + "1.1.weight": r(4 * HIDDEN, HIDDEN), p + "1.3.weight": r(HIDDEN, 4 * HIDDEN)})
  return sd


def _official_base(g, embed=24, dim=40, tokens=4):
  r = lambda *s: torch.randn(*s, generator=g) * 0.3
  return {"proj.weight": r(tokens * dim, embed), "proj.bias": r(tokens * dim),
          "norm.weight": 1 + r(dim), "norm.bias": r(dim)}


def _ip_adapter_part(g):
  return {f"{i}.to_{kv}_ip.weight": torch.randn(40, 16, generator=g) for i in (1, 3) for kv in "kv"}


def _diffusers_module(official):
  # Unbound call: `self` is only used on the low_cpu_mem_usage path.
  return UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(
      None, official, low_cpu_mem_usage=False).eval()


def _save(path, official, ip, fmt):
  if fmt == "bin":
    torch.save({"image_proj": official, "ip_adapter": ip}, path)
  else:
    from safetensors.torch import save_file
    save_file({**{f"image_proj.{k}": v.contiguous() for k, v in official.items()},
               **{f"ip_adapter.{k}": v.contiguous() for k, v in ip.items()}}, path)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_plus_official_file_parity(tmp_path, fmt):
  seed = secrets.randbits(31)
  g = torch.Generator().manual_seed(seed)
  official, ip = _official_plus(g), _ip_adapter_part(g)
  path = str(tmp_path / f"ip-adapter-plus-face_sd15.{fmt}")
  _save(path, official, ip, fmt)
  ref = _diffusers_module(official)
  assert type(ref).__name__ == "IPAdapterPlusImageProjection"

  sd = ip_adapter.load_ip_adapter_file(path)
  assert set(sd["ip_adapter"]) == set(ip)
  np.testing.assert_array_equal(sd["ip_adapter"]["3.to_v_ip.weight"], ip["3.to_v_ip.weight"].numpy())
  model, params = ip_adapter.load_image_proj(sd["image_proj"])
  assert isinstance(model, ip_adapter.IPAdapterPlusImageProjection)
  assert (model.config.heads, model.config.depth, model.config.num_queries) == (HEADS, DEPTH, QUERIES)

  x = np.random.default_rng(seed).standard_normal((2, 11, EMBED)).astype(np.float32)
  with torch.no_grad():
    r = ref(torch.as_tensor(x)).numpy()
  assert_close(model.apply({"params": params}, jnp.asarray(x)), r, f"plus ({fmt})", seed)


def test_plus_diffusers_names_parity():
  """A diffusers-named state dict (e.g. a converted checkpoint) loads through the same rule."""
  seed = secrets.randbits(31)
  ref = _diffusers_module(_official_plus(torch.Generator().manual_seed(seed)))
  model, params = ip_adapter.load_image_proj(ref.state_dict())
  x = np.random.default_rng(seed).standard_normal((3, 7, EMBED)).astype(np.float32)
  with torch.no_grad():
    r = ref(torch.as_tensor(x)).numpy()
  assert_close(model.apply({"params": params}, jnp.asarray(x)), r, "plus (diffusers names)", seed)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_base_official_file_parity(tmp_path, fmt):
  seed = secrets.randbits(31)
  g = torch.Generator().manual_seed(seed)
  official = _official_base(g)
  path = str(tmp_path / f"ip-adapter_sd15.{fmt}")
  _save(path, official, _ip_adapter_part(g), fmt)
  ref = _diffusers_module(official)
  assert type(ref).__name__ == "ImageProjection"
  model, params = ip_adapter.load_image_proj(ip_adapter.load_ip_adapter_file(path)["image_proj"])
  assert isinstance(model, ip_adapter.ImageProjection)
  x = np.random.default_rng(seed).standard_normal((2, 24)).astype(np.float32)
  with torch.no_grad():
    r = ref(torch.as_tensor(x)).numpy()
  assert_close(model.apply({"params": params}, jnp.asarray(x)), r, f"base ({fmt})", seed)


def test_official_key_map():
  k = ip_adapter.official_image_proj_key
  assert k("image_proj.latents") == "latents"
  assert k("layers.0.0.norm1.weight") == "layers.0.ln0.weight"
  assert k("layers.11.0.norm2.bias") == "layers.11.ln1.bias"
  assert k("layers.2.0.to_out.weight") == "layers.2.attn.to_out.0.weight"
  assert k("layers.3.1.1.weight") == "layers.3.ff.1.net.0.proj.weight"
  assert k("layers.3.1.3.weight") == "layers.3.ff.1.net.2.weight"
  assert k("proj.bias") == "image_embeds.bias"
  assert k("layers.1.ff.1.net.2.weight") == "layers.1.ff.1.net.2.weight"  # diffusers names unchanged


def test_bin_without_torch_gives_conversion_command(tmp_path, monkeypatch):
  path = str(tmp_path / "ip.bin")
  _save(path, _official_base(torch.Generator().manual_seed(0)), {}, "bin")
  real_import = builtins.__import__

  def no_torch(name, *a, **kw):
    if name == "torch" or name.startswith("torch."):
      raise ImportError("no torch")
    return real_import(name, *a, **kw)
  monkeypatch.setattr(builtins, "__import__", no_torch)
  with pytest.raises(CheckpointError, match="torch is needed.*save_file"):
    ip_adapter.load_ip_adapter_file(path)


def test_unsupported_variant_is_named():
  with pytest.raises(CheckpointError, match="FaceID"):
    ip_adapter.load_image_proj({"norm.weight": np.ones(4), "proj.0.weight": np.ones((8, 4))})
