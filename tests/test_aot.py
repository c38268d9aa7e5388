"""The deviceless compile route stays alive: a tiny SplatShot configuration compiled for an H100 and a TPU v5e.

Runs only where the plugins are installed (`pip install 'splatshot_jax[aot]'` in a separate environment; they are
not a CI requirement): each check runs `experiments.aot_check` in a subprocess (JAX_PLATFORMS=cpu must be set
before jax starts for the CUDA plugin to register its compile-only topology). Paper-settings compiles are
benchmarks (docs/benchmarks.md, "Compiled memory for accelerators we do not have"), not tests.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _has(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:
    return False


def _aot_check(target: str, *extra: str) -> str:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1",
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, "-m", "experiments.aot_check", f"--target={target}", "--preset=tiny",
                         "--top=2", *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def _summary(out: str) -> dict:
  rows = out.split("## summary")[1].splitlines()
  return {r.split("|")[2].strip(): r.split("|")[3].strip() for r in rows if r.startswith("| 4x4")}


@pytest.mark.skipif(not _has("jax_plugins.xla_cuda13"),
                    reason="jax-cuda13-plugin not installed (pip install 'splatshot_jax[aot]' in a separate env)")
def test_tiny_step_parts_compile_for_an_h100_with_the_gpu_paths():
  out = _aot_check("h100", "--dtype=bf16", "--part=eps,render")
  assert "code paths for gpu" in out
  summary = _summary(out)
  assert set(summary) == {"eps", "render"} and all(float(v) >= 0 for v in summary.values()), out
  # The GPU branch of the attention: cuDNN's fused kernel in the compiled eps (tiny heads are 8 wide).
  eps_table = out.split("### eps")[1].split("###")[0]
  assert int(eps_table.splitlines()[3].split("|")[6]) > 0, eps_table


@pytest.mark.skipif(not _has("libtpu"), reason="libtpu not installed (pip install 'splatshot_jax[aot]' "
                                               "in a separate env)")
def test_tiny_step_parts_compile_for_a_tpu_v5e():
  out = _aot_check("v5e", "--part=eps,render")
  assert "code paths for tpu" in out and "TPU v5 lite" in out
  summary = _summary(out)
  assert set(summary) == {"eps", "render"} and all(float(v) >= 0 for v in summary.values()), out
