#!/usr/bin/env bash
# One GPU check of the rasterizer's Triton kernels and the prior, in ≤ 8 minutes on one H100/H200.
#
#   bash experiments/gpu_check.sh                  # on the GPU machine, from the repository root
#   GPU_CHECK_SMOKE=1 bash experiments/gpu_check.sh   # CPU: tiny sizes, XLA only (tests the script)
#
# Steps (each under its own timeout, so the whole run is bounded by their sum, 470 s, plus setup):
#   1. parity: tests/test_triton_*.py with the compiled kernels (TRITON_TEST_BACKEND=triton) on the
#      GPU vs the XLA compositor (forward ≤ 1e-5, VJP ≤ 1e-4 relative, fit within 1e-4);
#   2. bench_render: 100k and 300k Gaussians at 560×816, forward / forward+backward / one refit
#      iteration (render + loss + backward + Adam), backends xla and triton in one process, with
#      their parity (max |Δrgb|, ‖Δ∂means‖/‖∂means‖);
#   3. bench_denoiser at 512² with its diffusers baseline (bf16 in JAX, fp16 in PyTorch);
#   4. bench_sampler --preset=sd15: time per avatar split into parts, and peak GPU memory.
# Prints one table at the end (also written to outputs/gpu_check/summary.md, logs beside it).
#
# jax-triton: the GPU machines have JAX 0.11.2 (CUDA 13), triton 3.6 and torch 2.11 but no
# jax-triton. Bring its wheel along in the repository's ignored .whl/ folder:
#   pip download --no-deps jax-triton==0.3.1 -d .whl
# and this script installs it (without dependencies, nothing else changes) into /tmp/site.
set -u
cd "$(dirname "$0")/.."
OUT_DIR=outputs/gpu_check
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SMOKE=${GPU_CHECK_SMOKE:-0}

wheel=$(ls .whl/jax_triton-*.whl 2>/dev/null | head -n 1)
if [ -n "$wheel" ]; then
  python3 -m pip install -q --no-deps --target /tmp/site "$wheel" && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
if python3 -c "import jax_triton" 2>/dev/null; then
  BACKENDS="triton xla"  # triton first: its figures land before a timeout
else
  BACKENDS="xla"
  echo "jax_triton does not import: timing the XLA backend only. Fetch the wheel with" \
       "'pip download --no-deps jax-triton==0.3.1 -d .whl' and rerun." >&2
fi
python3 -c "import jax; d = jax.devices()[0]; print('device:', d.platform, d.device_kind, '| jax', jax.__version__)"

if [ "$SMOKE" = 1 ]; then
  BACKENDS="xla"
  PARITY_ENV="TRITON_TEST_BACKEND=triton_interpret"
  RENDER_ARGS="--sizes 300 --res 64x48 --tile-size 8 --refit-iters 2 --repeats 1"
  DENOISER_ARGS="--latent 8 --views 1 --reps 1 --dtypes float32 --parts decode --torch off"
  SAMPLER_PRESET=tiny
  T_PARITY=120 T_RENDER=170 T_DENOISER=120 T_SAMPLER=300  # a loaded CPU; not bounded to 8 min
else
  PARITY_ENV="TRITON_TEST_BACKEND=triton"
  RENDER_ARGS="--sizes 100000 300000 --res 560x816 --refit-iters 20 --repeats 5"
  DENOISER_ARGS="--latent 64 --views 1 --reps 3 --dtypes float32,bfloat16 --torch on"
  SAMPLER_PRESET=sd15
  T_PARITY=80 T_RENDER=150 T_DENOISER=70 T_SAMPLER=170
fi

STATUS=()
# run NAME TIMEOUT_S CMD...: runs CMD with a timeout, log in $OUT_DIR/NAME.log, status recorded.
run() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (≤ ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$? dt=$((SECONDS - t0))
  tail -n 25 "$OUT_DIR/$name.log"
  if [ $rc -eq 0 ]; then STATUS+=("$name|ok|$dt")
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then STATUS+=("$name|timed out|$dt")
  else STATUS+=("$name|failed (rc $rc)|$dt"); fi
}

if [ "$SMOKE" = 1 ]; then
  run parity "$T_PARITY" env $PARITY_ENV python3 -m pytest -q -p no:cacheprovider tests/test_triton_binning.py \
      -k "depth_sort_key"
else
  run parity "$T_PARITY" env $PARITY_ENV python3 -m pytest -q -p no:cacheprovider \
      tests/test_triton_composite.py tests/test_triton_binning.py
fi
# shellcheck disable=SC2086
run bench_render "$T_RENDER" python3 -m experiments.bench_render --backend $BACKENDS $RENDER_ARGS \
    --dense-max 0 --baseline 0 0 --no-append
# shellcheck disable=SC2086
run bench_denoiser "$T_DENOISER" python3 -m experiments.bench_denoiser $DENOISER_ARGS --no-append
run bench_sampler "$T_SAMPLER" python3 - "$SAMPLER_PRESET" <<'EOF'
import sys
import jax
from experiments import bench_sampler
preset = sys.argv[1]
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
EOF
