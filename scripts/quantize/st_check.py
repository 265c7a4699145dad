"""angle's output quantization against sentence-transformers (run from the repository root):

    /work/venv-st/bin/python scripts/quantize/st_check.py [ANGLE_BIN] [MODEL] [STS_CSV]

1. The quantizer alone: `angle encode --output f32.npy` gives float32 embeddings; sentence-transformers'
   `quantize_embeddings` of exactly those must equal `angle encode --quantize KIND` byte for byte (int8 and uint8
   calibrated on the embeddings themselves, binary, ubinary), with and without --normalize.
2. What the quantization costs: `angle eval --quantize KIND --json` against sentence-transformers'
   `EmbeddingSimilarityEvaluator(precision=KIND)` on the same STS file (each with its own float32 embeddings:
   rounding differences between the two encoders may move a value across a quantization step).
Prints one table; exits non-zero when step 1 finds a difference.
"""

import csv
import json
import subprocess
import sys
import tempfile

import numpy as np
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
from sentence_transformers.util.quantization import quantize_embeddings

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/angle"
MODEL = sys.argv[2] if len(sys.argv) > 2 else "../shared/models/all-MiniLM-L6-v2"
STS = sys.argv[3] if len(sys.argv) > 3 else "../shared/data/stsb/stsb-en-test.csv"
KINDS = ["int8", "uint8", "binary", "ubinary"]

with open(STS, newline="", encoding="utf-8") as f:
    rows = [(a, b, float(s)) for a, b, s in csv.reader(f)]
texts = sorted({t for a, b, _ in rows for t in (a, b)})
tmp = tempfile.mkdtemp()
inp = f"{tmp}/texts.txt"
with open(inp, "w", encoding="utf-8") as f:
    f.write("\n".join(texts) + "\n")


def angle(*args):
    subprocess.run([BIN, *args, "--precision", "f32"], check=True, capture_output=True)


bad = 0
print(f"{len(texts)} distinct texts of {STS}")
print("| kind | normalize | bytes equal to quantize_embeddings(angle's f32) |")
print("| --- | --- | --- |")
for normalize in ("false", "true"):
    angle("encode", "--model", MODEL, "--input", inp, "--output", f"{tmp}/f32.npy", "--normalize", normalize)
    emb = np.load(f"{tmp}/f32.npy")
    for kind in KINDS:
        out = f"{tmp}/{kind}.npy"
        angle("encode", "--model", MODEL, "--input", inp, "--output", out, "--normalize", normalize, "--quantize", kind)
        ours, ref = np.load(out), quantize_embeddings(emb, precision=kind)
        same = ours.dtype == ref.dtype and ours.shape == ref.shape and np.array_equal(ours, ref)
        bad += not same
        print(f"| {kind} | {normalize} | {'yes' if same else 'NO'} ({ours.dtype} {ours.shape}) |")

model = SentenceTransformer(MODEL, device="cpu")
s1, s2, gold = [r[0] for r in rows], [r[1] for r in rows], [r[2] / 5 for r in rows]
print("\n| kind | angle eval cosine Spearman | sentence-transformers | difference |")
print("| --- | --- | --- | --- |")
for kind in ["float32", *KINDS]:
    args = ["eval", "--model", MODEL, "--data", STS, "--json"] + ([] if kind == "float32" else ["--quantize", kind])
    out = subprocess.run([BIN, *args, "--precision", "f32"], check=True, capture_output=True, text=True).stdout
    v = json.loads(out)
    ours = v["spearman"] if kind == "float32" else v["files"][0]["quantized"]["cosine"]["spearman"]
    ev = EmbeddingSimilarityEvaluator(s1, s2, gold, precision=None if kind == "float32" else kind, name="sts")
    theirs = 100 * ev(model)[f"sts_spearman_cosine"]
    print(f"| {kind} | {ours:.4f} | {theirs:.4f} | {ours - theirs:+.4f} |")
sys.exit(1 if bad else 0)
