"""How fast the face starts: wall seconds of `glasswork --help` and `glasswork VERB --help` (each the median of
--repeat fresh processes), and of `import glasswork` (which loads no torch until a name is used).

  .venv/bin/python benchmarks/cli_startup.py [--repeat 5] [--no-record]"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_name, record

CLI = str(Path(sys.executable).parent / "glasswork")
CASES = [("glasswork --help", [CLI, "--help"]), ("glasswork train --help", [CLI, "train", "--help"]),
         ("glasswork attribute --help", [CLI, "attribute", "--help"]),
         ("glasswork features build --help", [CLI, "features", "build", "--help"]),
         ("glasswork import --help", [CLI, "import", "--help"]), ("glasswork demo --help", [CLI, "demo", "--help"]),
         ("python -c 'import glasswork'", [sys.executable, "-c", "import glasswork"]),
         ("python -c 'import glasswork; glasswork.SparseCoder' (loads torch)",
          [sys.executable, "-c", "import glasswork; glasswork.SparseCoder"])]


def seconds(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    rows = [(name, seconds(cmd, args.repeat)) for name, cmd in CASES]
    lines = [f"## CLI start-up ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}. Command: "
             f"`{' '.join(['.venv/bin/python benchmarks/cli_startup.py', *sys.argv[1:]])}`. Median wall seconds of "
             f"{args.repeat} fresh processes each (target: under 0.5 s for every `--help`).", "",
             "| command | seconds |", "|---|---|"]
    lines += [f"| `{name}` | {s:.2f} |" for name, s in rows]
    record("\n".join(lines) + "\n", args.no_record)


if __name__ == "__main__":
    main()
