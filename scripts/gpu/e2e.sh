#!/usr/bin/env bash
# End-to-end on the GPU: `angle train --device cuda` for $E2E_STEPS steps on STS-B train with the
# carried MiniLM (word-embedding rows outside the parity batch are zero: a smoke test of the path,
# not of quality), then `angle encode` of STS-B dev sentences from the same checkpoint on the GPU
# (tf32, f32 and bf16) and on the CPU: relative difference of the embeddings, pairs/s and texts/s.
# Also: the objective on the device against the host objective (ANGLE_GPU_HOST_LOSS=1) over
# $E2E_CMP_STEPS steps logged one by one (loss and gradient norm within 1e-4 relative), and a short
# `--precision bf16` training run, and a run stopped by Ctrl-C and resumed (scripts/gpu/resume_check.py).
# One PASS/FAIL line per comparison; writes $OUT/e2e.json.
# Usage: e2e.sh DATA OUT. E2E_DEVICE=cpu smoke-tests the script on a machine without a GPU.
set -uo pipefail
DATA="$1"
OUT="$2"
DEVICE="${E2E_DEVICE:-cuda}"
STEPS="${E2E_STEPS:-60}"
CPU_STEPS="${E2E_CPU_STEPS:-5}"
CMP_STEPS="${E2E_CMP_STEPS:-8}"
BF16_STEPS="${E2E_BF16_STEPS:-20}"
RESUME_STEPS="${E2E_RESUME_STEPS:-400}"
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
# Precision options exist for the GPU only (the CPU computes in f32 and refuses bf16).
gpu_only() { [ "$DEVICE" = cpu ] || echo "$@"; }
train() { # device dir steps [more options]; its stderr also goes to dir.log
    local dev="$1" dir="$2" steps="$3"
    shift 3
    timeout 240 "$BIN" train --device "$dev" --model "$DATA/minilm" --train "$STSB/stsb-en-train.csv" \
        --output "$dir" --max-steps "$steps" --batch-size "$BS" --max-length 64 --pooling mean \
        --lr 2e-5 --warmup-steps 5 --max-grad-norm 1.0 --log-steps 10 --save-steps 0 --progress true "$@" \
        2> >(tee "$dir.log" >&2)
}
echo "== e2e: angle train --device $DEVICE, $STEPS steps x $BS pairs (STS-B train, MiniLM)"
train "$DEVICE" "$RUN/dev" "$STEPS" || rc=$?
echo "== e2e: angle train --device cpu, $CPU_STEPS steps (baseline pairs/s)"
train cpu "$RUN/cpu" "$CPU_STEPS" || rc=$?
echo "== e2e: the objective on the device vs on the host, $CMP_STEPS steps each, every step logged"
train "$DEVICE" "$RUN/cmp_dev" "$CMP_STEPS" --log-steps 1 || rc=$?
ANGLE_GPU_HOST_LOSS=1 train "$DEVICE" "$RUN/cmp_host" "$CMP_STEPS" --log-steps 1 || rc=$?
echo "== e2e: angle train --device $DEVICE $(gpu_only --precision bf16), $BF16_STEPS steps"
# shellcheck disable=SC2046 # gpu_only's words are options
train "$DEVICE" "$RUN/bf16" "$BF16_STEPS" $(gpu_only --precision bf16) || rc=$?
echo "== e2e: resume on $DEVICE (Ctrl-C, then --resume) against the same run uninterrupted, $RESUME_STEPS steps"
python3 scripts/gpu/resume_check.py "$RUN/resume.json" "$RUN" "$DEVICE" "$BIN" -- \
    --model "$DATA/minilm" --train "$STSB/stsb-en-train.csv" --max-steps "$RESUME_STEPS" --batch-size "$BS" \
    --max-length 64 --pooling mean --lr 2e-5 --warmup-steps 5 --max-grad-norm 1.0 --log-steps 1 \
    --save-steps 0 --progress false || rc=$?
