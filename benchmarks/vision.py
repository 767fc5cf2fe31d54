"""Vision on the default image model (the CIFAR-10 CNN of `cifar-10-model` 7.4.0, converted): the whole
`glasswork vision` run from nothing into a fresh folder, timed, its figures copied to benchmarks/img/vision-*.png
for the README, and a table of what it found recorded in RESULTS.md.

  .venv/bin/python benchmarks/vision.py [--out /tmp/vision-bench] [--no-record]"""
from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import time
from pathlib import Path

from _machine import cpu_name, record

IMG = Path(__file__).resolve().parent / "img"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/vision-bench"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from glasswork.vision.run import run_vision
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.time()
    res = run_vision(args.out)
    seconds = time.time() - t0
    for png in sorted((args.out / "img").glob("*.png")):
        shutil.copy(png, IMG / f"vision-{png.name}")
    f, t, u, s = res["filters"], res["tuning"]["layers"], res["units"], res["sae"]
    m, v, st = res["monosemanticity"], res["visualize"], res["steer"]
    early, mid = list(t)
    ent = m["entropy"]
    rows = [
        ("first-layer filters: oriented / colour-contrast / other",
         " / ".join(f"{f['fractions'][k]:.0%}" for k in ("oriented", "colour-contrast", "other"))),
        (f"{early}: sharp consistent edge units / curve units", f"{t[early]['edge_detectors']} / "
         f"{t[early]['curve_detectors']} of {t[early]['units']} (mean OSI {t[early]['osi_mean']:.2f})"),
        (f"{mid}: sharp consistent edge units / curve units", f"{t[mid]['edge_detectors']} / "
         f"{t[mid]['curve_detectors']} of {t[mid]['units']} (mean OSI {t[mid]['osi_mean']:.2f})"),
        (f"{mid} units: mean source entropy of the top 16 patches", f"{u['entropy_mean']:.2f} bits "
         f"(most polysemantic units {u['most_polysemantic']})"),
        (f"SAE on {mid} ({s['d_sae']} latents, k {s['k']}): held-out FVU / live features",
         f"{s['heldout_fvu']:.3f} / {m['live_features']} of {s['d_sae']}"),
        ("firing rate on held-out patches: units / live features",
         f"{m['frequency_units']:.0%} / {m['frequency_features']:.0%}"),
    ]
    for k, e in ent.items():
        name = "activation-weighted source entropy" if k == "weighted" else f"source entropy of the top {k} patches"
        rows.append((f"{name}: units / SAE features (mean; median)",
                     f"{e['units']:.2f} / {e['features']:.2f} bits ({e['units_median']:.2f} / {e['features_median']:.2f})"
                     + (f"; uniform {e['uniform']:.2f}" if "uniform" in e else "")))
    rows += [
        ("visualizations beating every held-out patch (units + features)", f"{v['beats_corpus']} of {v['n']}"),
        (f"steering: feature {st['feature']} clamped to {st['value']:.1f}: p({st['class']}) on {st['n_images']} "
         f"held-out non-{st['class']} images", f"{st['p_before']:.3f} -> {st['p_after']:.3f} (top-1 "
         f"{st['top1_before']:.0%} -> {st['top1_after']:.0%})"),
        ("the same clamp at 0.25x / 0.5x / 1x / 2x the feature's held-out max: p(class)",
         " / ".join(f"{p:.3f}" for p in st["dose_p"])),
        ("control: 8 random live features each clamped to 2x its own max: mean p(class) (range)",
         f"{st['control_p_mean']:.3f} ({min(st['control_p']):.3f}-{max(st['control_p']):.3f})"),
        (f"the same feature zeroed on {st['zeroed_on_class']['n_images']} images the model calls {st['class']}",
         f"p {st['zeroed_on_class']['p_before']:.3f} -> {st['zeroed_on_class']['p_after']:.3f}"),
        ("feature index", f"{res['index']['units']} units + {res['index']['features']} features, "
         f"{res['index']['examples']} top patches, {res['index']['megabytes']} MB"),
        ("whole run from nothing (seconds)", f"{seconds:.0f}"),
    ]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = [f"## Vision: the CIFAR-10 CNN ({now})", "",
             f"Machine: {cpu_name()}, fp32. Command: `.venv/bin/python benchmarks/{Path(sys.argv[0]).name}` (the same "
             f"stages as `glasswork vision`). Held-out: 1,380 patches (60 per source, seed 1) "
             f"of 23 sources; the SAE trained on 3,450 others (seed 0). Figures: `benchmarks/img/vision-*.png`.", "",
             "| measurement | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    record("\n".join(table) + "\n", args.no_record)


if __name__ == "__main__":
    main()
