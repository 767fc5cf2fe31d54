"""Compatibility with the peers' own code: make each peer's venv (benchmarks/_peers.py: torch 2.13.0 first, then its
pinned release), run tests/test_peers.py against them, print a table of each check and record it in RESULTS.md.

  .venv/bin/python benchmarks/peers.py [--install all|circuit-tracer,sae-lens] [--no-record]

Without --install it uses the venvs already there (a missing peer's tests skip, with the reason)."""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from _machine import cpu_name
from _peers import PEERS, install, peer_version

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--install", default="", help="peers to install first: all, or a comma-separated list")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    names = list(PEERS) if args.install == "all" else [n for n in args.install.split(",") if n]
    for name in names:
        print(f"installing {name} ...", flush=True)
        install(name)
    cmd = [sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", "tests/test_peers.py"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    rows = re.findall(r"tests/test_peers\.py::(\S+) (PASSED|FAILED|SKIPPED|ERROR)", res.stdout)
    if not rows:
        raise SystemExit(res.stdout[-3000:] + res.stderr[-3000:])
    versions = {name: peer_version(name) for name in PEERS}
    summary = re.findall(r"=+ (.*(?:passed|failed|skipped).*) =+", res.stdout)
    lines = [f"## Peers' own code on glasswork's files ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
             "UTC)", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}. Command: "
             f"`{' '.join(['.venv/bin/python benchmarks/peers.py', *sys.argv[1:]])}` (runs `pytest tests/test_peers.py`). "
             f"Peers, each in its own venv: circuit-tracer {versions['circuit-tracer']} (TransformerLens backend), "
             f"sae-lens {versions['sae-lens']}, sparsify {versions['sparsify']}.", "",
             "| check | result |", "|---|---|"]
    lines += [f"| `{test}` | {result.lower()} |" for test, result in rows]
    lines += ["", f"pytest: {summary[-1] if summary else 'see output'}.", ""]
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        path = ROOT / "benchmarks" / "RESULTS.md"
        path.write_text(path.read_text().rstrip("\n") + "\n\n" + table)
    sys.exit(res.returncode)


if __name__ == "__main__":
    main()
