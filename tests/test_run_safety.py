"""A run never loses a user's files, has one writer per folder, and ends cleanly on Ctrl-C / SIGTERM.

The signal and lock cases run real processes (`tests/interruptible_job.py`: experiments.run's entry point with a
tiny job of a few safe points, or the batch job with its pipeline stubbed), so no JAX compile is involved and each
takes a few seconds.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import batch as batch_config
from experiments import run as run_lib
from splatshot_jax.io import atomic
from splatshot_jax.jobs import batch, pipeline, preflight

ROOT = Path(__file__).resolve().parents[1]
JOB = Path(__file__).resolve().parent / "interruptible_job.py"


def _start(tmp_path: Path, *, batch_job=False, **values) -> subprocess.Popen:
  cfg = tmp_path / "values.json"
  cfg.write_text(json.dumps(values))
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, str(JOB), *(["--batch"] if batch_job else []), str(cfg)], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, line: str, timeout: float = 60) -> None:
  t0 = time.time()
  while time.time() - t0 < timeout:
    got = proc.stdout.readline()
    if line in got:
      return
    if not got and proc.poll() is not None:
      break
  raise AssertionError(f"{line!r} never printed; stderr:\n{proc.stderr.read()}")


def _finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
  _, err = proc.communicate(timeout=timeout)
  return proc.returncode, err


# ----------------------------------------------------------------------------------------------
# Never replace what a run did not write.


def test_a_folder_of_user_files_is_never_replaced_whatever_the_flags(tmp_path, capsys):
  """--config.overwrite=True (what `:smoke` sets) on a folder of the user's photos: refused up front, and refused by
  run_folder itself; every file stays."""
  photos = tmp_path / "my_photos"
  photos.mkdir()
  (photos / "holiday.jpg").write_bytes(b"precious")
  problems = preflight.check_out_dir(str(photos), overwrite=True)
  assert len(problems) == 1 and "not a run folder" in problems[0].message, problems
  code = run_lib.main(["run", "--config=configs/splatshot_sd15.py:smoke", f"--config.out_dir={photos}",
                       "--config.overwrite=True", "--config.outputs.turntable_frames=0"])
  err = capsys.readouterr().err
  assert code == 2 and "not a run folder" in err and "whatever --config.overwrite" in err, err
  with pytest.raises(atomic.RunFolderError, match="not a run folder"):
    with atomic.run_folder(photos, job="test") as part:
      (part / "avatar.ply").write_text("x")
  assert (photos / "holiday.jpg").read_bytes() == b"precious" and sorted(os.listdir(photos)) == ["holiday.jpg"]
  # A run's own folder is replaced; an empty folder is used.
  (tmp_path / "empty").mkdir()
  with atomic.run_folder(tmp_path / "empty", job="test") as part:
    (part / "a.txt").write_text("a")
  with atomic.run_folder(tmp_path / "empty", job="test") as part:
    (part / "b.txt").write_text("b")
  assert sorted(os.listdir(tmp_path / "empty")) == [atomic.RUN_FILE, "b.txt"]


def test_mount_point_and_a_failed_final_rename_keep_the_finished_run(tmp_path, monkeypatch):
  """A mount point out_dir is refused up front; if the final rename fails anyway (a read-only target), the finished
  run stays where it is, is named in the error, and the next run refuses to start instead of deleting it."""
  out = tmp_path / "mnt"
  out.mkdir()
  real_ismount = os.path.ismount
  monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out or real_ismount(p))
  problems = preflight.check_out_dir(str(out), overwrite=True)
  assert len(problems) == 1 and "mount point" in problems[0].message, problems
  monkeypatch.setattr(os.path, "ismount", real_ismount)

  real_replace = os.replace

  def read_only(src, dst):  # nothing can be renamed to or from the read-only target
    if out in (Path(src), Path(dst)):
      raise OSError(30, "Read-only file system")
    return real_replace(src, dst)
  monkeypatch.setattr(os, "replace", read_only)
  with pytest.raises(atomic.RunFolderError, match="could not be renamed into place") as e:
    with atomic.run_folder(out, job="test") as part:
      (part / "avatar.ply").write_text("finished")
  part = atomic.partial_dir(out)
  assert str(part) in str(e.value) and atomic.is_finished(part) and (part / "avatar.ply").read_text() == "finished"
  assert out.is_dir()  # the folder that was there is back
  monkeypatch.setattr(os, "replace", real_replace)
  assert any("could not be renamed" in p.message for p in preflight.check_out_dir(str(out), overwrite=True))
  with pytest.raises(atomic.RunFolderError, match="finished run"):
    with atomic.run_folder(out, job="test"):
      pass
  assert (part / "avatar.ply").read_text() == "finished"


# ----------------------------------------------------------------------------------------------
# One writer per run folder.


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
  out = tmp_path / "run"
  first = _start(tmp_path, out_dir=str(out), steps=2000, sleep=0.05)
  try:
    _wait_for(first, "step 1")
    problems = preflight.check_out_dir(str(out), overwrite=True)
    assert any(f"process {first.pid}" in p.message for p in problems), problems
    with pytest.raises(atomic.RunLockedError, match=f"process {first.pid} on "):
      with atomic.run_folder(out, job="second"):
        pass
    assert atomic.run_state(atomic.partial_dir(out))["status"] == "running"  # the first run's work is untouched
  finally:
    first.kill()  # SIGKILL: no clean-up, its lock file stays behind
    first.communicate()
  assert atomic.lock_path(out).exists()
  killed = atomic.interrupted_dir(out)
  with atomic.run_folder(out, job="second") as part:
    # The killed run's steps are kept (not deleted) until a run completes: they are history then.
    assert (killed / "step_0.txt").exists() and atomic.run_state(killed)["status"] == "interrupted"
    (part / "mine.txt").write_text("2")
  assert atomic.is_finished(out) and (out / "mine.txt").exists() and not atomic.lock_path(out).exists()


def test_the_stale_lock_message_names_the_dead_process(tmp_path, capsys):
  out = tmp_path / "run"
  atomic.lock_path(out).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "yesterday"}))
  with atomic.run_folder(out, job="test"):
    pass
  err = capsys.readouterr().err
  assert "taking over the lock of process 999999 on elsewhere, started yesterday" in err, err


# ----------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM.


@pytest.mark.parametrize("where", ["gc", "fork"])
def test_ctrl_c_inside_a_callback_still_stops_the_run(tmp_path, where):
  """The SIGINT lands in a gc callback (as in JAX's `_xla_gc_callback`) or an at-fork hook (logging's, when a
  subprocess starts): no "Exception ignored" and going on; the run stops at the next step, exit 130,
  NAME.interrupted/ with the step."""
  out = tmp_path / "run"
  code, err = _finish(_start(tmp_path, out_dir=str(out), steps=6, signal_at=2, sleep=0.0, signal_in=where))
  assert code == 130, err
  assert "Exception ignored" not in err and "Traceback" not in err, err
  assert err.count("interrupted:") == 1 and "SIGINT" in err, err
  cut = atomic.interrupted_dir(out)
  state = atomic.run_state(cut)
  assert not out.exists() and state["status"] == "interrupted" and state["step"] == 3, state
  assert (cut / "step_2.txt").exists() and not (cut / "step_3.txt").exists()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_from_outside_end_the_run_cleanly(tmp_path, sig, code):
  """A signal sent at a known step (twice for SIGINT: the second one must not break the clean-up)."""
  out = tmp_path / "run"
  proc = _start(tmp_path, out_dir=str(out), steps=2000, sleep=0.05)
  _wait_for(proc, "step 3")
  proc.send_signal(sig)
  if sig == signal.SIGINT:
    proc.send_signal(sig)
  rc, err = _finish(proc)
  assert rc == code, err
  assert "Traceback" not in err and "SystemError" not in err and "interrupted:" in err, err
  state = atomic.run_state(atomic.interrupted_dir(out))
  assert state["status"] == "interrupted" and state["step"] >= 3 and state["signal"].startswith(
      signal.Signals(sig).name), state
  assert not atomic.partial_dir(out).exists() and not out.exists()


def test_ctrl_c_in_a_batch_records_the_cut_photo_and_rebuilds_the_tables(tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  for stem in ("a", "b", "c"):
    (photos / f"{stem}.jpg").write_bytes(stem.encode())
  out = tmp_path / "out"
  code, err = _finish(_start(tmp_path, batch_job=True, photos=str(photos), out_dir=str(out), cut="b", in_gc=True))
  assert code == 130, err
  assert "Traceback" not in err and "Exception ignored" not in err, err
  assert err.count("interrupted:") == 1 and "photo b.jpg" in err, err
  rows = {Path(r["photo"]).stem: r for r in csv.DictReader(open(out / "summary.csv"))}
  assert [rows[s]["status"] for s in "abc"] == ["done", "interrupted", "pending"], rows
  assert "step 2 of 4" in rows["b"]["error"], rows["b"]
  assert json.loads((out / "failures.json").read_text()) == []
  assert atomic.run_state(atomic.interrupted_dir(out / "b"))["step"] == 2


# ----------------------------------------------------------------------------------------------
# The batch's skip rule.


def test_a_batch_rerun_redoes_a_photo_whose_file_was_replaced(tmp_path, monkeypatch):
  photos = tmp_path / "photos"
  photos.mkdir()
  for stem in ("a", "b"):
    (photos / f"{stem}.jpg").write_bytes(b"first " + stem.encode())
  made = []

  def run_photo(session, c, image, out_dir, log=print):
    del session, image, log
    (Path(out_dir) / "avatar.ply").write_bytes(Path(c.photo).read_bytes())
    made.append(Path(c.photo).stem)
    return {}
  monkeypatch.setattr(pipeline, "check_inputs", lambda c, reference=None: None)
  monkeypatch.setattr(pipeline, "load_session", lambda config, progress=True: None)
  monkeypatch.setattr(pipeline, "run_photo", run_photo)
  config = batch_config.get_config("smoke")
  config.photos, config.out_dir, config.shard = str(photos), str(tmp_path / "out"), "0/1"
  config.overwrite = False
  batch.run_batch(config, progress=False)
  assert made == ["a", "b"]
  (photos / "b.jpg").write_bytes(b"a new photo under the old name")
  result = batch.run_batch(config, progress=False)
  assert made == ["a", "b", "b"] and [p.stem for p in result.skipped] == ["a"], made
  assert (tmp_path / "out" / "b" / "avatar.ply").read_bytes() == b"a new photo under the old name"
  assert batch.run_batch(config, progress=False).skipped == result.mine  # unchanged now: both skipped


def test_the_sampler_stops_at_the_step_after_a_deferred_signal(monkeypatch):
  """A signal recorded during step 1 (deferred: it landed where raising is not safe) stops the sampler before
  step 2, with the step reached (the steps are stubbed: the safe point is host code between them)."""
  from splatshot_jax import guidance
  from splatshot_jax.io import interrupt
  from test_preflight import _stub_sampler
  run = _stub_sampler(monkeypatch, 99, "latents")
  step = guidance.splatshot_step

  def signalled(state, t, **kw):
    if step.calls == 1:
      monkeypatch.setitem(interrupt._state, "signum", signal.SIGINT)  # pylint: disable=protected-access
    return step(state, t, **kw)
  monkeypatch.setattr(guidance, "splatshot_step", signalled)
  with pytest.raises(interrupt.Interrupted) as e:
    run()
  assert (e.value.step, e.value.total, e.value.exit_code) == (2, 5, 130) and step.calls == 2


def test_a_second_signal_during_the_clean_up_is_acknowledged_not_raised(capsys):
  """Once Interrupted is on its way (the run folder being moved to NAME.interrupted), another Ctrl-C must not raise
  into the clean-up (that ended runs with a SystemError and RUN.json "failed")."""
  from splatshot_jax.io import interrupt
  with interrupt.handlers():
    with pytest.raises(interrupt.Interrupted):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(5)  # the handler raises at the next bytecode
    os.kill(os.getpid(), signal.SIGINT)  # during the "clean-up": acknowledged only
    time.sleep(0.05)
    with pytest.raises(interrupt.Interrupted):  # and the next safe point still raises
      interrupt.check()
  assert "again: already stopping" in capsys.readouterr().err
