#!/usr/bin/env bash
# Builds htfr on a GPU machine and runs what asks for one: `tests` (the whole GoogleTest suite),
# `sanitize` (the GPU tests under compute-sanitizer memcheck and racecheck), `bench` (bench_htfr,
# the PyTorch baseline, bench/RESULTS.md), `projection` (bench_projection and its PyTorch baseline), `init` (bench_init: k-means and
# data-driven initialisation at N = 131,072, D = 16,384), `hftcapture` (teacher captures for the HFT)
# `hft` (HFT training and evaluation runs), `verify` (the information-flow checks of a trained
# model) and `serve` (inference sessions against the teacher). Logs and JSON go to $OUT (default ./out).
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
BUILD=${BUILD:-build-gpu}
# Header-only JSON and OpenSSL's headers, when the machine lacks them, come from Debian packages
# unpacked into .deps/ (carried with the tree); libcrypto itself is the machine's.
extra=()
if [ ! -f /usr/include/nlohmann/json.hpp ] && [ -d .deps/usr/share/cmake/nlohmann_json ]; then
  extra+=("-Dnlohmann_json_DIR=$PWD/.deps/usr/share/cmake/nlohmann_json")
fi
if [ ! -f /usr/include/openssl/evp.h ] && [ -d .deps/usr/include/openssl ]; then
  crypto=$(ls /usr/lib/x86_64-linux-gnu/libcrypto.so* 2>/dev/null | head -1)
  extra+=("-DOPENSSL_INCLUDE_DIR=$PWD/.deps/usr/include" "-DOPENSSL_CRYPTO_LIBRARY=$crypto"
          "-DCMAKE_CXX_FLAGS=-isystem $PWD/.deps/usr/include/x86_64-linux-gnu"
          "-DCMAKE_CUDA_FLAGS=-isystem $PWD/.deps/usr/include/x86_64-linux-gnu")
