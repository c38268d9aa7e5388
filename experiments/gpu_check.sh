#!/usr/bin/env bash
# One GPU check of the rasterizer's Triton kernels and the prior, sized for one 15-minute GPU lease
# (machine start-up included): every step is under its own timeout and together they take ≤ 330 s,
# leaving time inside the lease to rerun once.
#
#   bash experiments/gpu_check.sh                        # on the GPU machine, repository root
#   GPU_CHECK_DRY_RUN=1 bash experiments/gpu_check.sh    # CPU: the whole script end to end, tiny
#                                                        # sizes, Triton rows from the interpreter
#
# Results go to $OUT (the device runner's folder that comes back) or outputs/gpu_check: one log
# per step, summary.md, and trace/ (a jax.profiler trace of one refit iteration). Python runs
# unbuffered and every bench row is printed the moment it is measured, so a step that times out
# keeps the rows it had. Order (most wanted first):
#   1. parity (≤ 60 s): tests/test_triton_*.py with the compiled kernels (TRITON_TEST_BACKEND=triton)
#      vs the XLA compositor (forward ≤ 1e-5, VJP ≤ 1e-4 relative), both tile sizes, and the sm_90
#      compile budgets under the image's Triton 3.6 (tests/test_triton_sass.py);
#   2. render_triton (≤ 100 s): bench_render, Triton backend, 100k then 300k Gaussians at 560×816:
#      forward, forward+backward, one refit iteration (20 in a scan), 8×8 tiles, scene-sized pair
#      budget; then a profiler trace of one refit iteration at 100k (≤ 1 extra compile);
#   3. render_xla (≤ 60 s): the same rows on the XLA compositor (16×16), parity vs Triton;
#   4. bench_denoiser (≤ 50 s): 512² (latent 64), one view, bfloat16 only, no PyTorch baseline;
#   5. bench_sampler (≤ 60 s): the sd15 preset with 8 views (paper: 48) and 100/50 refit iterations
#      (paper: 1000/500), so it finishes; peak device memory. Its times are per this reduced run.
#
# jax-triton: the GPU machines have JAX 0.11.2 (CUDA 13), triton 3.6 and torch 2.11 but no
# jax-triton. Bring its wheel along in the repository's ignored .whl/ folder:
#   pip download --no-deps jax-triton==0.3.1 -d .whl
# and this script installs it (without dependencies, nothing else changes) into /tmp/site.
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-outputs/gpu_check}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
DRY=${GPU_CHECK_DRY_RUN:-${GPU_CHECK_SMOKE:-0}}
T_START=$SECONDS

wheel=$(ls .whl/jax_triton-*.whl 2>/dev/null | head -n 1)
if [ -n "$wheel" ]; then
  python3 -m pip install -q --no-deps --target /tmp/site "$wheel" && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
python3 -c "import jax; d = jax.devices()[0]; print('device:', d.platform, d.device_kind, '| jax', jax.__version__)"

if [ "$DRY" = 1 ]; then
  # Same steps and flags, tiny: the Triton rows come from the kernels in Triton's CPU interpreter.
  TRITON=triton_interpret
  PARITY_ENV="TRITON_TEST_BACKEND=triton_interpret"
  PARITY_TESTS="tests/test_triton_sass.py tests/test_triton_binning.py::test_depth_sort_key_orders_like_floats"
  SIZES_T="--sizes 60 --res 24x16 --refit-iters 1 --repeats 1"
  SIZES_X="--sizes 60 --res 24x16 --refit-iters 1 --repeats 1"
  DENOISER_ARGS="--latent 8 --views 1 --reps 1 --dtypes float32 --parts decode --torch off"
  SAMPLER="tiny 2 4 2"  # preset views refit_first refit
  T_PARITY=120 T_TRITON=300 T_XLA=180 T_DENOISER=480 T_SAMPLER=400  # SD-sized VAE init; loaded CPU
