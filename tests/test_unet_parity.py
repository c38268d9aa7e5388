"""Flax UNet / ControlNet / IP-Adapter vs diffusers (PyTorch CPU oracle) on tiny random models.

Each test builds a tiny diffusers model, overwrites every parameter with random values (diffusers
zero-inits ControlNet zero-convs etc., which would hide bugs), saves it with save_pretrained,
loads config.json + weights into our modules through `convert.torch_to_flax`, and compares the
outputs on fresh random inputs (seed in the assertion message). fp32, relative L2 error
‖ours − ref‖ / ‖ref‖ ≤ 1e-4.
"""

from __future__ import annotations

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from safetensors.numpy import load_file  # noqa: E402

from parity import randomize_, rel_err, assert_close, nchw, to_nhwc  # noqa: E402
from splatshot_jax.diffusion import controlnet as cn_lib  # noqa: E402
from splatshot_jax.diffusion import convert  # noqa: E402
from splatshot_jax.diffusion import unet as unet_lib  # noqa: E402

torch.set_num_threads(1)  # the CPU is shared; tiny models do not need more

SD1_TINY = dict(
    block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=16, norm_num_groups=8)
# SD-2 style: linear projections, per-block head counts (the attention_head_dim quirk), upcast,
# two transformer layers in the mid/last block, a text width different from the channels.
SD2_TINY = dict(
    block_out_channels=(32, 64), layers_per_block=(1, 2), cross_attention_dim=24,
    attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True,
    transformer_layers_per_block=(1, 2),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), sample_size=16, norm_num_groups=8,
    flip_sin_to_cos=False, freq_shift=1)


def save_and_load(model, path, safe: bool = True) -> tuple[dict, dict]:
  """save_pretrained -> (config dict, numpy state dict), as the loader will read a checkpoint."""
  model.save_pretrained(path, safe_serialization=safe)
  cfg = json.loads((path / "config.json").read_text())
  if safe:
    sd = load_file(str(path / "diffusion_pytorch_model.safetensors"))
  else:
    sd = {k: v.numpy() for k, v in
          torch.load(path / "diffusion_pytorch_model.bin", map_location="cpu", weights_only=True).items()}
  return cfg, sd


def make_unet(config: dict, seed: int, tmp_path, safe=True, with_ip_adapter=False):
  """-> (torch unet, our model, our params, raw state dict)."""
  gen = torch.Generator().manual_seed(seed)
  tu = diffusers.UNet2DConditionModel(**config).eval()
  randomize_(tu, gen)
  cfg_d, sd = save_and_load(tu, tmp_path / "unet", safe)
  cfg = unet_lib.UNetConfig.from_json_dict(cfg_d, name=str(tmp_path / "unet/config.json"))
  model = unet_lib.UNet2DConditionModel(cfg, with_ip_adapter=with_ip_adapter)
  return tu, model, cfg, sd


def inputs(rng, cfg, b=2, hw=(16, 16), text_len=7):
  x = rng.standard_normal((b, *hw, cfg.in_channels)).astype(np.float32)
  t = rng.integers(0, 1000, size=(b,))
  ctx = rng.standard_normal((b, text_len, cfg.cross_attention_dim[0])).astype(np.float32)
  return x, t, ctx


