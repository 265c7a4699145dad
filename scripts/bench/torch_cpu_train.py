"""PyTorch's run of the default AnglE recipe for `cargo xtask train --torch PYTHON`, on *this* machine.

The recipe `angle train` runs (xtask/src/train.rs passes the same values): a BERT-family model from `--model`
(transformers `AutoModel`, train mode: the config's dropout), mean (or cls) pooling, the AnglE objective
cosine_w * CoSENT + ibn_w * in-batch negatives + angle_w * angle (taus 20, angle pooling sum) in float32,
AdamW (torch's, betas 0.9/0.999, eps 1e-8; weight decay off biases and LayerNorm weights, as the Hugging Face
Trainer that angle-emb uses), learning rate linear from `--lr` to 0 after `--warmup-steps`, batches of
`--batch-size` pairs (the last, shorter batch of an epoch kept), texts padded to the longest of their batch and
truncated to `--max-length`, `--epochs` passes or `--max-steps` steps, the dev set scored at each epoch's end
(as `angle train --valid` does; not counted as training time). Then STS-B test and dev are scored with the
trained weights and with the base model (cosine Spearman x 100, f32, eval mode).

angle-emb is not installed here, so its 0.6.1 objectives are written out in scripts/bench/torch_cpu_train_step.py
(from their definition, docs/angle-objective.md) and shared with the bench. The in-batch targets follow
crates/angle-loss (a row's positive is its pair partner when the pair's label is at least 1), which differs from
angle-emb's only for graded labels; the default recipe has ibn_w 0. What cannot be the same: the data order
(torch.randperm from --seed per epoch, not angle's SplitMix64 shuffle) and the dropout masks, so the scores
differ by about a seed's spread (0.7 on test between seeds 42 and 7), not by an implementation difference.

--bf16: the model's forward under bf16 autocast (f32 master weights and AdamW), as `angle train --precision bf16`.
Prints one JSON line last (train_seconds, wall_seconds, test/dev Spearman, zero-shot, peak RSS, ...).
Needs torch and transformers (not a CI dependency).
"""

import argparse
import csv
import json
import os
import sys
import time

T_START = time.perf_counter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_cpu_train_step import angle_objective, cosent, cosine_objective, rss_bytes  # noqa: E402


def read_pairs(path):
    with open(path, newline="") as f:
        return [(r[0], r[1], float(r[2])) for r in csv.reader(f)]


def in_batch_objective(y, pair_labels, tau):
    """crates/angle-loss's in-batch negatives: each row's target is its pair partner when int(label) > 0."""
    r = y.shape[0]
    idx = torch.arange(r)
    partner = idx + 1 - (idx % 2) * 2
    positive = (pair_labels.int() != 0).repeat_interleave(2)
    n = F.normalize(y, p=2, dim=1)
    sim = (n @ n.T).masked_fill(torch.eye(r, dtype=torch.bool), float("-inf")) * tau
    logp = F.log_softmax(sim, dim=1)[idx, partner]
    return -(logp * positive.float()).sum() / r


def angle_pooled(y, pair_labels, tau, pooling):
    if pooling == "sum":
        return angle_objective(y, pair_labels, tau)
    # angle-emb's pooling_strategy "mean": the mean of the concatenated (re, im) parts instead of their sum
    re_half, im_half = y.chunk(2, dim=1)
    a, b, c, d = re_half[0::2], im_half[0::2], re_half[1::2], im_half[1::2]
    z = (c**2 + d**2).sum(1, keepdim=True)
    re, im = (a * c + b * d) / z, (b * c - a * d) / z
    scale = (a**2 + b**2).sum(1, keepdim=True) ** 0.5 / z**0.5
    return cosent(torch.cat([re / scale, im / scale], dim=1).mean(1).abs() * tau, pair_labels)


def pool(h, mask, how):
    if how == "cls":
        return h[:, 0]
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


