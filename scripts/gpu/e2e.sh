#!/usr/bin/env bash
# End-to-end on the GPU: `angle train --device cuda` for $E2E_STEPS steps on STS-B train with the
# carried MiniLM (word-embedding rows outside the parity batch are zero: a smoke test of the path,
# not of quality), then `angle encode` of STS-B dev sentences from the same checkpoint on the GPU
# and on the CPU: max relative difference of the embeddings, pairs/s and texts/s.
# Usage: e2e.sh DATA OUT. E2E_DEVICE=cpu smoke-tests the script on a machine without a GPU.
set -uo pipefail
DATA="$1"
OUT="$2"
DEVICE="${E2E_DEVICE:-cuda}"
STEPS="${E2E_STEPS:-60}"
CPU_STEPS="${E2E_CPU_STEPS:-5}"
BS="${E2E_BATCH:-32}"
TEXTS="${E2E_TEXTS:-1000}"
STSB="${STSB:-.gpu/data/stsb}"
BIN="${ANGLE_BIN:-}"
if [ -z "$BIN" ]; then
    BINDIR=$(mktemp -d /tmp/angle-e2e-bin.XXXXXX) || exit 1
    gunzip -c .gpu/bin/angle.gz > "$BINDIR/angle" && chmod +x "$BINDIR/angle" || exit 1
    BIN="$BINDIR/angle"
fi
RUN=$(mktemp -d /tmp/angle-e2e.XXXXXX) || exit 1
rc=0
train() { # device steps dir
    timeout 240 "$BIN" train --device "$1" --model "$DATA/minilm" --train "$STSB/stsb-en-train.csv" \
        --output "$2" --max-steps "$3" --batch-size "$BS" --max-length 64 --pooling mean \
        --lr 2e-5 --warmup-steps 5 --max-grad-norm 1.0 --log-steps 10 --save-steps 0 --progress true
}
echo "== e2e: angle train --device $DEVICE, $STEPS steps x $BS pairs (STS-B train, MiniLM)"
train "$DEVICE" "$RUN/dev" "$STEPS" || rc=$?
echo "== e2e: angle train --device cpu, $CPU_STEPS steps (baseline pairs/s)"
train cpu "$RUN/cpu" "$CPU_STEPS" || rc=$?
python3 - "$STSB/stsb-en-dev.csv" "$TEXTS" > "$RUN/texts.txt" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], encoding="utf-8")))[: int(sys.argv[2]) // 2]
for r in rows:
    print(r[0].replace("\n", " ")); print(r[1].replace("\n", " "))
PY
CK="$RUN/dev/checkpoint-last"
enc() { # device out
    local t0 t1
    t0=$(date +%s.%N)
    timeout 120 "$BIN" encode --device "$1" --model "$CK" --input "$RUN/texts.txt" --output "$2" --batch-size 64 || return $?
    t1=$(date +%s.%N)
    python3 -c "print(f'{float($t1) - float($t0):.3f}')" > "$2.secs"
}
echo "== e2e: angle encode --device $DEVICE vs --device cpu on $CK"
enc "$DEVICE" "$RUN/dev.jsonl" || rc=$?
enc cpu "$RUN/cpu.jsonl" || rc=$?
python3 - "$RUN" "$OUT" "$DEVICE" "$STEPS" "$BS" <<'PY' || rc=$?
# Plain Python (numpy may be absent).
import json, math, os, sys
run, out, device, steps, bs = sys.argv[1:]
s_dev = json.load(open(f"{run}/dev/summary.json"))
s_cpu = json.load(open(f"{run}/cpu/summary.json"))
load = lambda p: [json.loads(l)["embedding"] for l in open(p)]
a, b = load(f"{run}/dev.jsonl"), load(f"{run}/cpu.jsonl")
assert len(a) == len(b) > 0, (len(a), len(b))
norm = lambda v: math.sqrt(sum(x * x for x in v))
row_rel, cos, num, den, finite = [], [], 0.0, 0.0, True
for x, y in zip(a, b):
    d = norm([p - q for p, q in zip(x, y)])
    row_rel.append(d / max(norm(y), 1e-12))
    cos.append(sum(p * q for p, q in zip(x, y)) / max(norm(x) * norm(y), 1e-30))
    num += d * d
    den += norm(y) ** 2
    finite = finite and all(math.isfinite(p) for p in x)
secs = {k: float(open(f"{run}/{k}.jsonl.secs").read()) for k in ["dev", "cpu"]}
losses = [json.loads(l) for l in open(f"{run}/dev/metrics.jsonl")]
losses = [r["loss"] for r in losses if "loss" in r]
r = {
    "device": device, "steps": s_dev["steps"], "batch_pairs": int(bs),
    "train_pairs_per_s": s_dev["pairs_per_s"], "train_tokens_per_s": s_dev["tokens_per_s"],
    "cpu_train_pairs_per_s": s_cpu["pairs_per_s"],
    "loss_first": losses[0] if losses else float("nan"), "loss_last": losses[-1] if losses else float("nan"),
    "texts": len(a), "max_row_rel_diff": max(row_rel), "global_rel_diff": math.sqrt(num / den),
    "min_cosine": min(cos), "encode_wall_s": secs["dev"], "cpu_encode_wall_s": secs["cpu"],
}
json.dump(r, open(os.path.join(out, "e2e.json"), "w"), indent=1)
ok = r["max_row_rel_diff"] < 1e-2 and finite
print(f"\nend to end ({device}): train {r['steps']} steps x {bs} pairs: {r['train_pairs_per_s']:.1f} pairs/s "
      f"({r['train_tokens_per_s']:.0f} tokens/s; CPU {r['cpu_train_pairs_per_s']:.1f} pairs/s), "
      f"loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}")
print(f"encode {r['texts']} texts: {device} {r['encode_wall_s']:.1f} s vs cpu {r['cpu_encode_wall_s']:.1f} s wall "
      f"(load included); max row rel diff {r['max_row_rel_diff']:.2e}, global {r['global_rel_diff']:.2e}, "
      f"min cosine {r['min_cosine']:.6f}: {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
exit $rc
