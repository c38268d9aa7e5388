"""Inputs that used to pass the preflight and fail (or succeed wrongly) only after the whole run: each is now one
problem up front, naming the field and file. Headers only: no tensors are read, nothing is compiled."""

import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from configs import splatshot_sd15
from experiments import run as run_lib
from splatshot_jax import templates as T
from splatshot_jax.jobs import preflight
from test_preflight import _safetensors, _template, _weights

ROOT = Path(__file__).resolve().parents[1]
BASE = splatshot_sd15.get_config().sd.base  # the base pipeline folder the default config names
UNET = f"{BASE}/unet"
TO_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"


def _config(tmp_path: Path):
  config = splatshot_sd15.get_config()
  config.weights = str(_weights(tmp_path / "w"))
  config.template = "synthetic"
  config.num_views = 4
  config.out_dir = str(tmp_path / "out")
  return config


def _module(folder: Path, config: dict, tensors: dict) -> None:
  (folder / "config.json").write_text(json.dumps(config))
  for f in folder.glob("diffusion_pytorch_model*"):
    f.unlink()
  _safetensors(folder / "diffusion_pytorch_model.safetensors", {k: np.zeros(s, np.float32) for k, s in
                                                                 tensors.items()})


def _problems(config) -> str:
  return "\n".join(str(p) for p in preflight.check_splatshot(config, per_run=False))


def _sd15_unet(in_channels=4, cross=768, conv_in=None, **extra):
  cfg = {"in_channels": in_channels, "cross_attention_dim": cross, "block_out_channels": [8, 16], **extra}
  return cfg, {"conv_in.weight": conv_in or (8, in_channels, 3, 3), TO_K: (8, cross)}


def test_a_well_formed_sd15_layout_passes(tmp_path):
  config = _config(tmp_path)
  w = Path(config.weights)
  _module(w / UNET, *_sd15_unet())
  _module(w / "control_v11p_sd15_openpose", *_sd15_unet())
  shutil.rmtree(w / BASE / "tokenizer")  # what transformers saves now: tokenizer.json only
  (w / BASE / "tokenizer").mkdir()
  (w / BASE / "tokenizer/tokenizer.json").write_text(json.dumps(
      {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}))
  assert _problems(config) == ""


@pytest.mark.parametrize("case,where,words", [
    ("inpainting", UNET, ["config.sd.base (unet)", "inpainting UNet (in_channels 9"]),
    ("header_disagrees", UNET, ["header disagrees with config.json", "conv_in.weight has 8 input channels"]),
    ("sd2_cross_attention", UNET, ["cross_attention_dim 1024 (SD-2.x)", "attn2.to_k takes 768-d"]),
    ("sdxl_controlnet", "control_v11p_sd15_seg", ["config.sd.controlnets[1]", "SDXL", "control_v11p_sd15_openpose"]),
])
def test_unet_and_controlnet_headers_against_their_config(tmp_path, case, where, words):
  config = _config(tmp_path)
  folder = Path(config.weights) / where
  if case == "inpainting":
    _module(folder, *_sd15_unet(in_channels=9))
  elif case == "header_disagrees":
    _module(folder, *_sd15_unet(conv_in=(8, 8, 3, 3)))
  elif case == "sd2_cross_attention":
    cfg, tensors = _sd15_unet(cross=1024)
    _module(folder, cfg, {**tensors, TO_K: (8, 768)})
  else:
    cfg, tensors = _sd15_unet(cross=2048, addition_embed_type="text_time")
    _module(folder, cfg, {**tensors, "add_embedding.linear_1.weight": (8, 2816)})
  found = _problems(config)
  assert all(w in found for w in words), found


def _ip_adapter(path: Path, kind: str) -> None:
  ip = {"ip_adapter.1.to_k_ip.weight": (8, 768), "ip_adapter.1.to_v_ip.weight": (8, 768)}
  if kind == "base":
    proj = {"image_proj.proj.weight": (4 * 768, 1024), "image_proj.norm.weight": (768,)}
  else:
    proj = {"image_proj.latents": (1, 4 if kind == "plus_4_tokens" else 16, 768),
            "image_proj.proj_in.weight": (768, 1280), "image_proj.proj_out.weight": (768, 768)}
  _safetensors(path, {k: np.zeros(s, np.float32) for k, s in {**proj, **ip}.items()})


@pytest.mark.parametrize("kind,words", [("base", ["base IP-Adapter", "Plus-Face"]),
                                        ("plus_4_tokens", ["has 4 tokens", "16"]), ("plus_face", None)])
def test_ip_adapter_must_be_plus_face(tmp_path, kind, words):
  config = _config(tmp_path)
  config.sd.ip_adapter = "IP-Adapter/models/ip-adapter-plus-face_sd15.safetensors"
  _ip_adapter(Path(config.weights) / config.sd.ip_adapter, kind)
  found = _problems(config)
  if words is None:
    assert found == ""
  else:
    assert "config.sd.ip_adapter" in found and all(w in found for w in words), found


def test_a_bin_zip_with_a_missing_member(tmp_path):
  torch = pytest.importorskip("torch")
  import zipfile
  config = _config(tmp_path)
  path = Path(config.weights) / config.sd.ip_adapter
  torch.save({"image_proj": {"latents": torch.zeros(1, 16, 768), "proj_in.weight": torch.zeros(768, 1280),
                             "proj_out.weight": torch.zeros(768, 768)},
              "ip_adapter": {"1.to_k_ip.weight": torch.zeros(8, 768)}}, path)
  assert _problems(config) == ""
  with zipfile.ZipFile(path) as z:
    members = {n: z.read(n) for n in z.namelist()}
  with zipfile.ZipFile(path, "w") as z:
    for n, b in members.items():
      if not n.endswith("/data/1"):
        z.writestr(n, b)
  found = _problems(config)
  assert "config.sd.ip_adapter" in found and "lacks 1 tensor storage member" in found, found


