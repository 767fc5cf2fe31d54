"""Scaling and feature splitting on the default model: TopK SAEs (k 32) on the demo's activation store (the residual
stream after layer 15) at 4 widths and 4 token budgets, each evaluated on 8,064 held-out tokens, with power laws
fitted to FVU; then, for 3 frequent features of the smallest, their nearest features (decoder cosine) in each larger
one, labelled, drawn as a tree.

  .venv/bin/python benchmarks/scaling.py [--demo ~/.cache/glasswork/demo] [--out ~/.cache/glasswork/scaling]
      [--widths 576,1152,2304,4608] [--tokens 30000,60000,120000,240000] [--no-record]"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_name, record

IMG = Path(__file__).resolve().parent / "img"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, default=Path.home() / ".cache" / "glasswork" / "demo")
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "glasswork" / "scaling")
    ap.add_argument("--widths", default="576,1152,2304,4608")
    ap.add_argument("--tokens", default="30000,60000,120000,240000", help="budgets for the middle width")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    import glasswork as gw
    from glasswork.features.scoring import ensure_labels
    from glasswork.features.stats import StatsConfig
    from glasswork.scaling import check_widths, power_law, splits, sweep
    widths = check_widths([int(w) for w in args.widths.split(",")])
    budgets = [int(t) for t in args.tokens.split(",")]
    base_tokens, mid = 120_000, widths[len(widths) // 2]
    runs = [(w, base_tokens) for w in widths] + [(mid, t) for t in budgets if t != base_tokens]
    model = gw.load_model()
    t0 = time.perf_counter()
    rows = sweep(model, args.demo / "store", "blocks.15.hook_resid_post", runs, args.out)
    seconds = time.perf_counter() - t0
    by_width = [r for r in rows if r["tokens"] == base_tokens]
    by_tokens = sorted([r for r in rows if r["width"] == mid], key=lambda r: r["tokens"])
    fit_w = power_law([r["width"] for r in by_width], [r["fvu"] for r in by_width])
    fit_t = power_law([r["tokens"] for r in by_tokens], [r["fvu"] for r in by_tokens])
    # feature splitting: labels from a small index of each width's SAE
    from glasswork.data import corpus
    ctx = corpus.contexts(model, ctx_len=64, n_contexts=128, seed=6)
    saes = [gw.load_dictionary(r["path"]) for r in by_width]
    tmp = tempfile.mkdtemp()
    indexes = [gw.FeatureIndex(gw.build_index(model, s, ctx, path=Path(tmp) / f"w{s.d_sae}.sqlite",
                                              cfg=StatsConfig(top_k=8, n_quantiles=2, per_quantile=2, n_zero=2)))
               for s in saes]
    roots = [f for f, _ in indexes[0].live_by_frequency()[5:8]]  # frequent, past the most generic few
    tree = splits(saes, roots, top=2)
    for rec in tree:
        rec["label"] = ensure_labels(indexes[0], [rec["feature"]])[rec["feature"]]
        rec["child_labels"] = [[ensure_labels(ix, [j])[j] for j, _ in kids]
                               for ix, kids in zip(indexes[1:], rec["children"])]
    _plots(by_width, by_tokens, fit_w, fit_t, tree, widths)
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [f"## Scaling and feature splitting ({now:%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, fp32. Command: `.venv/bin/python benchmarks/scaling.py "
             f"{' '.join(sys.argv[1:])}`. TopK SAEs (k 32, lr 2e-3, batch 512) on the demo's store of "
             f"`blocks.15.hook_resid_post` (120,064 tokens; budgets past it are further passes), evaluated on 8,064 "
             f"held-out tokens. {seconds:.0f} s for the runs. Fits: FVU = {fit_w['a']:.3g} x width^-{fit_w['b']:.3f} "
             f"(R^2 {fit_w['r2']:.3f}) at {base_tokens:,} tokens; FVU = {fit_t['a']:.3g} x tokens^-{fit_t['b']:.3f} "
             f"(R^2 {fit_t['r2']:.3f}) at width {mid}. Plots: `benchmarks/img/scaling.png`, "
             f"`benchmarks/img/feature_splitting.png`.", "",
             "| width | tokens | FVU | CE-loss score | KL | dead | seconds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['width']:,} | {r['tokens']:,} | {r['fvu']:.3f} | {r['ce_loss_score']:.3f} | {r['kl']:.3f} | "
              f"{(r['dead'] or 0):.3f} | {r['seconds']:.0f} |" for r in rows]
    lines += ["", "Feature splitting (nearest decoder directions in each larger SAE, cosine):", ""]
    for rec in tree:
        parts = [f"{w}: " + ", ".join(f"#{j} ({c:.2f}) {lab[:40]!r}" for (j, c), lab in zip(kids, labs))
                 for w, kids, labs in zip(widths[1:], rec["children"], rec["child_labels"])]
        lines.append(f"- {widths[0]} #{rec['feature']} {rec['label'][:50]!r} -> " + "; ".join(parts))
    record("\n".join(lines) + "\n", args.no_record)


def _plots(by_width, by_tokens, fit_w, fit_t, tree, widths):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for ax, rows, key, fit, name in ((axes[0], by_width, "width", fit_w, "width (features)"),
                                     (axes[1], by_tokens, "tokens", fit_t, "training tokens")):
        x = [r[key] for r in rows]
        ax.loglog(x, [r["fvu"] for r in rows], "o", label="measured")
        ax.loglog(x, [fit["a"] * v ** -fit["b"] for v in x], "-", label=f"{fit['a']:.3g} x^-{fit['b']:.3f}")
        ax.set_xlabel(name)
        ax.set_ylabel("FVU (held out)")
        ax.legend(fontsize=8)
    fig.suptitle("TopK SAEs on layer 15 of SmolLM2-135M", fontsize=10)
    fig.tight_layout()
    IMG.mkdir(exist_ok=True)
    fig.savefig(IMG / "scaling.png")
    fig, ax = plt.subplots(figsize=(11, 1.9 * len(tree) + 0.6), dpi=120)
    ax.axis("off")
    cols = len(widths)
    for r, rec in enumerate(tree):
        y0 = len(tree) - r - 0.5
        ax.text(0.0, y0, f"{widths[0]} #{rec['feature']}\n{_short(rec['label'])}", fontsize=7, va="center",
                bbox=dict(boxstyle="round", fc="#eef2fb", ec="#5b7fd6"))
        for c, (kids, labs) in enumerate(zip(rec["children"], rec["child_labels"]), start=1):
            for k, ((j, cos), lab) in enumerate(zip(kids, labs)):
                y = y0 + (0.22 if k == 0 else -0.22)
                ax.annotate("", xy=(c / cols, y), xytext=((c - 1) / cols + 0.17, y0),
                            arrowprops=dict(arrowstyle="-", color="#aab", lw=0.8))
                ax.text(c / cols, y, f"{widths[c]} #{j} (cos {cos:.2f})\n{_short(lab)}", fontsize=6.5, va="center",
                        bbox=dict(boxstyle="round", fc="white", ec="#c5cad3"))
    ax.set_xlim(-0.02, 1.15)
    ax.set_ylim(0, len(tree))
    ax.set_title("Feature splitting: a feature of the smallest SAE and its nearest features in larger ones", fontsize=9)
    fig.tight_layout()
    fig.savefig(IMG / "feature_splitting.png")


def _short(label: str) -> str:
    text = (label or "(no label)").replace("fires on ", "")
    return text[:34] + ("…" if len(text) > 34 else "")


if __name__ == "__main__":
    main()
