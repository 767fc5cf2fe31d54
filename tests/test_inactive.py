"""Inactive and inhibitory features: each inactive feature's predicted effect on the target is what setting it to its
typical activation does in the frozen replacement model (exactly), for per-layer transcoders and a CLT; features that
fired are never listed; the inhibitory summary is the graph's negative total effects."""
from __future__ import annotations

import pytest
import torch

from glasswork.circuits import attribute, intervene_logits
from glasswork.circuits.graph import ERROR, FEATURE, TOKEN
from glasswork.circuits.inactive import add_inactive, inactive_features, inhibitory
from glasswork.circuits.interventions import Edit
from glasswork.circuits.replacement import ReplacementModel

from conftest import make_tiny
from test_circuits import prompt, random_clt, random_transcoders


@pytest.mark.parametrize("coders_of", [random_transcoders, random_clt], ids=["transcoders", "clt"])
def test_predicted_effects_are_frozen_interventions(coders_of):
    m = make_tiny("llama")
    coders = coders_of(m)
    ids = prompt(m, 7)
    layers = sorted(coders) if isinstance(coders, dict) else list(range(m.n_layers))
    d_sae = coders.d_sae if not isinstance(coders, dict) else next(iter(coders.values())).d_sae
    g = torch.Generator().manual_seed(1)
    typical = {layer: torch.rand(d_sae, generator=g) * 3 for layer in layers}
    rep = inactive_features(m, coders, ids, typical, top=10 ** 6, verify=0)  # every candidate of every layer
    r = ReplacementModel(m, coders)
    feats, _ = r.features(r.clean(ids.view(1, -1)))
    active = set(zip(feats.layer.tolist(), feats.index.tolist(), feats.pos.tolist()))
    rows = rep["features"]
    assert rows and not any((x["layer"], x["feature"], x["pos"]) in active for x in rows)
    assert all(x["pos"] > 0 for x in rows)  # BOS is left out
    assert [abs(x["predicted"]) for x in rows] == sorted((abs(x["predicted"]) for x in rows), reverse=True)
    picks = [rows[0], rows[len(rows) // 2], rows[-1]] + [rows[i] for i in torch.randint(len(rows), (5,), generator=g)]
    for x in picks:
        assert x["typical_activation"] == pytest.approx(float(typical[x["layer"]][x["feature"]]), rel=1e-6)
        edit = [Edit(x["layer"], x["feature"], [x["pos"]], value=x["typical_activation"])]
        got = intervene_logits(m, coders, ids, edit, mode="frozen", tokens=[rep["token"]])["demeaned_change"][0]
        assert got == pytest.approx(x["predicted"], rel=1e-4, abs=1e-6)
    verified = inactive_features(m, coders, ids, typical, top=4, verify=2)["features"]
    assert verified[0]["frozen"] == pytest.approx(verified[0]["predicted"], rel=1e-4, abs=1e-6)
    assert "real" in verified[1] and "real" not in verified[2]


def test_inhibitory_summary_is_the_graphs_negative_total_effects():
    m = make_tiny("llama")
    tcs = random_transcoders(m)
    ids = prompt(m, 8)
    graph = attribute(m, tcs, ids, show_progress=False)
    out = inhibitory(graph, top=5)
    assert len(out) == graph.n_logits
    for t, rec in enumerate(out):
        eff = graph.total_effects(t).clone()
        eff[graph.n_nodes - graph.n_logits:] = 0
        neg = eff.clamp(max=0)
        ids_of = {graph.node_id(i): i for i in range(graph.n_nodes)}
        assert [x["node"] for x in rec["nodes"]] == [graph.node_id(i) for i in neg.argsort()[:5].tolist() if eff[i] < 0]
        assert all(x["effect"] == pytest.approx(float(eff[ids_of[x["node"]]])) for x in rec["nodes"])
        assert rec["negative_total"] == pytest.approx(float(neg.sum()), rel=1e-5)
        assert sum(rec["shares"].values()) == pytest.approx(1.0, abs=1e-5)
        kinds = {"features": FEATURE, "errors": ERROR, "tokens": TOKEN}
        for k, v in kinds.items():
            assert rec["shares"][k] == pytest.approx(float(neg[graph.node_kind == v].sum() / neg.sum()), abs=1e-5)
    add_inactive(graph, m, tcs, top=3, verify=1)
    assert len(graph.meta["inactive"]["features"]) == 3 and graph.meta["inhibitory"] == inhibitory(graph, 3)
