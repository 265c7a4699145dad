"""PyTorch baseline for `cargo xtask bench`'s encode row, measured on *this* machine.

Same work as ours: the 2,758 sentences of STS-B test, batch 64 in file order, pad to the longest, max length 64,
tokenisation included, mean pooling, float32, 2 threads. Prints sentences/s (median of --repeat passes).
Usage: python3 scripts/bench/torch_cpu_encode.py [--model DIR] [--data CSV] [--repeat 3]
Needs torch and transformers (not a CI dependency).
"""
import argparse, csv, statistics, time

import torch
from transformers import AutoModel, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="../shared/models/all-MiniLM-L6-v2")
ap.add_argument("--data", default="../shared/data/stsb/stsb-en-test.csv")
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
texts = []
with open(a.data, newline="") as f:
    for row in csv.reader(f):
        texts += [row[0], row[1]]
tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModel.from_pretrained(a.model).eval()
times = []
for _ in range(a.repeat):
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            b = tok(texts[i : i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt")
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            _ = (h * m).sum(1) / m.sum(1)
    times.append(time.perf_counter() - t0)
med = statistics.median(times)
print(f"torch {torch.__version__}, {a.threads} threads: {len(texts)} sentences, median {med:.2f} s "
      f"-> {len(texts) / med:.1f} sentences/s (passes: {', '.join(f'{t:.2f}' for t in times)})")
