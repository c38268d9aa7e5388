"""Atomic file writes: write a temporary sibling, then os.replace it over the target.

A crashed or interrupted run therefore never leaves a half-written PLY/PNG/MP4 under the final
name, and readers never see a partial file.
"""

from __future__ import annotations

import contextlib
import os
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