def ranks(xs):
    """1-based ranks, ties sharing their mean rank (as scipy.stats.rankdata, which Spearman uses)."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = torch.tensor(ranks(a), dtype=torch.float64), torch.tensor(ranks(b), dtype=torch.float64)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def score(model, tok, pairs, a):
    """Cosine Spearman x 100 of the pairs, f32, eval mode, batches of 64 in file order."""
    was_training = model.training
    model.eval()
    texts = [t for p in pairs for t in (p[0], p[1])]
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            enc = tok(texts[i : i + 64], padding=True, truncation=True, max_length=a.max_length, return_tensors="pt")
            out.append(pool(model(**enc).last_hidden_state, enc["attention_mask"], a.pooling).float())
    e = F.normalize(torch.cat(out), dim=1)
    cos = (e[0::2] * e[1::2]).sum(1).tolist()
    model.train(was_training)
    return 100 * spearman(cos, [p[2] for p in pairs])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--dev", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--max-grad-norm", type=float, default=0.0)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--cosine-w", type=float, default=1.0)
    ap.add_argument("--ibn-w", type=float, default=0.0)
    ap.add_argument("--angle-w", type=float, default=1.0)
    ap.add_argument("--cosine-tau", type=float, default=20.0)
    ap.add_argument("--ibn-tau", type=float, default=20.0)
    ap.add_argument("--angle-tau", type=float, default=20.0)
    ap.add_argument("--angle-pooling", choices=["sum", "mean"], default="sum")
    ap.add_argument("--pooling", choices=["mean", "cls"], default="mean")
    ap.add_argument("--no-dropout", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the model's forward")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    train = read_pairs(a.train)
    dev, test = read_pairs(a.dev), read_pairs(a.test)
    tok = AutoTokenizer.from_pretrained(a.model)
    extra = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0} if a.no_dropout else {}
    model = AutoModel.from_pretrained(a.model, dtype=torch.float32, **extra).train()
    # tokenised once before the steps, as `angle train` loads its data
    ids = tok([t for p in train for t in (p[0], p[1])], truncation=True, max_length=a.max_length)["input_ids"]
    per_epoch = (len(train) + a.batch_size - 1) // a.batch_size
    total = a.max_steps if a.max_steps is not None else per_epoch * a.epochs

    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr,
        betas=(0.9, 0.999),
        eps=1e-8,
    )

    def lr_factor(done):
        if done < a.warmup_steps:
            return done / a.warmup_steps
        left = max(total - done, 0)
        return left / max(total - a.warmup_steps, 1) if total > a.warmup_steps else 0.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(a.seed)
    step, pairs, train_s, eval_s, cpu_s, losses, dev_scores = 0, 0, 0.0, 0.0, 0.0, [], []
    epoch = 0
    while step < total:
        order = torch.randperm(len(train), generator=gen).tolist()
        for b in range(per_epoch):
            if step == total:
                break
            t0, c0 = time.perf_counter(), time.process_time()
            chunk = order[b * a.batch_size : (b + 1) * a.batch_size]
            enc = tok.pad({"input_ids": [ids[2 * i + k] for i in chunk for k in (0, 1)]}, return_tensors="pt")
            labels = torch.tensor([train[i][2] for i in chunk], dtype=torch.float32)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                h = model(**enc).last_hidden_state
            y = pool(h.float(), enc["attention_mask"], a.pooling)
            loss = y.new_zeros(())
            if a.cosine_w:
                loss = loss + a.cosine_w * cosine_objective(y, labels, a.cosine_tau)
            if a.ibn_w:
                loss = loss + a.ibn_w * in_batch_objective(y, labels, a.ibn_tau)
            if a.angle_w:
                loss = loss + a.angle_w * angle_pooled(y, labels, a.angle_tau, a.angle_pooling)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if a.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), a.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            pairs += len(chunk)
            train_s += time.perf_counter() - t0
            cpu_s += time.process_time() - c0
            losses.append(loss.item())
            if not torch.isfinite(loss):
                sys.exit(f"step {step}: loss {float(loss)}")
        epoch += 1
        t0 = time.perf_counter()
        dev_scores.append(score(model, tok, dev, a))
        eval_s += time.perf_counter() - t0
    wall = time.perf_counter() - T_START
    ft_test, ft_dev = score(model, tok, test, a), score(model, tok, dev, a)
    base = AutoModel.from_pretrained(a.model, dtype=torch.float32)
    zs_test, zs_dev = score(base, tok, test, a), score(base, tok, dev, a)
    res = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "bf16": a.bf16,
        "steps": step,
        "epochs": epoch,
        "train_seconds": train_s,
        "train_cpu_seconds": cpu_s,
        "eval_seconds": eval_s,
        "wall_seconds": wall,
        "pairs_per_s": pairs / train_s,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "dev_each_epoch": dev_scores,
        "test": ft_test,
        "dev": ft_dev,
        "zero_shot_test": zs_test,
        "zero_shot_dev": zs_dev,
        "peak_rss_bytes": rss_bytes(),
    }
    print(
        f"torch {torch.__version__}, {a.threads} threads: {step} steps in {train_s:.1f} s of training "
        f"({wall:.1f} s wall), STS-B test {ft_test:.2f} / dev {ft_dev:.2f}",
        file=sys.stderr,
    )
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
