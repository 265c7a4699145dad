"""Resume on the device: the same `angle train` run (a) uninterrupted and (b) stopped by Ctrl-C
(SIGINT: checkpoint-last is saved after the step in flight) then resumed from that checkpoint.
The first steps after the resume must match (a)'s same steps: loss and gradient norm within 1e-4
relative (the device's atomics make runs agree closely, not bit for bit).

Usage: resume_check.py RESULT.json WORKDIR DEVICE ANGLE_BIN -- TRAIN_OPTIONS...
TRAIN_OPTIONS: everything but --output, --resume and --device (those are added here); they must
include --max-steps and --log-steps 1. Writes {"ok", "detail", ...} to RESULT.json.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

AFTER = 5  # steps compared after the resume
STOP_AFTER = 10  # logged steps before the SIGINT


def records(path):
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path):
        try:
            r = json.loads(line)
        except ValueError:  # a line being written
            continue
        if "loss" in r and "grad_norm" in r:
            out.append(r)
    return out


def main():
    result_path, work, device, angle = sys.argv[1:5]
    assert sys.argv[5] == "--", "expected -- before the train options"
    opts = sys.argv[6:]
    full, cut = os.path.join(work, "res_full"), os.path.join(work, "res_cut")
    base = [angle, "train", "--device", device] + opts
    res = {"ok": False, "detail": ""}

    def finish(ok, detail):
        res.update(ok=ok, detail=detail)
        json.dump(res, open(result_path, "w"), indent=1)
        print(f"resume check: {'PASS' if ok else 'FAIL'}: {detail}", flush=True)
        sys.exit(0 if ok else 1)

    r = subprocess.run(base + ["--output", full], timeout=300)
    if r.returncode != 0:
        finish(False, f"uninterrupted run exited with {r.returncode}")
    p = subprocess.Popen(base + ["--output", cut])
    deadline = time.time() + 300
    while p.poll() is None and len(records(os.path.join(cut, "metrics.jsonl"))) < STOP_AFTER:
        if time.time() > deadline:
            p.kill()
            finish(False, "no progress before the deadline")
        time.sleep(0.01)
    if p.poll() is not None:
        finish(False, f"the run ended (exit {p.returncode}) before it could be interrupted: raise --max-steps")
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=120)
    stopped = records(os.path.join(cut, "metrics.jsonl"))
    k = stopped[-1]["step"] if stopped else 0
    res.update(interrupted_exit=rc, stopped_at=k)
    if rc != 130 or not os.path.isdir(os.path.join(cut, "checkpoint-last")):
        finish(False, f"Ctrl-C run exited with {rc} (want 130) at step {k}; checkpoint-last present: "
                      f"{os.path.isdir(os.path.join(cut, 'checkpoint-last'))}")
    r = subprocess.run([angle, "train", "--device", device, "--resume", os.path.join(cut, "checkpoint-last"),
                        "--progress", "false"], timeout=300)
    if r.returncode != 0:
        finish(False, f"resumed run exited with {r.returncode}")
    a = {x["step"]: x for x in records(os.path.join(full, "metrics.jsonl"))}
    b = {x["step"]: x for x in records(os.path.join(cut, "metrics.jsonl"))}
    steps = [s for s in range(k + 1, k + 1 + AFTER) if s in a]
    if not steps or any(s not in b for s in steps):
        finish(False, f"stopped at step {k}; steps {steps} missing from the resumed run's metrics")
    worst = 0.0
    for s in steps:
        for key in ["loss", "grad_norm"]:
            x, y = b[s][key], a[s][key]
            d = abs(x - y) / max(abs(y), 1e-12) if math.isfinite(x) else math.inf
            worst = max(worst, d)
    last = max(a)
    end_ok = last in b and math.isfinite(b[last]["loss"])
    res.update(steps=steps, max_rel_diff=worst, last_step=last)
    finish(worst < 1e-4 and end_ok,
           f"stopped at step {k} (exit {rc}), resumed to step {last}: steps {steps[0]}..{steps[-1]} within "
           f"{worst:.2e} of the uninterrupted run (< 1e-4); last step logged: {end_ok}")


if __name__ == "__main__":
    main()
