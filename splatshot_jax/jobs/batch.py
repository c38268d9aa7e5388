"""Batch runs: one SplatShot avatar per photo of a folder or glob, the models loaded once for all of them.

  python -m experiments.run --config=configs/batch.py --config.photos=DIR_OR_GLOB --config.out_dir=OUT

  OUT/<photo stem>/        the single run's outputs (`pipeline.run_photo`) and batch.json; it appears, with
                           RUN.json "complete", only when the photo finished (`io.atomic.run_folder`)
  OUT/<photo stem>.failed/ what a failed photo had written, and failure.json: why (no face, unreadable, ...)
  OUT/<photo stem>.interrupted/  what the photo that Ctrl-C / SIGTERM cut had written (RUN.json: the step reached)
  OUT/failures.json        every failed photo of the batch with its error
  OUT/summary.csv          one row per photo: status, seconds, compilations, template, discrepancy, identity

A photo is finished when `io.atomic.is_finished` says so (its folder's RUN.json, written last, is "complete") and
the photo's content hash recorded there (`photo_sha256`) is that of the file now: a rerun skips it and redoes every
other photo, including one whose file was replaced under the same name. Each shard of OUT has one writer
(`io.atomic.run_lock` on OUT/.batch-shard-I-of-N.lock) and each photo folder its own lock. Ctrl-C / SIGTERM stop the
batch in the photo that runs: it is recorded as interrupted, the tables are rebuilt, and the job exits 130 / 143. Each photo gets the single run's own checks first
(`pipeline.check_inputs` = `preflight.check_splatshot`). `config.shard = "i/n"` runs every n-th photo of the sorted list from the
i-th; by default (jax.process_index(), jax.process_count()) in a multi-host JAX job, or the task's place in a SLURM
job array, so one command serves every host or task.
failures.json and summary.csv are rebuilt from the photo folders at the end of every run, so after the last
shard of a job finishes they cover the whole batch (rerunning any shard with nothing left to do rebuilds them).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import glob
import json
import os
import re
import time
import traceback
from pathlib import Path

import jax
import numpy as np

from splatshot_jax import errors
from splatshot_jax.jobs import inputs, outputs, pipeline, preflight
from splatshot_jax.io import atomic, interrupt
from splatshot_jax.io.atomic import atomic_path
from splatshot_jax.jobs.inputs import IMAGE_EXTENSIONS, BatchError, list_photos, parse_shard, shard_photos  # noqa: F401

INFO = "batch.json"  # seconds and compilations of the photo, inside its run folder
FAILURE = "failure.json"
SUMMARY_FIELDS = ("photo", "status", "folder", "seconds", "compilations", "template", "final_discrepancy",
                  "identity_near_frontal", "error")


def photo_folder(out_dir, photo: Path) -> Path:
  return Path(out_dir) / photo.stem


def is_finished(folder: Path) -> bool:
  return atomic.is_finished(folder)


def failure_file(folder: Path) -> Path:
  return atomic.failed_dir(folder) / FAILURE


def finished_photo(folder: Path, digest: str) -> bool | None:
  """True: finished from this very photo; False: not finished, or finished from another file (a replaced photo);
  None: finished by a run that recorded no content hash (before hashes were recorded): skipped by name."""
  if not is_finished(folder):
    return False
  recorded = (atomic.run_state(folder) or {}).get("photo_sha256")
  return None if recorded is None else recorded == digest


# ----------------------------------------------------------------------------------------------
# Counting XLA compilations (the batch reports them per photo: after the first photo of a template size, 0).

_compilations = [0]
_listening = [False]


def compilation_count() -> int:
  """XLA backend compilations in this process since the first call."""
  if not _listening[0]:
    def on_event(event, duration_secs, **kwargs):
      del duration_secs, kwargs
      if event == "/jax/core/compile/backend_compile_duration":
        _compilations[0] += 1
    jax.monitoring.register_event_duration_secs_listener(on_event)
    _listening[0] = True
  return _compilations[0]


# ----------------------------------------------------------------------------------------------
# The batch.


@dataclasses.dataclass
class BatchResult:
  """What one run of a batch (one shard) did.

  Attributes:
    photos: the whole sorted photo list; shard: (index, count); mine: this shard's photos.
    skipped: photos already finished before this run; finished: photos finished by this run.
    failed: {photo: "Type: message"} of this run's failures.
    compilations: {photo: XLA compilations while it ran} of this run's photos.
  """

  photos: list
  shard: tuple
  mine: list
  skipped: list
  finished: list
  failed: dict
  compilations: dict


def photo_config(config, photo: Path, folder: Path):
  """The single run's config for one photo of the batch (the batch-only fields stay, as a record)."""
  c = copy.deepcopy(config)
  c.photo = str(photo.absolute())  # config.json records it: the evaluation may run from another folder
  c.out_dir = str(folder)
  return c


