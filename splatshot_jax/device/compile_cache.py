"""JAX's persistent compilation cache, on by default for every job: a process reuses what an earlier one compiled.

  compile_cache.setup(config.get("compilation_cache", "auto"))     # experiments/run.py does this for every job

"auto" (the default) is `$XDG_CACHE_HOME/splatshot_jax/jax`, else `~/.cache/splatshot_jax/jax`; "" turns the
cache off; anything else is the folder. XLA keys entries by the program, the compiler options and the jax/jaxlib
version and device kind, so a stale entry is never reused: deleting the folder is always safe.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax

log = logging.getLogger(__name__)

# Programs that compile faster than this are not written (the install check compiles a few hundred small ones;
# the step, the renders and the fit are the ones worth keeping).
MIN_COMPILE_SECONDS = 0.2


def cache_dir(setting: str | None = "auto") -> Path | None:
  """The folder `setting` names: "auto" -> the user's cache dir, "" / None -> None (off), else Path(setting)."""
  if not setting:
    return None
  if setting == "auto":
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "splatshot_jax" / "jax"
  return Path(setting).expanduser()


def setup(setting: str | None = "auto") -> Path | None:
  """Points JAX's persistent compilation cache at `cache_dir(setting)` (creating it); returns it, or None (off).

  Call once per process, before the first compilation (entries are looked up at compile time).
  """
  path = cache_dir(setting)
  if path is None:
    jax.config.update("jax_compilation_cache_dir", None)
    return None
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  log.info("compilation cache: %s", path)
  return path
