"""PyTorch baseline for `cargo xtask bench`'s encode row, measured on *this* machine.

Same work as ours: the 2,758 sentences of STS-B test, batch 64, pad to the longest, max length 64, tokenisation
included, mean pooling, float32, 2 threads. Prints sentences/s (median of --repeat passes after --warmup passes).
Batches are in file order, as `../shared/reference/torch-cpu.md` measured them; --sort tokenises all sentences
first and batches them sorted by token length, as ours does (less padding).
--json adds one JSON line at the end (sentences_per_s, seconds, tokens, peak_rss_bytes, ...).
Usage: python3 scripts/bench/torch_cpu_encode.py [--model DIR] [--data CSV] [--repeat 3] [--warmup 0] [--sort] [--json]
Needs torch and transformers (not a CI dependency).
"""
import argparse, csv, json, statistics, time

import torch
from transformers import AutoModel, AutoTokenizer


def rss_bytes(key="VmHWM:"):
    """`VmHWM:` (peak resident set, as ours reads it) or `VmRSS:` (now) of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return None


ap = argparse.ArgumentParser()
ap.add_argument("--model", default="../shared/models/all-MiniLM-L6-v2")
ap.add_argument("--data", default="../shared/data/stsb/stsb-en-test.csv")
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--warmup", type=int, default=0)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--sort", action="store_true", help="batches of similar token lengths, as ours")
ap.add_argument("--json", action="store_true", help="end with one JSON line")
ap.add_argument("--bf16", action="store_true", help="bf16 autocast (oneDNN, AMX where the CPU has it)")
a = ap.parse_args()
torch.set_num_threads(a.threads)
texts = []
with open(a.data, newline="") as f:
    for row in csv.reader(f):
        texts += [row[0], row[1]]
tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModel.from_pretrained(a.model).eval()
rss_before = rss_bytes("VmRSS:")


def batches():
    if not a.sort:
        for i in range(0, len(texts), 64):
            yield tok(texts[i : i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt")
        return
    enc = tok(texts, truncation=True, max_length=64)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
    for i in range(0, len(order), 64):
        yield tok.pad({"input_ids": [enc[j] for j in order[i : i + 64]]}, return_tensors="pt")


times, tokens, padded, cpu0 = [], 0, 0, 0.0
for p in range(a.warmup + a.repeat):
    if p == a.warmup:
        cpu0 = time.process_time()
    t0 = time.perf_counter()
    tokens = padded = 0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
        for b in batches():
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            _ = (h.float() * m).sum(1) / m.sum(1)
            tokens += int(b["attention_mask"].sum())
            padded += b["input_ids"].numel()
    if p >= a.warmup:
        times.append(time.perf_counter() - t0)
cpu = (time.process_time() - cpu0) / a.repeat
med = statistics.median(times)
print(f"torch {torch.__version__}, {a.threads} threads: {len(texts)} sentences, median {med:.2f} s "
      f"-> {len(texts) / med:.1f} sentences/s (passes: {', '.join(f'{t:.2f}' for t in times)})")
if a.json:
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "sorted": a.sort,
        "sentences": len(texts),
        "tokens": tokens,
        "padded_tokens": padded,
        "seconds": med,
        "seconds_min": min(times),
        "sentences_per_s": len(texts) / med,
        "cpu_seconds": cpu,
        "sentences_per_s_uncontended_estimate": len(texts) / (cpu / a.threads),
        "peak_rss_bytes": rss_bytes(),
        "rss_before_passes_bytes": rss_before,
    }), flush=True)
