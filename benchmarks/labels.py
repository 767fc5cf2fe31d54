"""Do labels mean something? For the default model's SAE (the small_sae fixture: TopK, d_sae 2304, layer 6 residual),
label 50 random live features with the explainer that runs here (builtin, no LM) and score each label's detection
against the mean of 3 random other labels (keyword scorer). Target: at least half beat the baseline.

Run: .venv/bin/python benchmarks/labels.py [--contexts 256]"""
from __future__ import annotations

import argparse
import datetime
import os
import random
import subprocess
import time
from pathlib import Path

import glasswork as gw
from glasswork.features import BuiltinExplainer, FeatureIndex, KeywordScorer, build_index, label_features
from glasswork.training import quick


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, default=256)
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    model = gw.load_model()
    folder = quick.cached("small_sae", quick.small_sae_config(), model=model)
    path = Path(folder) / "features.sqlite"
    if not path.exists():
        build_index(model, folder, n_contexts=args.contexts, ctx_len=64)
    ix = FeatureIndex(path)
    feats = sorted(random.Random(0).sample(ix.live_features(), args.n))
    t0 = time.time()
    res = label_features(ix, BuiltinExplainer(), KeywordScorer(), feats, n_baseline=3, seed=0)
    secs = time.time() - t0
    r = res["results"].values()
    mean = lambda k: sum(x[k] for x in r) / len(r)  # noqa: E731
    row = (f"| builtin + keyword scorer | {res['n_labeled']}/{args.n} | {res['n_detection_beats_baseline']} | "
           f"{mean('detection'):.3f} | {mean('detection_baseline'):.3f} | {mean('fuzzing'):.3f} | "
           f"{mean('fuzzing_baseline'):.3f} | {secs:.1f} |")
    head = ("| explainer | labeled | detection > baseline | detection | baseline | fuzzing | baseline | seconds |\n"
            "|---|---|---|---|---|---|---|---|")
    print(head + "\n" + row)
    load = os.getloadavg()[0]
    section = (f"\n## Labels: do they mean something ({datetime.date.today()})\n\nMachine: 2-core CPU, shared "
               f"(load average {load:.1f}). Command: `.venv/bin/python benchmarks/labels.py`. SAE: small_sae fixture "
               f"(TopK k=16, d_sae 2304, blocks.6.hook_resid_post, {ix.meta['n_tokens']:,} index tokens); "
               f"{args.n} random live features (seed 0); baseline = mean score of 3 other features' labels.\n\n"
               f"{head}\n{row}\n\nThe keyword scorer is deterministic and close to the builtin explainer (both read "
               f"tokens), so this shows the labels name tokens specific to each feature, not that an LM would agree.\n")
    with open(Path(__file__).parent / "RESULTS.md", "a") as fh:
        fh.write(section)


if __name__ == "__main__":
    main()
