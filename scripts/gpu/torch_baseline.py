"""PyTorch eager baseline for the training-step benchmark of `gpu_check` (same card, same call).

BERT-family encoder from `transformers` (random init, default attention implementation), mean
pooling, the AnglE format-A objective (cosine 1 + in-batch negatives 1 + angle 0.02, taus 20)
written out below from its definition in angle-emb 0.6.1, gradient clipping at 1.0, AdamW.
64 sequences x 128 tokens. Precisions: bf16 autocast (f32 master weights, loss in f32) and
f32 with TF32 matmuls. Writes OUT/torch.json.
"""

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel


def cosent(scores, labels):
    """log(1 + sum over pairs with label_i < label_j of exp(s_i - s_j))."""
    keep = labels[:, None] < labels[None, :]
    diff = scores[:, None] - scores[None, :]
    diff = diff - (~keep).float() * 1e12
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff.flatten()]), dim=0)


def cosine_objective(y, labels, tau=20.0):
    n = F.normalize(y, p=2, dim=1)
    return cosent((n[0::2] * n[1::2]).sum(1) * tau, labels)


def angle_objective(y, labels, tau=20.0):
    u, v = y[0::2], y[1::2]
    a, b = u.chunk(2, dim=1)
    c, d = v.chunk(2, dim=1)
    z = (c**2 + d**2).sum(1, keepdim=True)
    re = (a * c + b * d) / z
    im = (b * c - a * d) / z
    dz = (a**2 + b**2).sum(1, keepdim=True).sqrt()
    dw = z.sqrt()
    re = re / (dz / dw)
    im = im / (dz / dw)
    s = torch.cat([re, im], dim=1).sum(1).abs() * tau
    return cosent(s, labels)


def in_batch_negative_objective(y, labels, tau=20.0):
    r = y.shape[0]
    lab = labels.repeat_interleave(2).int()
    idx = torch.arange(r, device=y.device)
    partner = idx + 1 - (idx % 2) * 2
    target = (lab[None, :] != 0) & (lab[:, None] != 0) & (idx[None, :] * lab[None, :] == partner[:, None] * lab[:, None])
    n = F.normalize(y, p=2, dim=1)
    sim = (n @ n.T - torch.eye(r, device=y.device) * 1e12) * tau
    return -(F.log_softmax(sim, dim=1) * target.float()).sum(1).mean()


def objective(pooled, labels):
    return (
        cosine_objective(pooled, labels)
        + in_batch_negative_objective(pooled, labels)
        + 0.02 * angle_objective(pooled, labels)
    )


def flops_per_step(cfg, tokens, seq_len):
    h, l, i = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    per_layer = 4 * h * h + 2 * h * i
    return 6 * l * per_layer * tokens + 12 * l * h * seq_len * tokens


def bench(name, cfg, precision, steps, bsz=64, seq_len=128):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    model = BertModel(cfg, add_pooling_layer=False).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    ids = torch.randint(1000, 21000, (bsz, seq_len), device=dev)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 6, (bsz // 2,), device=dev).float()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (h.float() * m).sum(1) / m.sum(1)
        loss = objective(pooled, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(3):
        first = step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        last = step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    tokens = bsz * seq_len
    flops = flops_per_step(cfg, tokens, seq_len)
    peak = 989.4e12 if precision == "bf16" else 494.7e12
    res = {
        "impl": "torch",
        "model": name,
        "precision": precision,
        "device": torch.cuda.get_device_name(),
        "step_ms": dt * 1e3,
        "tokens_per_s": tokens / dt,
        "mfu": flops / dt / peak,
        "peak_flops": peak,
        "flops_per_step": flops,
        "mem_mib": torch.cuda.max_memory_allocated() / 2**20,
        "loss_first": float(first),
        "loss_last": float(last),
        "attn_implementation": getattr(model.config, "_attn_implementation", "?"),
    }
    print(
        f"torch {name:<10} {precision:<5} step {res['step_ms']:7.2f} ms  {res['tokens_per_s']:9.0f} tokens/s  "
        f"MFU {100 * res['mfu']:5.1f}%  peak memory {res['mem_mib']:.0f} MiB  attention {res['attn_implementation']}",
        flush=True,
    )
    del model, opt
    torch.cuda.empty_cache()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--minilm-config", default=".gpu/data/minilm/config.json")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    base = BertConfig(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, hidden_act="gelu",
    )
    mini = BertConfig.from_json_file(a.minilm_config)
    results = []
    for name, cfg in [("bert-base", base), ("minilm-l6", mini)]:
        for prec in ["bf16", "tf32"]:
            results.append(bench(name, cfg, prec, a.steps))
    with open(os.path.join(a.out, "torch.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