@pytest.mark.parametrize("case,words", [
    ("symlink_loop", ["symbolic link loop"]),
    ("dangling_link", ["symbolic link to", "does not exist"]),
    ("directory", ["is a directory, expected a file"]),
    ("fifo", ["FIFO (named pipe)"]),
])
def test_links_folders_and_fifos_where_weight_files_belong(tmp_path, case, words):
  config = _config(tmp_path)
  w = Path(config.weights)
  ip = w / config.sd.ip_adapter
  unet_weights = w / UNET / "diffusion_pytorch_model.safetensors"
  if case == "symlink_loop":
    ip.unlink()
    ip.symlink_to(ip.name)
  elif case == "dangling_link":
    ip.unlink()
    ip.symlink_to(tmp_path / "gone.bin")
  elif case == "directory":
    ip.unlink()
    ip.mkdir()
  else:
    unet_weights.unlink()
    os.mkfifo(unet_weights)  # reading it would block the preflight forever: it must not be opened
  found = _problems(config)
  where = str(unet_weights if case == "fifo" else ip)
  assert all(w in found for w in words) and where in found, found
  assert "SplatShot needs these checkpoints" not in found, found  # not reported as missing


Cams = namedtuple("Cams", "viewmat K width height")


@pytest.mark.parametrize("case,words", [
    ("one_zero_quaternion", ["1 of 50 Gaussians have an all-zero rotation quaternion (first: [7])"]),
    ("huge_scales", ["50 of 50 Gaussians have a size outside"]),
    ("behind_every_camera", ["none of the 50 Gaussians is in front of and inside any of the 3 cameras"]),
])
def test_template_gaussians_must_be_valid_and_visible(tmp_path, case, words):
  t = _template()
  g = t.gaussians
  if case == "one_zero_quaternion":
    g = g.replace(quats=g.quats.at[7].set(0.0))
  elif case == "huge_scales":
    g = g.replace(log_scales=g.log_scales + np.log(1e30))
  else:  # far outside every camera's view (above the rig): every render would be blank
    g = g.replace(means=g.means + np.array([0.0, 1e3, 0.0], np.float32))
  folder = T.save_template(tmp_path / "tpl", t.replace(gaussians=g))
  config = splatshot_sd15.get_config()
  config.template = str(folder)
  config.num_views = 3
  problems, _ = preflight.check_template(config)
  found = "\n".join(str(p) for p in problems)
  assert all(w in found for w in words) and "config.template" in found, found
  assert preflight.check_template(_tpl_config(T.save_template(tmp_path / "ok", t)))[0] == []


def _tpl_config(folder):
  config = splatshot_sd15.get_config()
  config.template, config.num_views = str(folder), 3
  return config


def test_free_disk_space_against_the_runs_outputs(tmp_path, monkeypatch):
  config = splatshot_sd15.get_config("smoke")
  config.out_dir = str(tmp_path / "out")
  assert preflight.check_disk_space(config) == []
  usage = namedtuple("usage", "total used free")
  monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 12, 10 ** 12 - 10 ** 5, 10 ** 5))
  found = [str(p) for p in preflight.check_splatshot(config)]
  assert any("GiB free" in p and "need about" in p and p.startswith("config.out_dir") for p in found), found


def test_absurd_step_counts_are_refused_with_an_eta():
  config = splatshot_sd15.get_config("smoke")
  config.sampler.num_inference_steps = 100_000
  config.guidance.refit_iters = 1_000_000_000
  found = [str(p) for p in preflight.check_splatshot(config, per_run=False)]
  assert any(p.startswith("config.sampler.num_inference_steps: 100000 steps; expected at most 1000") for p in found)
  assert any(p.startswith("config.guidance.refit_iters") and "days" in p for p in found), found
  config = splatshot_sd15.get_config()  # the paper's settings pass
  assert preflight.check_run_length(config) == []


@pytest.mark.parametrize("body,words", [
    ("def get_config(:\n  pass\n", ["does not import: invalid syntax at line 1"]),
    ("def get_config(arg=None):\n  return {}['missing']\n", ["loading it raised KeyError", "line 2 of the file"]),
    ("import not_a_module_anywhere\n", ["ModuleNotFoundError", "not_a_module_anywhere"]),
])
def test_a_config_file_that_does_not_load_is_one_message(tmp_path, capsys, body, words):
  path = tmp_path / "bad_config.py"
  path.write_text(body)
  code = run_lib.main(["run", f"--config={path}"])
  err = capsys.readouterr().err
  assert code == 2 and "Traceback" not in err and err.startswith("error: cannot load the config: --config"), err
  assert all(w in err for w in words), err


def test_view_on_a_bad_ply_is_one_message(tmp_path):
  bad = tmp_path / "broken.ply"
  bad.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n1\n")
  proc = subprocess.run([sys.executable, "-m", "experiments.view", str(bad)], cwd=ROOT, capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"), timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
  assert proc.stderr.startswith(f"error: {bad}") and "truncated" in proc.stderr, proc.stderr
