"""The training step, this tree against an earlier revision: one optimizer step of the demo's 30 skip transcoders
(2,304 x k16, batch 254, skip fitted, latents seeded on tokens) and of the demo's SAE shape (4,608 x k32, batch
4,096), each in its own process, on seeded Gaussian activations (a step's time does not depend on their content);
then the demo's transcoder stage as it runs, from the default model, for --demo-steps steps (whole seconds per step).
The earlier revision is checked out with `git worktree` into a temp folder; both import their own src/.

  python benchmarks/train_step.py --against c2649ba~1 [--steps 8] [--no-record]

Reported: the fastest of --steps timed steps after 2 warm-up steps over --rounds alternating old/new processes (the
demo's stage: its whole time per step, fastest round), and the ratio old / new."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from _machine import cpu_name, record

from glasswork.precision import resolve

ROOT = Path(__file__).resolve().parents[1]

STEP = r"""
import json, os, sys, tempfile, time, torch
os.environ["GLASSWORK_PROGRESS"] = "0"
from glasswork.training import TensorSource, TrainConfig
from glasswork.training.trainer import Trainer
what, steps = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(0)
if what == "demo":  # the demo's transcoder stage as it runs: straight from the model, the init included
    import glasswork as gw
    from glasswork.data import corpus
    from glasswork.training import train
    from glasswork.training.sources import ModelSource
    model = gw.load_model()
    tc = TrainConfig(kind="transcoder", arch="topk", layers=list(range(model.n_layers)), d_sae=2304, k=16,
                     tokens=254 * steps, batch_size=254, ctx=128, lr=3e-3, warmup_steps=10, b_dec_init="mean",
                     skip=True, skip_fit=True, init="data", mix=16, model=model.name)
    t0 = time.perf_counter()
    res = train(tc, ModelSource.from_config(model, corpus.default_texts, tc), tempfile.mkdtemp() + "/o")
    print(json.dumps({"times": [(time.perf_counter() - t0) / steps], "tokens": res["tokens"]}))
    sys.exit()
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
    """The fastest step of one process's timed steps (the least disturbed by other jobs on a shared machine)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run([sys.executable, "-c", STEP, what, str(steps)], capture_output=True, text=True, env=env,
                       timeout=3000)
    if r.returncode:
        raise SystemExit(f"{src} {what}: {r.stderr.strip().splitlines()[-1]}")
    return min(json.loads(r.stdout.strip().splitlines()[-1])["times"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", required=True, help="the earlier git revision to compare with")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="old/new processes alternated this many times")
    ap.add_argument("--demo-steps", type=int, default=96, help="steps of the demo's stage to time (0: skip it)")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    found = subprocess.run(["git", "rev-parse", "--short", "--verify", "--quiet", f"{a.against}^{{commit}}"], cwd=ROOT,
                           capture_output=True, text=True)
    if found.returncode:
        ap.error(f"--against {a.against}: not a revision of this repository (git rev-parse found no commit)")
    rev = found.stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp()) / "old"
    subprocess.run(["git", "worktree", "add", "-f", "--detach", str(tmp), rev], cwd=ROOT, capture_output=True,
                   check=True)
    try:
        rows = []
        for what, label, steps in (
                ("transcoders", "30 skip transcoders 2,304 x k16, batch 254", a.steps),
                ("sae", "TopK SAE 4,608 x k32, batch 4,096", a.steps),
                ("demo", f"the demo's transcoder stage from the model ({a.demo_steps} x 254 tokens, init and "
                         f"model forwards included; per step)", a.demo_steps)):
            if what == "demo" and not a.demo_steps:
                continue
            # old and new alternate, --rounds times each: a slow spell of the machine hits both sides
            times = [[measure(src, what, steps) for src in (tmp / "src", ROOT / "src")] for _ in range(a.rounds)]
            old, new = min(t[0] for t in times), min(t[1] for t in times)
            rows.append((label, old, new))
            print(label, f"{old * 1e3:.0f} ms -> {new * 1e3:.0f} ms", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tmp)], cwd=ROOT, capture_output=True)
    lines = [f"## The training step: {head} (with local changes, if any) against {rev} "
             f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {os.cpu_count()}-core {cpu_name()}, precision {resolve('auto')} (`auto`), load average {os.getloadavg()[0]:.1f} at the end. "
             f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`. Fastest of {a.steps} timed "
             f"steps after 2 warm-up steps over {a.rounds} rounds of alternating old/new processes, seeded Gaussian "
             f"activations; the demo's stage: its whole run divided by its steps, fastest round.", "",
             f"| step | {rev} ms | {head} ms | speed-up |", "|---|---|---|---|"]
    lines += [f"| {label} | {old * 1e3:.0f} | {new * 1e3:.0f} | {old / new:.2f}x |" for label, old, new in rows]
    record("\n".join(lines) + "\n", a.no_record)


if __name__ == "__main__":
    main()
