"""Does the replacement model reproduce the model's mechanism, or only its outputs? For a graph's most influential
features: what ablating each one (activation -> 0 at its position) does to the top target's demeaned logit

  replacement  minus the feature's total effect in the graph (its direct edge plus every path through other features:
               the frozen linear replacement, attention patterns and norm scales fixed)
  real         the real model with the feature's decoder write removed and everything downstream free to react
               (interventions.feature_edits: later MLPs, attention patterns, other features)

and how well the first predicts the second over those features: the rank (Spearman) correlation, the share with the
same sign, the mean of real / replacement, and the least-squares slope of real on replacement (through 0).
"""
from __future__ import annotations

import torch

from ..io import GlassworkError
from .graph import FEATURE, Graph
from .interventions import Edit, feature_edits


def faithfulness(model, transcoders, graph: Graph, n_features: int = 20, target: int = 0) -> dict:
    """The comparison above for the `n_features` features of highest influence and logit target `target`."""
    if not 0 <= target < graph.n_logits:
        raise GlassworkError(f"target {target} outside the graph's {graph.n_logits} logit targets")
    token = graph.logit_token(target)
    if token < 0:
        raise GlassworkError("faithfulness compares one token's logit: this graph's target is a logit difference or a "
                             "direction (trace a token target)")
    feats = (graph.node_kind == FEATURE).nonzero().flatten()
    top = feats[graph.node_influence()[feats].argsort(descending=True)[:n_features]]
    effects = graph.total_effects(target)
    ids = graph.input_ids.to(model.device).view(1, -1)
    with torch.no_grad():
        before = model.logits(ids)[0, -1].float()
        rows = []
        for i in top.tolist():
            layer, pos, feature = int(graph.node_layer[i]), int(graph.node_pos[i]), int(graph.node_index[i])
            with feature_edits(model, transcoders, [Edit(layer, feature, [pos], value=0.0)]):
                diff = model.logits(ids)[0, -1].float() - before
            rows.append({"node": graph.node_id(i), "replacement": -float(effects[i]),
                         "real": float(diff[token] - diff.mean())})
    return {"target": token, "n_features": len(rows), **agreement(rows), "features": rows}


def agreement(rows: list[dict]) -> dict:
    """Spearman correlation, sign agreement, mean ratio and slope of `real` against `replacement`."""
    if len(rows) < 2:
        return {"spearman": None, "same_sign": None, "mean_ratio": None, "slope": None}
    pred = torch.tensor([r["replacement"] for r in rows], dtype=torch.float64)
    real = torch.tensor([r["real"] for r in rows], dtype=torch.float64)
    ranks = (lambda v: v.argsort().argsort().double())
    rp, rr = ranks(pred), ranks(real)
    rp, rr = rp - rp.mean(), rr - rr.mean()
    spearman = float((rp @ rr) / (rp.norm() * rr.norm()).clamp_min(1e-30))
    live = pred.abs() > 1e-9
    return {"spearman": round(spearman, 4), "same_sign": round(float((pred.sign() == real.sign()).double().mean()), 4),
            "mean_ratio": round(float((real[live] / pred[live]).mean()), 4) if bool(live.any()) else None,
            "slope": round(float((pred @ real) / (pred @ pred).clamp_min(1e-30)), 4)}


def add_faithfulness(graph: Graph, model, transcoders, n_features: int = 20) -> dict:
    """Measure it and keep it in graph.meta['faithfulness'] (saved with the graph; the viewer shows it)."""
    graph.meta["faithfulness"] = faithfulness(model, transcoders, graph, n_features)
    return graph.meta["faithfulness"]
