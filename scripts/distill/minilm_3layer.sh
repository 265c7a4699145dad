#!/usr/bin/env bash
# Distillation on STS-B: all-MiniLM-L6-v2 fine-tuned with the default recipe is the teacher; its first 3 layers
# (`angle export --layers 3` of the base model) are the student, trained with the default recipe twice: alone, and
# with the teacher's alignment term (angle-emb's KL over the embedding dimension, weight 1, teacher pooling mean).
# Prints the STS-B test Spearman of the teacher and of both students.
#
# Usage: scripts/distill/minilm_3layer.sh ANGLE_BINARY [OUT_DIR] [extra angle train options...]
set -euo pipefail
angle=${1:?usage: $0 ANGLE_BINARY [OUT_DIR] [angle train options...]}
out=${2:-runs/distill}
shift $(( $# >= 2 ? 2 : 1 ))
base=${ANGLE_MODEL_DIR:-../shared/models/all-MiniLM-L6-v2}
data=${ANGLE_STSB_DIR:-../shared/data/stsb}
recipe=(--train "$data/stsb-en-train.csv" --valid "$data/stsb-en-dev.csv" --cosine-w 1 --ibn-w 0 --angle-w 1
        --lr 5e-5 --batch-size 32 --max-length 64 --epochs 3 --seed 42 --overwrite "$@")
mkdir -p "$out"

if [ ! -f "$out/teacher/best/config.json" ]; then
  "$angle" train --model "$base" --output "$out/teacher" "${recipe[@]}" 2>&1 | tail -3
fi
rm -rf "$out/student-base"
"$angle" export --model "$base" --layers 3 --output "$out/student-base" >/dev/null 2>&1
"$angle" train --model "$out/student-base" --output "$out/student-alone" "${recipe[@]}" 2>&1 | tail -3
"$angle" train --model "$out/student-base" --output "$out/student-distilled" "${recipe[@]}" \
  --teacher "$out/teacher/best" --teacher-pooling mean --teacher-cache 2>&1 | tail -3

score() { "$angle" eval --model "$1" --data "$data/stsb-en-test.csv" --precision f32 --json 2>/dev/null \
  | python3 -c 'import json,sys; v=json.loads(sys.stdin.read().strip().splitlines()[-1]); print("%.2f" % v["mean"]["cosine"]["spearman"])'; }
echo "| model | STS-B test Spearman (cosine, f32) | training seconds |"
echo "| --- | --- | --- |"
for m in teacher student-alone student-distilled; do
  secs=$(python3 -c "import json; print(round(json.load(open('$out/$m/summary.json'))['train_seconds']))")
  echo "| $m | $(score "$out/$m/best") | $secs |"
done
