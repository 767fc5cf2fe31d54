"""Harvest cost, measured: tokens/s of capturing 3 hook points on the default model against the plain HF forward on
the same batches (interleaved in one run, so machine load hits both alike), the peak memory of each, and
`glasswork harvest` end to end (model load, corpus, forward, shards, manifest).

    .venv/bin/python benchmarks/harvest.py [--batches 6] [--batch-size 8] [--no-record]

Modes (each on the same [batch, 128] contexts of the default corpus):
- plain: model.hf(input_ids) -> logits (the reference).
- hooks, full pass: gw.capture of blocks.29.{ln2.hook_normalized, hook_mlp_out, hook_resid_post} with stop_early=False
  (the whole forward plus the hooks: the hooks' own cost).
- hooks, stop early: the same hooks, stop_early=True (skips the final norm and unembedding).
- layer 15, stop early: blocks.15's three points, what the demo harvests (half the layers run).
Appends a section to benchmarks/RESULTS.md."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import glasswork as gw

HERE = Path(__file__).parent
HOOKS_29 = ["blocks.29.ln2.hook_normalized", "blocks.29.hook_mlp_out", "blocks.29.hook_resid_post"]
HOOKS_15 = ["blocks.15.ln2.hook_normalized", "blocks.15.hook_mlp_out", "blocks.15.hook_resid_post"]


def modes(model):
    return {
        "plain HF forward": lambda ids: model.hf(input_ids=ids, use_cache=False).logits,
        "3 hooks, full pass": lambda ids: gw.capture(model, ids, HOOKS_29, stop_early=False),
        "3 hooks (layer 29), stop early": lambda ids: gw.capture(model, ids, HOOKS_29, stop_early=True),
        "3 hooks (layer 15), stop early": lambda ids: gw.capture(model, ids, HOOKS_15, stop_early=True),
    }


@torch.no_grad()
def peak_memory(mode: str, batch_size: int) -> None:
    """Child process: peak RSS growth (MB) of 2 batches of one mode over the loaded model."""
    model = gw.load_model()
    ids = gw.corpus.contexts(model, n_contexts=batch_size)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) so model loading is not counted
    base = _status_kb("VmRSS")
    for _ in range(2):
        modes(model)[mode](ids)
    print(json.dumps({"peak_mb": (_status_kb("VmHWM") - base) / 1024}))


def _status_kb(field: str) -> int:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(field + ":"))
    return int(line.split()[1])


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8, help="contexts of 128 tokens per forward")
    ap.add_argument("--cli-tokens", type=int, default=8192)
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return peak_memory(args.child, args.batch_size)

    load_before = os.getloadavg()
    model = gw.load_model()
    ids = gw.corpus.contexts(model, n_contexts=args.batches * args.batch_size).view(args.batches, args.batch_size, -1)
    fns = modes(model)
    for fn in fns.values():  # warm up every path once
        fn(ids[0])
    times: dict[str, list[float]] = {name: [] for name in fns}
    for batch in ids:  # interleaved: each batch through every mode
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(batch)
            times[name].append(time.perf_counter() - t0)
    tokens = args.batch_size * ids.shape[-1]
    rate = {name: tokens / statistics.median(t) for name, t in times.items()}
    plain = rate["plain HF forward"]

    peak = {}
    for name in fns:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--batch-size", str(args.batch_size)],
                             capture_output=True, text=True, env={**os.environ, "GLASSWORK_PROGRESS": "0"}, check=True)
        peak[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(Path(sys.executable).parent / "glasswork"), "harvest", "--hooks", ",".join(HOOKS_29), "--tokens",
               str(args.cli_tokens), "--batch-size", str(args.batch_size), "--out", f"{tmp}/store", "--json"]
        t0 = time.time()
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "GLASSWORK_PROGRESS": "0"},
                             check=True)
        wall = time.time() - t0
        cli = json.loads(res.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()

    rows = [f"| {name} | {rate[name]:,.0f} | {rate[name] / plain:.3f} | {peak[name]:,.0f} |" for name in fns]
    table = "\n".join(["| mode | tokens/s (median of batches) | vs plain forward | peak RSS growth (MB) |",
                       "|---|---:|---:|---:|", *rows])
    overhead = plain / rate["3 hooks, full pass"] - 1
    cli_line = (f"`glasswork harvest` end to end ({args.cli_tokens} tokens, the 3 layer-29 hooks, fp32, "
                f"{cli['shards']} shard(s)): {wall:.1f} s wall including process start and model load = "
                f"{args.cli_tokens / wall:,.0f} tokens/s; the verb's own count (load + corpus + harvest + write): "
                f"{cli['tokens_per_s']:,.0f} tokens/s.")
    cmd_line = (f".venv/bin/python benchmarks/harvest.py --batches {args.batches} --batch-size {args.batch_size} "
                f"--cli-tokens {args.cli_tokens}")
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads; load average {load_before[0]:.1f} before, {load_after[0]:.1f} "
               f"after (the machine is shared)")
    section = (f"\n## Harvest: hook overhead vs plain forward ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n\n"
               f"Command: `{cmd_line}`  \nMachine: {machine}  \nBatches: {args.batches} x [{args.batch_size}, 128] "
               f"tokens of the default corpus, default model (smollm2-135m, fp32), each batch through every mode in "
               f"turn.\n\n{table}\n\nHook cost on a full pass: {overhead * 100:+.1f}% (target: at most +10%).  \n"
               f"{cli_line}\n")
    print(section)
    if not args.no_record:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(section)


if __name__ == "__main__":
    main()
