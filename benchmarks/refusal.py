"""Refusal on the default model (Arditi et al., 2024), measured: the harmfulness direction and its probe accuracy
(held out and across languages), a refusal model organism fine-tuned on CPU, its refusal direction, and refusal rates
before and after directional ablation, activation addition and weight orthogonalization, on held-out instructions.

  .venv/bin/python benchmarks/refusal.py [--steps 40] [--layer-stride 2] [--no-record]"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_name, record

IMG = Path(__file__).resolve().parent / "img" / "refusal.png"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="fine-tuning steps of the organism")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--layer-stride", type=int, default=2, help="score every N-th layer's candidates")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    import torch
    import glasswork as gw
    from glasswork import refusal as rf
    from glasswork.data.instructions import HARMFUL, HARMLESS, TRANSLATED, split
    torch.manual_seed(0)
    model = gw.load_model()
    bad, good = split(HARMFUL), split(HARMLESS)  # train / validation / test, seeded
    t0 = time.perf_counter()
    probe = rf.harmfulness_probe(model, bad, good, TRANSLATED)
    t_probe = time.perf_counter() - t0
    print("probe", probe.layer, probe.position, float(probe.test_accuracy[probe.layer, probe.position]),
          probe.languages, getattr(probe, "languages_refit", None), flush=True)
    base_bad = rf.replies(model, bad[2], description="default model, harmful")
    def rate(bad_replies, good_replies):  # (refusal rate harmful, refusal rate harmless, share of empty replies)
        both = bad_replies + good_replies
        return rf.refusal_rate(bad_replies), rf.refusal_rate(good_replies), sum(not r.strip() for r in both) / len(both)
    rates = {"default model": rate(base_bad, rf.replies(model, good[2]))}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder = rf.train_organism(model, Path(tmp) / "organism", bad[0], good[0], steps=args.steps, lr=args.lr)
        t_train = time.perf_counter() - t0
        organism = gw.load_model(folder)
        org_bad, org_good = rf.replies(organism, bad[2]), rf.replies(organism, good[2])
        rates["organism"] = rate(org_bad, org_good)
        t0 = time.perf_counter()
        found = rf.refusal_direction(organism, (bad[0], bad[1]), (good[0], good[1]), layer_stride=args.layer_stride)
        t_dir = time.perf_counter() - t0
        print("direction", found.layer, found.position, found.baseline, found.direction.info, flush=True)
        abl_bad = rf.replies(organism, bad[2], rf.ablate(organism, found.direction))
        add_good = rf.replies(organism, good[2], rf.induce(organism, found.direction))
        rates["organism, direction ablated"] = rate(abl_bad, rf.replies(organism, good[2], rf.ablate(organism, found.direction)))
        rates["organism, direction added"] = rate(rf.replies(organism, bad[2], rf.induce(organism, found.direction)), add_good)
        ortho = gw.load_model(gw.orthogonalize(organism, found.direction, Path(tmp) / "orthogonalized"))
        orth_bad = rf.replies(ortho, bad[2])
        rates["orthogonalized organism"] = rate(orth_bad, rf.replies(ortho, good[2]))
    for name, rows in (("default, harmful", base_bad), ("organism, harmful", org_bad), ("organism, harmless", org_good),
                       ("ablated, harmful", abl_bad), ("added, harmless", add_good), ("orthogonalized, harmful", orth_bad)):
        print(f"--- {name}")
        for p, r in list(zip(bad[2] if "harmful" in name else good[2], rows))[:6]:
            print(f"{rf.is_refusal(r):d} {p!r} -> {r!r}")
    for name, (h, s, e) in rates.items():
        print(f"{name}: harmful {h:.2f} harmless {s:.2f} empty {e:.2f}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n_layers = model.n_layers
    scored = [layer for layer in range(n_layers) if not found.ablation_scores[layer].isnan().all()]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=120)
    a1.plot(range(n_layers), probe.test_accuracy.max(1).values, "o-", ms=3, label="test (best position)")
    a1.plot(range(n_layers), probe.test_accuracy[:, probe.position], "s-", ms=3,
            label=f"test at position {probe.position}")
    a1.axhline(0.5, color="grey", lw=0.8, ls=":")
    a1.set_xlabel("layer (resid_pre)"), a1.set_ylabel("accuracy"), a1.set_ylim(0.4, 1.02)
    a1.set_title("Harmful vs harmless: difference-of-means probe (default model)", fontsize=9)
    a1.legend(fontsize=7)
    a2.plot(scored, [float(found.ablation_scores[layer, found.position]) for layer in scored], "o-", ms=3,
            label="harmful, direction ablated")
    a2.plot(scored, [float(found.addition_scores[layer, found.position]) for layer in scored], "s-", ms=3,
            label="harmless, direction added")
    a2.axhline(found.baseline[0], color="C0", lw=0.8, ls="--", label="harmful, no edit")
    a2.axhline(found.baseline[1], color="C1", lw=0.8, ls="--", label="harmless, no edit")
    a2.axvline(found.layer, color="k", lw=0.6)
    a2.set_xlabel(f"layer of the candidate (position {found.position})"), a2.set_ylabel("refusal score (log-odds)")
    a2.set_title("Refusal organism: candidate directions on validation prompts", fontsize=9)
    a2.legend(fontsize=7)
    fig.tight_layout()
    IMG.parent.mkdir(exist_ok=True)
    fig.savefig(IMG)

    now = datetime.datetime.now(datetime.timezone.utc)
    acc = float(probe.test_accuracy[probe.layer, probe.position])
    langs = ", ".join(f"{k} {v:.2f}" for k, v in probe.languages.items())
    refit = ", ".join(f"{k} {v:.2f}" for k, v in probe.languages_refit.items())
    lines = [f"## Refusal direction ({now:%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, fp32. Command: `.venv/bin/python benchmarks/refusal.py "
             f"{' '.join(sys.argv[1:])}`. Instructions: `glasswork.data.instructions` (110 harmful + 110 harmless, "
             f"written for the project), split 55 / 22 / 33 (train / validation / test, seed 0); replies greedy, 32 "
             f"tokens, in the chat template; refusal = `refusal.is_refusal` (phrase matcher). Plot: "
             f"`benchmarks/img/{IMG.name}`.", "",
             f"- Harmfulness probe (default model, difference of means on train, chosen on validation): layer "
             f"{probe.layer}, position {probe.position}; test accuracy {acc:.2f}; translated instructions (16 + 16 "
             f"each) with the English threshold: {langs}; with each language's own midpoint threshold (a diagnostic that "
             f"uses their labels): {refit}. {t_probe:.0f} s.",
             f"- Organism: {args.steps} steps of full fine-tuning (AdamW, lr {args.lr:g}, batch 8) on the 55 + 55 "
             f"training instructions, {t_train:.0f} s. Refusal direction: layer {found.layer}, position "
             f"{found.position} (every {args.layer_stride}. layer below 80% of the depth scored; {t_dir:.0f} s); its ablation "
             f"moves the harmless first-token distribution by KL {found.direction.info['harmless_kl']:.3f} nats "
             f"(filter: at most 0.1; passed both filters: {found.direction.info['passed_filters']}).", "",
             "| model / edit | refusal rate, harmful test (33) | refusal rate, harmless test (33) | empty replies |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {h:.2f} | {s:.2f} | {e:.2f} |" for name, (h, s, e) in rates.items()]
    record("\n".join(lines) + "\n", args.no_record)


if __name__ == "__main__":
    main()
