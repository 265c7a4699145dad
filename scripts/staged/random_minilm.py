"""Writes a randomly initialised model of all-MiniLM-L6-v2's shape (transformers' own initialisation, std 0.02,
`torch.manual_seed(SEED)`) with its tokenizer, for `cargo xtask staged --model DIR` (docs/staged.md):

    /work/venv-st/bin/python scripts/staged/random_minilm.py [OUT] [SEED]     # default runs/random-minilm, 0
"""
import os
import shutil
import sys

import torch
from transformers import BertConfig, BertModel

SRC = "../shared/models/all-MiniLM-L6-v2"
out = sys.argv[1] if len(sys.argv) > 1 else "runs/random-minilm"
torch.manual_seed(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
BertModel(BertConfig.from_pretrained(SRC)).save_pretrained(out, safe_serialization=True)
for f in ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]:
    if os.path.exists(os.path.join(SRC, f)):
        shutil.copy(os.path.join(SRC, f), out)
print(f"wrote {out}")