@pytest.mark.parametrize("variant,safe,hw", [("sd1", True, (16, 16)), ("sd2", False, (9, 12))])
def test_unet_parity(variant, safe, hw, tmp_path):
  seed = int(np.random.default_rng().integers(2**31))
  rng = np.random.default_rng(seed)
  tu, model, cfg, sd = make_unet(SD1_TINY if variant == "sd1" else SD2_TINY, seed, tmp_path, safe)
  if variant == "sd2":
    assert cfg.heads_per_block == (2, 4)  # attention_head_dim read as head counts, like diffusers
  params = convert.torch_to_flax(sd, unet_lib.init_params_shape(model), name="tiny unet")
  x, t, ctx = inputs(rng, cfg, hw=hw)
  ours = model.apply({"params": params}, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx))
  with torch.no_grad():
    ref = tu(nchw(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample
  assert_close(np.asarray(ours), to_nhwc(ref), f"unet {variant} {hw}", seed)
  # A scalar timestep broadcasts over the batch.
  ours_s = model.apply({"params": params}, jnp.asarray(x), int(t[0]), jnp.asarray(ctx))
  with torch.no_grad():
    ref_s = tu(nchw(x), int(t[0]), torch.from_numpy(ctx)).sample
  assert_close(np.asarray(ours_s), to_nhwc(ref_s), f"unet {variant} scalar t", seed)


def make_controlnet(unet_config: dict, seed: int, path):
  gen = torch.Generator().manual_seed(seed)
  keys = ("block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim",
          "down_block_types", "norm_num_groups")
  tc = diffusers.ControlNetModel(**{k: unet_config[k] for k in keys},
                                 conditioning_embedding_out_channels=(8, 16)).eval()
  randomize_(tc, gen)
  cfg_d, sd = save_and_load(tc, path)
  cfg = cn_lib.ControlNetConfig.from_json_dict(cfg_d, name=str(path / "config.json"))
  model = cn_lib.ControlNetModel(cfg)
  params = convert.torch_to_flax(sd, cn_lib.init_params_shape(model), name=str(path))
  return tc, model, params


def test_controlnet_and_unet_with_two_controlnets(tmp_path):
  seed = int(np.random.default_rng().integers(2**31))
  rng = np.random.default_rng(seed)
  tu, model, cfg, sd = make_unet(SD1_TINY, seed, tmp_path)
  params = convert.torch_to_flax(sd, unet_lib.init_params_shape(model), name="tiny unet")
  nets = [make_controlnet(SD1_TINY, seed + 1 + i, tmp_path / f"cn{i}") for i in range(2)]
  scales = (0.2, 0.6)  # the official openpose / seg conditioning scales
  x, t, ctx = inputs(rng, cfg)
  conds = [rng.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32) for _ in nets]

  ref_down, ref_mid = None, None
  for i, ((tc, m, p), cond, s) in enumerate(zip(nets, conds, scales)):
    down, mid = m.apply({"params": p}, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx),
                        jnp.asarray(cond), s)
    with torch.no_grad():
      r_down, r_mid = tc(nchw(x), torch.from_numpy(t), torch.from_numpy(ctx), nchw(cond),
                         conditioning_scale=s, return_dict=False)
    assert len(down) == len(r_down)
    for j, (a, b) in enumerate(zip(down, r_down)):
      assert_close(np.asarray(a), to_nhwc(b), f"controlnet {i} down residual {j}", seed)
    assert_close(np.asarray(mid), to_nhwc(r_mid), f"controlnet {i} mid residual", seed)
    ref_down = r_down if ref_down is None else [a + b for a, b in zip(ref_down, r_down)]
    ref_mid = r_mid if ref_mid is None else ref_mid + r_mid

  down, mid = cn_lib.multi_controlnet_residuals(
      [(m, p, jnp.asarray(c), s) for (_, m, p), c, s in zip(nets, conds, scales)],
      jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx))
  ours = model.apply({"params": params}, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx), down, mid)
  with torch.no_grad():
    ref = tu(nchw(x), torch.from_numpy(t), torch.from_numpy(ctx),
             down_block_additional_residuals=tuple(ref_down),
             mid_block_additional_residual=ref_mid).sample
  assert_close(np.asarray(ours), to_nhwc(ref), "unet + 2 controlnets", seed)


