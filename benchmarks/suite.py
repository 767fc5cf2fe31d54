"""The evaluation suite (`glasswork eval --suite`) on the demo's SAE (layer 15 residual stream, 4,608 latents, k 32),
next to SAEBench's reference values: sparse probing on four corpus tasks, first-letter absorption, autointerp.

  .venv/bin/python benchmarks/suite.py [--folder ~/.cache/glasswork/demo/sae-l15] [--no-record]"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from _machine import cpu_name, record

IMG = Path(__file__).resolve().parent / "img" / "suite.png"


def main():
    import glasswork as gw
    from glasswork.io import home
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", type=Path, default=home() / "demo" / "sae-l15")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    import torch
    from glasswork.suite import SAEBENCH_REFERENCE, run_suite
    torch.manual_seed(0)
    model = gw.load_model()
    sae = gw.load_dictionary(args.folder)
    out = run_suite(model, sae, args.folder)
    probing, absorption, auto = out["probing"], out["absorption"], out["autointerp"]
    ref = SAEBENCH_REFERENCE
    rows = [("sparse probing: full probe on activations", probing["mean"]["llm"], ref["sparse_probing"]["llm"]),
            ("sparse probing: top-1 activation dimension", probing["mean"]["llm_top_1"],
             ref["sparse_probing"]["llm_top_1"])]
    rows += [(f"sparse probing: top-{k} SAE latents", probing["mean"][f"sae_top_{k}"],
              ref["sparse_probing"][f"sae_top_{k}"]) for k in (1, 2, 5)]
    rows += [("absorption: mean full-absorption rate", absorption["mean_absorption_rate"],
              ref["absorption"]["mean_full_absorption_score"]),
             ("absorption: mean absorption fraction", absorption["mean_absorption_fraction"],
              ref["absorption"]["mean_absorption_fraction_score"]),
             ("absorption: probe F1 / main-latent F1 (first letter)",
              f"{absorption['mean_probe_f1']:.3f} / {absorption['mean_main_f1']:.3f}", "-"),
             (f"autointerp: detection (built-in labels, {auto['n_features']} random live features)", auto["detection"],
              ref["autointerp"]["autointerp_score"]),
             ("autointerp: detection of random labels (baseline)", auto["detection_baseline"], "-"),
             ("autointerp: fuzzing / its baseline", f"{auto['fuzzing']:.3f} / {auto['fuzzing_baseline']:.3f}", "-")]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    table = ["| metric | glasswork demo SAE | SAEBench reference |", "|---|---|---|"]
    table += [f"| {name} | {fmt(ours)} | {fmt(theirs)} |" for name, ours, theirs in rows]
    per_task = ["| task | full probe | top-1 dim | top-1 latent | top-2 latents | top-5 latents |", "|---|---|---|---|---|---|"]
    per_task += [f"| {name} | {r['llm']:.3f} | {r['llm_top_k'][1]:.3f} | {r['sae_top_k'][1]:.3f} | "
                 f"{r['sae_top_k'][2]:.3f} | {r['sae_top_k'][5]:.3f} |" for name, r in probing["tasks"].items()]
    print("\n".join(table + [""] + per_task))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=120)
    ks = [1, 2, 5]
    for i, (name, r) in enumerate(probing["tasks"].items()):
        a1.plot(ks, [r["sae_top_k"][k] for k in ks], "o-", color=f"C{i}", label=f"{name}: SAE latents")
        a1.plot(ks, [r["llm_top_k"][k] for k in ks], "s:", color=f"C{i}", alpha=0.7, label=f"{name}: raw dims")
        a1.axhline(r["llm"], color=f"C{i}", lw=0.6, ls="--")
    a1.set_xticks(ks, [str(k) for k in ks]), a1.set_xlabel("k (probe inputs)")
    a1.set_ylabel("test accuracy"), a1.set_title("Sparse probing (dashed: full probe)", fontsize=9)
    a1.legend(fontsize=6, ncol=2)
    letters = absorption["letters"]
    a2.bar([r["letter"] for r in letters], [r["absorption_rate"] for r in letters], color="C3", label="full absorption")
    a2.plot([r["letter"] for r in letters], [r["absorption_fraction"] for r in letters], "k.", label="absorption fraction")
    a2.set_ylabel("share of probe-correct words")
    a2.set_ylim(0, max(0.3, 1.1 * max(max(r["absorption_rate"], r["absorption_fraction"]) for r in letters)))
    a2.set_title("First-letter absorption per letter", fontsize=9), a2.legend(fontsize=7)
    fig.tight_layout()
    IMG.parent.mkdir(exist_ok=True)
    fig.savefig(IMG)

    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [f"## Evaluation suite ({now:%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, fp32. Command: `.venv/bin/python benchmarks/suite.py "
             f"{' '.join(sys.argv[1:])}` (the same as `glasswork eval {args.folder} --suite`). Dictionary: "
             f"`{args.folder}` ({sae.cfg.hook_in}, {sae.d_sae} latents, k {sae.cfg.k}). Reference: {ref['source']}; "
             f"its probing tasks (bias_in_bios) and autointerp judge (gpt-4o-mini) differ from ours, so the columns "
             f"are anchors, not a like-for-like comparison. Sparse probing: up to {probing['n_per_class']} passages per "
             f"class, first {probing['ctx']} tokens mean-pooled, 60/40 train/test. Absorption: "
             f"{absorption['n_words']} single-token words, 70/30. Seconds per part: {out['seconds']}. Plot: "
             f"`benchmarks/img/{IMG.name}`.", ""] + table + [""] + per_task
    record("\n".join(lines) + "\n", args.no_record)


if __name__ == "__main__":
    main()
