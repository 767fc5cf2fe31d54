"""QK attribution on the default model, on prompts no issue names: is the split exact (the pair terms against the
score the real model computes), how long it takes, and what the query and key sides are made of (the share of their
absolute contribution carried by features, error nodes, token embeddings and the constant).

  .venv/bin/python benchmarks/qk.py --dictionary TRANSCODERS_DIR [--heads 4] [--keys 3] [--no-record]"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch

from _machine import cpu_name, record

PROMPTS = ["The opposite of hot is", "Fact: the currency of Japan is the",
           "She poured the coffee into her favourite", "One, two, three, four,",
           "The doctor said that the patient should"]


def kinds(ids: list[str]) -> torch.Tensor:
    """0 feature, 1 error, 2 token, 3 constant: the kind of each QK node id."""
    return torch.tensor([3 if i == "bias" else 1 if i.startswith("err_") else 2 if i.startswith("E_") else 0
                         for i in ids])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dictionary", required=True, type=Path)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--keys", type=int, default=3)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    import glasswork as gw
    from glasswork.circuits import ReplacementModel
    from glasswork.circuits.attribution import logit_targets
    from glasswork.circuits.qk import QKSplit, qk_from_clean
    model = gw.load_model()
    from glasswork.dictionaries.saving import load_coders
    coders = load_coders(args.dictionary)
    r = ReplacementModel(model, coders)
    rows = []
    for text in PROMPTS:
        ids = model.tokenize(text).flatten()
        t0 = time.perf_counter()
        c = r.clean(ids.view(1, -1))
        rep = qk_from_clean(r, c, ids, logit_targets(model, c.logits[-1]), n_heads=args.heads, n_keys=args.keys)
        seconds = time.perf_counter() - t0
        split = QKSplit(r, c, ids)  # again, to read the node terms themselves
        worst, share_q, share_k = 0.0, torch.zeros(4), torch.zeros(4)
        for h in rep["heads"]:
            q, k = c.qk[r.attns[h["layer"]]][:2]
            parts = split.split(h["layer"], h["head"], rep["query_pos"], [x["key_pos"] for x in h["keys"]])
            for rec, (Q, K) in zip(h["keys"], parts):
                real = float(q[0, h["head"], rep["query_pos"]] @ k[0, h["kv_head"], rec["key_pos"]]) * rec["scaling"]
                worst = max(worst, abs(rec["score"] - real) / max(abs(real), 1e-6))
                kind = kinds(split.ids)
                for side, M in ((share_q, Q), (share_k, K)):
                    mass = M.norm(dim=0).cpu()  # each node's contribution size to the query / key
                    side += torch.stack([mass[kind == j].sum() for j in range(4)]) / mass.sum()
        n = sum(len(h["keys"]) for h in rep["heads"])
        top = rep["heads"][0]
        best = max(top["keys"], key=lambda x: x["pattern"])
        pair = best["pairs"][0]
        rows.append((text, ids.numel(), len(split.feats), seconds, worst, share_q / n, share_k / n,
                     f"L{top['layer']}H{top['head']} -> pos {best['key_pos']} ({best['pattern']:.2f}): "
                     f"{pair['query']} x {pair['key']} {pair['score']:+.2f} of {best['score']:+.2f}"))
        print(rows[-1], flush=True)
    fmt = (lambda s: " / ".join(f"{x:.2f}" for x in s.tolist()))
    lines = [f"## QK attribution on the default model ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
             f"UTC)", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, fp32. Dictionary: `{args.dictionary}` "
             f"({type(coders).__name__ if not isinstance(coders, dict) else f'{len(coders)} transcoders'}). "
             f"Command: `.venv/bin/python benchmarks/qk.py {' '.join(sys.argv[1:])}`. For each prompt the {args.heads} "
             f"heads with the largest effect on the top token at the last position, each split at the {args.keys} keys "
             f"it attends to most. *error*: the largest relative difference between the summed pair terms and "
             f"scaling x q.k from the real model's own query and key. *shares*: of the summed contribution sizes "
             f"(|q_i|, |k_j|), features / errors / tokens / constant, averaged over the splits.", "",
             "| prompt | tokens | features | seconds | error | query shares | key shares | strongest pair of the top head |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {t!r} | {n} | {f:,} | {s:.1f} | {e:.1e} | {fmt(sq)} | {fmt(sk)} | {p} |"
              for t, n, f, s, e, sq, sk, p in rows]
    record("\n".join(lines) + "\n", args.no_record)


if __name__ == "__main__":
    main()
