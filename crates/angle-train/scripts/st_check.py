"""Load an `angle train` checkpoint with sentence-transformers and compare its embeddings with `angle encode`'s.

Not part of CI (it needs PyTorch and sentence-transformers):
    pip install sentence-transformers
    python crates/angle-train/scripts/st_check.py CHECKPOINT_DIR [ANGLE_BINARY] [TEXTS_FILE]
"""

import json
import subprocess
import sys
import tempfile

import numpy as np
from sentence_transformers import SentenceTransformer

ckpt = sys.argv[1]
angle = sys.argv[2] if len(sys.argv) > 2 else "target/release/angle"
if len(sys.argv) > 3:
    texts = [t for t in open(sys.argv[3], encoding="utf-8").read().splitlines() if t.strip()]
else:
    texts = [
        "A man is playing a guitar.",
        "Someone plays an instrument on a stage in front of a large crowd of people.",
        "A cat sleeps on the sofa.",
        "Stocks fell sharply on Monday after the central bank raised interest rates again.",
    ]

model = SentenceTransformer(ckpt, device="cpu")
print("sentence-transformers modules:", [type(m).__name__ for m in model], "max_seq_length", model.max_seq_length)
ours_st = model.encode(texts, convert_to_numpy=True, normalize_embeddings=False, batch_size=64).astype(np.float64)

with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write("\n".join(texts))
    path = f.name
out = subprocess.run([angle, "encode", "--model", ckpt, "--input", path], check=True, capture_output=True, text=True)
ours = np.array([json.loads(line)["embedding"] for line in out.stdout.splitlines()], dtype=np.float64)

cos = (ours * ours_st).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ours_st, axis=1))
rel = np.linalg.norm(ours - ours_st, axis=1) / np.linalg.norm(ours_st, axis=1)
print(f"{len(texts)} texts: min cosine {cos.min():.8f}, max relative L2 difference {rel.max():.2e}, "
      f"max |diff| {np.abs(ours - ours_st).max():.2e}")
sys.exit(0 if cos.min() > 0.9999 else 1)
