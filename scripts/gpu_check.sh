#!/usr/bin/env bash
# One command that checks fastgan on a GPU machine within one remote command: builds the
# extension with the CUDA kernels (all cores), runs the CUDA tests, benchmarks the GPU, and runs a
# few CUDA tests under compute-sanitizer, most important first. Each step stops at its own limit
# and none runs past DEADLINE seconds from the start (default 540, under the ten minutes a remote
# GPU runner may allow one command), so the summary is always written. Logs go to $OUT (default
# gpu_check_out/), eight files at most (few enough for a runner that returns a handful of files);
# summary.txt holds the device, versions and each step's result.
#
#   PYTHON=python3 bash scripts/gpu_check.sh
#   SKIP="tests bench_bn" bash scripts/gpu_check.sh          # a second call: the steps not yet run
#   DEADLINE=1500 FULL_SUITE=1 bash scripts/gpu_check.sh   # more time: every test, not only CUDA's
#   FASTGAN_CUDA=0 DEADLINE=120 bash scripts/gpu_check.sh  # the script's own dry run, without a GPU
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-gpu_check_out}"
DEADLINE="${DEADLINE:-540}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
declare -A status
names=()

# step NAME LIMIT COMMAND...: runs COMMAND for at most LIMIT seconds (less if DEADLINE is nearer),
# logs to $OUT/NAME.log, records the result in the summary.
step() {
  local name=$1 limit=$2
  shift 2
  names+=("$name")
  local left=$((DEADLINE - SECONDS))
  if [[ " ${SKIP:-} " == *" $name "* ]]; then
    status[$name]="skipped (SKIP)"
  elif [ "$left" -lt 30 ]; then
    status[$name]="skipped (deadline)"
  else
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most $limit s): $*"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    case $? in
      0) status[$name]="pass" ;;
      124 | 137) status[$name]="TIMEOUT" ;;
      *) status[$name]="FAIL" ;;
    esac
    status[$name]+=" ($((SECONDS - start)) s)"
    tail -n 4 "$OUT/$name.log"
  fi
  echo "$name: ${status[$name]}" >>"$SUMMARY"
}

{
  date -u
  git log -1 --format='commit %H' 2>/dev/null
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
} >"$SUMMARY"
cat "$SUMMARY"

export FASTGAN_CUDA="${FASTGAN_CUDA:-1}" FASTGAN_REQUIRE_EXT=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" PYTHONUNBUFFERED=1
step build 300 "$PYTHON" setup.py build_ext --inplace
if [[ ${status[build]} == FAIL* || ${status[build]} == TIMEOUT* ]]; then
  echo "build failed: nothing else can run" | tee -a "$SUMMARY"
  exit 1
fi
"$PYTHON" -m fastgan info >>"$SUMMARY" 2>&1

# Tests: the CUDA ones (CI runs the others), spread over processes when pytest-xdist is there.
pytest_args=(-q -ra --durations=10)
"$PYTHON" -c "import xdist" 2>/dev/null && pytest_args+=(-n 8)
"$PYTHON" -c "import pytest_timeout" 2>/dev/null && pytest_args+=(--timeout 120)
[ -z "${FULL_SUITE:-}" ] && pytest_args+=(-m cuda)
step tests 200 "$PYTHON" -m pytest "${pytest_args[@]}" tests

bench=("$PYTHON" benchmarks/run.py --device cuda --min-run-time 0.3)
step bench_bn 120 "${bench[@]}" --only bn
step bench_training 150 "${bench[@]}" --only convt r1 convert

# A few tests per kernel family (the whole CUDA suite would take hours under the sanitizer).
sanitized="${SANITIZER_TESTS:-test_r1_pattern_matches_torch or test_empty_batch or test_no_channels \
or test_huge_channel or test_gradient_penalty_pattern_matches_torch or test_unbatched_input \
or test_op_empty_batch or test_op_accumulates_half}"
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    step "sanitizer_$tool" 60 compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$PYTHON" -m pytest -q -x -p no:xdist -m cuda tests -k "$sanitized"
  done
fi
step bench_bfloat16 90 "${bench[@]}" --dtype bfloat16 --only bn convt

echo
grep -h -E " in [0-9.]+s" "$OUT/tests.log" 2>/dev/null | tail -n 1 |
  sed 's/^/tests: /' | tee -a "$SUMMARY"
echo "| step | result |"
echo "|---|---|"
for name in "${names[@]}"; do echo "| $name | ${status[$name]} |"; done
for name in "${names[@]}"; do [[ ${status[$name]} == FAIL* || ${status[$name]} == TIMEOUT* ]] && exit 1; done
exit 0