else
  TRITON=triton
  if ! python3 -c "import jax_triton" 2>/dev/null; then
    echo "jax_triton does not import: the Triton steps will fail. Fetch the wheel with" \
         "'pip download --no-deps jax-triton==0.3.1 -d .whl' and rerun." >&2
  fi
  PARITY_ENV="TRITON_TEST_BACKEND=triton"
  PARITY_TESTS="tests/test_triton_composite.py tests/test_triton_binning.py tests/test_triton_sass.py"
  SIZES_T="--sizes 100000 300000 --res 816x560 --refit-iters 20 --repeats 5"
  SIZES_X="--sizes 100000 300000 --res 816x560 --refit-iters 5 --repeats 3"
  DENOISER_ARGS="--latent 64 --views 1 --reps 2 --dtypes bfloat16 --torch off"
  SAMPLER="sd15 8 100 50"
  T_PARITY=60 T_TRITON=100 T_XLA=60 T_DENOISER=50 T_SAMPLER=60
fi

STATUS=()
# run NAME TIMEOUT_S CMD...: runs CMD with a timeout, output shown live and kept in
# $OUT_DIR/NAME.log, status recorded.
run() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (≤ ${limit}s, at $((SECONDS - T_START)) s): $*"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]} dt=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then STATUS+=("$name|ok|$dt")
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then STATUS+=("$name|timed out|$dt")
  else STATUS+=("$name|failed (rc $rc)|$dt"); fi
}

# shellcheck disable=SC2086
run parity "$T_PARITY" env $PARITY_ENV python3 -m pytest -q -p no:cacheprovider $PARITY_TESTS
# shellcheck disable=SC2086
run render_triton "$T_TRITON" python3 -m experiments.bench_render --backend "$TRITON" $SIZES_T \
    --dense-max 0 --baseline 0 0 --no-append --trace "$OUT_DIR/trace"
# shellcheck disable=SC2086
run render_xla "$T_XLA" python3 -m experiments.bench_render --backend xla $SIZES_X \
    --dense-max 0 --baseline 0 0 --no-append
# shellcheck disable=SC2086
run bench_denoiser "$T_DENOISER" python3 -m experiments.bench_denoiser $DENOISER_ARGS --no-append
# shellcheck disable=SC2086
run bench_sampler "$T_SAMPLER" python3 - $SAMPLER <<'EOF'
import sys
import jax
from experiments import bench_sampler
preset, views, first, later = sys.argv[1], *map(int, sys.argv[2:])
# Fewer views and refit iterations than the paper's so the step fits the lease (stated above).
bench_sampler.PRESETS[preset] = dict(bench_sampler.PRESETS[preset], views=views, refit_first=first,
                                     refit=later)
sys.argv = ["bench_sampler", f"--preset={preset}"]
bench_sampler.main()
stats = jax.devices()[0].memory_stats() or {}
peak = stats.get("peak_bytes_in_use")
print(f"| peak device memory (JAX allocator) | {peak / 2**30:.2f} GiB | |" if peak else
      "| peak device memory | not reported by this device | |")
EOF

python3 - "$OUT_DIR" "${STATUS[@]}" <<'EOF' | tee "$OUT_DIR/summary.md"
"""One table: every step's status, then each markdown row the steps printed, prefixed by the step."""
import os
import sys

out_dir, statuses = sys.argv[1], sys.argv[2:]
print("| step | result |\n|---|---|")
for s in statuses:
  name, status, secs = s.split("|")
  print(f"| {name} | **{status}** in {secs} s |")
  path = os.path.join(out_dir, f"{name}.log")
  lines = open(path, errors="replace").read().splitlines() if os.path.exists(path) else []
  header = None
  for line in lines:
    line = line.strip()
    if name == "parity" and (" passed" in line or " failed" in line or "error" in line.lower()[:8]):
      print(f"| {name} | {line} |")
    if not (line.startswith("|") and line.endswith("|")) or set(line) <= set("|-: "):
      continue
    cells = [c.strip() for c in line.strip("|").split("|")]
    if header is None or cells[0] in ("backend", "impl", "part"):
      header = cells
      continue
    print(f"| {name} | " + " · ".join(f"{h}: {c}" for h, c in zip(header, cells)) + " |")
trace = os.path.join(out_dir, "trace")
found = [os.path.join(d, f) for d, _, fs in os.walk(trace) for f in fs] if os.path.isdir(trace) else []
print(f"| trace | {len(found)} file(s) under {trace} |")
EOF
echo "total: $((SECONDS - T_START)) s"
# Exit status: nonzero when a step did not finish ok (the dry run's check).
for s in "${STATUS[@]}"; do case "$s" in *"|ok|"*) ;; *) exit 1 ;; esac; done
