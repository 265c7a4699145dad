"""sentence-transformers (and peft) read what angle writes for the block families.

For every model folder given, `angle encode` and sentence-transformers embed the same sentences; for every
peft adapter folder (`--adapter DIR`), transformers + peft load base and adapter, pool as the folder's
angle_config.json says, and compare the same way. Prints the mean and minimum cosine per folder and fails
below --min-cosine (default 0.99999).

  python scripts/families/st_check.py --angle target/release/angle DIR... [--adapter DIR]...
"""

import argparse
import json
import subprocess
import sys
import tempfile

import numpy as np

SENTENCES = [
    "A man is playing a guitar.",
    "Two dogs run on the beach.",
    "A woman slices an onion into thin rings.",
    "The stock market fell sharply today after the announcement.",
    "A child rides a red bicycle down a quiet street.",
    "Nobody knows what the weather will be like tomorrow.",
]


def angle_encode(angle, folder):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(SENTENCES) + "\n")
        path = f.name
    out = subprocess.run(
        [angle, "encode", "--model", folder, "--input", path, "--precision", "f32"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return np.array([json.loads(line)["embedding"] for line in out.splitlines()], dtype=np.float64)


def cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def st_encode(folder):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(folder, device="cpu")
    return model.encode(SENTENCES, convert_to_numpy=True, batch_size=len(SENTENCES)).astype(np.float64)


def peft_encode(adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    cfg = json.load(open(f"{adapter}/adapter_config.json"))
    angle_cfg = json.load(open(f"{adapter}/angle_config.json"))
    pooling = angle_cfg["pooling"]
    base = AutoModel.from_pretrained(cfg["base_model_name_or_path"], torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    tok = AutoTokenizer.from_pretrained(adapter)
    rows = []
    with torch.no_grad():
        for s in SENTENCES:
            enc = tok(s, return_tensors="pt", truncation=True, max_length=angle_cfg["max_length"])
            h = model(**enc).last_hidden_state[0]
            rows.append((h.mean(0) if pooling == "mean" else h[0]).numpy())
    return np.array(rows, dtype=np.float64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--angle", required=True)
    ap.add_argument("--adapter", action="append", default=[])
    ap.add_argument("--min-cosine", type=float, default=0.99999)
    ap.add_argument("folders", nargs="*")
    a = ap.parse_args()
    worst = 1.0
    for kind, folder, other in [("sentence-transformers", f, st_encode) for f in a.folders] + [
        ("transformers + peft", f, peft_encode) for f in a.adapter
    ]:
        c = cosines(angle_encode(a.angle, folder), other(folder))
        worst = min(worst, c.min())
        print(f"{folder}: {kind} vs angle encode: mean cosine {c.mean():.7f}, min {c.min():.7f}")
    if worst < a.min_cosine:
        sys.exit(f"minimum cosine {worst:.7f} < {a.min_cosine}")


if __name__ == "__main__":
    main()
