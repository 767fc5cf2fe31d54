"""Do suggested supernodes act together? On graphs of held-out prompts through the demo's transcoders, each suggested
group (glasswork.circuits.supernodes, from the viewer's first view: at most 100 features and errors) is ablated on the
real model (free mode: later layers respond), and the change in the top target's logit is compared with ablating the
same number of random features of the same view: (a) at the same token position, (b) anywhere in the view.
A suggestion "acts together" when its ablation moves the target logit more than the mean of the random draws.

  python benchmarks/supernodes.py [--demo DIR] [--prompts 8] [--draws 8] [--split sign|none] [--no-record]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import glasswork as gw
import torch

from glasswork.circuits import Edit, feature_edits
from glasswork.circuits.attribution import prompt_ids
from glasswork.circuits.graph import view_features
from glasswork.circuits.supernodes import suggest_in_view
from glasswork.features import FeatureIndex, ensure_labels, layer_index_path
from _machine import cpu_name  # noqa: E402

HERE = Path(__file__).parent


@torch.no_grad()
def effect(model, tcs, ids, before: float, nodes: list[str], token: int) -> float:
    """|change of the target token's logit| when the features of `nodes` are set to 0 at their positions (free mode:
    the real model runs on; what intervene_logits(mode="free") measures, with the clean logit computed once)."""
    edits = [Edit(int(a), int(b), [int(c)], 0.0) for a, b, c in (n.split("_") for n in nodes)]
    with feature_edits(model, tcs, edits):
        after = float(model.logits(ids.view(1, -1))[0, -1, token])
    return abs(after - before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=gw.home() / "demo", help="a demo folder (its transcoders/)")
    ap.add_argument("--prompts", type=int, default=8, help="the first N of benchmarks/data/heldout_prompts.txt")
    ap.add_argument("--draws", type=int, default=8, help="random groups per suggestion and baseline")
    ap.add_argument("--min-similarity", type=float, default=0.5)
    ap.add_argument("--profile", choices=["edges", "influence"], default="edges",
                    help="edges: outgoing direct effects; influence: each weighted by its target's influence")
    ap.add_argument("--split", choices=["sign", "none"], default="sign",
                    help="sign: groups never mix features pushing the target up and down (the viewer's default)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    model = gw.load_model()
    tc_dir = args.demo / "transcoders"
    tcs = gw.load_transcoders(tc_dir)
    prompts = [p for p in (HERE / "data" / "heldout_prompts.txt").read_text().splitlines()
               if p.strip() and not p.startswith("#")][:args.prompts]
    rng = random.Random(0)
    rows, t0 = [], time.time()
    for prompt in prompts:
        g = gw.attribute(model, tcs, prompt, max_features=4096, show_progress=False, dictionary=str(tc_dir))
        view = g.view(0.8, 0.98, max_nodes=100)
        feats = [dict(n) for n in view_features(view)]
        ids = [n["node_id"] for n in feats]
        index_of = {g.node_id(i): i for i in range(g.n_features)}
        for n in feats:
            layer, f = int(n["layer"]), int(n["node_id"].split("_")[1])
            path = layer_index_path(tc_dir, layer)
            n["clerp"] = ensure_labels(FeatureIndex(path), [f])[f] if path.exists() else ""
        feature_rows = [index_of[i] for i in ids]
        effects = g.total_effects()[feature_rows].tolist() if args.split == "sign" else None
        profiles = g.out_edges(feature_rows)
        if args.profile == "influence":  # each edge weighted by how much its target matters for the prediction
            profiles = profiles * g.node_influence()[g.row_nodes][None, :]
        found = suggest_in_view(view, feats, profiles, effects, args.min_similarity)
        token = int(g.node_index[g.n_nodes - g.n_logits])  # the top target
        prompt_tokens = prompt_ids(model, prompt)
        with torch.no_grad():
            before = float(model.logits(prompt_tokens.view(1, -1))[0, -1, token])
        for sg in found:
            group = sg["node_ids"]
            same = [i for n, i in zip(feats, ids) if n["ctx_idx"] == sg["position"] and i not in group]
            anywhere = [i for i in ids if i not in group]
            e = effect(model, tcs, prompt_tokens, before, group, token)
            base = {}
            for name, pool in (("same_position", same), ("anywhere", anywhere)):
                if len(pool) >= len(group):
                    draws = [rng.sample(pool, len(group)) for _ in range(args.draws)]
                    base[name] = statistics.mean(effect(model, tcs, prompt_tokens, before, d, token) for d in draws)
            rows.append({"prompt": prompt, "name": sg["name"], "size": len(group), "similarity": sg["similarity"],
                         "effect": e, **base})
        print(f"{prompt!r}: {len(found)} suggestions ({time.time() - t0:.0f} s)", file=sys.stderr)

    def beat(key):
        have = [r for r in rows if key in r]
        return sum(r["effect"] > r[key] for r in have), len(have), \
            statistics.median(r["effect"] / max(r[key], 1e-9) for r in have) if have else float("nan")

    lines = ["| baseline (same number of random features of the view) | suggestions that beat it | median effect ratio |",
             "|---|---|---|"]
    for key, what in (("same_position", "at the same position"), ("anywhere", "anywhere in the view")):
        b, n, ratio = beat(key)
        lines.append(f"| {what} | {b} of {n} ({100 * b / max(n, 1):.0f}%) | {ratio:.2f}x |")
    sizes = [r["size"] for r in rows]
    summary = (f"{len(rows)} suggestions on {len(prompts)} held-out prompts (sizes {min(sizes, default=0)}-"
               f"{max(sizes, default=0)}, median {statistics.median(sizes) if sizes else 0}), {args.draws} random draws "
               f"each, {time.time() - t0:.0f} s")
    table = "\n".join(lines)
    print(table + "\n" + summary)
    if not args.no_record:
        cmd = "python benchmarks/" + " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))
        with open(HERE / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Suggested supernodes: do they act together? ({datetime.now(timezone.utc):%Y-%m-%d})\n\n"
                     f"Machine: {cpu_name()}, {os.cpu_count()} cores, fp32. Command: `{cmd}`. Transcoders: "
                     f"{tc_dir}. Groups split by sign of effect: {args.split}; profile: {args.profile}. Each suggested group is ablated on the real model (free mode) and the top target's "
                     f"logit change is compared with ablating as many random features of the same first view "
                     f"(at most 100 features and errors).\n\n{table}\n\n{summary}.\n")


if __name__ == "__main__":
    main()
