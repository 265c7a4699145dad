#!/usr/bin/env bash
# The one GPU run (prepared by `cargo xtask gpu-check`): kernel checks, parity, benchmark beside
# PyTorch, summary table last. Everything it writes goes to $OUT.
set -uo pipefail
OUT="${OUT:-.gpu/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# CUDA 13 libraries: the toolkit's, else the pip wheels beside PyTorch.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $(python3 -c 'import glob, site; print(" ".join(sorted(glob.glob(site.getsitepackages()[0] + "/nvidia/*/lib"))))' 2>/dev/null); do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT/device.txt"
date -u | tee -a "$OUT/device.txt"
DATA=.gpu/data
if [ ! -f $DATA/minilm/model.safetensors ] && ! gunzip -kf $DATA/minilm/model.safetensors.gz 2>/dev/null; then
    # read-only copy: unpack beside it in /tmp
    mkdir -p /tmp/angle-data/minilm
    cp $DATA/*.json $DATA/*.safetensors /tmp/angle-data/ && cp $DATA/minilm/config.json $DATA/minilm/tokenizer.json /tmp/angle-data/minilm/
    gunzip -c $DATA/minilm/model.safetensors.gz > /tmp/angle-data/minilm/model.safetensors
    DATA=/tmp/angle-data
fi
STEPS="${STEPS:-10}"
rc=0
# Sections in separate processes: a fault in one (a sticky CUDA error) leaves the others running.
: > "$OUT/gpu_check.log"
# SANITIZE=1: the checks under compute-sanitizer (memcheck), to locate a fault (slow: no bench).
SAN=""
SECTIONS="kernels,loss parity bench"
# QUICK=1: kernel checks and the end-to-end step only (when little device time is left).
[ "${QUICK:-0}" = 1 ] && SECTIONS="kernels,loss"
if [ "${SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
    SAN="compute-sanitizer --tool memcheck --print-limit 20"
    SECTIONS="kernels,loss parity"
fi
for only in $SECTIONS; do
    timeout 240 $SAN .gpu/bin/gpu_check --data "$DATA" --out "$OUT" --steps "$STEPS" --only "$only" 2>&1 \
        | tee -a "$OUT/gpu_check.log" || rc=$?
done
# End to end through the CLI: angle train/encode --device cuda against the CPU.
bash scripts/gpu/e2e.sh "$DATA" "$OUT" 2>&1 | tee "$OUT/e2e.log"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
# Every verdict in a few lines, near the end of the output (failed checks by name).
summary() {
    echo
    echo "== summary: $(grep -c '^ok ' "$OUT/gpu_check.log") checks ok, $(grep -c '^FAIL ' "$OUT/gpu_check.log") failed"
    grep '^FAIL ' "$OUT/gpu_check.log"
    grep -E '^(PASS|FAIL) e2e' "$OUT/e2e.log"
}
if [ "${QUICK:-0}" = 1 ]; then
    summary
    exit $rc
fi
python3 scripts/gpu/torch_baseline.py --out "$OUT" --steps "$STEPS" --minilm-config "$DATA/minilm/config.json" 2>&1 | tee "$OUT/torch.log" || rc=$?
summary
python3 scripts/gpu/table.py "$OUT" 2>&1 | tee "$OUT/table.txt"
exit $rc