def run_batch(config, *, progress: bool = True, reference=None) -> BatchResult:
  """Runs SplatShot on every unfinished photo of this shard; see the module docstring.

  Args:
    config: configs/batch.py (the SplatShot config plus photos, out_dir, shard).
    progress: a tqdm bar over photos with each photo's step bar beneath it.
    reference: the batch's default config (configs/batch.py), to report unknown keys in the per-photo check.
  """
  # Everything but the photos' own checks, before any model is built; then each photo is checked in its turn.
  errors.raise_if_problems(preflight.check_batch(config, reference), "cannot start the batch")
  photos = list_photos(config.photos)
  index, count = parse_shard(config.shard)
  mine = shard_photos(photos, index, count)
  out = Path(config.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  with atomic.run_lock(out / f"batch-shard-{index}-of-{count}", what="batch shard"):
    return _run_shard(config, photos, (index, count), mine, out, progress=progress, reference=reference)


def _run_shard(config, photos, shard, mine, out: Path, *, progress: bool, reference) -> BatchResult:
  digests = {}
  for p in mine:
    try:
      digests[p] = inputs.photo_digest(p)
    except OSError:
      digests[p] = ""  # unreadable: its own check reports it in its turn
  done = {p: finished_photo(photo_folder(out, p), digests[p]) for p in mine}
  skipped = [p for p in mine if done[p] is not False]
  todo = [p for p in mine if done[p] is False]
  replaced = [p for p in todo if is_finished(photo_folder(out, p))]
  print(f"batch: {len(photos)} photos, shard {shard[0]}/{shard[1]} has {len(mine)}: {len(skipped)} finished before, "
        f"{len(todo)} to run -> {out}")
  if replaced:
    print(f"batch: {len(replaced)} photo(s) changed since their avatar was made, redone: "
          f"{', '.join(p.name for p in replaced)}")
  legacy = [p for p in skipped if done[p] is None]
  if legacy:
    print(f"batch: {len(legacy)} finished photo(s) have no recorded content hash (older runs): skipped by name")
  result = BatchResult(photos=photos, shard=shard, mine=mine, skipped=skipped, finished=[], failed={},
                       compilations={})
  try:
    _run_photos(config, todo, out, digests, result, progress=progress, reference=reference)
  finally:  # also when Ctrl-C / SIGTERM cut a photo: the tables say which
    write_tables(out, photos)
  return result


def _run_photos(config, todo, out: Path, digests, result: BatchResult, *, progress: bool, reference) -> None:
  if todo:
    compilation_count()  # start listening before anything compiles
    session = pipeline.load_session(config, progress=progress)
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(todo, desc="photos", unit="photo", position=0, disable=not progress)
    log = tqdm.write if progress else print
    for photo in bar:
      bar.set_postfix_str(photo.name)
      folder = photo_folder(out, photo)
      c = photo_config(config, photo, folder)
      if is_finished(folder):  # finished from an older file of the same name (the skip rule let it through)
        c.overwrite = True
      info = {"photo": str(photo), "photo_sha256": digests[photo]}
      before, t0 = compilation_count(), time.time()
      try:
        interrupt.check()
        image = pipeline.check_inputs(c, reference=reference)  # the single run's own checks, per photo
        with atomic.run_folder(folder, job="batch", info=info) as part:  # renamed to folder at the end
          pipeline.run_photo(session, c, image, part, log=log)
          outputs.write_json(part / INFO, {"photo": str(photo), "seconds": round(time.time() - t0, 1),
                                           "compilations": compilation_count() - before})
      except KeyboardInterrupt as e:  # Ctrl-C / SIGTERM: this photo is cut, the batch stops (tables rebuilt)
        if isinstance(e, interrupt.Interrupted):
          e.where = f"photo {photo.name} of the batch (its folder: {atomic.interrupted_dir(folder).name})"
        atomic.remove_run_folder(atomic.failed_dir(folder))
        raise
      except Exception as e:  # pylint: disable=broad-except  (one bad photo must not stop the batch)
        error = f"{type(e).__name__}: {e}"
        result.failed[str(photo)] = error
        failed = atomic.failed_dir(folder)
        if not atomic.is_run_folder(failed):  # failed before its run folder existed (its checks)
          failed = atomic.record_failure(folder, job="batch", error=error, info=info)
        outputs.write_json(failed / FAILURE, {"photo": str(photo), "type": type(e).__name__, "error": str(e),
                                              "traceback": traceback.format_exc(limit=8)})
        atomic.remove_run_folder(atomic.interrupted_dir(folder))
        log(f"{photo.name}: failed, {error}")
        continue
      finally:
        result.compilations[str(photo)] = compilation_count() - before
      result.finished.append(photo)
    bar.close()


# ----------------------------------------------------------------------------------------------
# The tables, rebuilt from the photo folders.


def _read_json(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


def photo_row(out_dir, photo: Path) -> dict:
  """The summary row of one photo, from its folder (status done / failed / pending)."""
  folder = photo_folder(out_dir, photo)
  row = dict.fromkeys(SUMMARY_FIELDS, "")
  row.update(photo=str(photo), folder=folder.name)
  if is_finished(folder):
    marker, metrics = _read_json(folder / INFO), _read_json(folder / "metrics.json")
    disc = metrics.get("discrepancy_per_step") or []
    ids = [v for v in (metrics.get("identity_distance") or {}).values() if isinstance(v, (int, float))]
    row.update(status="done", seconds=marker.get("seconds", ""), compilations=marker.get("compilations", ""),
               template=(metrics.get("template_choice") or {}).get("template", ""),
               final_discrepancy=f"{disc[-1]:.6g}" if disc else "",
               identity_near_frontal=f"{np.mean(ids):.4f}" if ids else "")
  elif failure_file(folder).is_file():
    failure = _read_json(failure_file(folder))
    row.update(status="failed", error=f"{failure.get('type', '')}: {failure.get('error', '')}")
  elif (cut := atomic.run_state(atomic.interrupted_dir(folder))) is not None:
    step = cut.get("step")
    row.update(status="interrupted", error=f"{cut.get('signal') or 'interrupted'}"
               + (f" at step {step}" + (f" of {cut['steps']}" if cut.get("steps") else "") if step is not None else ""))
  else:
    row["status"] = "pending"
  return row


def write_tables(out_dir, photos: list[Path]) -> list[dict]:
  """Writes OUT/summary.csv and OUT/failures.json over the whole photo list; returns the rows."""
  out = Path(out_dir)
  rows = [photo_row(out, p) for p in photos]
  with atomic_path(out / "summary.csv") as tmp:
    with open(tmp, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
      writer.writeheader()
      writer.writerows(rows)
  outputs.write_json(out / "failures.json", [{"photo": r["photo"], "folder": r["folder"], "error": r["error"]}
                                             for r in rows if r["status"] == "failed"])
  return rows