python3 - "$STSB/stsb-en-dev.csv" "$TEXTS" > "$RUN/texts.txt" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], encoding="utf-8")))[: int(sys.argv[2]) // 2]
for r in rows:
    print(r[0].replace("\n", " ")); print(r[1].replace("\n", " "))
PY
CK="$RUN/dev/checkpoint-last"
enc() { # device out [more options]
    local t0 t1 dev="$1" out="$2"
    shift 2
    t0=$(date +%s.%N)
    timeout 120 "$BIN" encode --device "$dev" --model "$CK" --input "$RUN/texts.txt" --output "$out" \
        --batch-size 64 "$@" || return $?
    t1=$(date +%s.%N)
    python3 -c "print(f'{float($t1) - float($t0):.3f}')" > "$out.secs"
}
echo "== e2e: angle encode --device $DEVICE (tf32, f32, bf16) vs --device cpu on $CK"
enc "$DEVICE" "$RUN/dev.jsonl" || rc=$?
# shellcheck disable=SC2046
enc "$DEVICE" "$RUN/dev_f32.jsonl" $(gpu_only --precision f32) || rc=$?
# shellcheck disable=SC2046
enc "$DEVICE" "$RUN/dev_bf16.jsonl" $(gpu_only --precision bf16) || rc=$?
enc cpu "$RUN/cpu.jsonl" || rc=$?
python3 - "$RUN" "$OUT" "$DEVICE" "$STEPS" "$BS" <<'PY' || rc=$?
# Plain Python (numpy may be absent). Each comparison runs even when another one's files are
# missing: it then FAILs with the reason.
import json, math, os, sys
run, out, device, steps, bs = sys.argv[1:]
norm = lambda v: math.sqrt(sum(x * x for x in v))
checks = []  # (name, ok, detail)
r = {"device": device, "batch_pairs": int(bs)}


def check(name, fn):
    try:
        ok, detail = fn()
    except Exception as e:  # a missing file or record: this comparison fails, the others run
        ok, detail = False, f"{type(e).__name__}: {e}"
    checks.append((name, ok, detail))


def embeddings(f):
    return [json.loads(l)["embedding"] for l in open(f"{run}/{f}.jsonl")]


def records(d):
    return [x for x in map(json.loads, open(f"{run}/{d}/metrics.jsonl")) if "loss" in x and "grad_norm" in x]


def summary(d):
    return json.load(open(f"{run}/{d}/summary.json"))


def encode_vs_cpu(tag, f, tol):
    def go():
        a, b = embeddings(f), embeddings("cpu")
        assert len(a) == len(b) > 0, (len(a), len(b))
        row_rel, cos, num, den, finite = [], [], 0.0, 0.0, True
        for x, y in zip(a, b):
            d = norm([p - q for p, q in zip(x, y)])
            row_rel.append(d / max(norm(y), 1e-12))
            cos.append(sum(p * q for p, q in zip(x, y)) / max(norm(x) * norm(y), 1e-30))
            num += d * d
            den += norm(y) ** 2
            finite = finite and all(math.isfinite(p) for p in x)
        e = {"texts": len(a), "max_row_rel_diff": max(row_rel), "global_rel_diff": math.sqrt(num / den),
             "min_cosine": min(cos), "encode_wall_s": float(open(f"{run}/{f}.jsonl.secs").read())}
        r.setdefault("encode", {})[tag] = e
        if tag == "tf32":  # the keys of earlier runs' e2e.json
            r.update({k: e[k] for k in ["texts", "max_row_rel_diff", "global_rel_diff", "min_cosine", "encode_wall_s"]})
        ok = finite and e["max_row_rel_diff"] < tol
        return ok, (f"{e['texts']} texts, max row rel diff {e['max_row_rel_diff']:.2e} (< {tol:.0e}), "
                    f"global {e['global_rel_diff']:.2e}, min cosine {e['min_cosine']:.7f}, {e['encode_wall_s']:.1f} s wall")
    return go


def main_run():
    s, c = summary("dev"), summary("cpu")
    losses = [x["loss"] for x in records("dev")]
    r.update({"steps": s["steps"], "train_pairs_per_s": s["pairs_per_s"], "train_tokens_per_s": s["tokens_per_s"],
              "cpu_train_pairs_per_s": c["pairs_per_s"], "loss_first": losses[0], "loss_last": losses[-1]})
    ok = s["steps"] == int(steps) and all(math.isfinite(x) for x in losses)
    return ok, (f"{s['steps']} steps x {bs} pairs: {s['pairs_per_s']:.1f} pairs/s ({s['tokens_per_s']:.0f} tokens/s; "
                f"CPU {c['pairs_per_s']:.1f} pairs/s), loss {losses[0]:.4f} -> {losses[-1]:.4f}")


def device_vs_host():
    # The same run twice, step by step: only where the objective is computed differs.
    said = {d: open(f"{run}/{d}.log").read() for d in ["cmp_dev", "cmp_host"]}
    paths = device == "cpu" or ("objective runs on the GPU" in said["cmp_dev"]
                                and "objective runs on the host" in said["cmp_host"])
    a, b = records("cmp_dev"), records("cmp_host")
    worst = {"loss": 0.0, "grad_norm": 0.0}
    for x, y in zip(a, b):
        for k in worst:
            worst[k] = max(worst[k], abs(x[k] - y[k]) / max(abs(y[k]), 1e-12))
    parts = all(set(x.get("parts", {})) == set(y.get("parts", {})) for x, y in zip(a, b))
    finite = all(math.isfinite(x["loss"]) and math.isfinite(x["grad_norm"]) for x in a + b)
    ok = paths and parts and finite and len(a) == len(b) > 1 and max(worst.values()) < 1e-4
    r["objective_device_vs_host"] = {"steps": len(a), "max_rel_loss": worst["loss"],
                                     "max_rel_grad_norm": worst["grad_norm"], "ok": ok}
    curve = " ".join(f"{x['loss']:.5f}" for x in a)
    return ok, (f"{len(a)} vs {len(b)} steps, max rel diff loss {worst['loss']:.2e}, grad norm "
                f"{worst['grad_norm']:.2e} (< 1e-4); parts alike: {parts}; paths as asked: {paths}; losses {curve}")


def bf16_train():
    # Finite, and the first log window near the TF32 run's (same batches, same dropout).
    bf, tf, s = records("bf16"), records("dev"), summary("bf16")
    finite = all(math.isfinite(x["loss"]) and math.isfinite(x["grad_norm"]) for x in bf)
    rel = abs(bf[0]["loss"] - tf[0]["loss"]) / abs(tf[0]["loss"])
    r["bf16_train"] = {"steps": s["steps"], "pairs_per_s": s["pairs_per_s"], "loss_first": bf[0]["loss"],
                       "loss_last": bf[-1]["loss"], "first_window_rel_vs_tf32": rel}
    ok = finite and s["steps"] > 0 and rel < 5e-2
    return ok, (f"{s['steps']} steps, loss {bf[0]['loss']:.4f} -> {bf[-1]['loss']:.4f}, first window vs tf32 "
                f"{rel:.2e} (< 5e-2), {s['pairs_per_s']:.1f} pairs/s")


check("train (tf32, objective on the device)", main_run)
check("objective on the device vs on the host", device_vs_host)
check("train --precision bf16", bf16_train)


def resume():
    x = json.load(open(f"{run}/resume.json"))
    r["resume"] = x
    return x["ok"], x["detail"]


check("resume on the device (Ctrl-C, --resume)", resume)
# TF32 products ~3e-4 (run 3: 6.0e-4 per row); exact f32 ~1e-6; bf16 ~1e-2.
check("encode tf32 vs cpu", encode_vs_cpu("tf32", "dev", 1e-2))
check("encode --precision f32 vs cpu", encode_vs_cpu("f32", "dev_f32", 1e-4))
check("encode --precision bf16 vs cpu", encode_vs_cpu("bf16", "dev_bf16", 5e-2))
r["checks"] = {n: ok for n, ok, _ in checks}
json.dump(r, open(os.path.join(out, "e2e.json"), "w"), indent=1)
print()
for name, ok, detail in checks:
    print(f"{'PASS' if ok else 'FAIL'} e2e {name}: {detail}")
sys.exit(0 if all(ok for _, ok, _ in checks) else 1)
PY
exit $rc