fi
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 "${extra[@]}" >"$OUT/cmake.log" 2>&1 \
  || { tail -30 "$OUT/cmake.log"; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -40; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1
# Sums an ncu CSV of gpu__time_duration per kernel name and prints it per step, largest first.
ncu_summary() {
  python3 - "$1" "$2" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; ki = head.index("Kernel Name"); vi = head.index("Metric Value")
tot = collections.OrderedDict()
for r in rows[1:]:
    k = r[ki][:70]; tot[k] = tot.get(k, 0) + float(r[vi].replace(",", ""))
s = sum(tot.values()); steps = float(sys.argv[2])
print(f"{s/1e6/steps:9.4f} ms/step in all")
for k, v in sorted(tot.items(), key=lambda kv: -kv[1]):
    print(f"{v/1e6/steps:9.4f} ms/step  {100*v/s:5.1f}%  {k}")
PY
}
rc=0
for mode in "$@"; do
  case "$mode" in
    tests)
      "$BUILD/tests/htfr_tests" --gtest_filter="${TESTS_FILTER:-*}" 2>&1 | tee "$OUT/tests.log" | grep -E "^\[  (FAILED|SKIPPED|PASSED) |overlap|compared|FAILED|Failure|error" | head -80
      [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1 ;;
    sanitize)
      # Every GPU test under memcheck; the slower tools skip the long learning runs.
      # SANITIZERS picks the tools (default: memcheck racecheck).
      gpu_tests='Shapes/CudaParity.*:CudaDeterminism.*:CudaPool.*:CudaHalfPrecision.*:*/cuda'
      gpu_tests+=':FwhtCuda.*:SrhtCuda.*:CountSketchCuda.*:PcaCuda.*:ProjectionStackCuda.*:ProjectionAdjoint.*Gpu'
      gpu_tests+=':*KMeansCuda*:*InitPoolCuda*:ContextCuda.*:HftCuda.*:SessionCuda.*:VerifyCuda.*'
      gpu_tests=${SANITIZE_FILTER:-$gpu_tests}
      # racecheck reads tests/sanitizer/racecheck_cublas13_sm90.xml: two reports inside cuBLAS
      # 13.0's Hopper GEMM kernels, each named by kernel and instruction offsets (README,
      # "Benchmarks"); any other report still fails the run.
      for tool in ${SANITIZERS:-memcheck racecheck}; do
        filter=$gpu_tests
        [ "$tool" != memcheck ] && filter="$gpu_tests:-Learning/*"
        opts=()
        [ "$tool" = racecheck ] && opts=(--suppressions tests/sanitizer/racecheck_cublas13_sm90.xml)
        compute-sanitizer --tool "$tool" "${opts[@]}" --error-exitcode 3 "$BUILD/tests/htfr_tests" \
          --gtest_filter="$filter" >"$OUT/sanitize_$tool.log" 2>&1
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
      python3 bench/make_results.py --cpp "$OUT/bench_htfr.json" --torch "$OUT/torch_baseline.json" --notes bench/NOTES.md --out "$OUT/RESULTS.md" || rc=1 ;;
    projection)
      HTFR_COMMIT=${HTFR_COMMIT:-unknown} "$BUILD/bench/bench_projection" --out "$OUT/bench_projection.json" ${PROJECTION_ARGS:-} 2>&1 | tee "$OUT/bench_projection.log" || rc=1
      HTFR_COMMIT=${HTFR_COMMIT:-unknown} python3 bench/torch_projection.py --out "$OUT/torch_projection.json" 2>&1 | tee "$OUT/torch_projection.log" | tail -20 || rc=1 ;;
    init)
      HTFR_COMMIT=${HTFR_COMMIT:-unknown} "$BUILD/bench/bench_init" --out "$OUT/bench_init.json" ${INIT_ARGS:-} 2>&1 | tee "$OUT/bench_init.log" || rc=1 ;;
    hftcapture)
      # Teacher captures for the HFT on this GPU: the GGUF reassembled from the parts carried to
      # /tmp/gguf, the gguf wheel from .whl, WikiText-2 from .corpus. Captures go to $CAPTURES.
      G=/tmp/gguf/gemma-3-270m-q4_k_m.gguf
      [ -f "$G" ] || cat /tmp/gguf/part-* > "$G"
      echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  $G" | sha256sum -c - || { rc=1; continue; }
      [ -d /tmp/site/gguf ] || python3 -m pip install -q --no-deps --target /tmp/site .whl/gguf-*.whl
      C=${CAPTURES:-/tmp/cap}
      cap() { PYTHONPATH=/tmp/site python3 -m tools.capture --model "$G" --device cuda --batch-windows 32 "$@"; }
      { time cap --corpus .corpus/wiki.valid.raw --out "$C/train" --max-tokens 200000; } >"$OUT/capture_train.log" 2>&1 || rc=1
      { time cap --corpus .corpus/wiki.test.raw --out "$C/eval" --max-tokens 50000 --compact-vocab-from "$C/train"; } >"$OUT/capture_eval.log" 2>&1 || rc=1
      { time cap --corpus .corpus/wiki.test.raw --out "$C/test" --compact-vocab-from "$C/train"; } >"$OUT/capture_test.log" 2>&1 || rc=1
      PYTHONPATH=/tmp/site python3 -m tools.capture.embedding --model "$G" --capture "$C/train" >"$OUT/embedding.log" 2>&1 || rc=1
      for c in train eval test; do
        PYTHONPATH=/tmp/site python3 -m tools.capture.perplexity "$C/$c" >"$OUT/perplexity_$c.log" 2>&1 || rc=1
      done
      tail -3 "$OUT"/capture_*.log "$OUT"/perplexity_*.log "$OUT/embedding.log" ;;
    hft)
      # HFT runs on the captures of `hftcapture`: HFT_RUNS lists name=config.json pairs; each is
      # trained (checkpoint in /tmp), evaluated on the 50k evaluation capture with the n-gram
      # baselines; HFT_TEST=1 also evaluates the first run on the full test split.
      C=${CAPTURES:-/tmp/cap}
      first=1
      for spec in ${HFT_RUNS:-default=configs/hft-gpu.json}; do
        name=${spec%%=*}; cfg=${spec#*=}
        # HFT_CLEAN=1: earlier checkpoints go first (a full-size one takes several GB of /tmp).
        [ "${HFT_CLEAN:-0}" = 1 ] && rm -f /tmp/*.safetensors /tmp/*.safetensors.tmp-*
        "$BUILD/tools/htfr" train --train "$C/train" --eval "$C/eval" --config "$cfg" \
          --out "/tmp/$name.safetensors" --metrics "$OUT/$name.jsonl" --quiet >"$OUT/$name.train.log" 2>&1 || rc=1
        tail -4 "$OUT/$name.train.log"
        "$BUILD/tools/htfr" eval --checkpoint "/tmp/$name.safetensors" --capture "$C/eval" --train "$C/train" \
          --json "$OUT/$name.eval.json" >"$OUT/$name.eval.log" 2>&1 || rc=1
        cat "$OUT/$name.eval.log"
        if [ "$first" = 1 ] && [ "${HFT_TEST:-0}" = 1 ]; then
          "$BUILD/tools/htfr" eval --checkpoint "/tmp/$name.safetensors" --capture "$C/test" --train "$C/train" \
            --no-diagnostics --json "$OUT/$name.test.json" >"$OUT/$name.test.log" 2>&1 || rc=1
          cat "$OUT/$name.test.log"
        fi
        first=0
      done ;;
    verify)
      # The information-flow checks (htfr verify) of a trained checkpoint (VERIFY_CKPT, default
      # the `hft` run's) on the 50k evaluation capture.
      C=${CAPTURES:-/tmp/cap}
      "$BUILD/tools/htfr" verify --checkpoint "${VERIFY_CKPT:-/tmp/default.safetensors}" --capture "$C/eval" \
        --commit "${HTFR_COMMIT:-unknown}" --json "$OUT/verify.json" ${VERIFY_ARGS:-} >"$OUT/verify.log" 2>&1 || rc=1
      cat "$OUT/verify.log" ;;
    profile)
      # Per-kernel device time of a few S2 bf16 training steps at 4096 rows.
      ncu --metrics gpu__time_duration.sum --csv "$BUILD/bench/bench_htfr" --profile --shapes S2 \
        --precisions bf16 --rows 4096 --iters 2 >"$OUT/ncu.csv" 2>"$OUT/ncu.err" || rc=1
      ncu_summary "$OUT/ncu.csv" 3 ;;
    serve)
      # Inference sessions of a trained checkpoint (SERVE_CKPT, default the `hft` run's):
      # serve-bench, text generation, the teacher's PyTorch decode/prefill benchmark, and the
      # per-kernel device time of decode steps at batch 1 and 256.
      # SERVE_UNTRAINED=<capture> benches an untrained model of the same sizes instead (no
      # teacher file needed); SERVE_TEACHER=0 and SERVE_NCU=0 skip those parts.
      K=${SERVE_CKPT:-/tmp/default.safetensors}
      untrained=()
      [ -n "${SERVE_UNTRAINED:-}" ] && untrained=(--untrained-from "$SERVE_UNTRAINED")
      "$BUILD/tools/htfr" serve-bench --checkpoint "$K" --commit "${HTFR_COMMIT:-unknown}" \
        --json "$OUT/serve_bench.json" "${untrained[@]}" ${SERVE_ARGS:-} >"$OUT/serve_bench.log" 2>&1 || rc=1
      grep -E "^batch|error" "$OUT/serve_bench.log"
      [ -f /tmp/gguf/gemma-3-270m-q4_k_m.gguf ] && [ -z "${SERVE_UNTRAINED:-}" ] &&
      for p in "The history of the city" "In 1998 , the band released"; do
        for t in 0 0.8; do
          "$BUILD/tools/htfr" generate --checkpoint "$K" --gguf /tmp/gguf/gemma-3-270m-q4_k_m.gguf \
            --prompt "$p" --max-tokens 48 --temperature $t --seed 1 2>&1 | tee -a "$OUT/generate.log" || rc=1
        done
      done
      if [ "${SERVE_TEACHER:-1}" = 1 ]; then
        python3 bench/torch_teacher.py --commit "${HTFR_COMMIT:-unknown}" --json "$OUT/torch_teacher.json" \
          ${TEACHER_ARGS:-} >"$OUT/torch_teacher.log" 2>&1 || rc=1
        tail -25 "$OUT/torch_teacher.log"
      fi
      [ "${SERVE_NCU:-1}" = 1 ] && for b in 1 256; do
        ncu --metrics gpu__time_duration.sum --csv "$BUILD/tools/htfr" serve-bench --checkpoint "$K" \
          --batches $b --steps 4 --warmup 0 --context 2 >"$OUT/ncu_serve_$b.csv" 2>"$OUT/ncu_serve_$b.err" || rc=1
        # 6 steps per run; batch 1 runs twice (with and without CUDA graphs).
        n=6; [ $b = 1 ] && n=12
        echo "per-kernel device time, batch $b (per step; $n steps profiled, model loading included)"
        ncu_summary "$OUT/ncu_serve_$b.csv" $n
      done ;;
    *) echo "unknown mode $mode"; rc=2 ;;
  esac
done
# At most 8 files come back: pack the logs into one archive.
(cd "$OUT" && tar czf logs.tar.gz --remove-files *.log *.txt *.err 2>/dev/null)
exit $rc
