"""Is the replacement model faithful to the real one? For each held-out prompt (none named by an issue): the graph's
N most influential features, each ablated in the real model (everything downstream free) vs. minus its total effect
in the graph; the rank correlation, sign agreement, mean ratio and slope, beside the graph's replacement score.

  .venv/bin/python benchmarks/faithfulness.py --dictionary TRANSCODERS_DIR [--features 20] [--no-record]"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from _machine import cpu_name, record

PROMPTS = ["The opposite of hot is", "Fact: the currency of Japan is the",
           "She poured the coffee into her favourite", "One, two, three, four,",
           "The doctor said that the patient should"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dictionary", required=True, type=Path)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--max-features", type=int, default=4096, help="attribution feature budget (the demo's)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    import glasswork as gw
    from glasswork.circuits.faithfulness import faithfulness
    from glasswork.dictionaries.saving import load_coders
    model = gw.load_model()
    coders = load_coders(args.dictionary)
    rows = []
    for text in PROMPTS:
        g = gw.attribute(model, coders, text, max_features=args.max_features, show_progress=False)
        t0 = time.perf_counter()
        f = faithfulness(model, coders, g, args.features)
        rows.append((text, model.to_str_tokens([f["target"]])[0], g.meta["scores"]["replacement"], f,
                     time.perf_counter() - t0))
        print(rows[-1][:3], {k: f[k] for k in ("spearman", "same_sign", "mean_ratio", "slope")}, flush=True)
    med = {k: statistics.median(r[3][k] for r in rows) for k in ("spearman", "same_sign", "mean_ratio", "slope")}
    lines = [f"## Faithfulness of the replacement model ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
             f"UTC)", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, fp32. Dictionary: `{args.dictionary}`. Command: "
             f"`.venv/bin/python benchmarks/faithfulness.py {' '.join(sys.argv[1:])}`. Per prompt, the graph's "
             f"{args.features} most influential features, each set to 0 at its position in the real model "
             f"(`circuits.faithfulness`) against minus its total effect on the top token's demeaned logit in the graph. "
             f"*spearman*: rank correlation of the two; *same sign*: share of features whose effect has the sign the "
             f"graph predicts; *mean ratio*: mean of real / graph; *slope*: least-squares real ~ slope x graph.", "",
             "| prompt | target | replacement score | spearman | same sign | mean ratio | slope | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {t!r} | {tok!r} | {rep:.3f} | {f['spearman']:.2f} | {f['same_sign']:.2f} | {f['mean_ratio']:.2f} | "
              f"{f['slope']:.2f} | {s:.1f} |" for t, tok, rep, f, s in rows]
    lines.append(f"| median | | | {med['spearman']:.2f} | {med['same_sign']:.2f} | {med['mean_ratio']:.2f} | "
                 f"{med['slope']:.2f} | |")
    record("\n".join(lines) + "\n", args.no_record)


if __name__ == "__main__":
    main()
