"""Builds data/stsb-sentences/sentences.txt from data/stsb/: an unsupervised corpus (format U, one sentence per
line) for `angle train --unsupervised` and `cargo xtask staged`.

Every distinct sentence of STS-B train (English), in first-seen order, leaving out any sentence that also occurs in
STS-B dev or test (so the unsupervised stage never sees an evaluation text). Tabs and runs of whitespace inside a
sentence become one space (a line is one text). Deterministic. Usage: python3 scripts/data/stsb_sentences.py
"""

import csv
import os

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SRC = os.path.join(ROOT, "data", "stsb")
OUT = os.path.join(ROOT, "data", "stsb-sentences")


def sentences(split):
    with open(os.path.join(SRC, f"stsb-en-{split}.csv"), newline="", encoding="utf-8") as f:
        for a, b, _ in csv.reader(f):
            yield " ".join(a.split())
            yield " ".join(b.split())


def main():
    held_out = set(sentences("dev")) | set(sentences("test"))
    seen, out, overlap = set(), [], 0
    for s in sentences("train"):
        if not s or s in seen:
            continue
        seen.add(s)
        if s in held_out:
            overlap += 1
            continue
        out.append(s)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "sentences.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    print(f"{len(out)} sentences ({overlap} distinct train sentences left out: also in dev or test)")


if __name__ == "__main__":
    main()
