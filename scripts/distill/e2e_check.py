"""End-to-end check of `angle train --teacher` against angle-emb's own code: the first step's objective (the AnglE
loss plus the distillation term) of a student on one batch, as angle-emb's `AngleTrainer.compute_loss` computes it.

angle trains one step (dropout off, f32, one batch of every pair in the file, so the batch order cannot matter) and
logs the step's loss and its distillation term in metrics.jsonl; this script computes the same in float64 with
transformers and angle-emb 0.6.1's `AngleLoss`, `get_pooling` and `AngleTrainer.compute_distillation_loss`
(mse_weight 0, kl_temperature 1, as compute_loss calls it). Needs torch, transformers and angle-emb.

Usage: python3 scripts/distill/e2e_check.py --angle target/release/angle --student DIR --teacher DIR
       --data PAIRS.csv [--student-pooling mean] [--teacher-pooling cls] [--max-length 64] [--tolerance 1e-5]
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

import torch
from angle_emb.angle import AngleLoss, AngleTrainer
from angle_emb.utils import get_pooling
from transformers import AutoModel, AutoTokenizer


def pooled(model_dir, texts, pooling, max_length):
    """get_pooling of the model's float64 last hidden state (`all`: the hidden state itself, padding included)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float64).eval()
    inputs = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    return get_pooling(hidden, inputs, pooling, tok.padding_side)


def equal_length_rows(rows, tokenizer_dir, count, max_length):
    """`count` rows whose two texts have the same number of tokens, all of them (no padding anywhere: angle-emb's
    `all` then sums over exactly the real tokens, as angle does)."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    n = lambda t: len(tok(t, truncation=True, max_length=max_length)["input_ids"])
    by_len = {}
    for r in rows:
        if n(r[0]) == n(r[1]):
            by_len.setdefault(n(r[0]), []).append(r)
    best = max(by_len.values(), key=len)
    if len(best) < count:
        sys.exit(f"only {len(best)} rows of one length")
    return best[:count]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--angle", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--data", required=True, help="STS-B CSV rows: sentence1,sentence2,score (no header)")
    ap.add_argument("--student-pooling", default="mean")
    ap.add_argument("--teacher-pooling", default="cls")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--cosine-w", type=float, default=1.0)
    ap.add_argument("--ibn-w", type=float, default=0.0)
    ap.add_argument("--angle-w", type=float, default=1.0)
    ap.add_argument("--tolerance", type=float, default=1e-5)
    ap.add_argument("--student-layers", type=int, default=None,
                    help="the student is the first N layers of --teacher (recorded in the fixture)")
    ap.add_argument("--equal-length", type=int, default=None,
                    help="pick this many rows of --data whose texts all have one token length (for --teacher-pooling "
                         "all, where angle-emb sums over padding too); written to a temporary file")
    ap.add_argument("--write-fixture", default=None,
                    help="also write the inputs and angle-emb's values as JSON (for crates/angle-train/tests)")
    a = ap.parse_args()
    rows = [(r[0], r[1], float(r[2])) for r in csv.reader(open(a.data))]
    with tempfile.TemporaryDirectory() as tmp:
        if a.equal_length:
            rows = equal_length_rows(rows, a.teacher, a.equal_length, a.max_length)
            a.data = os.path.join(tmp, "rows.csv")
            csv.writer(open(a.data, "w", newline="")).writerows(rows)
        out = os.path.join(tmp, "run")
        subprocess.run(
            [a.angle, "train", "--model", a.student, "--train", a.data, "--output", out, "--max-steps", "1",
             "--batch-size", str(len(rows)), "--dropout", "false", "--precision", "f32", "--log-steps", "1",
             "--pooling", a.student_pooling, "--max-length", str(a.max_length), "--teacher", a.teacher,
             "--teacher-pooling", a.teacher_pooling, "--cosine-w", str(a.cosine_w), "--ibn-w", str(a.ibn_w),
             "--angle-w", str(a.angle_w)],
            check=True, capture_output=True, text=True,
        )
        recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    ours = next(r for r in recs if r["kind"] == "train")

    texts = [t for r in rows for t in (r[0], r[1])]  # zigzag, as angle-emb's collator
    labels = torch.tensor([[r[2]] for r in rows for _ in (0, 1)], dtype=torch.float64)
    student = pooled(a.student, texts, a.student_pooling, a.max_length)
    teacher = pooled(a.teacher, texts, a.teacher_pooling, a.max_length)
    # angle-emb's compute_loss aligns the student's whole last hidden state when the teacher's pooling is `all`.
    aligned = pooled(a.student, texts, "all", a.max_length) if a.teacher_pooling == "all" else student
    # The objective's weights as given (default: the recipe's cosine 1, in-batch negatives 0, angle 1); taus 20.
    angle = AngleLoss(cosine_w=a.cosine_w, ibn_w=a.ibn_w, angle_w=a.angle_w, dataset_format="A")(labels, student)
    distill = AngleTrainer.compute_distillation_loss(None, aligned, teacher, mse_weight=0.0, kl_temperature=1.0)
    theirs = {"loss": float(angle + distill), "distill": float(distill)}

    worst = 0.0
    print(f"{len(rows)} pairs; student {a.student} ({a.student_pooling}), teacher {a.teacher} ({a.teacher_pooling})")
    print("| term | angle | angle-emb (float64) | relative difference |")
    print("| --- | --- | --- | --- |")
    for k in ("loss", "distill"):
        d = abs(ours[k] - theirs[k]) / max(abs(theirs[k]), 1e-12)
        worst = max(worst, d)
        print(f"| {k} | {ours[k]:.9g} | {theirs[k]:.9g} | {d:.1e} |")
    if a.write_fixture:
        fixture = {
            "what": "angle-emb 0.6.1 AngleLoss(objective's weights, taus 20, format A) + "
                    "AngleTrainer.compute_distillation_loss(mse_weight=0, kl_temperature=1) on transformers' "
                    "float64 forward of one batch (all rows, zigzag), dropout off",
            "teacher": os.path.basename(os.path.normpath(a.teacher)),
            "student_layers": a.student_layers,
            "student_pooling": a.student_pooling,
            "teacher_pooling": a.teacher_pooling,
            "max_length": a.max_length,
            "objective": {"cosine_w": a.cosine_w, "ibn_w": a.ibn_w, "angle_w": a.angle_w},
            "rows": [list(r) for r in rows],
            "loss": theirs["loss"],
            "distill": theirs["distill"],
        }
        with open(a.write_fixture, "w") as f:
            json.dump(fixture, f, indent=1)
    ok = worst <= a.tolerance
    print(f"largest relative difference {worst:.1e} ({'within' if ok else 'ABOVE'} {a.tolerance:g})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
