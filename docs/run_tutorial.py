"""Run docs/tutorial.md's Python blocks in order, in one namespace, exactly as written, and print what each prints.

    .venv/bin/python docs/run_tutorial.py [--workdir DIR] [--fill]

--workdir: where `tut/` is written (default: a fresh temporary folder). --fill writes each step's output into the
tutorial's "You should see" block (TUTORIAL-OUTPUT-N placeholders, or the block already there), so the figures in the
tutorial are the ones this run printed.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time
from pathlib import Path

TUTORIAL = Path(__file__).with_name("tutorial.md")
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
SEE = re.compile(r"(You should see:\n\n```\n)(.*?)(```)", re.S)


class Tee(io.TextIOBase):
    """Print to the terminal and keep a copy."""

    def __init__(self, out):
        self.out, self.buf = out, io.StringIO()

    def write(self, s):
        self.out.write(s)
        self.buf.write(s)
        return len(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--fill", action="store_true")
    args = ap.parse_args()
    text = TUTORIAL.read_text()
    blocks = BLOCK.findall(text)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="glasswork-tutorial-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    print(f"running {len(blocks)} blocks of {TUTORIAL} in {workdir}", file=sys.stderr)
    namespace: dict = {"__name__": "__tutorial__"}
    outputs = []
    for i, code in enumerate(blocks, 1):
        t0 = time.time()
        print(f"--- block {i} ---", file=sys.stderr)
        tee = Tee(sys.stdout)
        with contextlib.redirect_stdout(tee):
            exec(compile(code, f"tutorial block {i}", "exec"), namespace)
        outputs.append(tee.buf.getvalue())
        print(f"--- block {i}: {time.time() - t0:.1f} s ---", file=sys.stderr)
    if args.fill:
        # the blocks that print are followed by "You should see": pair them in order
        printing = [o for o in outputs if o.strip()]
        sees = SEE.findall(text)
        if len(printing) != len(sees):
            raise SystemExit(f"{len(printing)} blocks printed but the tutorial has {len(sees)} 'You should see' blocks")
        it = iter(printing)
        TUTORIAL.write_text(SEE.sub(lambda m: m.group(1) + next(it).rstrip("\n") + "\n" + m.group(3), text))
        print(f"filled {len(sees)} output blocks in {TUTORIAL}", file=sys.stderr)


if __name__ == "__main__":
    main()
