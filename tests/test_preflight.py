"""Every bad input is reported up front by `experiments.run` (exit code 2, one message naming the field and the
file, nothing computed first, no output folder that looks finished); the sampler stops on non-finite values and
keeps what it had; runs are atomic (RUN.json, `is_finished`); official template folders load as they are.

The entry point runs in-process (`experiments.run.main`): a subprocess would pay the jax import per case.
"""

import json
import os
import shutil
import struct
import types
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import splatshot_sd15
from experiments import run as run_lib
from splatshot_jax import errors, guidance, sampler, synthetic
from splatshot_jax.jobs import pipeline, preflight
from splatshot_jax import templates as T
from splatshot_jax.face import controls
from splatshot_jax.gaussians import random_gaussians
from splatshot_jax.io import atomic, images as image_io, ply

SHARED = Path(os.environ.get("SPLATSHOT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
NERSEMBLE_333 = SHARED / "data/multiview/nersemble-333-48views"


def _template(views=3, width=30, height=41, num=50) -> T.Template:
  """A tiny template with arbitrary content (no rendering)."""
  rs = np.random.default_rng(0)
  cams = synthetic.head_rig(2 * views, width=width, height=height)[:views]
  return T.Template(
      gaussians=random_gaussians(jax.random.PRNGKey(0), num, sh_degree=1), cameras=cams,
      renders=jnp.asarray(rs.uniform(size=(views, height, width, 3)), jnp.float32),
      heatmaps=jnp.asarray(rs.integers(0, 256, (views, height, width, 3)), jnp.uint8),
      parsing=jnp.asarray(controls.PALETTE[rs.integers(0, 19, (views, height, width))]),
      landmarks3d=jnp.asarray(rs.normal(size=(68, 3)).astype(np.float32)), valid=jnp.ones(views, bool),
      name="tiny")


@pytest.fixture(scope="module")
def template_dir(tmp_path_factory) -> Path:
  return T.save_template(tmp_path_factory.mktemp("tpl") / "tiny", _template())


def _copy_template(template_dir: Path, tmp_path: Path) -> Path:
  return Path(shutil.copytree(template_dir, tmp_path / "tpl"))


def _safetensors(path: Path, tensors: dict | None = None) -> None:
  """A valid safetensors file: {name: float32 array}."""
  tensors = tensors or {"w": np.zeros(2, np.float32)}
  header, blobs, offset = {}, [], 0
  for k, a in tensors.items():
    b = np.asarray(a, np.float32).tobytes()
    header[k] = {"dtype": "F32", "shape": list(np.shape(a)), "data_offsets": [offset, offset + len(b)]}
    blobs.append(b)
    offset += len(b)
  h = json.dumps(header).encode()
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def _weights(root: Path, sd=None) -> Path:
  """The weights layout pipeline.py documents, every file well-formed (tiny tensors)."""
  sd = sd or splatshot_sd15.get_config().sd
  base = root / sd.base
  base.mkdir(parents=True)
  (base / "model_index.json").write_text("{}")
  for sub, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                    ("text_encoder", "model")):
    (base / sub).mkdir()
    (base / sub / "config.json").write_text("{}")
    _safetensors(base / sub / f"{name}.safetensors")
  (base / "tokenizer").mkdir()
  (base / "tokenizer" / "vocab.json").write_text("{}")
  (base / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
  for folder, name in [(sd.vae, "diffusion_pytorch_model"), (sd.image_encoder, "model"),
                       *[(c, "diffusion_pytorch_model") for c in sd.controlnets]]:
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / folder / "config.json").write_text("{}")
    _safetensors(root / folder / f"{name}.safetensors")
  with zipfile.ZipFile(root / sd.ip_adapter, "w") as z:  # a torch .bin is a zip archive
    z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
  return root


@pytest.fixture
def nothing_runs(monkeypatch):
  """Every expensive step fails the test if it is reached: the preflight must stop the run first."""
  def forbidden(name):
    def f(*a, **k):
      raise AssertionError(f"{name} was called: work started before the inputs were checked")
    return f
  for mod, name in [(pipeline, "load_prior"), (pipeline, "load_base_template"), (pipeline, "load_photo"),
                    (sampler, "run_splatshot"), (T, "fit_scene"), (T, "load_scene"), (T, "synthetic_template")]:
    monkeypatch.setattr(mod, name, forbidden(f"{mod.__name__}.{name}"))


def _main(capsys, *args):
  code = run_lib.main(["run", *args])
  return code, capsys.readouterr().err


def _nan_ply(folder: Path):
  g = ply.read_gaussians(folder / "gaussians.ply")
  means = np.asarray(g.means).copy()
  means[3, 0] = np.nan
  ply.write_gaussians(folder / "gaussians.ply", g.replace(means=jnp.asarray(means)))
  return ["gaussians.ply", "non-finite", "x: 1", "config.template"]


def _empty_ply(folder: Path):
  data = (folder / "gaussians.ply").read_bytes()
  head = data[:data.index(b"end_header\n") + len(b"end_header\n")]
  (folder / "gaussians.ply").write_bytes(head.replace(b"element vertex 50", b"element vertex 0"))
  return ["gaussians.ply", "0 rows", "at least one Gaussian"]


def _nan_camera(folder: Path):
  with np.load(folder / "view_001.npz") as z:
    d = dict(z)
  d["K"] = np.full((3, 3), np.nan, np.float32)
  np.savez(folder / "view_001.npz", **d)
  return ["field 'K'", "NaN/inf", "view_001.npz"]


def _scaled_viewmat(folder: Path):
  with np.load(folder / "view_002.npz") as z:
    d = dict(z)
  d["viewmat"] = d["viewmat"] * np.float32(2.0)  # not a rigid transform
  np.savez(folder / "view_002.npz", **d)
  return ["field 'viewmat'", "rigid", "view_002.npz"]


# Each case: (name, setup(tmp_path, template folder) -> (extra argv, [strings the message must contain])).
def _case_template(edit):
  def setup(tmp, tpl):
    return [f"--config.template={tpl}"], edit(tpl)
  return setup


def _case_out_dir_file(tmp, tpl):
  (tmp / "out").write_text("not a folder")
  return [], ["config.out_dir", str(tmp / "out"), "is a file"]


def _case_out_dir_uncreatable(tmp, tpl):
  (tmp / "blocker").write_text("a file")
  return [f"--config.out_dir={tmp / 'blocker' / 'out'}"], ["config.out_dir", "blocker is a file"]


def _case_out_dir_not_writable(tmp, tpl):
  if os.geteuid() == 0:
    pytest.skip("root can write anywhere: the 'not writable' check cannot be exercised")
  (tmp / "ro").mkdir()
  (tmp / "ro").chmod(0o500)
  return [f"--config.out_dir={tmp / 'ro' / 'out'}"], ["config.out_dir", "not writable"]


def _case_finished_run(tmp, tpl):
  (tmp / "out").mkdir()
  (tmp / "out" / atomic.RUN_FILE).write_text(json.dumps({"status": "complete"}))
  return ["--config.overwrite=False"], ["config.out_dir", "finished run", "--config.overwrite=True"]


def _real_run(tmp, photo="absent.jpg"):
  return [f"--config.weights={tmp / 'w'}", f"--config.photo={tmp / photo}"]


def _case_weights_json(tmp, tpl):
  _weights(tmp / "w")
  (tmp / "w" / "control_v11p_sd15_seg" / "config.json").write_text("{not json")
  return _real_run(tmp), ["config.sd.controlnets[1]", "control_v11p_sd15_seg/config.json", "not valid JSON",
                          "config.photo"]  # the photo's problem is reported in the same message


def _case_weights_header(tmp, tpl):
  _weights(tmp / "w")
  path = tmp / "w" / splatshot_sd15.get_config().sd.base / "unet" / "diffusion_pytorch_model.safetensors"
  path.write_bytes(path.read_bytes()[:-4])  # truncated: the header lists more bytes than the file has
  return _real_run(tmp), ["config.sd.base (unet)", "diffusion_pytorch_model.safetensors", "truncated"]


def _case_weights_missing(tmp, tpl):
  _weights(tmp / "w")
  shutil.rmtree(tmp / "w" / "IP-Adapter" / "models" / "image_encoder")
  return _real_run(tmp), ["config.sd.image_encoder", "image_encoder/config.json"]


def _case_photo_dir(tmp, tpl):
  _weights(tmp / "w")
  (tmp / "photo.jpg").mkdir()
  return _real_run(tmp, "photo.jpg"), ["config.photo", "photo.jpg", "is a directory"]


def _case_photo_unreadable(tmp, tpl):
  _weights(tmp / "w")
  (tmp / "photo.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  return _real_run(tmp, "photo.jpg"), ["config.photo", "photo.jpg", "unreadable"]


def _case_no_face(tmp, tpl):
  _weights(tmp / "w")
  image_io.save_image(tmp / "blank.png", np.full((96, 96, 3), 0.5, np.float32))
  return _real_run(tmp, "blank.png"), ["config.photo", "blank.png", "no face found"]


CASES = {
    "nan_in_template_ply": _case_template(_nan_ply),
    "zero_vertex_ply": _case_template(_empty_ply),
    "nan_camera": _case_template(_nan_camera),
    "non_rigid_camera": _case_template(_scaled_viewmat),
    "rgb_not_a_tuple": lambda tmp, tpl: (["--config.refit.background=0.5"], ["config.refit.background",
                                                                             "3 numbers in [0, 1]"]),
    "num_views_negative": lambda tmp, tpl: (["--config.num_views=-1"], ["config.num_views", "-1", "3 views"]),
    "num_views_too_many": lambda tmp, tpl: (["--config.num_views=4"], ["config.num_views", "[1, 3]"]),
    "strength_above_one": lambda tmp, tpl: (["--config.sampler.strength=1.5"], ["config.sampler.strength", "1.5",
                                                                                 "[0, 1]"]),
    "steps_zero": lambda tmp, tpl: (["--config.sampler.num_inference_steps=0"],
                                    ["config.sampler.num_inference_steps", ">= 1"]),
    "unknown_backend": lambda tmp, tpl: (["--config.refit.backend=cuda"], ["config.refit.backend", "'triton'"]),
    "unknown_lr_scaling": lambda tmp, tpl: (["--config.refit.lr_batch_scaling=linear"],
                                            ["config.refit.lr_batch_scaling", "'sqrt'"]),
    "unknown_start": lambda tmp, tpl: (["--config.sampler.start=dif"], ["config.sampler.start", "'diffusers'"]),
    "unknown_key": lambda tmp, tpl: (["--config.sampler.stregth=0.3"],
                                     ["config.sampler.stregth", "did you mean config.sampler.strength",
                                      "num_inference_steps"]),
    "unknown_section": lambda tmp, tpl: (["--config.sampeler.strength=0.3"],
                                         ["config.sampeler", "did you mean config.sampler"]),
    "out_dir_is_a_file": _case_out_dir_file,
    "out_dir_uncreatable": _case_out_dir_uncreatable,
    "out_dir_not_writable": _case_out_dir_not_writable,
    "out_dir_finished_run": _case_finished_run,
    "weights_bad_json": _case_weights_json,
    "weights_bad_safetensors_header": _case_weights_header,
    "weights_missing": _case_weights_missing,
    "photo_is_a_directory": _case_photo_dir,
    "photo_unreadable": _case_photo_unreadable,
    "photo_without_face": _case_no_face,
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_reported_up_front(case, tmp_path, template_dir, nothing_runs, capsys):
  tpl = _copy_template(template_dir, tmp_path)
  out = tmp_path / "out"
  argv = ["--config=configs/splatshot_sd15.py:smoke", f"--config.template={tpl}", "--config.num_views=2",
          f"--config.out_dir={out}"]
  extra, expected = CASES[case](tmp_path, tpl)
  finished_before = atomic.is_finished(out)  # only the "finished run" case has one, and keeps it untouched
  code, err = _main(capsys, *argv, *extra)
  assert code == errors.EXIT_USER_ERROR, err
  for s in expected:
    assert s in err, f"{s!r} not in:\n{err}"
  assert "Traceback" not in err and "--debug" in err
  assert atomic.is_finished(out) == finished_before and not atomic.partial_dir(out).exists()


def test_all_problems_reported_at_once(tmp_path, template_dir, nothing_runs, capsys):
  tpl = _copy_template(template_dir, tmp_path)
  _nan_ply(tpl)
  (tmp_path / "photo").mkdir()
  code, err = _main(capsys, "--config=configs/splatshot_sd15.py", f"--config.template={tpl}",
                    f"--config.weights={tmp_path / 'no-weights'}", f"--config.photo={tmp_path / 'photo'}",
                    "--config.sampler.strength=-0.1", f"--config.out_dir={tpl / 'gaussians.ply'}")
  assert code == 2
  for field in ("config.weights", "config.photo", "config.template", "config.sampler.strength", "config.out_dir"):
    assert f"- {field}" in err, err


def test_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, template_dir, nothing_runs, capsys,
                                                        monkeypatch):
  argv = ["--config=configs/splatshot_sd15.py:smoke", "--config.sampler.strength=2"]
  code, err = _main(capsys, *argv, "--debug")
  assert code == 2 and "Traceback" in err and "config.sampler.strength" in err
  monkeypatch.setenv("SPLATSHOT_DEBUG", "1")
  assert _main(capsys, *argv)[1].count("Traceback") >= 1
  monkeypatch.delenv("SPLATSHOT_DEBUG")
  # A bug is not a user error: it propagates with its traceback.
  monkeypatch.setattr(preflight, "check_splatshot", lambda *a, **k: 1 / 0)
  with pytest.raises(ZeroDivisionError):
    run_lib.main(["run", "--config=configs/splatshot_sd15.py:smoke", f"--config.out_dir={tmp_path / 'o'}"])


def test_config_file_typos_and_bad_config_args(tmp_path, capsys, nothing_runs):
  reference = splatshot_sd15.get_config()
  config = splatshot_sd15.get_config()
  config.sampler.unlock()
  config.sampler.num_inference_step = 20  # a typo in a user's own config file
  problems = preflight.check_keys(config, reference)
  assert [p.field for p in problems] == ["config.sampler.num_inference_step"]
  assert "did you mean config.sampler.num_inference_steps" in problems[0].message
  code, err = _main(capsys, "--config=configs/splatshot_sd15.py:smok")
  assert code == 2 and "unknown arg 'smok'" in err and "Traceback" not in err
  code, err = _main(capsys, f"--config={tmp_path / 'absent.py'}")
  assert code == 2 and "absent.py" in err
  code, err = _main(capsys, "--config=configs/fit_multiview.py:smoke", f"--config.data={tmp_path / 'nope'}",
                    "--config.fit.num_iters=0", "--config.init.sh_degree=5", f"--config.out_dir={tmp_path / 'o'}")
  assert code == 2 and all(s in err for s in ("config.data", "nope", "config.fit.num_iters", "config.init.sh_degree"))


def test_build_template_checks_its_gaussians_and_rig(tmp_path, template_dir, capsys, nothing_runs):
  tpl = _copy_template(template_dir, tmp_path)
  _nan_ply(tpl)
  code, err = _main(capsys, "--config=configs/build_template.py:smoke", f"--config.gaussians={tpl / 'gaussians.ply'}",
                    "--config.rig=paper49", "--config.template.detector=dnn", f"--config.out_dir={tmp_path / 'o'}")
  assert code == 2
  for s in ("config.gaussians", "non-finite", "config.rig", "'paper48'", "config.template.detector"):
    assert s in err, err


def test_valid_inputs_pass(tmp_path, template_dir):
  config = splatshot_sd15.get_config()
  config.weights = str(_weights(tmp_path / "w"))
  config.template = str(template_dir)
  config.num_views = 3
  config.out_dir = str(tmp_path / "out")
  problems = preflight.check_splatshot(config, reference=splatshot_sd15.get_config())
  assert [p.field for p in problems] == ["config.photo"]  # only the (empty) photo is missing
  assert preflight.check_weights(config) == []
  # A finished run may be replaced with overwrite; an unfinished one always; a foreign folder never by default.
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / atomic.RUN_FILE).write_text(json.dumps({"status": "complete"}))
  assert preflight.check_out_dir(config.out_dir, overwrite=True) == []
  (tmp_path / "out" / atomic.RUN_FILE).write_text(json.dumps({"status": "running"}))
  assert preflight.check_out_dir(config.out_dir) == []
  (tmp_path / "out" / atomic.RUN_FILE).unlink()
  (tmp_path / "out" / "notes.txt").write_text("mine")
  assert "not a run folder" in preflight.check_out_dir(config.out_dir)[0].message


def test_point_cloud_with_nan_is_rejected(tmp_path):
  pts = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
  pts[[2, 5], 1] = np.inf
  ply.write_points(tmp_path / "points3d.ply", pts)
  with pytest.raises(ply.PlyError, match=r"points3d\.ply: 2 of 10 points have non-finite .*y: 2"):
    ply.read_points(tmp_path / "points3d.ply")


def test_unwritable_out_dir_is_reported(tmp_path, monkeypatch):
  """Root writes anywhere, so the probe's failure is simulated (the chmod case above covers other users)."""
  def refuse(*a, **k):
    raise PermissionError(13, "Permission denied")
  monkeypatch.setattr(preflight.tempfile, "TemporaryDirectory", refuse)
  problems = preflight.check_out_dir(str(tmp_path / "a" / "b"))
  assert problems and problems[0].field == "config.out_dir"
  assert f"{tmp_path} is not writable (Permission denied)" in problems[0].message


# ----------------------------------------------------------------------------------------------
# Atomic runs.


def test_interrupted_run_never_looks_finished_and_a_rerun_replaces_it(tmp_path):
  out = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    with atomic.run_folder(out, job="test") as part:
      (part / "avatar.ply").write_text("half")
      assert atomic.run_state(part)["status"] == "running"
      raise KeyboardInterrupt
  assert not out.exists() and not atomic.is_finished(out)
  failed = atomic.interrupted_dir(out)
  assert (failed / "avatar.ply").exists() and atomic.run_state(failed)["status"] == "interrupted"
  # A killed run (no exception handler ran) leaves only the hidden partial folder: the next run moves it to
  # NAME.interrupted (kept until a run completes), and starts clean.
  atomic.partial_dir(out).mkdir()
  (atomic.partial_dir(out) / "stale.png").write_text("x")
  (atomic.partial_dir(out) / atomic.RUN_FILE).write_text(json.dumps({"status": "running", "pid": 1}))
  with atomic.run_folder(out, job="test") as part:
    assert not (part / "stale.png").exists() and (failed / "stale.png").exists()
    (part / "avatar.ply").write_text("whole")
  assert atomic.is_finished(out) and (out / "avatar.ply").read_text() == "whole"
  assert not atomic.partial_dir(out).exists() and not failed.exists()
  # A rerun replaces the finished folder as a whole (nothing of the old run is left).
  (out / "old.txt").write_text("old")
  with atomic.run_folder(out) as part:
    (part / "new.txt").write_text("new")
  assert atomic.is_finished(out) and not (out / "old.txt").exists() and (out / "new.txt").exists()


# ----------------------------------------------------------------------------------------------
# The sampler's non-finite guard (the step is replaced by a stub: the guard is host code after it).


def _stub_sampler(monkeypatch, bad_step: int, what: str):
  V, H = 2, 8

  def step(state, t, *, refit_iters, **kw):
    x0 = np.full((V, H, H, 3), 0.5, np.float32)
    renders = np.full((V, H, H, 3), 0.25, np.float32)
    shift = 1.0
    step.calls += 1
    if step.calls - 1 == bad_step:
      if what == "latents":
        x0[1, 2, 3, 0] = np.nan
      elif what == "gaussians":
        renders[0] = np.inf
      elif what == "model_only":  # e.g. NaN means culled by the rasterizer: the renders stay finite
        state = state.replace(model=state.model.replace(means=state.model.means.at[1, 2].set(jnp.nan)))
      else:
        shift = float("nan")
    aux = types.SimpleNamespace(x0_images=x0, renders=renders, discrepancy=np.float32(0.1),
                                eps_correction=np.float32(shift))
    return state, aux
  step.calls = 0
  monkeypatch.setattr(guidance, "splatshot_step", step)
  monkeypatch.setattr(sampler, "_start", lambda prior, images, schedule, t0, rng: (images, images))
  monkeypatch.setattr(sampler, "_decode", lambda prior, z: z)
  g = random_gaussians(jax.random.PRNGKey(0), 5, sh_degree=0)
  template = types.SimpleNamespace(gaussians=g, cameras=None, images=np.zeros((V, H, H, 3), np.float32))
  cfg = sampler.SamplerConfig(num_inference_steps=10, progress=False, thumbnail=0,
                              guidance=guidance.GuidanceConfig(feedback=False, sdi=False))
  return lambda: sampler.run_splatshot(None, template, None, cfg, jax.random.PRNGKey(0))


@pytest.mark.parametrize("what,words", [("latents", ["latents", "views [1]"]),
                                        ("gaussians", ["Gaussians", "views [0]"]),
                                        ("eps", ["eps", "guidance_weight"])])
def test_sampler_stops_at_the_first_non_finite_step(monkeypatch, what, words):
  run = _stub_sampler(monkeypatch, 2, what)
  with pytest.raises(errors.NonFiniteError) as e:
    run()
  msg = str(e.value)
  assert e.value.step == 2 and "step 2 (t=" in msg and all(w in msg for w in words), msg
  assert e.value.partial["x0_images"].shape[:2] == (2, 2)  # the two good steps are kept
  assert len(e.value.partial["timesteps"]) == 2
  res = _stub_sampler(monkeypatch, 99, what)()  # never bad: runs to the end
  assert np.isfinite(res.final_images).all()


def test_sampler_checks_the_final_model(monkeypatch):
  run = _stub_sampler(monkeypatch, 0, "model_only")  # stays in the state to the end
  with pytest.raises(errors.NonFiniteError, match=r"after the last step: the avatar Gaussians \(means: 1 "):
    run()


def test_non_finite_run_keeps_its_steps_under_a_failed_folder(tmp_path, monkeypatch, capsys):
  """The splatshot job writes the good steps' x0 grid and moves the folder to OUT.failed (exit 2)."""
  from experiments import splatshot as job
  t = _template(views=2, width=16, height=16, num=10)
  monkeypatch.setattr(pipeline, "load_template_candidates", lambda config: [t])
  monkeypatch.setattr(pipeline, "load_base_template", lambda config, photo=None, candidates=None: (t, {}))
  monkeypatch.setattr(pipeline, "load_prior", lambda config: (types.SimpleNamespace(), None))
  monkeypatch.setattr(pipeline, "make_conditions", lambda *a: (None, None))
  partial = {"x0_images": np.zeros((2, 2, 8, 8, 3), np.uint8), "renders": np.zeros((2, 2, 8, 8, 3), np.uint8),
             "timesteps": np.array([481, 441])}

  def boom(*a, **k):
    raise errors.NonFiniteError([errors.Problem("", "step 2 (t=401): the latents became non-finite")],
                                "the sampler stopped at step 2 of 13", step=2, partial=partial)
  monkeypatch.setattr(sampler, "run_splatshot", boom)
  out = tmp_path / "out"
  code, err = _main(capsys, "--config=configs/splatshot_sd15.py:smoke", f"--config.out_dir={out}")
  assert code == 2 and "step 2" in err and "latents" in err, err
  failed = atomic.failed_dir(out)
  assert not out.exists() and (failed / "x0_grid.png").exists()
  state = atomic.run_state(failed)
  assert state["status"] == "failed" and state["step"] == 2 and not atomic.is_finished(failed)


# ----------------------------------------------------------------------------------------------
# Official SplatShot template folders.


def test_official_template_folder_loads_as_is(tmp_path, template_dir):
  ours = T.load_template(template_dir)
  folder = _copy_template(template_dir, tmp_path)
  (folder / "manifest.json").unlink()
  (folder / "gaussians.ply").rename(folder / T.OFFICIAL_PLY)
  t = T.load_template(folder)
  assert len(t) == len(ours) and t.name == "tiny"  # meta.json's template name
  np.testing.assert_array_equal(np.asarray(t.heatmaps), np.asarray(ours.heatmaps))
  np.testing.assert_array_equal(np.asarray(t.parsing), np.asarray(ours.parsing))
  np.testing.assert_array_equal(np.asarray(t.renders), np.asarray(ours.renders))
  np.testing.assert_allclose(np.asarray(t.gaussians.means), np.asarray(ours.gaussians.means))
  assert np.isnan(np.asarray(t.landmarks3d)).all() and 0 <= t.info.frontal_view < len(t)
  (folder / T.OFFICIAL_PLY).unlink()
  with pytest.raises(T.TemplateError, match="point_cloud.ply"):
    T.load_template(folder)


@pytest.mark.skipif(not NERSEMBLE_333.exists(), reason=f"shared data absent: {NERSEMBLE_333}")
def test_official_333_views_with_a_point_cloud_load_as_a_template(tmp_path):
  folder = tmp_path / "333"
  folder.mkdir()
  for f in NERSEMBLE_333.iterdir():
    if f.name == "meta.json" or f.name.startswith("view_"):
      (folder / f.name).symlink_to(f)
  ply.write_gaussians(folder / T.OFFICIAL_PLY, random_gaussians(jax.random.PRNGKey(1), 20, sh_degree=3))
  t = T.load_template(folder)
  meta = json.loads((NERSEMBLE_333 / "meta.json").read_text())
  assert len(t) == meta["num_views"] == 48 and t.gaussians.num == 20
  with np.load(NERSEMBLE_333 / "view_008.npz") as z:
    np.testing.assert_array_equal(np.asarray(t.heatmaps[8]), z["heatmap_control"])
    np.testing.assert_array_equal(np.asarray(t.parsing[8]), z["parsing_control"])
    assert bool(np.asarray(t.valid)[8]) == bool(z["valid"])
  config = splatshot_sd15.get_config("smoke")
  config.template, config.num_views, config.out_dir = str(folder), 48, str(tmp_path / "out")
  assert preflight.check_splatshot(config) == []


def test_enum_choices_are_the_codes_own():
  """preflight imports no jax, so it keeps its own copies of these enums: they must stay the code's."""
  from splatshot_jax import fit  # pylint: disable=import-outside-toplevel
  from splatshot_jax.render import composite_triton  # pylint: disable=import-outside-toplevel
  assert preflight.RENDER_BACKENDS == composite_triton.BACKENDS
  assert preflight.LR_BATCH_SCALINGS == fit.LR_BATCH_SCALINGS


def test_batch_reports_its_problems_before_any_work(tmp_path, template_dir, nothing_runs, capsys):
  """The batch's preflight: a bad shard, a missing weights folder and a bad value are listed together, and the
  photos' faces are left to each photo's turn (a photo without a face is a recorded failure, not a refusal)."""
  photos = tmp_path / "photos"
  photos.mkdir()
  (photos / "a.png").write_bytes(b"not checked before the photo's turn")
  code, err = _main(capsys, "--config=configs/batch.py", f"--config.photos={photos}", "--config.shard=3/2",
                    f"--config.weights={tmp_path / 'no-weights'}", f"--config.template={template_dir}",
                    "--config.sampler.strength=2", f"--config.out_dir={tmp_path / 'out'}")
  assert code == 2, err
  for field in ("config.shard", "config.sd.base", "config.sampler.strength"):
    assert field in err, (field, err)
  assert "config.photo:" not in err and not (tmp_path / "out").exists()
  code, err = _main(capsys, "--config=configs/batch.py", f"--config.photos={tmp_path / 'none' / '*.jpg'}",
                    "--config.weights=random-tiny", f"--config.out_dir={photos / 'a.png'}")
  assert code == 2 and "config.photos" in err and "config.out_dir" in err, err


def test_evaluate_reports_its_problems_at_once(tmp_path, capsys):
  code, err = _main(capsys, "--config=configs/evaluate.py", f"--config.target={tmp_path / 'nothing'}",
                    f"--config.arcface={tmp_path / 'w600k_r50.onnx'}", "--config.video_stride=0",
                    "--config.alpha_threshold=1.5")
  assert code == 2, err
  for field in ("config.target", "config.arcface", "config.video_stride", "config.alpha_threshold"):
    assert field in err, (field, err)
