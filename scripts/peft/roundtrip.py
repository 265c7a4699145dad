"""Embeddings of angle's LoRA adapter (through peft) and merged model (through transformers) against angle's.

    roundtrip.py BASE ADAPTER MERGED TEXTS ANGLE_ADAPTER_JSONL ANGLE_MERGED_JSONL MAX_LEN

Pooling `last` with the EOS token appended after truncation to MAX_LEN - 1 tokens, causal attention, float32:
angle's `--pooling last --append-eos true`. Exits 1 when a cosine falls below 0.99999 or the largest relative
difference exceeds 1e-4, for peft and for transformers on the merged folder; angle's merged model against its
adapter only within cosine 0.999 (the merged weights are rounded to the checkpoint's bf16).
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base, adapter, merged, texts, ours_adapter, ours_merged, max_len = sys.argv[1:8]
max_len = int(max_len)
torch.manual_seed(0)
texts = [line.rstrip("\n") for line in open(texts)]
tok = AutoTokenizer.from_pretrained(base)


def embed(model):
    model.eval()
    out = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, truncation=True, max_length=max_len - 1)["input_ids"] + [tok.eos_token_id]
            h = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]
            out.append(h[0, -1].float())
    return torch.stack(out)


def load(path):
    return torch.tensor([json.loads(l)["embedding"] for l in open(path)], dtype=torch.float32)


def compare(name, theirs, ours, rel_bound, cos_bound):
    cos = torch.nn.functional.cosine_similarity(theirs.double(), ours.double(), dim=1)
    rel = ((theirs - ours).norm(dim=1) / theirs.norm(dim=1)).max().item()
    ok = cos.min().item() > cos_bound and rel < rel_bound
    print(f"{name}: {len(texts)} texts, min cosine {cos.min().item():.8f}, max relative difference {rel:.2e} "
          f"(bounds {cos_bound:g}, {rel_bound:g}) {'ok' if ok else 'FAILED'}")
    return ok


def load_f32(path):
    """The checkpoint as a user loads it: `from_pretrained` in f32, unpatched (the RoPE inverse frequencies stay
    f32, as transformers computes them, and as angle does)."""
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


m = load_f32(base)
peft_model = PeftModel.from_pretrained(m, adapter)
ok = compare("peft adapter on the base (transformers + peft)", embed(peft_model), load(ours_adapter), 1e-4, 0.99999)
merged_model = load_f32(merged)
ok &= compare("merged model (transformers)", embed(merged_model), load(ours_merged), 1e-4, 0.99999)
# angle's merged model is the adapter's model up to the merged weights' rounding to the checkpoint dtype
ok &= compare("merged vs adapter (angle)", load(ours_adapter), load(ours_merged), 5e-2, 0.999)
sys.exit(0 if ok else 1)
