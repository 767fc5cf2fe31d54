"""Faithfulness of the replacement: each ablated feature's real-model effect equals the same ablation done by hand on
the plain HF modules (a hook that takes the feature's decoder write out of its MLP output), the replacement side is
the graph's total effect, and the agreement statistics equal brute-force definitions."""
from __future__ import annotations

import pytest
import torch

from glasswork.circuits import attribute
from glasswork.circuits.faithfulness import add_faithfulness, agreement
from glasswork.circuits.graph import FEATURE

from test_circuits import _tiny_llama_graph, random_clt, random_transcoders


def _by_hand(m, tcs, ids, layer, feature, pos, token):
    """The demeaned logit change of `token` when feature (layer, feature) at pos is removed from its MLP output."""
    mlp = m.hf.model.layers[layer].mlp
    tc = tcs[layer]

    def hook(mod, args, out):
        x = args[0][0, pos]  # the MLP input: what the transcoder reads
        a = tc.encode(x[None])[0, feature]
        out = out.clone()
        out[0, pos] -= a * tc.W_dec[feature]
        return out
    with torch.no_grad():
        before = m.hf(input_ids=ids.view(1, -1)).logits[0, -1]
        handle = mlp.register_forward_hook(hook)
        try:
            after = m.hf(input_ids=ids.view(1, -1)).logits[0, -1]
        finally:
            handle.remove()
    diff = after - before
    return float(diff[token] - diff.mean())


def test_real_effects_are_hand_made_ablations_and_replacement_effects_are_the_graph():
    m, tcs, ids, g, _, _ = _tiny_llama_graph(random_transcoders, 8, 16)
    rep = add_faithfulness(g, m, tcs, n_features=6)
    assert g.meta["faithfulness"] is rep and rep["n_features"] == 6
    effects = g.total_effects(0)
    ids_of = {g.node_id(i): i for i in range(g.n_nodes)}
    for row in rep["features"]:
        i = ids_of[row["node"]]
        assert int(g.node_kind[i]) == FEATURE
        layer, pos, f = int(g.node_layer[i]), int(g.node_pos[i]), int(g.node_index[i])
        assert row["real"] == pytest.approx(_by_hand(m, tcs, ids, layer, f, pos, rep["target"]), rel=1e-4, abs=1e-6)
        assert row["replacement"] == pytest.approx(-float(effects[i]), rel=1e-6)
    infl = g.node_influence()
    chosen = [infl[ids_of[r["node"]]] for r in rep["features"]]
    assert chosen == sorted(chosen, reverse=True)  # the most influential features


def test_agreement_statistics_are_their_definitions():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(9, generator=g).tolist()
    real = [p * 0.7 + 0.3 * float(torch.randn(1, generator=g)) for p in pred]
    rows = [{"replacement": p, "real": r} for p, r in zip(pred, real)]
    got = agreement(rows)
    n = len(rows)
    rank = (lambda v: [sorted(v).index(x) for x in v])
    rp, rr = rank(pred), rank(real)
    d2 = sum((a - b) ** 2 for a, b in zip(rp, rr))
    assert got["spearman"] == pytest.approx(1 - 6 * d2 / (n * (n * n - 1)), abs=1e-4)  # no ties: the classic formula
    assert got["same_sign"] == pytest.approx(sum((p > 0) == (r > 0) for p, r in zip(pred, real)) / n, abs=1e-4)
    assert got["mean_ratio"] == pytest.approx(sum(r / p for p, r in zip(pred, real)) / n, abs=1e-4)
    assert got["slope"] == pytest.approx(sum(p * r for p, r in zip(pred, real)) / sum(p * p for p in pred), abs=1e-4)
    perfect = agreement([{"replacement": x, "real": 2 * x} for x in pred])
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["slope"] == pytest.approx(2.0)
    assert agreement(rows[:1])["spearman"] is None


def test_clt_graph_faithfulness_runs_and_custom_targets_are_refused():
    m, clt, ids, g, _, _ = _tiny_llama_graph(random_clt, 6, 16)
    rep = add_faithfulness(g, m, clt, n_features=4)
    assert rep["n_features"] == 4 and all(isinstance(r["real"], float) for r in rep["features"])
    import glasswork as gw
    with pytest.raises(gw.GlassworkError, match="logit difference or a direction"):
        d = attribute(m, clt, ids, target=torch.randn(m.d_model), show_progress=False)
        add_faithfulness(d, m, clt)
