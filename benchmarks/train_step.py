"""The training step, this tree against an earlier revision: one optimizer step of the demo's 30 skip transcoders
(2,304 x k16, batch 254, skip fitted, latents seeded on tokens) and of the demo's SAE shape (4,608 x k32, batch
4,096), each in its own process, on seeded Gaussian activations (a step's time does not depend on their content).
The earlier revision is checked out with `git worktree` into a temp folder; both import their own src/.

  python benchmarks/train_step.py --against c2649ba~1 [--steps 8] [--no-record]

Reported: the median of --steps timed steps after 2 warm-up steps, and the ratio old / new."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from _machine import cpu_name, record

ROOT = Path(__file__).resolve().parents[1]

STEP = r"""
import json, os, sys, tempfile, time, torch
os.environ["GLASSWORK_PROGRESS"] = "0"
from glasswork.training import TensorSource, TrainConfig
from glasswork.training.trainer import Trainer
what, steps = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(0)
if what == "transcoders":
    acts = {f"blocks.{l}.{h}": torch.randn(4096, 576, generator=g) for l in range(30)
            for h in ("ln2.hook_normalized", "hook_mlp_out")}
    tc = TrainConfig(kind="transcoder", arch="topk", layers=list(range(30)), d_sae=2304, k=16, batch_size=254,
                     tokens=254 * 1000, lr=3e-3, init_tokens=4096, checkpoint_every=10 ** 9, skip=True,
                     skip_fit=True, init="data")
    batch = 254
else:
    acts = {"h": torch.randn(4096, 576, generator=g)}
    tc = TrainConfig(kind="sae", arch="topk", hooks=["h"], d_sae=4608, k=32, batch_size=4096, tokens=10 ** 9,
                     b_dec_init="mean")
    batch = 4096
tr = Trainer(tc, TensorSource(acts, batch), tempfile.mkdtemp() + "/o")
it = tr.source.batches(0)
batches = [next(it) for _ in range(min(steps + 2, 4096 // batch))]
times = []
for i in range(steps + 2):
    t0 = time.perf_counter()
    tr.train_step(batches[i % len(batches)])
    times.append(time.perf_counter() - t0)
print(json.dumps({"times": times[2:]}))
"""


def measure(src: Path, what: str, steps: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run([sys.executable, "-c", STEP, what, str(steps)], capture_output=True, text=True, env=env,
                       timeout=3000)
    if r.returncode:
        raise SystemExit(f"{src} {what}: {r.stderr.strip().splitlines()[-1]}")
    return statistics.median(json.loads(r.stdout.strip().splitlines()[-1])["times"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", required=True, help="the earlier git revision to compare with")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", a.against], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp()) / "old"
    subprocess.run(["git", "worktree", "add", "-f", "--detach", str(tmp), rev], cwd=ROOT, capture_output=True,
                   check=True)
    try:
        rows = []
        for what, label in (("transcoders", "30 skip transcoders 2,304 x k16, batch 254"),
                            ("sae", "TopK SAE 4,608 x k32, batch 4,096")):
            old = measure(tmp / "src", what, a.steps)
            new = measure(ROOT / "src", what, a.steps)
            rows.append((label, old, new))
            print(label, f"{old * 1e3:.0f} ms -> {new * 1e3:.0f} ms", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tmp)], cwd=ROOT, capture_output=True)
    lines = [f"## The training step: {head} (with local changes, if any) against {rev} "
             f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {os.cpu_count()}-core {cpu_name()}, fp32, load average {os.getloadavg()[0]:.1f} at the end. "
             f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`. Median of {a.steps} timed "
             f"steps after 2 warm-up steps, each side in its own process, seeded Gaussian activations.", "",
             f"| step | {rev} ms | {head} ms | speed-up |", "|---|---|---|---|"]
    lines += [f"| {label} | {old * 1e3:.0f} | {new * 1e3:.0f} | {old / new:.2f}x |" for label, old, new in rows]
    record("\n".join(lines) + "\n", a.no_record)


if __name__ == "__main__":
    main()
