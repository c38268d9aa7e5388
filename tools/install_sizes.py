"""Installed size of what the README's two install lines bring: the package's dependency closure, with and without
the test extra, summed over each installed distribution's RECORD (its files on disk; pip's cache not counted).

  python tools/install_sizes.py            # needs `pip install -e '.[test]'` done (it measures what is installed)

Prints, per line, the total, the package count and the largest packages. Not collected by pytest; not run in CI.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement


def _norm(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _size(dist: metadata.Distribution) -> int:
  files = (Path(dist.locate_file(f)) for f in dist.files or [])
  return sum(p.stat().st_size for p in files if p.is_file())


def closure(requirements: list[Requirement], dists: dict) -> tuple[set[str], set[str]]:
  """(installed names, missing names) of the requirements and everything they require (markers evaluated)."""
  seen, missing, todo = set(), set(), [(r, ("",)) for r in requirements]
  while todo:
    req, extras = todo.pop()
    name = _norm(req.name)
    if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
      continue
    if name in seen or name in missing:
      continue
    if name not in dists:
      missing.add(name)
      continue
    seen.add(name)
    todo += [(Requirement(s), tuple(req.extras) or ("",)) for s in dists[name].requires or []]
  return seen, missing


def main() -> None:
  dists = {_norm(d.metadata["Name"]): d for d in metadata.distributions()}
  root = dists["splatshot-jax"]
  reqs = [Requirement(s) for s in root.requires or []]
  base = [r for r in reqs if r.marker is None]
  test = base + [Requirement(str(r).split(";")[0]) for r in reqs if r.marker is not None
                 and r.marker.evaluate({"extra": "test"})]
  for label, wanted in (("line 1: pip install -e .", base), ("line 2: pip install -e '.[test]'", test)):
    names, missing = closure(wanted, dists)
    sizes = sorted(((_size(dists[n]), n) for n in names), reverse=True)
    print(f"{label}: {sum(s for s, _ in sizes) / 1e9:.2f} GB in {len(sizes)} packages"
          + (f" ({len(missing)} not installed: {', '.join(sorted(missing))})" if missing else ""))
    print("  largest: " + ", ".join(f"{n} {s / 1e6:.0f} MB" for s, n in sizes[:8]))


if __name__ == "__main__":
  main()
