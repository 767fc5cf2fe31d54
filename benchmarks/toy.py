"""Toy models of superposition, reproduced in full: the paper's settings (batch 1024, 10k steps, AdamW lr 1e-3) for
every experiment, then a table of what came out (features represented vs sparsity and the pentagon for n=5, m=2;
dimensions per feature vs sparsity and its plateau; per-feature dimensionality; the n=2, m=1 phase counts; SAE
recovery vs sparsity; wall time), appended to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/toy.py [--out DIR] [--seed 0] [--quick] [--no-append]

Figures and data go to --out (default $GLASSWORK_HOME/bench/toy); the README's figures are copied from there.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from glasswork.io import home
from glasswork.toy import reproduce

HERE = Path(__file__).parent


def table(summary: dict) -> str:
    lines = []
    g = summary["geometry"]
    lines += ["| n=5, m=2: sparsity S | " + " | ".join(g["sparsity_to_features"]) + " |",
              "|---" * (len(g["sparsity_to_features"]) + 1) + "|",
              "| features represented (norm > 0.5) | " + " | ".join(str(v) for v in g["sparsity_to_features"].values())
              + " |", ""]
    p = g["pentagon"]
    lines += [f"Pentagon at S = {p['sparsity']}: {p['n_represented']} features, norms {p['norms']}, angular gaps "
              f"{p['gaps_degrees']} degrees (largest deviation from 72: {p['max_gap_error_degrees']}).", ""]
    d = summary["dims_per_feature"]
    lines += [f"| n={d['n']}, m={d['m']}: 1/(1-S) | dims per feature m/‖W‖²_F |", "|---|---|"]
    lines += [f"| {x} | {v:.3f} |" for x, v in d["curve"].items()]
    pl = d["plateau"]
    lines += ["", (f"Plateau: mean {pl['mean']:.3f} (range {pl['min']:.3f}-{pl['max']:.3f}) over 1/(1-S) = "
                   f"{1 / (1 - pl['x_from']):.2f}..{1 / (1 - pl['x_to']):.2f}, {pl['points']} models." if pl else
                   "Plateau: none found."),
              f"Per-feature dimensionality: {d['near_a_fraction']:.0%} of represented features lie within 0.04 of "
              f"1, 3/4, 2/3, 1/2, 2/5 or 3/8; counts {d['fraction_counts']}.", "",
              f"Phase diagram n=2, m=1 (cells per phase): {summary['phase']}.", "",
              "| SAE: 1/(1-S) | k | features represented | mean best-match cosine | worst feature | FVU |",
              "|---|---|---|---|---|---|"]
    for r in summary["sae_recovery"]:
        rec = "n/a" if r["recovery"] is None else f"{r['recovery']:.3f}"
        lines.append(f"| {r['inverse_density']} | {r['k']} | {r['represented']} | {rec} | {r['worst']} | {r['fvu']} |")
    s = summary["seconds"]
    lines += ["", "Seconds: " + ", ".join(f"{k} {v}" for k, v in s.items()) + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=home() / "bench" / "toy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="The small settings the tests use (not for RESULTS.md).")
    ap.add_argument("--no-append", action="store_true", help="Print the table only.")
    args = ap.parse_args()
    t0 = time.time()
    summary = reproduce(args.out, quick=args.quick, seed=args.seed)
    wall = time.time() - t0
    summary["seconds"]["wall"] = round(wall, 1)
    body = table(summary)
    print(body)
    if args.no_append or args.quick:
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/toy.py", *sys.argv[1:]])
    section = (f"\n## Toy models of superposition: full reproduction ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n\n"
               f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), torch "
               f"{torch.__version__}, {torch.get_num_threads()} torch thread(s), load average {load:.1f} (shared with "
               f"other jobs). Command: `{cmd}` ({wall:.0f} s). Settings: batch 1024, 10k steps, AdamW lr 1e-3 for every "
               f"toy model; SAEs: Glasswork TopK, d_sae = 2n, k = n(1-S) rounded (at least 1), 1M rows each. Figures: "
               f"docs/img/toy-*.png.\n\n{body}\n")
    with open(HERE / "RESULTS.md", "a") as f:
        f.write(section)
    print(f"appended to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
