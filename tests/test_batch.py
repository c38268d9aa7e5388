"""The batch job end to end on 3 shared CelebA-HQ photos with the install check's random tiny weights and a tiny
synthetic template: one folder per photo with its marker, bad photos recorded as failures, a run interrupted
mid-photo resumes without redoing finished photos, the second photo of a size does not recompile, shards
partition the list; then `evaluate` on the batch folder writes evaluation.json per avatar, evaluation.csv and
report.html (numbers meaningless with random weights: the harness is what is tested)."""

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import tiny_arcface
from configs import batch as batch_config
from configs import evaluate as evaluate_config
from splatshot_jax.jobs import batch, evaluation, pipeline
from splatshot_jax.io import images as image_io

SHARED = Path(os.environ.get("SPLATSHOT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CELEBA = SHARED / "data/photos/celeba-hq"
needs_celeba = pytest.mark.skipif(not (CELEBA / "images").exists(), reason=f"shared data absent: {CELEBA}")
GOOD = ("00000", "00001", "00002")


def tiny_config(photos, out_dir):
  """configs/batch.py:smoke shrunk further: 32 px, 300 Gaussians, 2 steps of 5 refit iterations."""
  c = batch_config.get_config("smoke")
  c.photos, c.out_dir, c.shard = str(photos), str(out_dir), "0/1"  # not the SLURM array a CI job may run in
  c.synthetic.size, c.synthetic.num_gaussians = 32, 300
  c.sampler.num_inference_steps = 4  # official start: timesteps[2:], 2 steps
  c.guidance.refit_iters_first = c.guidance.refit_iters = 5
  c.outputs.turntable_frames = 4
  c.sampler.thumbnail = 32
  return c


@pytest.fixture(scope="module")
def interrupted_batch(tmp_path_factory):
  """A batch killed in the middle of its second photo, then rerun to completion.

  Returns (config, first-run marker of 00000, second run's BatchResult).
  """
  if not (CELEBA / "images").exists():
    pytest.skip(f"shared data absent: {CELEBA}")
  root = tmp_path_factory.mktemp("batch")
  photos = root / "photos"
  photos.mkdir()
  for stem in GOOD:
    (photos / f"{stem}.jpg").symlink_to(CELEBA / "images" / f"{stem}.jpg")
  image_io.save_image(photos / "blank.png", np.full((200, 200, 3), 0.5, np.float32))
  (photos / "broken.jpg").write_bytes(b"not a jpeg")
  config = tiny_config(photos, root / "out")

  real_run_photo = pipeline.run_photo

  def killed_in_00001(session, c, photo, out_dir, **kwargs):
    if Path(c.photo).stem == "00001":
      (Path(out_dir) / "avatar.ply").write_bytes(b"half")  # a half-written photo folder, no marker
      raise KeyboardInterrupt
    return real_run_photo(session, c, photo, out_dir, **kwargs)

  pipeline.run_photo = killed_in_00001
  try:
    with pytest.raises(KeyboardInterrupt):
      batch.run_batch(config, progress=False)
  finally:
    pipeline.run_photo = real_run_photo
  out = root / "out"
  assert batch.is_finished(out / "00000") and not batch.is_finished(out / "00001")
  marker = (out / "00000" / batch.INFO).read_text()
  result = batch.run_batch(config, progress=False)
  return config, marker, result


@needs_celeba
def test_batch_resumes_without_redoing_finished_photos(interrupted_batch):
  config, marker, result = interrupted_batch
  out = Path(config.out_dir)
  assert [p.stem for p in result.skipped] == ["00000"]
  assert [p.stem for p in result.finished] == ["00001", "00002"]
  assert (out / "00000" / batch.INFO).read_text() == marker  # not redone
  for stem in GOOD:
    folder = out / stem
    assert batch.is_finished(folder)
    assert {"avatar.ply", "views", "metrics.json", "config.json", "turntable.mp4"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text())["photo"].endswith(f"{stem}.jpg")
  assert (out / "00001" / "avatar.ply").stat().st_size > 100  # the half-written file was replaced
  assert not (out / "00001.failed").exists()  # the interrupted attempt's folder is gone once the photo finished


@needs_celeba
def test_second_photo_of_a_size_does_not_recompile(interrupted_batch):
  config, marker, result = interrupted_batch
  assert json.loads(marker)["compilations"] > 0  # the first photo compiled the step
  # After it nothing compiles again, not even in the rerun's new session (same process, same sizes).
  assert {Path(p).stem: n for p, n in result.compilations.items() if Path(p).stem in GOOD} == {"00001": 0, "00002": 0}


@needs_celeba
def test_bad_photos_are_failures_and_the_batch_goes_on(interrupted_batch):
  config, _, result = interrupted_batch
  out = Path(config.out_dir)
  assert sorted(Path(p).name for p in result.failed) == ["blank.png", "broken.jpg"]
  failures = {Path(f["photo"]).name: f["error"] for f in json.loads((out / "failures.json").read_text())}
  assert failures.keys() == {"blank.png", "broken.jpg"}
  assert "no face" in failures["blank.png"]  # the single run's own photo check said why
  assert "broken.jpg" in failures["broken.jpg"]
  assert not batch.is_finished(out / "blank") and batch.failure_file(out / "blank").is_file()
  with open(out / "summary.csv", newline="") as f:
    rows = {Path(r["photo"]).name: r for r in csv.DictReader(f)}
  assert [rows[f"{s}.jpg"]["status"] for s in GOOD] == ["done"] * 3
  assert rows["blank.png"]["status"] == rows["broken.jpg"]["status"] == "failed"
  assert rows["00002.jpg"]["compilations"] == "0" and rows["00000.jpg"]["final_discrepancy"]

  # The job's exit status says that photos failed (they are retried; the finished ones are skipped).
  from experiments import batch as batch_job
  with pytest.raises(SystemExit, match="2 photo"):
    batch_job.run(config)


@needs_celeba
def test_evaluate_writes_its_files_for_a_batch(interrupted_batch, tmp_path):
  config, _, _ = interrupted_batch
  out = Path(config.out_dir)
  ec = evaluate_config.get_config("smoke")
  ec.target, ec.official_videos = str(out), str(CELEBA / "videos")
  ec.arcface = str(tiny_arcface.build(tmp_path / "arcface.onnx"))
  res = evaluation.evaluate(ec)
  for stem in GOOD:
    ev = json.loads((out / stem / "evaluation.json").read_text())
    assert len(ev["identity"]["dlib"]) == len(ec.yaws) and len(ev["consistency"]["psnr"]) == config.num_views
    assert ev["official"]["frames"] == [0, 50, 100]
    assert all(a is not None for a in ev["official"]["arcface"])  # real faces in the official frames
  with open(out / "evaluation.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["status"] for r in rows] == ["done"] * 3 + ["failed"] * 2
  assert all(r["official_dlib_median"] and r["psnr"] for r in rows[:3])
  html = (out / "report.html").read_text()
  assert "0.54" in html and html.count("<svg") >= 6
  for src in re.findall(r'src="([^"]+)"', html):  # every image the report shows exists
    assert (out / src).is_file(), src
  assert {e["key"]: e for e in res["aggregate"]}["official_dlib_median"]["n"] == 3


def test_shards_partition_the_sorted_list(tmp_path):
  for name in ("b.jpg", "a.png", "c.JPG", "d.webp", "e.txt"):
    (tmp_path / name).write_bytes(b"")
  photos = batch.list_photos(str(tmp_path))
  assert [p.name for p in photos] == ["a.png", "b.jpg", "c.JPG", "d.webp"]
  assert [p.name for p in batch.list_photos(str(tmp_path / "*.jpg"))] == ["b.jpg"]
  for n in (1, 2, 3, 5):
    shards = [batch.shard_photos(photos, i, n) for i in range(n)]
    assert sorted(p for s in shards for p in s) == photos  # every photo exactly once
    assert all(s == photos[i::n] for i, s in enumerate(shards))  # every n-th of the sorted list from the i-th
  assert batch.parse_shard("1/3") == (1, 3) and batch.parse_shard("", environ={}) == (0, 1)
  slurm = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "5"}
  assert batch.parse_shard("", environ=slurm) == (3, 5) and batch.parse_shard("0/2", environ=slurm) == (0, 2)
  with pytest.raises(batch.BatchError, match="step"):
    batch.parse_shard("", environ=dict(slurm, SLURM_ARRAY_TASK_STEP="2"))
  for bad in ("3/3", "1", "a/b", "-1/2"):
    with pytest.raises(batch.BatchError, match="config.shard"):
      batch.parse_shard(bad)


def test_photo_list_errors_name_the_field(tmp_path):
  with pytest.raises(batch.BatchError, match="config.photos is empty"):
    batch.list_photos("")
  with pytest.raises(batch.BatchError, match="no image files"):
    batch.list_photos(str(tmp_path))
  with pytest.raises(batch.BatchError, match="neither a folder nor a glob"):
    batch.list_photos(str(tmp_path / "*.jpg"))
  (tmp_path / "x.jpg").write_bytes(b"")
  (tmp_path / "x.png").write_bytes(b"")
  with pytest.raises(batch.BatchError, match="share a name"):
    batch.list_photos(str(tmp_path))
