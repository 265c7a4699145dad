"""PyTorch baseline for `cargo xtask bench`'s train-step row, measured on *this* machine.

The same work as `train` in xtask/src/bench.rs: STS-B train shuffled with the same seed and permutation
(splitmix64, Fisher-Yates), batches of 32 pairs = 64 zigzag texts (text1, text2 of each pair), tokenised before
the steps, padded to the longest text of the batch, max length 64; train mode (dropout on), mean pooling, the
format-A objective (cosine 1 + in-batch negatives 1 + angle 0.02, all taus 20, angle pooling sum) in float32,
backward, AdamW (lr 2e-5, no weight decay). One warm-up step (batch 0), then the median of --steps timed steps on
batches 1..=steps, as ours.

angle-emb is not installed here (and cannot be fetched offline), so its 0.6.1 objectives are written out below
from their definition (docs/angle-objective.md). The in-batch targets are angle-emb's own (built from
`label x index` products); crates/angle-loss keeps only the pair partner as target, which changes the targets for
graded labels but not the work: both build and soft-max the full 64 x 64 similarity matrix.

Prints one JSON line on stdout (pairs_per_s, step_ms median, tokens, peak_rss_bytes, ...); notes go to stderr.
Usage: python3 scripts/bench/torch_cpu_train_step.py [--model DIR] [--data CSV] [--steps 10] [--threads 2]
Needs torch and transformers (not a CI dependency).
"""

import argparse
import csv
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

PAIRS = 32
MAX_LEN = 64
MASK64 = (1 << 64) - 1


def splitmix(seed, i):
    """xtask/src/bench.rs's `splitmix`: the shuffle must pick the same batches as ours."""
    z = (seed + ((i + 1) * 0x9E3779B97F4A7C15 & MASK64)) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def cosent(scores, labels):
    """log(1 + sum over pairs with label_i < label_j of exp(s_i - s_j)), angle-emb's masked logsumexp."""
    keep = (labels[:, None] < labels[None, :]).float()
    diff = scores[:, None] - scores[None, :] - (1 - keep) * 1e12
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff.flatten()]), dim=0)


def cosine_objective(y, pair_labels, tau=20.0):
    n = F.normalize(y, p=2, dim=1)
    return cosent((n[0::2] * n[1::2]).sum(1) * tau, pair_labels)


def angle_objective(y, pair_labels, tau=20.0):
    re_half, im_half = y.chunk(2, dim=1)
    a, b = re_half[0::2], im_half[0::2]
    c, d = re_half[1::2], im_half[1::2]
    z = (c**2 + d**2).sum(1, keepdim=True)
    re = (a * c + b * d) / z
    im = (b * c - a * d) / z
    dz = (a**2 + b**2).sum(1, keepdim=True) ** 0.5
    dw = z**0.5
    re = re / (dz / dw)
    im = im / (dz / dw)
    return cosent(torch.cat([re, im], dim=1).sum(1).abs() * tau, pair_labels)


def in_batch_negative_objective(y, row_labels, tau=20.0):
    """angle-emb 0.6.1's `in_batch_negative_loss` (negative_weights 0): targets from `label.int() x index`."""
    r = y.shape[0]
    lab = row_labels.int()
    idx = torch.arange(r, dtype=torch.int32)
    partner = idx + 1 - (idx % 2) * 2
    col = idx[None, :] * lab[None, :] + (lab[None, :] == 0).int() * -2
    row = partner[:, None] * lab[:, None] + (lab[:, None] == 0).int() * -1
    target = (col == row).float()
    n = F.normalize(y, p=2, dim=1)
    sim = (n @ n.T - torch.eye(r) * 1e12) * tau
    return (-(target * F.log_softmax(sim, dim=1)).sum(1)).mean()


def objective(pooled, pair_labels):
    row_labels = pair_labels.repeat_interleave(2)
    return (
        cosine_objective(pooled, pair_labels)
        + in_batch_negative_objective(pooled, row_labels)
        + 0.02 * angle_objective(pooled, pair_labels)
    )


def rss_bytes(key="VmHWM:"):
    """`VmHWM:` (peak resident set, as ours reads it) or `VmRSS:` (now) of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="../shared/models/all-MiniLM-L6-v2")
    ap.add_argument("--data", default="../shared/data/stsb/stsb-en-train.csv")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the model (oneDNN, AMX where present)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    rows = []
    with open(a.data, newline="") as f:
        for rec in csv.reader(f):
            rows.append((rec[0], rec[1], float(rec[2])))
    for i in range(len(rows) - 1, 0, -1):
        j = splitmix(42, i) % (i + 1)
        rows[i], rows[j] = rows[j], rows[i]
    steps = a.steps + 1
    if len(rows) < steps * PAIRS:
        sys.exit(f"{len(rows)} train pairs cannot fill {steps} batches of {PAIRS}")

    tok = AutoTokenizer.from_pretrained(a.model)
    batches = []
    for s in range(steps):
        chunk = rows[s * PAIRS : (s + 1) * PAIRS]
        texts = [t for r in chunk for t in (r[0], r[1])]
        enc = tok(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
        batches.append((enc, torch.tensor([r[2] for r in chunk], dtype=torch.float32)))

    model = AutoModel.from_pretrained(a.model, dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)

    # the floor under the steps: the CUDA build of torch alone is ~0.5 GB resident, the model ~0.2 GB more
    rss_before = rss_bytes("VmRSS:")
    times, losses, tokens, padded = [], [], 0, 0
    cpu0 = 0.0
    for step, (enc, labels) in enumerate(batches):
        if step == 1:
            cpu0 = time.process_time()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (h.float() * m).sum(1) / m.sum(1)
        loss = objective(pooled, labels)
        loss.backward()
        opt.step()
        if step > 0:
            times.append(time.perf_counter() - t0)
            tokens += int(enc["attention_mask"].sum())
            padded += enc["input_ids"].numel()
        losses.append(loss.item())
        if not torch.isfinite(loss):
            sys.exit(f"step {step}: loss {float(loss)}")
    cpu = (time.process_time() - cpu0) / a.steps
    med = statistics.median(times)
    res = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "attn_implementation": getattr(model.config, "_attn_implementation", "?"),
        "steps": a.steps,
        "step_ms": med * 1e3,
        "step_ms_min": min(times) * 1e3,
        "pairs_per_s": PAIRS / med,
        "tokens_per_step": tokens / a.steps,
        "padded_tokens_per_step": padded / a.steps,
        "tokens_per_s": tokens / a.steps / med,
        "cpu_seconds_per_step": cpu,
        "pairs_per_s_uncontended_estimate": PAIRS / (cpu / a.threads),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "peak_rss_bytes": rss_bytes(),
        "rss_before_steps_bytes": rss_before,
    }
    print(
        f"torch {torch.__version__}, {a.threads} threads: train step median {med * 1e3:.0f} ms "
        f"-> {PAIRS / med:.1f} pairs/s (steps: {', '.join(f'{t * 1e3:.0f}' for t in times)} ms)",
        file=sys.stderr,
    )
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
