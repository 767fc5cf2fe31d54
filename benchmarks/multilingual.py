"""Multilingual features on the default model: for 20 concepts with one sentence each in English, French, Spanish and
German (written for the project, `features/multilingual.py`), the share of each dictionary's concept features (the 3
most active on the English word) that also fire on the concept's word in the three other languages, against random
features of the same firing frequency.

  .venv/bin/python benchmarks/multilingual.py [--demo ~/.cache/glasswork/demo] [--layers 8,15,22] [--no-record]"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch

from _machine import cpu_name, record

IMG = Path(__file__).resolve().parent / "img" / "multilingual.png"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, default=Path.home() / ".cache" / "glasswork" / "demo")
    ap.add_argument("--layers", default="8,15,22")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    import glasswork as gw
    from glasswork.features.multilingual import PARALLEL, concept_activations, multilingual_share
    model = gw.load_model()
    dicts = {"SAE L15": args.demo / "sae-l15"}
    dicts.update({f"transcoder L{l}": args.demo / "transcoders" / f"layer_{int(l):02d}" for l in args.layers.split(",")})
    rows = []
    for name, folder in dicts.items():
        d = gw.load_dictionary(folder)
        index = gw.FeatureIndex(folder)
        stats = index.frequencies(list(range(d.d_sae)))
        index.close()
        freq = torch.tensor([stats.get(f, (0.0, 0.0))[0] or 0.0 for f in range(d.d_sae)])
        r = multilingual_share(concept_activations(model, d), freq)
        every = sum(1 for c in r["per_concept"].values() if c["multilingual"])
        rows.append((name, r["n"], r["share"], r["baseline"], every))
        print(rows[-1], flush=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=120)
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r[2] for r in rows], 0.4, label="concept features")
    ax.bar([i + 0.2 for i in x], [r[3] for r in rows], 0.4, label="random, same frequency")
    ax.set_xticks(list(x), [r[0] for r in rows], fontsize=8)
    ax.set_ylabel("fire on the word in fr, es and de")
    ax.set_title(f"Multilingual features of SmolLM2-135M ({len(PARALLEL)} concepts, 4 languages)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    IMG.parent.mkdir(exist_ok=True)
    fig.savefig(IMG)
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [f"## Multilingual features ({now:%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores. Command: `.venv/bin/python benchmarks/multilingual.py "
             f"{' '.join(sys.argv[1:])}`. {len(PARALLEL)} concepts x 4 languages; per concept the 3 features most active "
             f"on the English word; *share*: of those, the ones that also fire on the word in French, Spanish and "
             f"German; *baseline*: the same for 20 random features per concept feature with a matched firing "
             f"frequency (from each dictionary's index). Plot: `benchmarks/img/{IMG.name}`.", "",
             "| dictionary | concept features | multilingual share | random baseline | concepts with one |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {k} | {s:.2f} | {b:.3f} | {e} of {len(PARALLEL)} |" for n, k, s, b, e in rows]
    record("\n".join(lines) + "\n", args.no_record)


if __name__ == "__main__":
    main()
