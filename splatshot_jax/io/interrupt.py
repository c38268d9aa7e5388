"""Ctrl-C and SIGTERM: a job ends promptly and cleanly, whatever it was doing (exit 130 / 143).

  with interrupt.handlers():        # experiments/run.py, around the whole job
    ...
    for i, t in enumerate(timesteps):
      interrupt.check(step=i, total=len(timesteps))   # a safe point: the sampler's loop, the batch's photos

The handler records the signal and raises `Interrupted` (a KeyboardInterrupt) at once. Where Python swallows
exceptions -- a garbage-collection callback such as JAX's `_xla_gc_callback`, a `__del__`, an at-fork hook such
as logging's (run when the video writer starts its subprocess) -- it would print "Exception ignored in ..." and go
on; there the raised `Interrupted` reaches `sys.unraisablehook`, which `handlers()` replaces to drop it silently,
and as the signal stays recorded, the next `check()` raises it again where it propagates. `io.atomic.run_folder` checks once more when its body ends, so a run that had
no safe point left still ends as interrupted, not complete. A second signal while the first is being handled
(the run folder being moved to NAME.interrupted/) is acknowledged, not raised into the clean-up.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

_NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}
_state: dict = {"signum": None, "raised": False, "progress": None}


class Interrupted(KeyboardInterrupt):
  """The job was asked to stop by a signal.

  Attributes:
    signum: the signal (SIGINT or SIGTERM); exit_code: 128 + signum (130, 143).
    step: the step reached (`check(step=...)`) when the signal came, or None.
    total: how many steps that loop had, or None.
    where: what was running (e.g. "photo 00002.jpg"), filled in by the caller that knows.
  """

  def __init__(self, signum: int, step: int | None = None, total: int | None = None):
    self.signum, self.step, self.total = signum, step, total
    self.exit_code = 128 + int(signum)
    self.where = ""
    super().__init__(self.describe())

  def describe(self) -> str:
    at = f" at step {self.step}" + (f" of {self.total}" if self.total else "") if self.step is not None else ""
    return f"stopped by {signal_name(self.signum)}{at}" + (f" during {self.where}" if self.where else "")

  def __str__(self) -> str:
    return self.describe()


def signal_name(signum: int) -> str:
  return _NAMES.get(signum, f"signal {signum}")


def requested() -> int | None:
  """The signal received since the handlers were installed (None when none)."""
  return _state["signum"]


def progress() -> tuple[int | None, int | None]:
  """(step, total) last reported to `check` (None, None before any)."""
  return _state["progress"] or (None, None)


def reset_progress() -> None:
  _state["progress"] = None


def _interrupted() -> Interrupted:
  _state["raised"] = True
  step, total = progress()
  return Interrupted(_state["signum"], step, total)


def check(step: int | None = None, total: int | None = None) -> None:
  """A safe point: records the step reached and raises `Interrupted` if a signal came (even if raised before and
  swallowed by a callback)."""
  if step is not None:
    _state["progress"] = (int(step), None if total is None else int(total))
  if _state["signum"] is not None:
    raise _interrupted()


def _unraisable(args) -> None:
  if isinstance(args.exc_value, Interrupted):
    _state["raised"] = False  # it was not delivered: the next check() (or another signal) raises it again
    return
  _state["hook"](args)


def _handler(signum, frame) -> None:
  if _state["signum"] is not None:
    if _state["raised"]:
      print(f"\n{signal_name(signum)} again: already stopping (writing the run's state), please wait",
            file=sys.stderr, flush=True)
      return
  else:
    _state["signum"] = signum
    print(f"\n{signal_name(signum)} received: stopping", file=sys.stderr, flush=True)
  del frame
  raise _interrupted()  # if a callback swallows it, _unraisable drops it and the next check() raises it again


@contextlib.contextmanager
def handlers() -> Iterator[None]:
  """Installs the SIGINT/SIGTERM handlers for the body (main thread only; elsewhere a no-op) and restores the
  previous ones after; the recorded signal is cleared on entry."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  _state.update(signum=None, raised=False, progress=None, hook=sys.unraisablehook)
  old = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
  sys.unraisablehook = _unraisable
  try:
    yield
  finally:
    for s, h in old.items():
      signal.signal(s, h)
    sys.unraisablehook = _state["hook"]
    _state.update(signum=None, raised=False)
