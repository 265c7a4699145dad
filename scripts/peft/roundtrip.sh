#!/usr/bin/env bash
# peft round trip: angle trains a LoRA adapter on a decoder model, then transformers + peft load that adapter and
# angle's merged model, and their embeddings are compared with angle's own (`angle encode`).
#
#   scripts/peft/roundtrip.sh [ANGLE_BIN] [PYTHON] [BASE_MODEL_DIR]
#
# ANGLE_BIN: the `angle` binary (default target/release/angle); PYTHON: with torch, transformers, peft and
# sentence-transformers
# (default python3); BASE_MODEL_DIR: a LLaMA/Mistral/Qwen2/Qwen3 folder (default: the tiny Qwen2 fixture of
# ../shared/fixtures/decoder). Prints one line per comparison and exits non-zero when one misses its bound.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${1:-target/release/angle}"
py="${2:-python3}"
base="${3:-../shared/fixtures/decoder/qwen2-lora-last/model}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

head -n 41 data/stsb/stsb-en-train.csv > "$work/train.csv"
"$py" -c 'import csv,sys; [print(r[0]) for r in list(csv.reader(open(sys.argv[1])))[:16]]' \
  data/stsb/stsb-en-test.csv > "$work/texts.txt"

"$bin" train --model "$base" --train "$work/train.csv" --output "$work/run" \
  --lora-r 8 --lora-alpha 16 --lora-targets all-linear --merge-lora true \
  --pooling last --append-eos true --max-length 32 --batch-size 4 --epochs 1 --lr 1e-3 \
  --progress false >/dev/null
for what in checkpoint-last merged; do
  "$bin" encode --precision f32 --model "$work/run/$what" --input "$work/texts.txt" \
    --output "$work/$what.jsonl" >/dev/null 2>&1
done
"$py" scripts/peft/roundtrip.py "$base" "$work/run/checkpoint-last" "$work/run/merged" "$work/texts.txt" \
  "$work/checkpoint-last.jsonl" "$work/merged.jsonl" 32
