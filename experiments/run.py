"""The one entry point: `python -m experiments.run --config=configs/<name>.py [--config.key=value ...]`.

Each config names its job (`config.job`); the job's module in `experiments/` exposes `run(config)`.
With no --config, the default config is the README's install check. Each job module can also be run
directly (`python -m experiments.build_template --config=...`); its default config is its own.
Both set up the persistent compilation cache first (`config.compilation_cache`, `splatshot_jax.device.compile_cache`).

Mistakes in the inputs (an unknown config key, a bad value, a missing or broken file, a config file that does not
import or whose get_config raises) are printed as one message listing every problem, exit code 2; `--debug` (or
SPLATSHOT_DEBUG=1) adds the traceback. Anything else is a bug and keeps its traceback.

Ctrl-C (SIGINT) and SIGTERM end the job promptly at any point (`splatshot_jax.io.interrupt`): the run folder
becomes NAME.interrupted/ (RUN.json "interrupted", with the step reached), a batch rebuilds its tables, and the
job prints one line and exits with 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys
import traceback

from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_impl

from splatshot_jax.device import compile_cache
from splatshot_jax import errors
from splatshot_jax.errors import Problem
from splatshot_jax.io import interrupt

DEFAULT_CONFIG = "configs/splatshot_sd15.py:smoke"

JOBS = {
    "fit_multiview": "experiments.fit_multiview",
    "splatshot": "experiments.splatshot",
    "build_template": "experiments.build_template",
    "feedback_ablation": "experiments.feedback_ablation",
    "batch": "experiments.batch",
    "evaluate": "experiments.evaluate",
    "refit_batching": "experiments.refit_batching",
}

_CONFIG_ARG = re.compile(r"^--?config(=|$)")
_OVERRIDE_ARG = re.compile(r"^--?(?:no)?config\.([^=\s]+)")


class _CheckedConfigFile(config_flags_impl.ConfigFileFlagParser):
  """Loads the config file, then checks the command line's `--config.a.b=` keys against it.

  ml_collections would fail on an unknown key with a bare KeyError/AttributeError while defining the
  override flags; this runs first (the flag's parser is called before its overrides are defined) and
  names `config.a.b`, the valid keys and the nearest one.
  """

  def __init__(self, argv):
    super().__init__(name="config", lock_config=True)
    self._argv = argv

  def parse(self, path):
    try:
      config = super().parse(path)
    except (TypeError, ValueError) as e:  # get_config raised (e.g. an unknown ':arg')
      last = [line for line in str(e).splitlines() if line.strip()][-1]
      raise errors.UserInputError([Problem("--config", last, path)], "cannot load the config") from e
    except errors.UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (the file does not import, or get_config raised)
      raise errors.UserInputError([Problem("--config", _config_file_error(e, path), path)],
                                  "cannot load the config") from e
    if type(config).__name__ == "_ErrorConfig":  # ml_collections defers a missing file's IOError
      err = object.__getattribute__(config, "_error")
      raise errors.UserInputError([Problem("--config", f"cannot read the config file ({err})", path)],
                                  "cannot load the config")
    from splatshot_jax.jobs import preflight  # pylint: disable=import-outside-toplevel
    overrides = [m.group(1) for a in self._argv[1:] if (m := _OVERRIDE_ARG.match(a))]
    errors.raise_if_problems(preflight.check_override_keys(config, overrides), "bad command line")
    return config


def _config_file_error(e: Exception, path: str) -> str:
  """What went wrong in a config file, with the line of the file where it happened."""
  file = path.split(":", 1)[0]
  if isinstance(e, SyntaxError):
    return f"does not import: {e.msg} at line {e.lineno}" + (f": {e.text.strip()}" if e.text else "")
  lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) ==
           os.path.abspath(file)]
  where = f" (line {lines[-1]} of the file)" if lines else ""
  return f"loading it raised {type(e).__name__}: {e}{where}"


def parse_config(argv: list[str], default_config: str = DEFAULT_CONFIG):
  """The ConfigDict that `argv` (with argv[0] the program) describes: --config=FILE[:arg] and overrides."""
  argv = list(argv)
  if not any(_CONFIG_ARG.match(a) for a in argv[1:]):
    argv.insert(1, f"--config={default_config}")
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", default_config, "Path to a config file (and :arg).",
                                           flag_values=fv, sys_argv=argv)
  fv["config"].parser = _CheckedConfigFile(argv)
  try:
    fv(argv)
  except flags.Error as e:
    raise errors.UserInputError([Problem("", str(e))], "bad command line") from e
  return holder.value


def _debug_wanted(argv: list[str]) -> tuple[bool, list[str]]:
  debug = os.environ.get("SPLATSHOT_DEBUG", "") not in ("", "0")
  rest = []
  for a in argv:
    if a in ("--debug", "-debug", "--debug=true", "--debug=True"):
      debug = True
    elif a in ("--nodebug", "--debug=false", "--debug=False"):
      debug = False
    else:
      rest.append(a)
  return debug, rest


def main(argv: list[str] | None = None, default_config: str = DEFAULT_CONFIG, *, compilation_cache: bool = False
         ) -> int:
  """Runs the job the config names; returns the exit code (0, or 2 for a user error).

  compilation_cache: set up the persistent cache the config names (the command line does; an in-process caller
  such as a test keeps its own JAX settings).
  """
  debug, argv = _debug_wanted(list(sys.argv if argv is None else argv))
  with interrupt.handlers():
    return _main(argv, default_config, debug, compilation_cache)


def _main(argv, default_config, debug, compilation_cache) -> int:
  try:
    config = parse_config(argv, default_config)
    job = config.get("job")
    if job not in JOBS:
      raise errors.UserInputError([Problem("config.job", f"is {job!r}; expected one of {sorted(JOBS)}")],
                                  "unknown job")
    if compilation_cache:  # every job, before its first compile: reuse what earlier runs compiled ("" = off)
      compile_cache.setup(config.get("compilation_cache", "auto"))
    importlib.import_module(JOBS[job]).run(config)
  except errors.user_error_types() as e:
    if debug:
      traceback.print_exc()
    message = e.format() if isinstance(e, errors.UserInputError) else f"{type(e).__name__}: {e}"
    print(f"error: {message}", file=sys.stderr)
    if not debug:
      print("(run with --debug or SPLATSHOT_DEBUG=1 to see the traceback)", file=sys.stderr)
    return errors.EXIT_USER_ERROR
  except KeyboardInterrupt as e:  # interrupt.Interrupted, or a Ctrl-C that came before the handlers
    if debug:
      traceback.print_exc()
    if not isinstance(e, interrupt.Interrupted):
      e = interrupt.Interrupted(signal.SIGINT)
    print(f"interrupted: {e.describe()}; rerun the same command to start again", file=sys.stderr)
    return e.exit_code
  return 0


def launch(default_config: str = DEFAULT_CONFIG) -> None:
  """Parses sys.argv (--config, default `default_config`) and runs the job the config names."""
  sys.exit(main(sys.argv, default_config, compilation_cache=True))


if __name__ == "__main__":
  launch()
