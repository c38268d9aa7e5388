"""Which photo folders a batch rerun counts as finished (fast: the per-photo run is a stub).

Only a folder whose RUN.json says "complete" (written last by `io.atomic.run_folder`) is finished. A run folder of
this project that is not finished (RUN.json says running / failed / interrupted) is redone, and so is a photo with
only a `.failed` folder. A folder of files that is not a run folder of this project (no RUN.json, or one that is
unreadable or not a run's) is never replaced (issue 21: a run replaces only what it wrote): that photo fails with
the reason and its files stay. The summary table says the same. The full pipeline's resume is tests/test_batch.py.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from configs import batch as batch_config
from splatshot_jax.io import atomic
from splatshot_jax.io import images as image_io
from splatshot_jax.jobs import batch, pipeline

# photo stem -> what its OUT/<stem> folder holds before the rerun (None: nothing)
FOLDERS = {
    "a_complete": {"RUN.json": {"status": "complete"}},
    "b_no_marker": {},  # an avatar folder without RUN.json
    "c_running": {"RUN.json": {"status": "running"}},
    "d_failed": {"RUN.json": {"status": "failed"}},
    "e_interrupted": {"RUN.json": {"status": "interrupted"}},
    "f_unreadable": {"RUN.json": "{not json"},
    "g_list": {"RUN.json": ["complete"]},
    "h_only_failed_dir": None,
    "i_absent": None,
}
# folders of files that are not run folders of this project: a run never replaces them
REFUSED = {"b_no_marker", "f_unreadable", "g_list"}


@pytest.fixture
def stubbed_pipeline(monkeypatch):
  """pipeline stubs: no models; each run writes avatar.ply = b'new' and records the photo it ran."""
  ran = []

  def run_photo(session, c, image, out_dir, **kwargs):
    ran.append(Path(c.photo).stem)
    (Path(out_dir) / "avatar.ply").write_bytes(b"new")

  monkeypatch.setattr(pipeline, "load_session", lambda config, progress=True: object())
  monkeypatch.setattr(pipeline, "check_inputs", lambda c, reference=None: np.zeros((8, 8, 3), np.uint8))
  monkeypatch.setattr(pipeline, "run_photo", run_photo)
  return ran


def test_only_complete_run_folders_are_skipped(tmp_path, stubbed_pipeline):
  photos, out = tmp_path / "photos", tmp_path / "out"
  photos.mkdir()
  out.mkdir()
  for stem, content in FOLDERS.items():
    image_io.save_image(photos / f"{stem}.png", np.full((16, 16, 3), 0.5, np.float32))
    if stem == "h_only_failed_dir":
      failed = atomic.record_failure(out / stem, job="splatshot", error="X: old")  # as a batch records one
      (failed / batch.FAILURE).write_text(json.dumps({"type": "X", "error": "old"}))
    if content is None:
      continue
    folder = out / stem
    folder.mkdir()
    (folder / "avatar.ply").write_bytes(b"old")
    for name, value in content.items():
      (folder / name).write_text(value if isinstance(value, str) else json.dumps(value))

  config = batch_config.get_config("smoke")
  config.photos, config.out_dir, config.shard = str(photos), str(out), "0/1"
  rows = {Path(r["photo"]).stem: r["status"] for r in batch.write_tables(out, batch.list_photos(config.photos))}
  assert rows == {s: "done" if s == "a_complete" else ("failed" if s == "h_only_failed_dir" else "pending")
                  for s in FOLDERS}

  result = batch.run_batch(config, progress=False)
  refused = sorted(REFUSED)
  redo = sorted(s for s in FOLDERS if s != "a_complete" and s not in REFUSED)
  assert [p.stem for p in result.skipped] == ["a_complete"]
  assert sorted(p.stem for p in result.finished) == redo
  assert sorted(stubbed_pipeline) == redo
  assert sorted(Path(p).stem for p in result.failed) == refused
  for stem in refused:  # never replaced: the user's files stay, the reason is recorded
    assert "not a run folder of this project" in str(result.failed[next(p for p in result.failed
                                                                         if Path(p).stem == stem)]), stem
    assert (out / stem / "avatar.ply").read_bytes() == b"old", stem
    assert not atomic.is_finished(out / stem), stem
  assert (out / "a_complete" / "avatar.ply").read_bytes() == b"old"  # not redone
  for stem in redo:
    assert atomic.is_finished(out / stem), stem
    assert (out / stem / "avatar.ply").read_bytes() == b"new", stem  # the old run's contents were replaced
    assert not atomic.failed_dir(out / stem).exists(), stem

  # A second rerun has nothing left to do but the refused folders, which it refuses again.
  stubbed_pipeline.clear()
  again = batch.run_batch(config, progress=False)
  assert sorted(p.stem for p in again.skipped) == sorted(set(FOLDERS) - REFUSED)
  assert again.finished == [] and not stubbed_pipeline
  assert sorted(Path(p).stem for p in again.failed) == refused
