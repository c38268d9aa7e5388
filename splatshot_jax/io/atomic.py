"""Atomic writes: files (`atomic_path`: a temporary sibling, then os.replace) and whole run folders
(`run_folder`: a hidden sibling folder renamed into place when the run completes; `is_finished`), with one
writer per run folder (`run_lock`).

A crashed or interrupted run therefore never leaves a half-written PLY/PNG/MP4 under the final
name, readers never see a partial file, an unfinished run never looks finished, and a run never deletes or
replaces a folder it did not write (`replace_refusal`: only runs of this project, known by their RUN.json).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from splatshot_jax import errors
from splatshot_jax.io import interrupt


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
#   <parent>/.<name>.lock            held (flock) by the one process writing <name>: pid, host, start time
#   <parent>/.<name>.partial/        where a run writes; RUN.json {"status": "running", ...} from the start
#   <parent>/<name>/                 appears only when the run completed: RUN.json says "complete"
#   <parent>/<name>.failed/          what a failed run had written; RUN.json says why
#   <parent>/<name>.interrupted/     what a run stopped by Ctrl-C / SIGTERM (or killed) had written, with the
#                                    step it reached
#
# So an interrupted run never looks finished, a rerun replaces only folders that runs wrote, two writers never
# share a folder, and `is_finished(out_dir)` is the one test a batch needs.

RUN_FILE = "RUN.json"
PROJECT = "splatshot_jax"
STATUSES = ("running", "complete", "failed", "interrupted")


class RunFolderError(errors.UserError):
  """A run folder cannot be used: it is not a run of this project, or the finished run cannot be put in place."""


class RunLockedError(RunFolderError):
  """Another live process is writing the same run folder (or the same batch shard); `holder`: its lock info."""

  def __init__(self, message: str, holder: dict | None = None):
    self.holder = holder or {}
    super().__init__(message)


def _sibling(path: str | os.PathLike, pattern: str) -> Path:
  """The folder beside `path` named `pattern` with {} replaced by its name."""
  p = Path(path)
  return p.with_name(pattern.format(p.name))


def partial_dir(out_dir: str | os.PathLike) -> Path:
  return _sibling(out_dir, ".{}.partial")


def failed_dir(out_dir: str | os.PathLike) -> Path:
  return _sibling(out_dir, "{}.failed")


def interrupted_dir(out_dir: str | os.PathLike) -> Path:
  return _sibling(out_dir, "{}.interrupted")


def lock_path(target: str | os.PathLike) -> Path:
  return _sibling(target, ".{}.lock")


def run_state(out_dir: str | os.PathLike) -> dict | None:
  """The folder's RUN.json ({"status": "running" | "complete" | "failed" | "interrupted", ...}), or None."""
  path = Path(out_dir) / RUN_FILE
  try:
    if not path.is_file():  # never open a FIFO or a folder named RUN.json
      return None
    state = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  return state if isinstance(state, dict) else None


def is_finished(out_dir: str | os.PathLike) -> bool:
  """True when out_dir holds a run that completed (written by `run_folder`)."""
  state = run_state(out_dir)
  return state is not None and state.get("status") == "complete"


def is_run_folder(path: str | os.PathLike) -> bool:
  """True when `path` is a folder a run of this project wrote: its RUN.json has one of the run statuses (and names
  this project, where it records one: RUN.json files of older runs do not)."""
  p = Path(path)
  if p.is_symlink() or not p.is_dir():
    return False
  state = run_state(p)
  return state is not None and state.get("status") in STATUSES and state.get("project", PROJECT) == PROJECT


def replace_refusal(out_dir: str | os.PathLike) -> str | None:
  """Why a run may not replace `out_dir` (None: absent, an empty folder, or a run this project finished or
  stopped). Whatever the flags: a run never deletes what it did not write."""
  out = Path(out_dir)
  if out.is_symlink():
    return "is a symbolic link; a run replaces its folder as a whole: give the real path of a new folder"
  if not out.exists():
    return None
  if not out.is_dir():
    return "exists and is not a folder"
  if os.path.ismount(out):
    return ("is a mount point: a run is written beside it and renamed into place, which a mount point cannot be; "
            "give a folder inside it (e.g. OUT/run1)")
  if not any(out.iterdir()):
    return None
  state = run_state(out)
  if state is None:
    return (f"holds files and is not a run folder of this project (no {RUN_FILE}): a run would replace the whole "
            "folder, "
            "so it is refused whatever --config.overwrite says; choose a new or empty folder")
  if not is_run_folder(out):
    return f"its {RUN_FILE} is not one this project writes; refusing to replace the folder: choose another"
  return None  # a live writer holds its lock: `run_lock` / `lock_holder`


