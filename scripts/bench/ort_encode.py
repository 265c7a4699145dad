"""ONNX Runtime baseline for `cargo xtask bench --int8`'s encode rows, measured on *this* machine.

The model folder exported with `torch.onnx.export` (last_hidden_state, dynamic batch and length, opset 17), then
`onnxruntime.quantization.quantize_dynamic` (per-channel QInt8 weights, dynamic uint8 activations: what
sentence-transformers' `export_dynamic_quantized_onnx_model` does). Same work as ours: the 2,758 sentences of
STS-B test, tokenisation included, sorted by token length into batches of 64, max length 64, mean pooling,
`--threads` intra-op threads. Prints sentences/s (median of --repeat passes after --warmup) and the STS-B
Spearman × 100 of the cosine, for f32 and int8; --json ends with one JSON line {"f32": {...}, "int8": {...}}.
Usage: python3 scripts/bench/ort_encode.py [--model DIR] [--data CSV] [--threads 2] [--repeat 3] [--json]
Needs torch, transformers, onnx and onnxruntime (not a CI dependency).
"""
import argparse
import csv
import json
import os
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import AutoModel, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="../shared/models/all-MiniLM-L6-v2")
ap.add_argument("--data", default="../shared/data/stsb/stsb-en-test.csv")
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--warmup", type=int, default=1)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--json", action="store_true")
a = ap.parse_args()

rows = []
with open(a.data, newline="") as f:
    for r in csv.reader(f):
        rows.append((r[0], r[1], float(r[2])))
texts = [t for r in rows for t in r[:2]]
tok = AutoTokenizer.from_pretrained(a.model)
work = tempfile.mkdtemp()
f32_path, int8_path = os.path.join(work, "model.onnx"), os.path.join(work, "model-int8.onnx")

model = AutoModel.from_pretrained(a.model).eval()
example = tok(["a warm-up sentence", "another"], padding=True, return_tensors="pt")
names = ["input_ids", "attention_mask", "token_type_ids"]


class Hidden(torch.nn.Module):
    """The model by keyword (the forward's positional order differs between transformers versions)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.m(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state


with torch.inference_mode():
    torch.onnx.export(
        Hidden(model),
        tuple(example[n] for n in names),
        f32_path,
        input_names=names,
        output_names=["last_hidden_state"],
        dynamic_axes={n: {0: "batch", 1: "seq"} for n in names} | {"last_hidden_state": {0: "batch", 1: "seq"}},
        opset_version=17,
        dynamo=False,
    )
quantize_dynamic(f32_path, int8_path, per_channel=True, weight_type=QuantType.QInt8)


def ranks(x):
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        r[order[i : j + 1]] = (i + j) / 2
        i = j + 1
    return r


def spearman(x, y):
    return float(np.corrcoef(ranks(np.asarray(x)), ranks(np.asarray(y)))[0, 1])


def measure(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    times, out = [], None
    for p in range(a.warmup + a.repeat):
        t0 = time.perf_counter()
        ids = tok(texts, truncation=True, max_length=64)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        emb = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            b = tok.pad({"input_ids": [ids[j] for j in idx]}, return_tensors="np")
            feed = {
                "input_ids": b["input_ids"].astype(np.int64),
                "attention_mask": b["attention_mask"].astype(np.int64),
                "token_type_ids": np.zeros_like(b["input_ids"], dtype=np.int64),
            }
            h = sess.run(None, {k: v for k, v in feed.items() if k in wanted})[0]
            m = feed["attention_mask"][..., None].astype(np.float32)
            emb[idx] = (h * m).sum(1) / m.sum(1)
        if p >= a.warmup:
            times.append(time.perf_counter() - t0)
        out = emb
    a_, b_ = out[0::2], out[1::2]
    cos = (a_ * b_).sum(1) / (np.linalg.norm(a_, axis=1) * np.linalg.norm(b_, axis=1))
    med = statistics.median(times)
    return {
        "sentences_per_s": len(texts) / med,
        "seconds": med,
        "passes": times,
        "spearman": 100 * spearman(cos, [r[2] for r in rows]),
        "model_bytes": os.path.getsize(path),
    }, out


res = {}
embs = {}
for name, path in (("f32", f32_path), ("int8", int8_path)):
    res[name], embs[name] = measure(path)
    r = res[name]
    print(
        f"onnxruntime {ort.__version__} {name}, {a.threads} threads: {r['sentences_per_s']:.1f} sentences/s "
        f"(median {r['seconds']:.2f} s), STS-B Spearman {r['spearman']:.2f}, model {r['model_bytes'] / 1e6:.1f} MB"
    )
cos = (embs["f32"] * embs["int8"]).sum(1) / (
    np.linalg.norm(embs["f32"], axis=1) * np.linalg.norm(embs["int8"], axis=1)
)
res["int8"]["cosine_to_f32_mean"] = float(cos.mean())
res["int8"]["cosine_to_f32_min"] = float(cos.min())
res["onnxruntime"] = ort.__version__
res["threads"] = a.threads
if a.json:
    print(json.dumps(res))
