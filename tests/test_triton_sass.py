"""Compile budgets of the Triton kernels, read from their sm_90 machine code on a CPU.

Both kernels are compiled for sm_90 with the installed Triton (no GPU needed) and the innermost
loop of each, one trip per tile-list entry, is counted (`render/triton_sass.py`). A change that
puts a block barrier into the forward's entry loop (e.g. a `(pixels, channels)` accumulator, which
makes Triton convert layouts through shared memory), more than one into the 8×8 backward's, a
spill, or registers beyond the chosen occupancy fails here instead of on a GPU.

Layout choices, hence barrier counts, depend on Triton's version. The budgets were measured with
Triton 3.6 (the GPU image's; `/work/venv-triton36/bin/python -m pytest tests/test_triton_sass.py`)
and 3.9 (this machine's): on other versions the barrier budgets are skipped, with that reason;
registers and spills are checked everywhere.
"""

import pytest

triton = pytest.importorskip("triton")

try:
  from splatshot_jax.render import triton_sass
except ImportError as e:  # pragma: no cover (a triton without its NVIDIA backend)
  pytest.skip(f"no Triton CUDA backend: {e}", allow_module_level=True)

MEASURED_VERSIONS = ("3.6.", "3.9.")
# Registers per thread that keep the chosen occupancy on sm_90 (64k registers, ≤ 32 blocks and
# ≤ 64 warps per SM): a one-warp 8×8 block is capped at 32 resident blocks (50 %) by the block
# limit, reached up to 64 registers; 8-warp 16×16 blocks: the forward at 100 % (≤ 32), the
# backward at ≥ 50 % (≤ 64).
MAX_REGISTERS = {(8, "fwd"): 64, (8, "bwd"): 64, (16, "fwd"): 32, (16, "bwd"): 64}
MAX_BARRIERS = {(8, "fwd"): 0, (8, "bwd"): 1, (16, "fwd"): 0}  # per entry; 16×16 bwd: no budget


@pytest.fixture(scope="module", params=[8, 16])
def reports(request):
  try:
    return triton_sass.kernel_reports(request.param)
  except FileNotFoundError as e:  # pragma: no cover (wheel without ptxas / cuobjdump)
    pytest.skip(f"Triton's CUDA toolchain is missing: {e}")


def test_no_spills_and_registers_within_occupancy(reports):
  for r in reports:
    assert r.spill_bytes == 0, f"{r.kernel} {r.tile_size}×{r.tile_size}: spills {r.spill_bytes} B"
    limit = MAX_REGISTERS[(r.tile_size, r.kernel)]
    assert r.registers <= limit, (f"{r.kernel} {r.tile_size}×{r.tile_size}: {r.registers} registers"
                                  f" > {limit} (occupancy {r.occupancy:.0%})")


def test_barriers_per_entry(reports):
  if not triton.__version__.startswith(MEASURED_VERSIONS):
    pytest.skip(f"Triton {triton.__version__}: barrier budgets were measured on 3.6 (the GPU "
                "image) and 3.9; layout choices differ between versions")
  for r in reports:
    limit = MAX_BARRIERS.get((r.tile_size, r.kernel))
    if limit is None:
      continue
    e = r.entry_loop
    assert e.barriers <= limit, (f"{r.kernel} {r.tile_size}×{r.tile_size} (Triton {r.triton}): "
                                 f"{e.barriers} block barriers per entry > {limit}; loop {e}")
    if r.kernel == "fwd":  # no shared-memory round trip either
      assert e.shared == 0, f"fwd {r.tile_size}×{r.tile_size}: LDS/STS in the entry loop: {e}"


def test_sass_loop_parser_finds_innermost_loop():
  """A hand-written nvdisasm-style listing: an outer loop around an inner one, and a trap loop."""
  sass = """
        /*0000*/                   MOV R1, R2 ;
.L_x_1:
        /*0010*/                   LDG.E R3, desc[UR6][R2.64] ;
.L_x_2:
        /*0020*/                   SHFL.BFLY PT, R4, R3, 0x1, 0x1f ;
        /*0030*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0040*/                   LDS R5, [R6] ;
        /*0050*/               @P0 BRA `(.L_x_2) ;
        /*0060*/               @P1 BRA `(.L_x_1) ;
        /*0070*/                   EXIT ;
.L_x_3:
        /*0080*/                   BRA `(.L_x_3);
"""
  loops = triton_sass.sass_loops(sass)
  assert loops == [triton_sass.LoopStats(instructions=4, barriers=1, shuffles=1, shared=1,
                                         global_loads=0)]