def _remove_run_folder(path: Path) -> bool:
  """Deletes `path` only when it is a run folder (True when it is gone or was never there)."""
  if not os.path.lexists(path):
    return True
  if is_run_folder(path):
    shutil.rmtree(path)
    return True
  return False


def _free_place(path: Path) -> Path:
  """`path` made free for a run folder: an older run there is removed; anything else is kept and a numbered
  sibling (NAME-2, NAME-3, ...) is used instead."""
  candidate, n = path, 1
  while not _remove_run_folder(candidate):
    n += 1
    candidate = path.with_name(f"{path.name}-{n}")
  return candidate


def _write_state(folder: Path, **state) -> None:
  with atomic_path(folder / RUN_FILE) as tmp:
    tmp.write_text(json.dumps(state, indent=1))


def _now() -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---------------------------------------------------------------------------------------------
# One writer per folder: a lock file held with flock (released by the kernel when its process dies, so a lock
# left by a killed process is free and is taken over), recording who holds it.

_held: dict[str, list] = {}  # lock path -> [fd, depth]: this process's locks (re-entrant)


def _read_lock(fd: int) -> dict:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 65536) or b"{}")
    return info if isinstance(info, dict) else {}
  except (OSError, ValueError):
    return {}


def _describe_holder(info: dict) -> str:
  cmd = " ".join(info.get("argv") or [])
  return (f"process {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"
          + (f" ({cmd})" if cmd else ""))


def lock_holder(target: str | os.PathLike) -> dict | None:
  """The lock info of the live process writing `target`, or None when no live process holds its lock."""
  lock = lock_path(target)
  key = str(lock.absolute())
  if key in _held:
    return None  # this process: not "another writer"
  if not lock.is_file():
    return None
  try:
    fd = os.open(lock, os.O_RDONLY)
  except OSError:
    return None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _read_lock(fd) or {"pid": "?"}
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  finally:
    os.close(fd)


def _acquire(target: Path, what: str) -> int:
  lock = lock_path(target)
  lock.parent.mkdir(parents=True, exist_ok=True)
  for _ in range(20):
    try:
      fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise RunFolderError(f"{target}: cannot create its lock file {lock} ({e.strerror})") from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_lock(fd)
      os.close(fd)
      raise RunLockedError(f"{target}: another run is writing this {what}: {_describe_holder(holder)}. Wait for it "
                           f"to end or choose another folder (its lock: {lock})", holder) from None
    try:  # the lock file may have been removed by its last holder between our open and flock: retry
      same = os.path.samestat(os.fstat(fd), os.stat(lock))
    except FileNotFoundError:
      same = False
    if not same:
      os.close(fd)
      continue
    old = _read_lock(fd)
    if old and old.get("pid") != os.getpid():
      print(f"{target}: taking over the lock of {_describe_holder(old)}: that process is no longer running",
            file=sys.stderr)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "argv": sys.argv[:8],
            "what": what}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(info).encode())
    return fd
  raise RunFolderError(f"{target}: its lock file {lock} keeps changing; is another run starting there?")


@contextlib.contextmanager
def run_lock(target: str | os.PathLike, what: str = "run folder") -> Iterator[Path]:
  """Holds the lock of `target` (a run folder, or a batch OUT and shard) for the body; re-entrant in a process.

  Raises:
    RunLockedError: a live process holds it (the message names its pid, host, start time and command).
  A lock whose process died is free (the kernel drops a dead process's flock) and is taken over with a message.
  """
  target = Path(target)
  lock = lock_path(target)
  key = str(lock.absolute())
  if key in _held:
    _held[key][1] += 1
    try:
      yield lock
    finally:
      _held[key][1] -= 1
    return
  fd = _acquire(target, what)
  _held[key] = [fd, 1]
  try:
    yield lock
  finally:
    del _held[key]
    try:
      if os.path.samestat(os.fstat(fd), os.stat(lock)):
        os.unlink(lock)
    except OSError:
      pass
    os.close(fd)


