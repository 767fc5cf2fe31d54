"""What the graph does not show: features that did not fire but would move the target most if they did, and what
inhibits each target.

Inactive features: one backward pass of the target (its demeaned logit at the last position) through the frozen
replacement model gives the gradient g_j [seq, d] at each MLP output j; a feature of layer i that is off at position p
would, firing at a typical activation a (its mean activation when it fires, from the feature index; 1 without one),
move the target directly by  a x sum_j g_j[p] . W_dec_i->j[f]  (one j for a per-layer transcoder, every layer it
writes for a CLT). That is exact in the frozen replacement (attention, norm scales and the other features fixed; the
frozen intervention equals it); the top few are also set in the real model, everything downstream free, to say how
far the estimate carries.

Inhibitory paths: for each target, the nodes whose total effect in the graph (direct edge plus every path through
features) is most negative, and the share of all negative effect that features, errors and tokens carry.
"""
from __future__ import annotations

import torch

from ..io import GlassworkError
from .graph import ERROR, FEATURE, TOKEN, Graph
from .interventions import Edit, intervene_logits
from .replacement import ReplacementModel


def inactive_features(model, transcoders, prompt, typical: dict[int, torch.Tensor] | None = None, top: int = 10,
                      verify: int = 5, target=None) -> dict:
    """The `top` inactive (layer, feature, position) of largest |direct effect| on the top target if they fired at
    their typical activation (`typical`: {layer: [d_sae]} mean activations when firing; missing: 1.0). The first
    `verify` are set in the frozen replacement and in the real model. BOS is left out (an attention sink)."""
    from .attribution import logit_targets, prompt_ids
    r = transcoders if isinstance(transcoders, ReplacementModel) else ReplacementModel(model, transcoders)
    ids = prompt_ids(model, prompt)
    c = r.clean(ids.view(1, -1))
    t = logit_targets(model, c.logits[-1], target)[0]
    probes, final = r.probed(c, ids)
    layers = range(model.n_layers)
    with torch.enable_grad():
        got = torch.autograd.grad(final[0, -1] @ t.vector.to(final), [probes[j] for j in layers], allow_unused=True)
    grads = {j: (g[0] if g is not None else torch.zeros_like(probes[j][0])) for j, g in zip(layers, got)}  # [seq, d]
    feats, _ = r.features(c)
    seq = ids.numel()
    candidates = []  # (score, layer, feature, pos, typical activation)
    for i in ([*sorted(r.transcoders)] if r.clt is None else list(layers)):
        per_unit = _write_gradient(r, i, grads)  # [seq, F]: the target's change per unit of each feature's activation
        a = torch.ones(per_unit.shape[1]) if typical is None or i not in typical else typical[i].float().cpu()
        score = per_unit.cpu() * a
        off = torch.ones_like(score, dtype=torch.bool)
        on = feats.layer == i
        off[feats.pos[on], feats.index[on]] = False  # active features are in the graph already
        off[0] = False
        where = off.flatten().nonzero().flatten()
        flat = score.flatten()[where]
        best = where[flat.abs().topk(min(top, flat.numel())).indices]
        n_f = score.shape[1]
        candidates += [(float(score.flatten()[k]), i, k % n_f, k // n_f, float(a[k % n_f])) for k in best.tolist()]
    candidates = sorted(candidates, key=lambda x: -abs(x[0]))[:top]
    rows = [{"node": f"{i}_{f}_{p}", "layer": i, "feature": f, "pos": p, "typical_activation": a, "predicted": s}
            for s, i, f, p, a in candidates]
    token = int(t.token)
    if token < 0 and verify:
        raise GlassworkError("inactive features are checked on one token's logit: this target is a logit difference "
                             "or a direction (pass verify=0, or a token target)")
    for row in rows[:verify]:
        edit = [Edit(row["layer"], row["feature"], [row["pos"]], value=row["typical_activation"])]
        frozen = intervene_logits(model, transcoders, ids, edit, mode="frozen", tokens=[token])
        free = intervene_logits(model, transcoders, ids, edit, mode="free", tokens=[token])
        row["frozen"], row["real"] = frozen["demeaned_change"][0], free["demeaned_change"][0]
    return {"target": t.label, "token": token, "seq": seq,
            "typical": "mean activation when firing (feature index)" if typical else "1.0 (no feature index)",
            "features": rows}


def _write_gradient(r: ReplacementModel, layer: int, grads: dict[int, torch.Tensor]) -> torch.Tensor:
    """[seq, F]: sum over the MLP outputs j that layer `layer`'s features write to of g_j @ W_dec_j^T."""
    if r.clt is None:
        return grads[layer] @ r.transcoders[layer].W_dec.detach().float().T
    w = r.clt.W_dec[layer].detach().float()  # [F, n_i, d]
    return sum(grads[layer + j] @ w[:, j].T for j in range(w.shape[1]))


def inhibitory(graph: Graph, top: int = 10) -> list[dict]:
    """Per logit target: the `top` nodes with the most negative total effect on it, and how the negative effect of
    all nodes splits between features, errors and tokens."""
    out = []
    kinds = {"features": FEATURE, "errors": ERROR, "tokens": TOKEN}
    for t in range(graph.n_logits):
        eff = graph.total_effects(t).clone()
        eff[graph.n_nodes - graph.n_logits:] = 0.0
        neg = eff.clamp(max=0)
        total = float(neg.sum())
        order = neg.argsort()[:top]
        out.append({"target": graph.meta.get("logit_labels", [""] * graph.n_logits)[t],
                    "negative_total": total, "positive_total": float(eff.clamp(min=0).sum()),
                    "shares": {k: (float(neg[graph.node_kind == v].sum()) / total if total else 0.0)
                               for k, v in kinds.items()},
                    "nodes": [{"node": graph.node_id(i), "effect": float(eff[i])} for i in order.tolist()
                              if eff[i] < 0]})
    return out


def add_inactive(graph: Graph, model, transcoders, typical=None, top: int = 10, verify: int = 5) -> None:
    """Keep both in graph.meta ('inactive' for the top target, 'inhibitory' per target; the viewer shows them)."""
    if graph.input_ids is None:
        raise GlassworkError("the graph has no input ids to trace again")
    graph.meta["inactive"] = inactive_features(model, transcoders, graph.input_ids, typical, top, verify)
    graph.meta["inhibitory"] = inhibitory(graph, top)
