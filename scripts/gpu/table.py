"""Prints the benchmark table from OUT/ours.json and OUT/torch.json (last thing the GPU run prints)."""

import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", ".")
rows = []
for f in ["ours.json", "torch.json"]:
    p = os.path.join(out, f)
    if os.path.exists(p):
        rows += json.load(open(p))
if not rows:
    print("no benchmark results")
    sys.exit(0)
print(f"\ntraining step, 64 x 128 tokens, AnglE format A + AdamW on {rows[0].get('device', '?')}")
hdr = f"{'model':<10} {'prec':<5} {'impl':<6} {'step ms':>8} {'tokens/s':>10} {'MFU':>6} {'mem MiB':>8} {'vs torch':>8}"
print(hdr)
print("-" * len(hdr))
key = lambda r: (r["model"], r["precision"])
torch_by = {key(r): r for r in rows if r["impl"] == "torch"}
for r in sorted(rows, key=lambda r: (r["model"], r["precision"], r["impl"])):
    t = torch_by.get(key(r))
    sp = f"{r['tokens_per_s'] / t['tokens_per_s']:.2f}x" if t and r["impl"] == "ours" else ""
    print(
        f"{r['model']:<10} {r['precision']:<5} {r['impl']:<6} {r['step_ms']:8.2f} {r['tokens_per_s']:10.0f} "
        f"{100 * r['mfu']:5.1f}% {r['mem_mib']:8.0f} {sp:>8}"
    )
