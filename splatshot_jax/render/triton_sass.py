"""What the compilers make of the Triton kernels: their sm_90 machine code, read on a CPU.

  python -m splatshot_jax.render.triton_sass              # markdown table, both tile sizes
  /work/venv-triton36/bin/python -m splatshot_jax.render.triton_sass   # the GPU image's Triton

Triton compiles for a CUDA target without a GPU (its wheel ships ptxas, cuobjdump and nvdisasm).
The per-entry cost of a compositing kernel is its innermost loop, one tile-list entry per trip:
this module disassembles the cubin, finds the loops (a branch back to an earlier label), and
counts what matters in the innermost one: instructions, block barriers (BAR: every warp of the
block waits), warp shuffles (SHFL), shared-memory loads/stores (LDS/STS) and global loads (LDG).
Registers and spills come from the cubin's resource usage (STACK/LOCAL bytes > 0 is a spill).
Importable only where `triton` with its NVIDIA backend is installed; nothing here runs a kernel.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile

import triton

from splatshot_jax.render.composite import CompositeConfig
from splatshot_jax.render.composite_triton import _constexprs, num_warps_for
from splatshot_jax.render.triton_kernels import kernels

_INTS = {"start_ptr", "count_ptr", "order_ptr", "last_ptr"}  # int32 pointer arguments
# sm_90 per SM: 64 resident warps, 32 resident blocks, 64k 32-bit registers allocated per warp in
# units of 256 (CUDA occupancy calculator).
_SM90 = dict(max_warps=64, max_blocks=32, regs=65536, reg_unit=256)


@dataclasses.dataclass
class LoopStats:
  """Counts over one loop body (the instructions between its label and its back branch)."""

  instructions: int
  barriers: int  # BAR.*: block-wide synchronisation
  shuffles: int  # SHFL.*: warp-level exchange (reductions)
  shared: int  # LDS/STS: shared-memory round trips
  global_loads: int  # LDG


@dataclasses.dataclass
class KernelReport:
  kernel: str
  tile_size: int
  num_warps: int
  triton: str
  registers: int
  spill_bytes: int  # STACK + LOCAL of the cubin: 0 means nothing spilled
  shared_bytes: int
  occupancy: float  # resident warps / 64 on sm_90 with these registers and warps per block
  entry_loop: LoopStats  # the innermost loop: one trip per tile-list entry


def _bin(tool: str) -> str:
  return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


def compile_kernel(kernel, *, tile_size: int, channels: int = 4, num_warps: int | None = None,
                   arch: int = 90, width: int = 816, height: int = 560):
  """Triton's CompiledKernel of `kernel` (a `kernels(False)` entry) for sm_`arch`; no GPU needed."""
  from triton.backends.compiler import GPUTarget  # noqa: PLC0415
  from triton.compiler import ASTSource  # noqa: PLC0415
  cfg = CompositeConfig(width=width, height=height, tile_size=tile_size)
  cx = {k: v for k, v in _constexprs(cfg, channels).items() if k in kernel.arg_names}
  sig = {a: "constexpr" if a in cx else ("*i32" if a in _INTS else "*fp32")
         for a in kernel.arg_names}
  src = ASTSource(fn=kernel, signature=sig,
                  constexprs={(kernel.arg_names.index(k),): v for k, v in cx.items()})
  warps = num_warps_for(tile_size) if num_warps is None else num_warps
  return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps))


_INSTR = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_BRANCH = re.compile(r"\bBRA\b.*`\((\.L_x_\d+)\)")