def _recover_partial(out: Path) -> None:
  """What a killed run left in `.NAME.partial` (we hold the lock, so its writer is gone) is kept: it moves to
  NAME.interrupted (or NAME.failed); a finished run that could not be renamed, or a folder without RUN.json,
  stops the run instead."""
  part = partial_dir(out)
  if not os.path.lexists(part):
    return
  state = run_state(part)
  if state is None:
    if part.is_dir() and not any(part.iterdir()):
      part.rmdir()
      return
    raise RunFolderError(f"{part} is in the way and is not a run of this project (no {RUN_FILE}); move it away")
  if state.get("status") == "complete":
    raise RunFolderError(f"{part} holds a finished run that could not be renamed to {out}: move it where you "
                         "want it (or delete it), then rerun")
  status = "failed" if state.get("status") == "failed" else "interrupted"
  if state.get("status") == "running":
    state.update(status="interrupted", error=f"the process {state.get('pid')} ended without cleaning up (killed?)")
    _write_state(part, **state)
  dest = _free_place(failed_dir(out) if status == "failed" else interrupted_dir(out))
  os.replace(part, dest)
  print(f"{out}: an earlier run stopped without cleaning up; what it wrote is in {dest}", file=sys.stderr)


@contextlib.contextmanager
def run_folder(out_dir: str | os.PathLike, *, job: str = "", info: dict | None = None) -> Iterator[Path]:
  """Yields the folder a run writes to; renames it to `out_dir` when the body completes.

  `out_dir` must be absent, empty, or a run of this project (`replace_refusal`; RunFolderError otherwise), and
  the run holds its lock (`run_lock`) throughout. The body writes into `.<name>.partial`; RUN.json records the
  job, start time, pid, host and `info` (e.g. the photo's content hash). On success RUN.json is marked complete
  and the folder replaces `out_dir`; if that rename fails the finished run stays in `.<name>.partial` (named in
  the error) and the next run refuses to start until it is moved. On an exception RUN.json records the error and
  the folder moves to `<name>.failed`, or for Ctrl-C / SIGTERM to `<name>.interrupted` with the step reached;
  the exception propagates. A signal recorded while the body ran (`interrupt.check`) ends it as interrupted.
  """
  out = Path(out_dir)
  reason = replace_refusal(out)
  if reason:
    raise RunFolderError(f"{out}: {reason}")
  with run_lock(out):
    _recover_partial(out)
    part = partial_dir(out)
    part.mkdir(parents=True)
    interrupt.reset_progress()
    base = dict(project=PROJECT, job=job, started=_now(), pid=os.getpid(), host=socket.gethostname(),
                **(info or {}))
    _write_state(part, status="running", **base)
    try:
      yield part
      interrupt.check()  # a signal whose exception a callback swallowed: the run ends as interrupted
    except BaseException as e:
      stopped = isinstance(e, KeyboardInterrupt)
      status = "interrupted" if stopped else "failed"
      step = getattr(e, "step", None)
      state = dict(base, status=status, error=f"{type(e).__name__}: {e}", step=step,
                   finished=_now())
      if isinstance(e, interrupt.Interrupted):
        state.update(signal=interrupt.signal_name(e.signum), steps=e.total)
      _write_state(part, **state)
      dest = _free_place(interrupted_dir(out) if stopped else failed_dir(out))
      os.replace(part, dest)
      print(f"run {status}{f' at step {step}' if step is not None else ''}; what it wrote is in {dest}",
            file=sys.stderr)
      raise
    _write_state(part, status="complete", finished=_now(), **base)
    reason = replace_refusal(out)  # something may have appeared at out_dir meanwhile
    if reason:
      raise RunFolderError(f"{out}: {reason}; the finished run is kept in {part}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
      if os.path.lexists(out):
        os.replace(out, old)
      os.replace(part, out)
    except OSError as e:
      if os.path.lexists(old) and not os.path.lexists(out):
        with contextlib.suppress(OSError):  # put the previous run back where it was, if the target allows it
          os.replace(old, out)
      raise RunFolderError(f"{out}: the run finished but could not be renamed into place ({e.strerror}); its "
                           f"outputs are in {part} (RUN.json 'complete'): move them where you want them") from e
    shutil.rmtree(old, ignore_errors=True)
    for d in (failed_dir(out), interrupted_dir(out)):  # an earlier attempt's failure is history
      _remove_run_folder(d)


def remove_run_folder(path: str | os.PathLike) -> bool:
  """Deletes `path` when it is a run folder of this project; anything else is left alone (returns False)."""
  return _remove_run_folder(Path(path))


def record_failure(out_dir: str | os.PathLike, *, job: str, error: str, info: dict | None = None) -> Path:
  """`NAME.failed/` with RUN.json "failed" for a run that failed before its folder was made (e.g. its own
  checks); an earlier failed run there is replaced. Returns the folder."""
  failed = _free_place(failed_dir(out_dir))
  failed.mkdir(parents=True)
  _write_state(failed, project=PROJECT, status="failed", job=job, started=_now(), finished=_now(),
               pid=os.getpid(), host=socket.gethostname(), error=error, **(info or {}))
  return failed
