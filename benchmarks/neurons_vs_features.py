"""Polysemantic neurons vs monosemantic features, measured: the MLP's own hidden units at one layer of the default
model (`dictionaries.neurons.Neurons`, an exact dictionary of the MLP output), the demo's transcoder at that layer and
the demo's SAE, each indexed over the same contexts, the same number of live units sampled the same way (seeded, at
random among those that fired), labelled by the built-in explainer and scored by its keyword detection scorer against
3 other units' labels (the random-label baseline), and again by the surprisal scorer (`features.SurprisalScorer`: the
default model reads the label first; does it make the unit's firing tokens less surprising?). A higher detection
score: the label predicts where the unit fires. The transcoder is left out when the demo has not trained it yet.

  .venv/bin/python benchmarks/neurons_vs_features.py [--demo ~/.cache/glasswork/demo] [--layer 15] [--n 60] [--surprisal-n 15] [--no-record]"""
from __future__ import annotations

import argparse
import datetime
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_name, record

IMG = Path(__file__).resolve().parent / "img" / "neurons_vs_features.png"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, default=Path.home() / ".cache" / "glasswork" / "demo")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--n", type=int, default=60, help="units labelled and scored per kind")
    ap.add_argument("--contexts", type=int, default=256)
    ap.add_argument("--surprisal-n", type=int, default=15,
                    help="of those, units also scored by the surprisal scorer (~25 s each on 2 cores)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    import glasswork as gw
    from glasswork.data import corpus
    from glasswork.dictionaries.neurons import Neurons
    from glasswork.features import BuiltinExplainer, SurprisalScorer, label_features
    from glasswork.features.stats import StatsConfig
    model = gw.load_model()
    contexts = corpus.contexts(model, ctx_len=64, n_contexts=args.contexts, seed=5)
    kinds = {f"neurons L{args.layer}": Neurons(model, args.layer)}
    tc = args.demo / "transcoders" / f"layer_{args.layer:02d}"
    if (tc / "config.json").exists():
        kinds[f"transcoder L{args.layer}"] = gw.load_dictionary(tc)
    kinds["SAE L15 (residual)"] = gw.load_dictionary(args.demo / "sae-l15")
    surprisal = SurprisalScorer(model)
    rows, scores, surprisal_scores = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, d in kinds.items():
            t0 = time.perf_counter()
            path = gw.build_index(model, d, contexts, path=Path(tmp) / f"{len(rows)}.sqlite",
                                  cfg=StatsConfig(top_k=12, n_quantiles=3, per_quantile=2, n_zero=4))
            index = gw.FeatureIndex(path)
            live = index.live_features()
            sample = sorted(random.Random(0).sample(live, min(args.n, len(live))))
            res = label_features(index, BuiltinExplainer(), features=sample)["results"]
            det = [r["detection"] for r in res.values() if r.get("detection") is not None]
            base = [r["detection_baseline"] for r in res.values() if r.get("detection_baseline") is not None]
            beats = sum(r.get("detection", 0) > r.get("detection_baseline", 1) for r in res.values())
            scores[name] = det
            sres = label_features(index, BuiltinExplainer(), scorer=surprisal, features=sample[:args.surprisal_n])["results"]
            sdet = [r["detection"] for r in sres.values() if r.get("detection") is not None]
            sbase = [r["detection_baseline"] for r in sres.values() if r.get("detection_baseline") is not None]
            sbeats = sum(r.get("detection", 0) > r.get("detection_baseline", 1) for r in sres.values())
            surprisal_scores[name] = sdet
            rows.append((name, d.d_sae, len(live), len(det), statistics.mean(det), statistics.median(det),
                         statistics.mean(base), beats / max(len(res), 1), statistics.mean(sdet), statistics.mean(sbase),
                         sbeats / max(len(sres), 1), time.perf_counter() - t0))
            print(rows[-1], flush=True)
            index.close()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), dpi=120)
    bins = [i / 20 for i in range(21)]
    for ax, (scorer, by_kind) in zip(axes, (("keyword", scores), ("surprisal", surprisal_scores))):
        for name, det in by_kind.items():
            ax.hist(det, bins=bins, histtype="step", linewidth=2, label=f"{name} (median {statistics.median(det):.2f})")
        ax.set_xlabel(f"{scorer} detection score of the built-in label (0.5: chance)")
        ax.set_ylabel("units")
        ax.set_title(f"Neurons vs features, layer {args.layer} ({len(next(iter(by_kind.values())))} units each), "
                     f"{scorer} scorer", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    IMG.parent.mkdir(exist_ok=True)
    fig.savefig(IMG)
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [f"## Neurons vs features ({now:%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores. Command: `.venv/bin/python benchmarks/neurons_vs_features.py "
             f"{' '.join(sys.argv[1:])}`. Each kind indexed over the same {args.contexts} contexts of 64 tokens, then "
             f"{args.n} live units (seeded random sample) labelled by the built-in explainer and scored by keyword "
             f"detection against 3 other units' labels (the scorer every table in this file uses), then by the surprisal "
             f"scorer (the default model; the same labels and baselines) on the first {args.surprisal_n} of them. Plot: "
             f"`benchmarks/img/{IMG.name}`.", "",
             "| units | count | live | scored | keyword detection: mean | median | baseline | beat baseline | "
             "surprisal detection: mean | baseline | beat baseline | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {c:,} | {lv:,} | {k} | {m:.3f} | {md:.3f} | {b:.3f} | {bt:.0%} | {sm:.3f} | {sb:.3f} | "
              f"{sbt:.0%} | {s:.0f} |" for n, c, lv, k, m, md, b, bt, sm, sb, sbt, s in rows]
    record("\n".join(lines) + "\n", args.no_record)


if __name__ == "__main__":
    main()