@pytest.mark.parametrize("variant", ["sd1", "sd2"])
def test_unet_ip_adapter_parity(variant, tmp_path):
  from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
  seed = int(np.random.default_rng().integers(2**31))
  rng = np.random.default_rng(seed)
  tu, model, cfg, sd = make_unet(SD1_TINY if variant == "sd1" else SD2_TINY, seed, tmp_path,
                                 with_ip_adapter=True)
  d = cfg.cross_attention_dim[0]
  # Our attn2 order must be diffusers' attn_processors order (the official file relies on it).
  names = [n[: -len(".processor")] for n in tu.attn_processors if n.endswith("attn2.processor")]
  assert unet_lib.cross_attention_layers(cfg) == names

  # The official .bin layout: {"image_proj": ..., "ip_adapter": {"<k>.to_k_ip.weight": ...}},
  # k odd over all processors. A plain IP-Adapter image projection (4 tokens) keeps it tiny.
  gen = torch.Generator().manual_seed(seed + 7)
  emb_dim = 12
  ip_sd = {"image_proj": {"proj.weight": torch.randn(4 * d, emb_dim, generator=gen) / np.sqrt(emb_dim),
                          "proj.bias": 0.1 * torch.randn(4 * d, generator=gen),
                          "norm.weight": 1 + 0.1 * torch.randn(d, generator=gen),
                          "norm.bias": 0.1 * torch.randn(d, generator=gen)},
           "ip_adapter": {}}
  hidden = {n: int(tu.get_submodule(n).to_q.weight.shape[0]) for n in names}
  for j, n in enumerate(names):
    for proj in ("to_k_ip", "to_v_ip"):
      ip_sd["ip_adapter"][f"{2 * j + 1}.{proj}.weight"] = (
          torch.randn(hidden[n], d, generator=gen) / np.sqrt(d))
  tu._load_ip_adapter_weights([ip_sd])
  scale = 0.8
  for proc in tu.attn_processors.values():
    if isinstance(proc, IPAdapterAttnProcessor2_0):
      proc.scale = [scale]

  key_map = unet_lib.ip_adapter_key_map(cfg)
  flat_ip = {f"ip_adapter.{k}": v.numpy() for k, v in ip_sd["ip_adapter"].items()}
  merged = {**sd, **{key_map[k]: v for k, v in flat_ip.items()}}
  params = convert.torch_to_flax(merged, unet_lib.init_params_shape(model), name="unet+ip")

  x, t, ctx = inputs(rng, cfg)
  image_embeds = torch.from_numpy(rng.standard_normal((2, 1, emb_dim)).astype(np.float32))
  with torch.no_grad():
    tokens = tu.encoder_hid_proj([image_embeds])[0].reshape(2, -1, d)  # (B, 4, D)
    ref = tu(nchw(x), torch.from_numpy(t), torch.from_numpy(ctx),
             added_cond_kwargs={"image_embeds": [image_embeds]}).sample
  ours = model.apply({"params": params}, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx),
                     ip_hidden_states=jnp.asarray(tokens.numpy()), ip_scale=scale)
  assert_close(np.asarray(ours), to_nhwc(ref), f"unet {variant} + ip-adapter", seed)
  # Without tokens the IP branch is off: must equal the plain UNet.
  plain = model.apply({"params": params}, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx))
  assert float(jnp.abs(plain - ours).max()) > 1e-3


def test_mismatched_checkpoint_raises(tmp_path):
  seed = int(np.random.default_rng().integers(2**31))
  _, _, _, sd = make_unet(SD1_TINY, seed, tmp_path)
  # An inpainting-style config (9 input channels) against a 4-channel checkpoint.
  cfg = unet_lib.UNetConfig.from_json_dict({**SD1_TINY, "in_channels": 9})
  template = unet_lib.init_params_shape(unet_lib.UNet2DConditionModel(cfg))
  with pytest.raises(convert.CheckpointError,
                     match=re.escape("key 'conv_in.weight' has shape (32, 4, 3, 3)")) as e:
    convert.torch_to_flax(sd, template, name="tiny unet")
  assert "(3, 3, 9, 32)" in str(e.value)
  # A plain UNet template does not accept IP-Adapter keys, and an IP template needs them.
  ip_template = unet_lib.init_params_shape(
      unet_lib.UNet2DConditionModel(unet_lib.UNetConfig.from_json_dict(SD1_TINY), with_ip_adapter=True))
  with pytest.raises(convert.CheckpointError, match="to_k_ip"):
    convert.torch_to_flax(sd, ip_template, name="tiny unet")


def test_config_rejects_unsupported_fields():
  with pytest.raises(ValueError, match="addition_embed_type"):
    unet_lib.UNetConfig.from_json_dict({**SD1_TINY, "addition_embed_type": "text_time"})
  with pytest.raises(ValueError, match="AttnDownBlock2D"):
    unet_lib.UNetConfig.from_json_dict({**SD1_TINY, "down_block_types": ["AttnDownBlock2D", "DownBlock2D"]})


def test_unet_bf16_jit_close_to_fp32(tmp_path):
  """dtype plumbing: a jitted bf16 UNet (fp32 params) stays near the fp32 output."""
  import jax
  seed = int(np.random.default_rng().integers(2**31))
  rng = np.random.default_rng(seed)
  _, model, cfg, sd = make_unet(SD1_TINY, seed, tmp_path)
  params = convert.torch_to_flax(sd, unet_lib.init_params_shape(model), name="tiny unet")
  x, t, ctx = inputs(rng, cfg)
  ref = model.apply({"params": params}, x, t, ctx)
  bf16 = unet_lib.UNet2DConditionModel(cfg, dtype=jnp.bfloat16)
  out = jax.jit(lambda p, *a: bf16.apply({"params": p}, *a))(params, x, t, ctx)
  assert out.dtype == jnp.bfloat16
  rel, _ = rel_err(np.asarray(out.astype(jnp.float32)), np.asarray(ref))
  assert rel < 3e-2, f"bf16 rel err {rel:.2e}, seed {seed}"
