#!/usr/bin/env bash
# One command that verifies fastgan on a GPU machine: builds the extension with the CUDA kernels
# (all cores), runs the whole test suite (CUDA tests included), runs the CUDA tests once under
# compute-sanitizer (memcheck and racecheck), and runs the GPU benchmarks in float32 and bfloat16.
# Logs go to $OUT (default: gpu_check_out/); a summary table is printed at the end.
#
#   PYTHON=python3 bash scripts/gpu_check.sh            # everything
#   SKIP_SANITIZER=1 SKIP_BENCH=1 bash scripts/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
declare -A status

step() {  # step NAME COMMAND...: runs COMMAND, logs to $OUT/NAME.log, records pass/FAIL
  local name=$1; shift
  echo "== $name: $*"
  local start=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then status[$name]="pass"; else status[$name]="FAIL"; fi
  status[$name]+=" ($((SECONDS - start)) s)"
  tail -n 3 "$OUT/$name.log"
}

"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')" | tee "$OUT/device.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$OUT/device.txt" 2>&1

export FASTGAN_CUDA=1 FASTGAN_REQUIRE_EXT=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
step build "$PYTHON" setup.py build_ext --inplace
step info "$PYTHON" -m fastgan info
step tests "$PYTHON" -m pytest -q -ra tests
if [ -z "${SKIP_SANITIZER:-}" ] && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    step "sanitizer_$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$PYTHON" -m pytest -q -x -m cuda tests -k "${SANITIZER_TESTS:-not gradcheck}"
  done
fi
if [ -z "${SKIP_BENCH:-}" ]; then
  step bench_float32 "$PYTHON" benchmarks/run.py --device cuda --dtype float32
  step bench_bfloat16 "$PYTHON" benchmarks/run.py --device cuda --dtype bfloat16
fi

echo
echo "| step | result |"
echo "|---|---|"
for name in build info tests sanitizer_memcheck sanitizer_racecheck bench_float32 bench_bfloat16; do
  [ -n "${status[$name]:-}" ] && echo "| $name | ${status[$name]} |"
done
grep -h -E "passed|failed" "$OUT/tests.log" | tail -n 1
for name in "${!status[@]}"; do [[ ${status[$name]} == FAIL* ]] && exit 1; done
exit 0
