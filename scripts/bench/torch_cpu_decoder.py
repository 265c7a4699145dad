"""PyTorch + peft baseline for `cargo xtask bench-decoder`, on the model folder angle wrote (same weights).

    torch_cpu_decoder.py lora|full|encode MODEL_DIR [--pairs 32] [--len 64] [--steps 2] [--threads 2] [--bf16]

The same work as xtask/src/bench_decoder.rs: 2 x pairs texts of `len` random token ids each (the same ids: the
same splitmix), no padding; float32 arithmetic; last-token pooling of the final-norm hidden states, computed by
the decoder stack itself (the LM head's logits, which `AutoModelForCausalLM`'s forward would add, are not
computed: neither side needs them). lora: peft LoRA r 32, alpha 32, dropout 0.1 on all linear layers, train
mode; full: every parameter trainable; both with the format-A objective (cosine 1 + in-batch 1 + angle 0.02, taus
20) and AdamW (lr 1e-4, no weight decay). encode: eval mode, no grad. One warm-up step, then the median of
--steps.

--bf16, the counterpart of `angle --precision bf16` (oneDNN's bf16 products; AMX or AVX512-BF16 where the CPU has
them), each row holding what ours holds:
- lora and encode: the model loaded with `dtype=torch.bfloat16`, as angle-emb loads an LLM for LoRA (its
  `torch_dtype`), so the frozen base is bf16 once instead of recast from f32 every step; LoRA's A and B in f32
  (peft's adapter upcast, made explicit below); the forward under bf16 autocast. Ours: the base packed in bf16
  once, the adapter and its AdamW moments f32.
- full: f32 master weights and AdamW, the forward under bf16 autocast, as ours (f32 masters, bf16 copies).
Prints one JSON line (tokens_per_s, ...).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_cpu_train_step import objective, rss_bytes, splitmix  # noqa: E402


def cpu_seconds():
    t = os.times()
    return t.user + t.system


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["lora", "full", "encode"])
    ap.add_argument("model")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the model's forward")
    ap.add_argument("--checkpointing", action="store_true", help="gradient_checkpointing_enable() in training")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    base_bf16 = a.bf16 and a.kind in ("lora", "encode")
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16 if base_bf16 else torch.float32)
    if a.kind == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=32, lora_alpha=32, lora_dropout=0.1, target_modules="all-linear")
        )
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        stack = model.get_base_model().model
    else:
        stack = model.model
    if a.checkpointing and a.kind != "encode":
        # transformers' own recompute; non-reentrant, so a frozen embedding needs no input gradient hook
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    load_s = time.perf_counter() - t0
    texts = 2 * a.pairs

    def ids(batch):
        flat = [1 + splitmix(1000 + batch, i) % 151000 for i in range(texts * a.len)]
        return torch.tensor(flat, dtype=torch.long).view(texts, a.len)

    def labels(batch):
        return torch.tensor([(splitmix(2000 + batch, i) % 51) / 10.0 for i in range(a.pairs)])

    times, cpu0 = [], 0.0
    if a.kind == "encode":
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            for p in range(a.steps + 1):
                if p == 1:
                    cpu0 = cpu_seconds()
                x = ids(p)
                t = time.perf_counter()
                h = stack(input_ids=x).last_hidden_state[:, -1]
                assert torch.isfinite(h).all()
                if p > 0:
                    times.append(time.perf_counter() - t)
    else:
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
        for s in range(a.steps + 1):
            if s == 1:
                cpu0 = cpu_seconds()
            x, y = ids(s), labels(s)
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                pooled = stack(input_ids=x).last_hidden_state[:, -1]
            loss = objective(pooled.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            assert torch.isfinite(loss)
            if s > 0:
                times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    print(
        json.dumps(
            {
                "kind": a.kind,
                "seconds": sec,
                "texts_per_s": texts / sec,
                "tokens_per_s": texts * a.len / sec,
                "cpu_seconds": (cpu_seconds() - cpu0) / a.steps,
                "peak_rss_bytes": rss_bytes(),
                "load_seconds": load_s,
                "torch": torch.__version__,
                "bf16": a.bf16,
                "base_dtype": str(next(stack.parameters()).dtype).removeprefix("torch."),
                "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            }
        )
    )


if __name__ == "__main__":
    main()
