"""The package's shape: no import cycles, and the import-linter layers of pyproject.toml hold and bite.

`.ci/run` runs `lint-imports` itself; these tests show that the contracts catch what they are for (an upward
import planted in a copy of the package breaks the layers contract by name) and check what import-linter's
contracts do not: no cycle between any two modules, lazy (function-level) imports included.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="import-linter (grimp) is part of the test extra")

ROOT = Path(__file__).resolve().parents[1]


def _cycles(graph) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan, iterative over a small graph)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph.find_modules_directly_imported_by(v):
      if w not in graph.modules:
        continue
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        found.append(sorted(comp))

  for m in sorted(graph.modules):
    if m not in index:
      visit(m)
  return found


def test_no_import_cycles_between_modules():
  graph = grimp.build_graph("splatshot_jax")
  assert len(graph.modules) > 40
  assert _cycles(graph) == []


def test_cycle_finder_sees_a_planted_cycle():
  graph = grimp.build_graph("splatshot_jax")
  graph.add_import(importer="splatshot_jax.gaussians", imported="splatshot_jax.jobs.pipeline")
  cycles = _cycles(graph)
  assert any("splatshot_jax.gaussians" in c and "splatshot_jax.jobs.pipeline" in c for c in cycles)


def _lint(tmp_path: Path, plant: str | None) -> subprocess.CompletedProcess:
  """lint-imports on a copy of the package (and the repo's contracts), with `plant` appended to render/tiles.py."""
  shutil.copytree(ROOT / "splatshot_jax", tmp_path / "splatshot_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.js", "*.html"))
  for pkg in ("experiments", "configs"):
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("")
  shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
  if plant:
    with open(tmp_path / "splatshot_jax/render/tiles.py", "a") as f:
      f.write("\n" + plant + "\n")
  lint = Path(sys.executable).with_name("lint-imports")
  cmd = [str(lint)] if lint.exists() else [sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                                           "lint_imports_command()"]
  return subprocess.run(cmd + ["--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}, timeout=120)


def test_contracts_hold_and_an_upward_import_breaks_the_layers(tmp_path):
  ok = _lint(tmp_path / "clean", None)
  assert ok.returncode == 0, ok.stdout + ok.stderr
  assert "0 broken" in ok.stdout
  bad = _lint(tmp_path / "upward", "from splatshot_jax import sampler  # the rasterizer must not know the sampler")
  assert bad.returncode != 0
  assert "layers: jobs -> method" in bad.stdout and "BROKEN" in bad.stdout
  assert "splatshot_jax.render.tiles -> splatshot_jax.sampler" in bad.stdout
