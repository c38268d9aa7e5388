"""User errors: problems with a run's inputs that the user can fix (as opposed to bugs).

A check collects `Problem`s (which config field, which file, what was expected, what was found) and
raises them together as one `UserInputError`, so a user fixes everything in one go:

  problems = preflight.check_splatshot(config)
  errors.raise_if_problems(problems, "cannot start the splatshot job")

`experiments/run.py` prints a user error as one message and exits with code 2 (`--debug` or
SPLATSHOT_DEBUG=1 adds the traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

EXIT_USER_ERROR = 2


@dataclasses.dataclass(frozen=True)
class Problem:
  """One thing wrong with the inputs.

  Attributes:
    field: the config field, e.g. "config.sampler.strength" ("" when no single field is at fault).
    message: what was expected and what was found.
    path: the file or folder concerned ("" when none).
  """

  field: str
  message: str
  path: str = ""

  def __str__(self) -> str:
    where = ": ".join(s for s in (self.field, self.path) if s)
    return f"{where}: {self.message}" if where else self.message


class UserError(Exception):
  """Base of every error that reports a mistake in the user's inputs (printed without traceback by run.py).

  Each module defines its own error classes on this base (`PlyError(UserError, ValueError)`, ...), so this
  module imports nothing of the project and every layer can raise a user error.
  """


class UserInputError(UserError):
  """The inputs of a run are wrong; `problems` lists every one found.

  Not a ValueError on purpose: absl's flag parsing turns ValueErrors into its own flag errors, and
  callers must be able to tell a user error from a bug by its type.
  """

  def __init__(self, problems: Iterable[Problem] | str, header: str = "the run's inputs have problems"):
    if isinstance(problems, str):
      problems = [Problem("", problems)]
    self.problems = list(problems)
    self.header = header
    super().__init__(self.format())

  def format(self) -> str:
    if len(self.problems) == 1:
      return f"{self.header}: {self.problems[0]}"
    lines = [f"{self.header} ({len(self.problems)} problems):"]
    lines += ["  - " + str(p).replace("\n", "\n    ") for p in self.problems]
    return "\n".join(lines)


class NonFiniteError(UserInputError):
  """Values became NaN/inf during a run (`step`, the sampler step index; `partial`, what was kept)."""

  def __init__(self, problems, header: str, *, step: int | None = None, partial=None):
    self.step = step
    self.partial = partial
    super().__init__(problems, header)


def raise_if_problems(problems: Iterable[Problem], header: str = "the run's inputs have problems") -> None:
  """Raises UserInputError listing `problems` when there is at least one."""
  problems = list(problems)
  if problems:
    raise UserInputError(problems, header)


def user_error_types() -> tuple[type, ...]:
  """Every exception class that reports a user's input mistake: the modules' own errors all derive from UserError."""
  return (UserError,)
