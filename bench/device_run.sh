#!/usr/bin/env bash
# Builds htfr on a GPU machine and runs what asks for one: `tests` (the whole GoogleTest suite),
# `sanitize` (the GPU tests under compute-sanitizer memcheck and racecheck), `bench` (bench_htfr,
# the PyTorch baseline, bench/RESULTS.md). Logs and JSON go to $OUT (default ./out).
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
BUILD=${BUILD:-build-gpu}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >"$OUT/cmake.log" 2>&1 \
  || { tail -30 "$OUT/cmake.log"; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -40; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1
rc=0
for mode in "$@"; do
  case "$mode" in
    tests)
      "$BUILD/tests/htfr_tests" 2>&1 | tee "$OUT/tests.log" | grep -E "^\[  (FAILED|SKIPPED|PASSED) |overlap|compared|FAILED|Failure|error" | head -80
      [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1 ;;
    sanitize)
      for tool in memcheck racecheck; do
        compute-sanitizer --tool "$tool" --error-exitcode 3 "$BUILD/tests/htfr_tests" \
          --gtest_filter='Shapes/CudaParity.*:CudaDeterminism.*:CudaPool.*:*Cuda*:*cuda*' \
          >"$OUT/sanitize_$tool.log" 2>&1
        s=$?; echo "compute-sanitizer $tool: exit $s"; tail -4 "$OUT/sanitize_$tool.log"
        [ $s -eq 0 ] || rc=1
      done ;;
    bench)
      HTFR_COMMIT=${HTFR_COMMIT:-unknown} "$BUILD/bench/bench_htfr" --out "$OUT/bench_htfr.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" || rc=1
      HTFR_COMMIT=${HTFR_COMMIT:-unknown} python3 bench/torch_baseline.py --out "$OUT/torch_baseline.json" ${TORCH_ARGS:-} 2>&1 | tee "$OUT/torch.log" | tail -30 || rc=1
      # The same baseline with its bf16 blend done as a bf16 product: a faster variant, recorded
      # beside the plain one.
      HTFR_COMMIT=${HTFR_COMMIT:-unknown} python3 bench/torch_baseline.py --bf16-blend bf16 --precisions bf16 \
        --out "$OUT/torch_baseline_bf16blend.json" ${TORCH_ARGS:-} >"$OUT/torch_bf16blend.log" 2>&1 || rc=1
      python3 bench/make_results.py --cpp "$OUT/bench_htfr.json" --torch "$OUT/torch_baseline.json" --out "$OUT/RESULTS.md" || rc=1 ;;
    *) echo "unknown mode $mode"; rc=2 ;;
  esac
done
exit $rc
