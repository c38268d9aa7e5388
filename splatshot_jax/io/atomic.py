"""Atomic writes: files (`atomic_path`: a temporary sibling, then os.replace) and whole run folders
(`run_folder`: a hidden sibling folder renamed into place when the run completes; `is_finished`).

A crashed or interrupted run therefore never leaves a half-written PLY/PNG/MP4 under the final
name, readers never see a partial file, and an unfinished run never looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
  """Yields a temporary path next to `path`; on success renames it to `path`.

  Args:
    path: final destination; its parent directory is created if missing.
    suffix: extension of the temporary file (default: that of `path`), for writers that pick
      the format from the name (imageio, PIL).

  Yields:
    The temporary path to write to. It is removed if the body raises.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  suffix = path.suffix if suffix is None else suffix
  tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{id(path):x}{suffix}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


# ---------------------------------------------------------------------------------------------
# Whole runs: one convention for every job (and for a batch of them).
#
#   <parent>/.<name>.partial/   where a run writes; RUN.json {"status": "running", ...} from the start
#   <parent>/<name>/            appears only when the run completed: RUN.json says "complete"
#   <parent>/<name>.failed/     what a failed or interrupted run had written; RUN.json says why
#
# So an interrupted run never looks finished, a rerun replaces the unfinished folder, and
# `is_finished(out_dir)` is the one test a batch needs.

RUN_FILE = "RUN.json"


def partial_dir(out_dir: str | os.PathLike) -> Path:
  out = Path(out_dir)
  return out.with_name(f".{out.name}.partial")


def failed_dir(out_dir: str | os.PathLike) -> Path:
  out = Path(out_dir)
  return out.with_name(f"{out.name}.failed")


def run_state(out_dir: str | os.PathLike) -> dict | None:
  """The folder's RUN.json ({"status": "running" | "complete" | "failed", ...}), or None when it has none."""
  path = Path(out_dir) / RUN_FILE
  try:
    state = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  return state if isinstance(state, dict) else None


def is_finished(out_dir: str | os.PathLike) -> bool:
  """True when out_dir holds a run that completed (written by `run_folder`)."""
  state = run_state(out_dir)
  return state is not None and state.get("status") == "complete"


def _write_state(folder: Path, **state) -> None:
  with atomic_path(folder / RUN_FILE) as tmp:
    tmp.write_text(json.dumps(state, indent=1))


@contextlib.contextmanager
def run_folder(out_dir: str | os.PathLike, *, job: str = "") -> Iterator[Path]:
  """Yields the folder a run writes to; renames it to `out_dir` when the body completes.

  The body writes into `.<name>.partial` (a leftover from a killed run is removed first). On
  success RUN.json is marked complete and the folder replaces `out_dir` (the caller's preflight
  decides whether an existing out_dir may be replaced). On any exception, Ctrl-C included, RUN.json
  records the error and the folder moves to `<name>.failed` (replacing an older one); the exception
  propagates.
  """
  out = Path(out_dir)
  part = partial_dir(out)
  shutil.rmtree(part, ignore_errors=True)
  part.mkdir(parents=True)
  started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
  _write_state(part, status="running", job=job, started=started, pid=os.getpid())
  try:
    yield part
  except BaseException as e:
    status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
    _write_state(part, status=status, job=job, started=started, error=f"{type(e).__name__}: {e}",
                 step=getattr(e, "step", None))
    failed = failed_dir(out)
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(part, failed)
    print(f"run {status}; what it wrote is in {failed}", file=sys.stderr)
    raise
  _write_state(part, status="complete", job=job, started=started,
               finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
  old = out.with_name(f".{out.name}.old-{os.getpid()}")
  if out.is_dir():
    os.replace(out, old)
  os.replace(part, out)
  shutil.rmtree(old, ignore_errors=True)
  shutil.rmtree(failed_dir(out), ignore_errors=True)
