"""Embeddings of angle's LoRA adapter (through peft) and merged model (through transformers, and through
sentence-transformers as the merged folder's own files describe it) against angle's.

    roundtrip.py BASE ADAPTER MERGED TEXTS ANGLE_ADAPTER_JSONL ANGLE_MERGED_JSONL MAX_LEN

Pooling `last` with the EOS token appended after truncation to MAX_LEN - 1 tokens, causal attention, float32:
angle's `--pooling last --append-eos true`. Exits 1 when a cosine falls below 0.99999 or the largest relative
difference exceeds 1e-4, for peft, for transformers on the merged folder and for `SentenceTransformer(merged)`;
angle's merged model against its adapter only within cosine 0.999 (the merged weights are rounded to the
checkpoint's bf16). sentence-transformers has no "append EOS" setting, so its texts get the EOS token written
at their end (the same ids for texts shorter than MAX_LEN - 1 tokens, which the script checks). When the
merged folder's pooling has no sentence-transformers equivalent, the folder must have no `modules.json` and
say why in `angle_config.json`.
"""
import json
import os
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
angle_cfg = json.load(open(os.path.join(merged, "angle_config.json")))
if os.path.isfile(os.path.join(merged, "modules.json")):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(merged, device="cpu", model_kwargs={"dtype": torch.float32})
    pool = json.load(open(os.path.join(merged, "1_Pooling", "config.json")))
    modes = sorted(k for k, v in pool.items() if k.startswith("pooling_mode_") and v is True)
    print(f"sentence-transformers files of the merged folder: {modes} for angle's pooling {angle_cfg['pooling']!r}")
    for t in texts:
        assert len(tok(t)["input_ids"]) < max_len - 1, f"text too long for the EOS-as-text check: {t!r}"
    eos_texts = [t + tok.eos_token for t in texts]
    with torch.no_grad():
        theirs = st.encode(eos_texts, batch_size=1, convert_to_tensor=True).float()
    ok &= compare("merged model (SentenceTransformer)", theirs, load(ours_merged), 1e-4, 0.99999)
else:
    note = angle_cfg.get("sentence_transformers", "")
    has_note = "no sentence-transformers equivalent" in note
    print(f"merged folder: no modules.json (pooling {angle_cfg['pooling']!r}); angle_config.json note: {note!r} "
          f"{'ok' if has_note else 'FAILED'}")
    ok &= has_note
# angle's merged model is the adapter's model up to the merged weights' rounding to the checkpoint dtype
ok &= compare("merged vs adapter (angle)", load(ours_adapter), load(ours_merged), 5e-2, 0.999)
sys.exit(0 if ok else 1)
