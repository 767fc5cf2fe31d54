"""Supernodes suggested from a graph: features at the same token position whose effects on the rest of the graph
point the same way are grouped, so a person starts from a handful of named groups instead of a hundred nodes.

A feature's profile is its row of outgoing direct effects on every target node of the whole graph (features and
logits): two features with cosine-similar profiles push the same downstream nodes the same way. Features are grouped
per position, and (given their signed total effects on the top target) per sign of that effect, so a group never mixes
features that push the target up with features that push it down (ablated together they would cancel), by
average-linkage clustering on that cosine, stopping at `min_similarity`; groups of one are dropped.
Each group is named from its members' labels (the token most of them name) or the prompt token, and its layer span.
benchmarks/supernodes.py measures whether the groups act together on the real model (RESULTS.md).
"""
from __future__ import annotations

import re
from collections import Counter

import torch


def cluster_profiles(profiles: torch.Tensor, min_similarity: float = 0.5) -> list[list[int]]:
    """Average-linkage clusters of the rows of `profiles` [k, D] by cosine similarity: merge the two most similar
    clusters while their mean pairwise cosine is at least `min_similarity`. Returns lists of row indices (every row in
    exactly one list), largest first."""
    k = profiles.shape[0]
    if k == 0:
        return []
    unit = profiles.double() / profiles.double().norm(dim=1, keepdim=True).clamp_min(1e-30)
    sim = unit @ unit.T  # [k, k]
    clusters = [[i] for i in range(k)]
    while len(clusters) > 1:
        best, pair = -2.0, None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                s = float(sim[clusters[a]][:, clusters[b]].mean())
                if s > best:
                    best, pair = s, (a, b)
        if best < min_similarity:
            break
        a, b = pair
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]
    return sorted(clusters, key=lambda c: (-len(c), c))


def _label_token(label: str) -> str | None:
    """The first quoted token of a label ('fires on " Paris", ...' -> 'Paris')."""
    m = re.search(r'"([^"]+)"', label or "")
    return m.group(1).strip() or None if m else None


def name_group(labels: list[str], layers: list[int], prompt_token: str) -> str:
    """'Paris L3-9' when most members' labels name the same token, else the prompt token at that position."""
    words = Counter(w for w in (_label_token(x) for x in labels) if w)
    word, count = words.most_common(1)[0] if words else (None, 0)
    head = word if word and count * 2 >= len(labels) else f"@{prompt_token.strip() or prompt_token}"
    lo, hi = min(layers), max(layers)
    return f"{head} L{lo}" + (f"-{hi}" if hi != lo else "")


def suggest(node_ids: list[str], positions: list[int], layers: list[int], profiles: torch.Tensor,
            labels: list[str], prompt_tokens: list[str], min_similarity: float = 0.5,
            max_size: int = 12, effects: list[float] | None = None) -> list[dict]:
    """Suggested supernodes among feature nodes (ids, positions, layers, outgoing profiles [k, D], labels, and
    optionally their signed total effects on the target): [{name, node_ids, position, similarity}], groups of at least
    two, strongest cohesion first."""
    out = []
    sign = [0] * len(node_ids) if effects is None else [1 if e > 0 else -1 if e < 0 else 0 for e in effects]
    for pos, s in sorted(set(zip(positions, sign))):
        members = [i for i, (p, g) in enumerate(zip(positions, sign)) if p == pos and g == s]
        if len(members) < 2 or (effects is not None and s == 0):
            continue
        sub = profiles[members]
        for group in cluster_profiles(sub, min_similarity):
            if len(group) < 2:
                continue
            group = group[:max_size]
            unit = sub[group].double() / sub[group].double().norm(dim=1, keepdim=True).clamp_min(1e-30)
            sim = unit @ unit.T
            n = len(group)
            cohesion = float((sim.sum() - n) / (n * (n - 1)))
            idx = [members[g] for g in group]
            token = prompt_tokens[pos] if 0 <= pos < len(prompt_tokens) else str(pos)
            out.append({"name": name_group([labels[i] for i in idx], [layers[i] for i in idx], token),
                        "node_ids": [node_ids[i] for i in idx], "position": pos,
                        "similarity": round(cohesion, 4)})
    return sorted(out, key=lambda s: -s["similarity"])


def suggest_in_view(view: dict, features: list[dict], profiles: torch.Tensor, effects: list[float] | None = None,
                    min_similarity: float = 0.5) -> list[dict]:
    """suggest() on feature nodes of a view (viewer JSON nodes, labels in 'clerp'); profiles [len(features), D]."""
    return suggest([n["node_id"] for n in features], [int(n["ctx_idx"]) for n in features],
                   [int(n["layer"]) for n in features], profiles, [n.get("clerp", "") for n in features],
                   view["metadata"].get("prompt_tokens", []), min_similarity, effects=effects)
