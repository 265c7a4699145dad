"""Formats B and C from STS-B, for end-to-end runs of `angle train` on query/positive(/negative) data.

Pairs scored >= 4 become (query, positive); the negative of the k-th such pair is the second sentence of the k-th
pair scored <= 1 (cycled). Writes OUT_DIR/stsb-b.csv (query,positive) and OUT_DIR/stsb-c.jsonl.
    python crates/angle-train/scripts/make_bc.py ../shared/data/stsb/stsb-en-train.csv OUT_DIR
"""

import csv
import json
import os
import sys

src, out = sys.argv[1], sys.argv[2]
rows = [(r[0], r[1], float(r[2])) for r in csv.reader(open(src, encoding="utf-8"))]
high = [r for r in rows if r[2] >= 4.0]
low = [r for r in rows if r[2] <= 1.0]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "stsb-b.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["query", "positive"])
    w.writerows((h[0], h[1]) for h in high)
with open(os.path.join(out, "stsb-c.jsonl"), "w", encoding="utf-8") as f:
    for k, h in enumerate(high):
        f.write(json.dumps({"query": h[0], "positive": h[1], "negative": low[k % len(low)][1]}) + "\n")
print(f"{len(high)} query/positive pairs, {len(low)} low-score partners -> {out}")
