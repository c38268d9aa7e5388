"""Loading checkpoints from disk: good folders load (all dtypes and variants), broken ones fail at the edge with
messages naming the file, the key and the expected shape."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import tiny_sd
from splatshot_jax.diffusion import loading
from splatshot_jax.diffusion.convert import CheckpointError

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  return tiny_sd.build(tmp_path_factory.mktemp("tiny_sd"))


def _copy(src: Path, tmp_path: Path) -> Path:
  dst = tmp_path / src.name
  shutil.copytree(src, dst)
  return dst


def _leaves_dtype(params):
  return {x.dtype for x in jax.tree.leaves(params)}


def test_full_pipeline_folder_loads(paths):
  prior, cond = loading.load_stable_diffusion(
      paths["sd"], controlnets=[paths["cn_pose"], paths["cn_seg"]], ip_adapter=paths["ip_file"],
      image_encoder=paths["image_encoder"], num_inference_steps=25)
  assert prior.spec.with_ip_adapter and len(prior.spec.controlnets) == 2
  assert int(prior.schedule.timesteps[0]) == 961
  assert cond.is_plus and cond.ip_tokens(np.zeros((20, 30, 3), np.uint8)).shape == (1, 4, tiny_sd.TEXT_DIM)
  assert cond.encode_prompt(["a", "b"]).shape == (2, 77, tiny_sd.TEXT_DIM)


def test_component_values_match_torch(paths):
  """A spot check that conversion is a permutation, not just shape-compatible."""
  from diffusers import ControlNetModel

  _, params = loading.load_controlnet(paths["cn_pose"])
  ref = ControlNetModel.from_pretrained(paths["cn_pose"])
  w = ref.controlnet_down_blocks[1].weight.detach().numpy()  # (O, I, 1, 1)
  np.testing.assert_array_equal(params["controlnet_down_blocks_1"]["kernel"], w.transpose(2, 3, 1, 0))


@pytest.mark.parametrize("dtype,expected", [("float32", jnp.float32), ("bf16", jnp.bfloat16),
                                            ("float16", jnp.float16)])
def test_dtype_casts_params(paths, dtype, expected):
  model, params = loading.load_vae(paths["sd"] / "vae", dtype=dtype)
  assert _leaves_dtype(params) == {jnp.dtype(expected)} and model.dtype == expected


def test_fp16_variant_and_separate_vae_folder(paths, tmp_path):
  vae = _copy(paths["sd"] / "vae", tmp_path)
  f = vae / "diffusion_pytorch_model.safetensors"
  sd = load_file(str(f))
  save_file({k: v.astype(np.float16) for k, v in sd.items()}, str(vae / "diffusion_pytorch_model.fp16.safetensors"))
  _, p32 = loading.load_vae(vae)  # the plain file is preferred without a variant
  _, p16 = loading.load_vae(vae, variant="fp16")
  w32 = np.asarray(p32["decoder"]["conv_out"]["kernel"])
  w16 = np.asarray(p16["decoder"]["conv_out"]["kernel"])
  assert not np.array_equal(w32, w16) and np.allclose(w32, w16, atol=1e-3)
  f.unlink()  # only the fp16 file left: still found without asking for the variant
  _, p = loading.load_vae(vae)
  np.testing.assert_array_equal(p["decoder"]["conv_out"]["kernel"], w16)
  prior, _ = loading.load_stable_diffusion(paths["sd"], vae=vae)
  np.testing.assert_array_equal(prior.params["vae"]["decoder"]["conv_out"]["kernel"], w16)


def test_bf16_safetensors_are_read(paths, tmp_path):
  vae = _copy(paths["sd"] / "vae", tmp_path)
  f = vae / "diffusion_pytorch_model.safetensors"
  import safetensors.torch as st
  st.save_file({k: v.to(torch.bfloat16) for k, v in st.load_file(str(f)).items()}, str(f))
  _, p = loading.load_vae(vae)
  ref = st.load_file(str(f))["decoder.conv_out.weight"].float().numpy().transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(p["decoder"]["conv_out"]["kernel"], ref)


def test_missing_unet_config(paths, tmp_path):
  sd = _copy(paths["sd"], tmp_path)
  (sd / "unet" / "config.json").unlink()
  with pytest.raises(CheckpointError, match=r"unet/config\.json: file not found"):
    loading.load_stable_diffusion(sd)


def test_missing_weights_lists_what_was_looked_for(paths, tmp_path):
  sd = _copy(paths["sd"], tmp_path)
  (sd / "unet" / "diffusion_pytorch_model.safetensors").unlink()
  with pytest.raises(CheckpointError) as e:
    loading.load_stable_diffusion(sd)
  msg = str(e.value)
  assert str(sd / "unet") in msg and "diffusion_pytorch_model.safetensors" in msg and ".fp16.safetensors" in msg


def test_wrong_shape_names_key_and_expected_shape(paths, tmp_path):
  cn = _copy(paths["cn_seg"], tmp_path)
  f = cn / "diffusion_pytorch_model.safetensors"
  sd = load_file(str(f))
  sd["controlnet_mid_block.weight"] = sd["controlnet_mid_block.weight"][:32]
  save_file(sd, str(f))
  with pytest.raises(CheckpointError, match=r"controlnet_mid_block\.weight.*\(32, 64, 1, 1\).*expects \(1, 1, 64, 64\)"):
    loading.load_controlnet(cn)


def test_truncated_safetensors(paths, tmp_path):
  vae = _copy(paths["sd"] / "vae", tmp_path)
  f = vae / "diffusion_pytorch_model.safetensors"
  f.write_bytes(f.read_bytes()[:-100])
  with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors.*truncated"):
    loading.load_vae(vae)


def test_bad_config_field_names_file(paths, tmp_path):
  unet = _copy(paths["sd"] / "unet", tmp_path)
  cfg = (unet / "config.json").read_text().replace('"DownBlock2D"', '"KDownBlock2D"')
  (unet / "config.json").write_text(cfg)
  with pytest.raises(CheckpointError, match=r"config\.json.*down_block_types.*KDownBlock2D"):
    loading.load_unet(unet)


def _nested_bin_with_shared_tensors(path: Path):
  base = torch.randn(4, 6)
  torch.save({"image_proj": {"a.weight": base, "b.weight": base[:2]}, "ip_adapter": {"1.to_k_ip.weight": base.T}},
             path)


def test_bin_without_torch_gives_conversion_command(tmp_path, monkeypatch):
  f = tmp_path / "weights.bin"
  _nested_bin_with_shared_tensors(f)
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(CheckpointError) as e:
    loading.read_state_dict(f)
  msg = str(e.value)
  assert "torch is not installed" in msg and "weights.safetensors" in msg
  with pytest.raises(CheckpointError, match="torch is not installed"):
    loading.read_ip_adapter(f)
  monkeypatch.undo()
  # The command in the message works on a nested dict whose tensors share storage.
  assert loading.bin_conversion_command(f) in msg
  # Run with the suite's own interpreter, not whatever `python` the shell finds (it may have no torch).
  cmd = loading.bin_conversion_command(f, python=shlex.quote(sys.executable))
  assert cmd.replace(shlex.quote(sys.executable), "python", 1) in msg
  subprocess.run(cmd, shell=True, check=True, cwd=tmp_path)
  converted = loading.read_state_dict(tmp_path / "weights.safetensors")
  original = loading.read_state_dict(f)
  assert sorted(converted) == sorted(original) == ["image_proj.a.weight", "image_proj.b.weight",
                                                    "ip_adapter.1.to_k_ip.weight"]
  for k in original:
    np.testing.assert_array_equal(converted[k], original[k])


def test_ip_adapter_bin_and_converted_safetensors_agree(paths, tmp_path):
  cmd = loading.bin_conversion_command(paths["ip_file"], python=shlex.quote(sys.executable)).replace(
      repr(str(paths["ip_file"].with_suffix(".safetensors"))), repr(str(tmp_path / "ip.safetensors")))
  subprocess.run(cmd, shell=True, check=True)
  proj_b, ip_b = loading.read_ip_adapter(paths["ip_file"])
  proj_s, ip_s = loading.read_ip_adapter(tmp_path / "ip.safetensors")
  assert sorted(proj_b) == sorted(proj_s) and sorted(ip_b) == sorted(ip_s)
  _, up_b = loading.load_unet(paths["sd"] / "unet", ip_adapter_state=ip_b)
  _, up_s = loading.load_unet(paths["sd"] / "unet", ip_adapter_state=ip_s)
  jax.tree.map(np.testing.assert_array_equal, up_b, up_s)


def test_ip_adapter_for_another_unet_is_rejected(paths):
  _, ip = loading.read_ip_adapter(paths["ip_file"])
  ip = {k: v for k, v in ip.items() if not k.startswith("1.")}
  with pytest.raises(CheckpointError, match="IP-Adapter: expected to_k_ip/to_v_ip for 4 cross-attention.*found 6 tensors"):
    loading.load_unet(paths["sd"] / "unet", ip_adapter_state=ip)


def test_ip_adapter_without_image_encoder_is_an_error(paths):
  with pytest.raises(ValueError, match="image_encoder"):
    loading.load_stable_diffusion(paths["sd"], ip_adapter=paths["ip_file"])


def test_sharded_weights(paths, tmp_path):
  te = _copy(paths["sd"] / "text_encoder", tmp_path)
  sd = load_file(str(te / "model.safetensors"))
  keys = sorted(sd)
  half = len(keys) // 2
  save_file({k: sd[k] for k in keys[:half]}, str(te / "model-00001-of-00002.safetensors"))
  save_file({k: sd[k] for k in keys[half:]}, str(te / "model-00002-of-00002.safetensors"))
  import json
  (te / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {k: f"model-0000{1 + (i >= half)}-of-00002.safetensors" for i, k in enumerate(keys)}}))
  (te / "model.safetensors").unlink()
  _, p = loading.load_text_encoder(te)
  _, ref = loading.load_text_encoder(paths["sd"] / "text_encoder")
  jax.tree.map(np.testing.assert_array_equal, p, ref)
