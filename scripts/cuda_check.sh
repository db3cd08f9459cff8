#!/usr/bin/env bash
# Compiles every csrc/cuda/*.cu to an object file (sm_80 and sm_90) with the flags the real build
# uses, so CUDA code is checked on machines without a GPU or a CUDA build of torch. Nothing is
# linked or run. Skips (exit 0) when nvcc is absent.
#
# Environment: PYTHON (default python3) is the interpreter whose torch headers are used; JOBS the
# number of parallel compiles (default: the number of cores).
set -u

cd "$(dirname "$0")/.."

NVCC=""
if command -v nvcc >/dev/null 2>&1; then
  NVCC="$(command -v nvcc)"
elif [ -n "${CUDA_HOME:-}" ] && [ -x "${CUDA_HOME}/bin/nvcc" ]; then
  NVCC="${CUDA_HOME}/bin/nvcc"
fi
if [ -z "$NVCC" ]; then
  echo "cuda_check: nvcc not found (neither on PATH nor in \$CUDA_HOME/bin): check skipped"
  exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! TORCH_INCLUDES="$("$PYTHON" -c 'import torch.utils.cpp_extension as c; print("\n".join(c.include_paths()))')"; then
  echo "cuda_check: could not get torch's include paths from $PYTHON" >&2
  exit 1
fi

shopt -s nullglob
SOURCES=(csrc/cuda/*.cu)
if [ ${#SOURCES[@]} -eq 0 ]; then
  echo "cuda_check: no csrc/cuda/*.cu files"
  exit 0
fi

OUT_DIR=build/cuda_check
mkdir -p "$OUT_DIR"

# Mirrors torch.utils.cpp_extension (COMMON_NVCC_FLAGS, the -std it passes, the defines
# BuildExtension adds) and setup.py (-O3, FASTGAN_WITH_CUDA). build_support comes after torch's
# includes: it only supplies the generated header a CPU build of torch lacks.
FLAGS=(
  -std=c++20 -O3
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
  --expt-relaxed-constexpr --compiler-options -fPIC
  -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H -DFASTGAN_WITH_CUDA
)
while IFS= read -r dir; do
  [ -n "$dir" ] && FLAGS+=(-I "$dir")
done <<< "$TORCH_INCLUDES"
FLAGS+=(-I build_support -I csrc)

compile() {
  local src="$1" name
  name="$(basename "$src" .cu)"
  if "$NVCC" "${FLAGS[@]}" -c "$src" -o "$OUT_DIR/$name.o" >"$OUT_DIR/$name.log" 2>&1; then
    echo ok >"$OUT_DIR/$name.status"
  else
    echo FAILED >"$OUT_DIR/$name.status"
  fi
}

JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
running=0
for src in "${SOURCES[@]}"; do
  rm -f "$OUT_DIR/$(basename "$src" .cu).status"
  compile "$src" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

failed=0
for src in "${SOURCES[@]}"; do
  name="$(basename "$src" .cu)"
  status="$(cat "$OUT_DIR/$name.status" 2>/dev/null || echo FAILED)"
  log="$OUT_DIR/$name.log"
  if [ "$status" = ok ] && [ -s "$log" ]; then
    echo "$src: ok (with compiler output)"
    cat "$log"
  else
    echo "$src: $status"
    [ "$status" = ok ] || { cat "$log" 2>/dev/null; failed=1; }
  fi
done
exit "$failed"