def sass_loops(sass: str) -> list[LoopStats]:
  """Innermost loops of an nvdisasm listing (loops that contain no other loop), in code order.

  A loop is a branch to a label at or before it; single-instruction self-loops (the trap after
  EXIT) are not loops of the program.
  """
  instrs, labels = [], {}
  for line in sass.splitlines():
    m = _LABEL.match(line)
    if m:
      labels[m.group(1)] = len(instrs)
      continue
    m = _INSTR.search(line)
    if m:
      instrs.append(m.group(1))
  spans = []
  for i, ins in enumerate(instrs):
    m = _BRANCH.search(ins)
    if m and m.group(1) in labels and labels[m.group(1)] < i:
      spans.append((labels[m.group(1)], i))
  inner = [s for s in spans
           if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in spans)]
  out = []
  for lo, hi in inner:
    body = instrs[lo:hi + 1]
    op = lambda ins: ins.split()[1] if ins.startswith("@") else ins.split()[0]
    ops = [op(b) for b in body]
    out.append(LoopStats(
        instructions=len(body),
        barriers=sum(o.startswith("BAR") for o in ops),
        shuffles=sum(o.startswith("SHFL") for o in ops),
        shared=sum(o.startswith(("LDS", "STS")) for o in ops),
        global_loads=sum(o.startswith("LDG") for o in ops)))
  return out


def _resources(cubin_path: str) -> dict[str, int]:
  text = subprocess.run([_bin("cuobjdump"), "-res-usage", cubin_path], check=True,
                        capture_output=True, text=True).stdout
  return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def occupancy(registers: int, num_warps: int) -> float:
  """Resident warps per SM / 64 on sm_90 for blocks of `num_warps` (registers the only limit)."""
  per_warp = -(-registers * 32 // _SM90["reg_unit"]) * _SM90["reg_unit"]
  blocks = min(_SM90["max_blocks"], _SM90["regs"] // (per_warp * num_warps),
               _SM90["max_warps"] // num_warps)
  return blocks * num_warps / _SM90["max_warps"]


def kernel_reports(tile_size: int, channels: int = 4, num_warps: int | None = None,
                   kernel_fns=None) -> list[KernelReport]:
  """Compiles (forward, backward) for sm_90 and reads their resources and per-entry loops.

  kernel_fns: plain (un-jitted) kernel functions to compile instead of the package's (tests pass
  a variant); default `triton_kernels`' forward and backward.
  """
  fns = kernels(False) if kernel_fns is None else [triton.jit(f) for f in kernel_fns]
  warps = num_warps_for(tile_size) if num_warps is None else num_warps
  reports = []
  with tempfile.TemporaryDirectory() as tmp:
    for fn in fns:
      compiled = compile_kernel(fn, tile_size=tile_size, channels=channels, num_warps=warps)
      path = os.path.join(tmp, "k.cubin")
      with open(path, "wb") as f:
        f.write(compiled.asm["cubin"])
      res = _resources(path)
      sass = subprocess.run([_bin("nvdisasm"), "-c", path], check=True, capture_output=True,
                            text=True).stdout
      loops = sass_loops(sass)
      if not loops:
        raise RuntimeError(f"{fn.__name__}: no loop found in its SASS")
      reports.append(KernelReport(
          kernel=fn.__name__.replace("composite_", "").replace("_kernel", ""),
          tile_size=tile_size, num_warps=warps, triton=triton.__version__,
          registers=res["REG"], spill_bytes=res.get("STACK", 0) + res.get("LOCAL", 0),
          shared_bytes=res.get("SHARED", 0), occupancy=occupancy(res["REG"], warps),
          entry_loop=max(loops, key=lambda s: s.instructions)))
  return reports


def markdown(reports: list[KernelReport]) -> str:
  lines = ["| kernel | tile | warps | Triton | registers | spill B | occupancy | instr/entry "
           "| barriers/entry | shuffles/entry | LDS+STS/entry | LDG/entry |", "|" + "---|" * 12]
  for r in reports:
    e = r.entry_loop
    lines.append(f"| {r.kernel} | {r.tile_size}×{r.tile_size} | {r.num_warps} | {r.triton} | "
                 f"{r.registers} | {r.spill_bytes} | {r.occupancy:.0%} | {e.instructions} | "
                 f"{e.barriers} | {e.shuffles} | {e.shared} | {e.global_loads} |")
  return "\n".join(lines)


def main():
  reports = kernel_reports(8) + kernel_reports(16)
  print(markdown(reports))


if __name__ == "__main__":
  main()
