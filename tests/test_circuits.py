"""Circuits: the replacement model reproduces the logits; every adjacency entry is the exact effect of perturbing its
source in the frozen model; influence matches a brute-force inverse; pruning, views, files, interventions, errors."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import glasswork as gw
from glasswork.circuits import Edit, Graph, ReplacementModel, attribute, intervene_logits, load_graph
from glasswork.circuits.graph import ERROR, FEATURE, LOGIT, TOKEN
from glasswork.circuits.interventions import _frozen_logits, generate
from glasswork.io import GlassworkError

from conftest import make_tiny


def random_transcoders(m, d_sae=48, missing=(1,), skip_layers=(0,), activation="relu", k=8, seed=0):
    """Random transcoders with a negative encoder bias (sparse), a skip on some layers and a layer left out."""
    tcs = {}
    for layer in range(m.n_layers):
        if layer in missing:
            continue
        cfg = gw.DictionaryConfig(kind="transcoder", d_in=m.d_model, d_sae=d_sae, activation=activation, k=k,
                                  skip=layer in skip_layers, layer=layer, model=m.name)
        tc = gw.SparseCoder(cfg)
        tc.reset_parameters(seed=seed + layer)
        with torch.no_grad():
            tc.b_enc.fill_(-0.1)
            tc.b_dec.normal_(0, 0.05)
            if tc.W_skip is not None:
                tc.W_skip.normal_(0, 0.1)
        tcs[layer] = tc.requires_grad_(False)
    return tcs


def random_clt(m, d_sae=24, seed=0, skip=False):
    cfg = gw.DictionaryConfig(kind="clt", d_in=m.d_model, d_sae=d_sae, activation="relu", n_layers=m.n_layers,
                              model=m.name, skip=skip)
    clt = gw.CrossLayerTranscoder(cfg)
    clt.reset_parameters(seed=seed)
    with torch.no_grad():
        clt.b_enc.fill_(-0.05)
        if clt.W_skip is not None:
            # small: a random skip on every layer of these tiny models (a small residual stream, large norm scales)
            # multiplies the frozen pass's fp32 rounding ~20x a layer at 0.1
            clt.W_skip.normal_(0, 0.02, generator=torch.Generator().manual_seed(seed + 1))
    return clt.requires_grad_(False)


def prompt(m, seq=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, m.vocab_size, (seq,), generator=g)
    ids[0] = m.bos_token_id
    return ids


def _skip_consts(r, c):
    out = []
    for layer in range(r.model.n_layers):
        tc = r.transcoders.get(layer)
        if r.clt is not None:
            skip = c.mlp_in[layer] @ r.clt.W_skip[layer] if r.clt.W_skip is not None else 0.0
        else:
            skip = c.mlp_in[layer] @ tc.W_skip if tc is not None and tc.W_skip is not None else 0.0
        out.append(c.mlp_out[layer] - skip)
    return out


def check_exactness(m, coders, ids, n_sources=6, seed=0, **kw):
    """Perturb random sources of every kind by their own vector in the frozen model; compare each target's change
    (feature pre-activations and demeaned logits) with the adjacency column."""
    r = ReplacementModel(m, coders)
    g = attribute(m, r, ids, **kw)
    c = r.clean(ids.view(1, -1))  # the same clean pass attribute ran (deterministic)
    _, recon = r.features(c)
    consts = _skip_consts(r, c)
    A = g.dense().double()
    seq, d = ids.numel(), m.d_model
    W_U = m.W_U.detach().double()
    rows = g.row_nodes

    def targets(probes):
        with torch.no_grad():
            mlp_in, final = r.frozen(c, consts, ids.view(1, -1), probes)
        vals = []
        for i in rows.tolist():
            if g.node_kind[i] == LOGIT:
                t = int(g.node_index[i])
                vals.append(final[0, -1].double() @ (W_U[:, t] - W_U.mean(1)))
            else:
                layer, pos, f = int(g.node_layer[i]), int(g.node_pos[i]), int(g.node_index[i])
                w = r.clt.W_enc[layer][:, f] if r.clt is not None else r.transcoders[layer].W_enc[:, f]
                vals.append(mlp_in[layer][0, pos].double() @ w.double())
        return torch.stack(vals)

    base = targets({})
    gen = torch.Generator().manual_seed(seed)
    checked = {FEATURE: 0, ERROR: 0, TOKEN: 0}
    for kind in (FEATURE, ERROR, TOKEN):
        nodes = (g.node_kind == kind).nonzero().flatten()
        if kind == ERROR:  # errors at the BOS position are constants, not nodes; skip layers without a vector
            nodes = nodes[g.node_pos[nodes] > 0]
        pick = nodes[torch.randperm(len(nodes), generator=gen)[:n_sources]]
        for i in pick.tolist():
            layer, pos = int(g.node_layer[i]), int(g.node_pos[i])
            probes = {}
            if kind == TOKEN:
                probes["embed"] = torch.zeros(1, seq, d)
                probes["embed"][0, pos] = c.embed[pos]
            elif kind == ERROR:
                probes[layer] = torch.zeros(1, seq, d)
                probes[layer][0, pos] = c.mlp_out[layer][pos] - recon[layer][pos]
            elif r.clt is not None:
                f, a = int(g.node_index[i]), float(g.node_activation[i])
                for j in range(layer, m.n_layers):
                    probes[j] = torch.zeros(1, seq, d)
                    probes[j][0, pos] = a * r.clt.W_dec[layer][f, j - layer]
            else:
                f, a = int(g.node_index[i]), float(g.node_activation[i])
                probes[layer] = torch.zeros(1, seq, d)
                probes[layer][0, pos] = a * r.transcoders[layer].W_dec[f]
            # The frozen model is affine in the perturbation: scale it so the expected changes are O(1), above the
            # fp32 rounding of the target values themselves.
            edge = A[rows, i]
            alpha = 1.0 / float(edge.abs().max()) if float(edge.abs().max()) > 0 else 1.0
            change = (targets({k: v * alpha for k, v in probes.items()}) - base) / alpha
            scale = edge.abs().max().clamp_min(1e-12)
            assert ((change - edge).abs() / scale).max() < 1e-4, (kind, i)
            checked[kind] += 1
    assert all(v > 0 for v in checked.values()), checked
    return g


@pytest.mark.parametrize("kind", ["llama", "gemma2", "gpt2"])
def test_replacement_forward_reproduces_logits(kind):
    m = make_tiny(kind)
    tcs = random_transcoders(m)
    ids = prompt(m, 10)
    for coders in (tcs, random_clt(m, skip=True)):  # the skip runs live in the frozen pass; errors carry the rest
        frozen = _frozen_logits(m, coders, ids, [])
        torch.testing.assert_close(frozen, m.logits(ids.view(1, -1))[0, -1].float(), rtol=1e-4, atol=1e-4)
    r = ReplacementModel(m, tcs)
    c = r.clean(ids.view(1, -1))
    torch.testing.assert_close(c.logits, m.logits(ids.view(1, -1))[0].float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "gemma2", "gpt2", "qwen3"])
def test_edges_are_exact_effects(kind):
    m = make_tiny(kind)
    g = check_exactness(m, random_transcoders(m), prompt(m, 9), batch_size=64)
    assert g.n_features > 50 and g.n_logits >= 1


def test_edges_exact_with_cross_layer_transcoder_and_budget():
    m = make_tiny("llama")
    check_exactness(m, random_clt(m), prompt(m, 7), batch_size=8)
    check_exactness(m, random_clt(m, skip=True), prompt(m, 7), batch_size=8)
    g = check_exactness(m, random_transcoders(m), prompt(m, 7), batch_size=8, max_features=40)
    assert g.n_features == 40


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "mistral"])
def test_sweep_engine_equals_autograd_engine(kind):
    """The hand-written sweep (sweep.py) against autograd through the HF modules: skip transcoders, a missing layer,
    BOS nodes on and off, a CLT, a feature budget, and chunks smaller than a position's targets."""
    m = make_tiny(kind)
    ids = prompt(m, 9)
    cases = [(random_transcoders(m, skip_layers=(0, 2)), {}), (random_transcoders(m), {"bos_nodes": True}),
             (random_clt(m), {}), (random_clt(m, skip=True), {}), (random_transcoders(m), {"target": 3}),
             (random_transcoders(m), {"max_features": 30, "batch_size": 4})]  # budget rounds of 16: same picks
    for coders, kw in cases:
        a = attribute(m, coders, ids, engine="sweep", **{"batch_size": 5, **kw})
        b = attribute(m, coders, ids, engine="autograd", **{"batch_size": 16, **kw})
        assert a.meta["engine"] == "sweep" and b.meta["engine"] == "autograd"
        assert torch.equal(a.row_nodes, b.row_nodes) and a.n_nodes == b.n_nodes
        A, B = a.dense(), b.dense()
        assert float(B.abs().max()) > 0
        torch.testing.assert_close(A, B, rtol=0, atol=2e-5 * float(B.abs().max()))
    with pytest.raises(GlassworkError, match="sweep engine covers"):
        attribute(make_tiny("gpt2"), random_transcoders(make_tiny("gpt2")), ids % 97, engine="sweep")
    with pytest.raises(GlassworkError, match="engine must be"):
        attribute(m, random_transcoders(m), ids, engine="fast")


def test_unbatched_backward_matches_vectorized():
    m = make_tiny("gpt2")
    tcs = random_transcoders(m)
    a = attribute(m, tcs, prompt(m, 6), batch_size=7, vmap=True)
    b = attribute(m, tcs, prompt(m, 6), batch_size=5, vmap=False)
    torch.testing.assert_close(a.adjacency, b.adjacency, rtol=1e-4, atol=1e-5)


@pytest.mark.model
def test_default_model_exactness(default_model):
    m = default_model
    tcs = random_transcoders(m, d_sae=512, missing=(), skip_layers=(3,), activation="topk", k=2)
    ids = m.tokenize("The capital of France is")[0]
    g = check_exactness(m, tcs, ids, n_sources=4, batch_size=128)
    assert g.meta["logit_labels"][0] == " Paris"


@pytest.mark.model
def test_default_model_trained_transcoders(default_model, small_transcoders):
    m = default_model
    tcs = gw.load_transcoders(small_transcoders)
    ids = m.tokenize("The capital of France is")[0]
    g = check_exactness(m, tcs, ids, n_sources=3, batch_size=128, max_features=150)
    assert g.n_features == 150 and 0 < g.meta["scores"]["replacement"] <= 1
    assert 0 < g.meta["scores"]["completeness"] <= 1


def _random_graph(seed=0, nf=30, L=2, seq=4, nl=3):
    gen = torch.Generator().manual_seed(seed)
    n = nf + L * seq + seq + nl
    mask = torch.zeros(nf + nl, n)
    for i in range(nf):
        mask[i, :i] = 1.0
        mask[i, nf:nf + L * seq + seq] = 1.0
    mask[nf:, :n - nl] = 1.0
    adj = torch.randn(nf + nl, n, generator=gen) * mask * (torch.rand(nf + nl, n, generator=gen) < 0.5)
    kind = torch.tensor([FEATURE] * nf + [ERROR] * (L * seq) + [TOKEN] * seq + [LOGIT] * nl, dtype=torch.int8)
    z = torch.zeros(n, dtype=torch.int32)
    probs = torch.tensor([0.5, 0.3, 0.1][:nl])
    return Graph(adj, kind, z, z.clone(), torch.arange(n), torch.rand(n, generator=gen), probs, torch.arange(seq),
                 meta={"prompt": "p", "str_tokens": ["a", "b", "c", "d"], "logit_labels": ["x", "y", "z"]})


def test_influence_matches_inverse_and_pruning_keeps_logits():
    for seed in range(3):
        g = _random_graph(seed)
        n = g.n_nodes
        B = g.dense().abs()
        B = B / B.sum(1, keepdim=True).clamp_min(1e-30)
        w = torch.zeros(n)
        w[-g.n_logits:] = g.logit_weight
        brute = w.double() @ (torch.linalg.inv(torch.eye(n).double() - B.double()) - torch.eye(n).double())
        torch.testing.assert_close(g.node_influence().double(), brute, rtol=1e-5, atol=1e-7)
        for nt, et in ((0.8, 0.98), (0.3, 0.5), (0.05, 0.1)):
            node_mask, edge_mask, _ = g.prune(nt, et)
            assert node_mask[g.node_kind == LOGIT].all() and node_mask[g.node_kind == TOKEN].all()
            assert not edge_mask[:, ~node_mask].any()
        small, big = g.prune(0.3, 0.5)[0].sum(), g.prune(0.9, 0.99)[0].sum()
        assert small <= big


def test_node_ids_are_unique_across_kinds():
    # Feature 3 of layer 0 at position 1 and the error node of layer 3 at position 1 once shared the id '0_3_1'.
    kind = torch.tensor([FEATURE, ERROR, TOKEN, TOKEN, LOGIT], dtype=torch.int8)
    layer = torch.tensor([0, 3, 0, 0, 4], dtype=torch.int32)
    pos = torch.tensor([1, 1, 0, 1, 1], dtype=torch.int32)
    index = torch.tensor([3, 0, 7, 8, 9])
    adj = torch.zeros(2, 5)
    adj[0, 2:4] = 1.0
    adj[1, :4] = 1.0
    g = Graph(adj, kind, layer, pos, index, torch.ones(5), torch.tensor([1.0]), torch.arange(2),
              meta={"prompt": "p", "str_tokens": ["a", "b"], "logit_labels": ["x"]})
    ids = [g.node_id(i) for i in range(g.n_nodes)]
    assert len(set(ids)) == len(ids), ids
    assert ids[0] == "0_3_1" and ids[1] != ids[0]


def test_view_schema_and_file_round_trip(tmp_path):
    g = _random_graph(1)
    v = g.view(0.8, 0.98)
    assert set(v) == {"metadata", "qParams", "nodes", "links"}
    for key in ("slug", "scan", "prompt", "prompt_tokens", "node_threshold", "schema_version"):
        assert key in v["metadata"]
    for key in ("pinnedIds", "supernodes", "linkType", "clickedId"):
        assert key in v["qParams"]
    ids = {n["node_id"] for n in v["nodes"]}
    for node in v["nodes"]:
        for key in ("node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
                    "clerp", "influence", "activation"):
            assert key in node
    assert sum(n["is_target_logit"] for n in v["nodes"]) == g.n_logits
    assert v["links"] and all(link["source"] in ids and link["target"] in ids for link in v["links"])
    g.save(tmp_path / "g.safetensors")
    h = load_graph(tmp_path / "g.safetensors")
    assert h.view(0.8, 0.98) == v
    with pytest.raises(gw.GlassworkError, match="not a readable graph"):
        (tmp_path / "bad.safetensors").write_bytes(b"junk")
        load_graph(tmp_path / "bad.safetensors")


def _reference_prune(A, logit_w, n_features, n_tokens, n_logits, node_threshold, edge_threshold):
    """The published pruning (circuit-tracer's prune_graph), written plainly on the square adjacency A [n, n]."""
    def norm(M):
        M = M.abs()
        return M / M.sum(1, keepdim=True).clamp(min=1e-10)

    def influence(B, w):
        total, v = torch.zeros_like(w), w @ B
        while v.any():
            total, v = total + v, v @ B
        return total

    def threshold(scores, t):
        s = scores.flatten().sort(descending=True).values
        i = int(torch.searchsorted(torch.cumsum(s, 0) / s.sum(), torch.tensor(t)))
        return s[min(i, max(int((s > 0).sum()) - 1, 0))]

    infl = influence(norm(A), logit_w)
    node = infl >= threshold(infl, node_threshold)
    node[-n_logits - n_tokens:] = True
    P = A.clone()
    P[~node], P[:, ~node] = 0, 0
    Bp = norm(P)
    scores = Bp * (influence(Bp, logit_w) + logit_w)[:, None]
    cut = threshold(scores, edge_threshold)
    edge = scores >= cut
    inner = slice(0, A.shape[0] - n_logits - n_tokens)  # features and errors
    while True:
        before = node.clone()
        edge[~node], edge[:, ~node] = False, False
        node[inner] &= edge[:, inner].any(0)  # every feature and error has an output
        node[:n_features] &= edge[:n_features].any(1)  # every feature has an input
        if torch.equal(node, before):
            return node, edge, (scores - cut).abs() <= 1e-5 * cut  # edges at the cut-off (a float rounding apart)


@pytest.mark.parametrize("seed", range(6))
def test_pruning_equals_the_published_algorithm(seed):
    g = _random_graph(seed, nf=40 + 10 * seed, L=3, seq=5)
    if seed >= 4:  # a real graph of a tiny model
        m = make_tiny("llama")
        g = attribute(m, random_transcoders(m), prompt(m, 6), batch_size=16)
    A, n = g.dense(), g.n_nodes
    w = torch.zeros(n)
    w[n - g.n_logits:] = g.logit_weight.float()
    n_tokens = int((g.node_kind == TOKEN).sum())
    for nt, et in ((0.8, 0.98), (0.5, 0.9), (0.95, 0.999)):
        node_ref, edge_ref, tie = _reference_prune(A, w, g.n_features, n_tokens, g.n_logits, nt, et)
        node_mask, edge_mask, _ = g.prune(nt, et)
        assert torch.equal(node_mask, node_ref), (nt, et, int(node_mask.sum()), int(node_ref.sum()))
        differ = edge_mask ^ edge_ref[g.row_nodes]  # only where a score equals the cut-off to float rounding
        assert not (differ & ~tie[g.row_nodes]).any() and int(differ.sum()) <= 2, (nt, et, int(differ.sum()))


def test_saved_graph_is_exact_smaller_and_old_files_still_load(tmp_path):
    from safetensors.torch import load_file, save_file
    g = _random_graph(2, nf=2000, seq=40)  # values below bf16's range and digits past its precision
    g.adjacency[0, 0] = 1e-30
    g.adjacency[1, 0] = 1 + 2 ** -20
    path = g.save(tmp_path / "g.safetensors")
    h = load_graph(path)
    assert torch.equal(h.adjacency, g.adjacency) and h.adjacency.dtype == torch.float32  # bit for bit
    for name in ("node_kind", "node_layer", "node_pos", "node_index", "node_activation", "logit_weight", "input_ids"):
        assert torch.equal(getattr(h, name), getattr(g, name)), name
    density = float((g.adjacency != 0).float().mean())
    assert path.stat().st_size < g.adjacency.numel() * (density * 4 + 1 / 8) + 100_000  # values, one bit each, nodes
    assert path.stat().st_size < g.adjacency.numel() * 2  # below a dense bfloat16 matrix (the old big-graph file)
    # a file written before the exact encoding (dense "adjacency") still loads
    tensors = load_file(str(path))
    old = {k: v for k, v in tensors.items() if not k.startswith("adjacency_")} | {"adjacency": g.adjacency.bfloat16()}
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(old, str(tmp_path / "old.safetensors"), metadata=meta)
    torch.testing.assert_close(load_graph(tmp_path / "old.safetensors").adjacency, g.adjacency.bfloat16().float())
    # a packed file whose mask and values disagree is refused, naming both
    bad = dict(tensors, adjacency_values=tensors["adjacency_values"][:-1])
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(gw.GlassworkError, match="adjacency_mask marks .* adjacency_values holds"):
        load_graph(tmp_path / "bad.safetensors")


def _check_edit_of_node(m, coders, ids, g, i, tokens):
    """A no-op edit (scale 1) of graph node i leaves the real model's logits as they were, exactly; a frozen
    ablation moves each demeaned target logit by minus the node's direct edge."""
    layer, pos, f = int(g.node_layer[i]), int(g.node_pos[i]), int(g.node_index[i])
    res = intervene_logits(m, coders, ids, [Edit(layer, f, [pos], scale=1.0)], tokens=tokens)
    assert res["after"] == res["before"]
    res = intervene_logits(m, coders, ids, [Edit(layer, f, [pos], value=0.0)], mode="frozen", tokens=tokens)
    torch.testing.assert_close(torch.tensor(res["demeaned_change"]), -g.adjacency[g.n_features:, i],
                               rtol=1e-3, atol=1e-4)
    return layer, pos, f


def _tiny_llama_graph(coders_of, seq: int, batch_size: int):
    """A tiny Llama, its coders, a prompt, its graph, the graph's feature nodes and its target tokens."""
    m = make_tiny("llama")
    coders = coders_of(m)
    ids = prompt(m, seq)
    g = attribute(m, coders, ids, batch_size=batch_size)
    return m, coders, ids, g, (g.node_kind == FEATURE).nonzero().flatten(), g.node_index[g.node_kind == LOGIT].tolist()


def test_interventions_check_the_graph():
    m, tcs, ids, g, feats, tokens = _tiny_llama_graph(random_transcoders, 8, 16)
    i = int(feats[g.node_influence()[feats].argmax()])
    layer, pos, f = _check_edit_of_node(m, tcs, ids, g, i, tokens)
    # Free ablation changes the logits; generation with a no-op edit equals plain generation.
    res = intervene_logits(m, tcs, ids, [Edit(layer, f, None, value=0.0)], tokens=tokens)
    assert max(abs(x) for x in res["change"]) > 0
    plain = m.hf.generate(input_ids=ids.view(1, -1), attention_mask=torch.ones(1, ids.numel(), dtype=torch.long),
                          max_new_tokens=5, do_sample=False, pad_token_id=0)
    edited = generate(m, tcs, ids, [Edit(layer, f, None, scale=1.0)], max_new_tokens=5)
    assert edited == str(plain[0].tolist())


def test_clt_interventions_write_to_every_layer_a_feature_reaches():
    m, clt, ids, g, feats, tokens = _tiny_llama_graph(random_clt, 7, 8)
    for i in feats[g.node_influence()[feats].argsort(descending=True)[:3]].tolist():
        _check_edit_of_node(m, clt, ids, g, i, tokens)  # the edge sums all of the feature's writes
    # free mode reaches later layers: ablating a layer-0 feature everywhere changes the logits
    layer0 = [i for i in feats.tolist() if int(g.node_layer[i]) == 0][0]
    res = intervene_logits(m, clt, ids, [Edit(0, int(g.node_index[layer0]), None, value=0.0)], tokens=tokens)
    assert max(abs(x) for x in res["change"]) > 0
    with pytest.raises(gw.GlassworkError, match="feature 9999 outside"):
        intervene_logits(m, clt, ids, [Edit(0, 9999, None, value=0.0)])
    with pytest.raises(gw.GlassworkError, match="position 999 is outside the prompt"):  # not a silent no-op
        intervene_logits(m, clt, ids, [Edit(0, 1, [999], value=0.0)])


@pytest.mark.parametrize("coders_of", [random_transcoders, random_clt], ids=["transcoders", "clt"])
def test_edit_positions_are_absolute_in_generation(coders_of):
    """An edit at a prompt position stays there while generate() feeds one token per step from the KV cache: the
    greedy tokens equal a loop of full forwards with the edit (no cache, every position explicit)."""
    from glasswork.circuits import feature_edits
    m = make_tiny("llama")
    coders = coders_of(m)
    ids = prompt(m, 6)
    layer = 0 if isinstance(coders, gw.CrossLayerTranscoder) else min(coders)
    edits = [Edit(layer, 3, [0], value=40.0), Edit(layer, 5, [2, 4], scale=-3.0)]
    seq = ids.view(1, -1)
    with feature_edits(m, coders, edits):
        for _ in range(6):
            nxt = m.hf(input_ids=seq, use_cache=False).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], 1)
    assert generate(m, coders, ids, edits, max_new_tokens=6) == str(seq[0].tolist())
    with feature_edits(m, coders, edits):
        edited = m.hf(input_ids=seq).logits
    assert (edited - m.hf(input_ids=seq).logits).abs().max() > 1e-3  # the edits matter


def test_influence_and_scores_in_row_blocks_equal_the_dense_formulas(monkeypatch):
    """Influence and scores work on the adjacency in place, a few rows at a time: they equal the dense formulas
    (|A| row-normalized as a square matrix, the series summed in float64), whatever the block size; a budgeted
    graph, whose rounds use the same influence, keeps the features of highest influence among those computed."""
    from glasswork.circuits import graph as graph_mod
    m = make_tiny("llama")
    tcs = random_transcoders(m)
    g = attribute(m, tcs, prompt(m, 8), batch_size=16, show_progress=False)
    n = g.n_nodes
    square = torch.zeros(n, n, dtype=torch.float64)
    square[g.row_nodes] = g.adjacency.double()
    B = square.abs() / square.abs().sum(1, keepdim=True).clamp_min(graph_mod.NORM_FLOOR)
    w = torch.zeros(n, dtype=torch.float64)
    w[n - g.n_logits:] = g.logit_weight.double()
    ref, v = torch.zeros(n, dtype=torch.float64), w @ B
    while v.any():
        ref, v = ref + v, v @ B
    kind = g.node_kind
    tok, err = ref[kind == TOKEN].sum(), ref[kind == ERROR].sum()
    rows = g.row_nodes  # nodes with inputs: features and logits
    out = (ref + w)[rows]
    completeness = ((1 - B[rows][:, kind == ERROR].sum(1)) * out).sum() / out.sum()
    for rows_per_block in (1, 3, n):
        monkeypatch.setattr(graph_mod, "CHUNK_BYTES", 4 * n * rows_per_block)
        fresh = Graph(g.adjacency, g.node_kind, g.node_layer, g.node_pos, g.node_index, g.node_activation,
                      g.logit_weight, g.input_ids, meta=dict(g.meta))
        assert torch.allclose(fresh.node_influence().double(), ref, rtol=1e-5, atol=1e-9)
        s = fresh.scores()
        assert s["replacement"] == pytest.approx(float(tok / (tok + err)), rel=1e-5)
        assert s["completeness"] == pytest.approx(float(completeness), rel=1e-5)
    monkeypatch.setattr(graph_mod, "CHUNK_BYTES", 4 * n * 2)
    small = attribute(m, tcs, prompt(m, 8), batch_size=16, max_features=g.n_features // 3, show_progress=False)
    assert small.n_features == g.n_features // 3 and torch.isfinite(small.adjacency).all()
    assert small.meta["scores"]["replacement"] == pytest.approx(small.scores()["replacement"])


def test_max_memory_stops_before_the_work_and_says_what_fits():
    from glasswork.circuits.attribution import memory_estimate
    m = make_tiny("llama")
    tcs = random_transcoders(m)
    ids = prompt(m, 8)
    g = attribute(m, tcs, ids, batch_size=16, show_progress=False)
    r = ReplacementModel(m, tcs)
    n_feat, seq = g.n_features, ids.numel()
    need = memory_estimate(m, r, seq, n_feat, n_feat, g.n_logits, 16)
    assert need["adjacency"] == g.adjacency.numel() * 4  # the dominant term is the adjacency's real size
    with pytest.raises(gw.GlassworkError, match=r"needs about .* GiB .* over the limit .* --max-features (\d+)") as e:
        attribute(m, tcs, ids, batch_size=16, max_memory=need["total"] / 2, show_progress=False)
    fits = int(re.search(r"--max-features (\d+)", str(e.value)).group(1))
    assert 0 < fits < n_feat
    small = attribute(m, tcs, ids, batch_size=16, max_memory=need["total"] / 2, max_features=fits, show_progress=False)
    assert small.n_features == fits
    big = attribute(m, tcs, ids, batch_size=16, max_memory=need["total"] * 1.01, show_progress=False)
    assert torch.equal(big.adjacency, g.adjacency)


@pytest.mark.parametrize("nf,rows_per_block", [(10, 1), (11, 3), (30, 9), (30, 1000)])
def test_streamed_file_equals_whole_array_packing_at_any_block_size(tmp_path, monkeypatch, nf, rows_per_block):
    """Graph.save writes the mask and values block by block: the file holds exactly numpy's packbits of the whole
    mask and the non-zeros in row-major order (shapes whose entries are not a multiple of 8, blocks of 8 rows and
    of all rows), safetensors' own reader reads it, and load_graph (in RAM or spilled) gives the graph back."""
    import numpy as np
    from safetensors.torch import load_file
    from glasswork.circuits import graph as graph_mod
    monkeypatch.setattr(graph_mod, "CHUNK_BYTES", 4 * rows_per_block * (nf + 2 * 4 + 4 + 3))
    g = _random_graph(nf % 7, nf=nf)
    a = g.adjacency
    t = load_file(str(g.save(tmp_path / "g.safetensors")))
    assert a.numel() % 8 != 0 or nf == 30
    assert np.array_equal(t["adjacency_mask"].numpy(), np.packbits((a != 0).numpy().ravel(), bitorder="little"))
    assert torch.equal(t["adjacency_values"], a[a != 0]) and t["adjacency_shape"].tolist() == list(a.shape)
    for spill in (None, tmp_path / "spill"):
        h = load_graph(tmp_path / "g.safetensors", spill=spill)
        assert torch.equal(h.adjacency, a) and torch.equal(h.node_activation, g.node_activation)


def test_spilled_adjacency_lives_in_a_deleted_file_and_equals_the_graph_in_memory(tmp_path, monkeypatch):
    """attribute(spill=DIR) writes the adjacency's rows into a file of DIR mapped into memory: the graph equals the
    in-memory one bit for bit (whole and budgeted), the file is unlinked at once (gone from DIR, still mapped), the
    save streams it in row blocks to the same bytes, and load_graph(spill=) maps it again; --max-memory counts it as
    disk, and says so when only the spill fits; a disk without room is a clear error before any work."""
    import shutil
    from glasswork.circuits import graph as graph_mod
    from glasswork.circuits.attribution import memory_estimate
    m = make_tiny("llama")
    tcs = random_transcoders(m)
    ids = prompt(m, 8)
    g = attribute(m, tcs, ids, batch_size=16, show_progress=False)
    spill = tmp_path / "spill"
    h = attribute(m, tcs, ids, batch_size=16, show_progress=False, spill=spill)
    assert torch.equal(h.adjacency, g.adjacency) and h.meta["scores"] == g.meta["scores"]
    assert list(spill.iterdir()) == []  # unlinked at once
    mapped = [ln for ln in Path("/proc/self/maps").read_text().splitlines() if "glasswork-adjacency-" in ln]
    assert mapped and all(ln.endswith("(deleted)") for ln in mapped)
    assert h.view() == g.view()
    whole = g.save(tmp_path / "g.safetensors").read_bytes()
    monkeypatch.setattr(graph_mod, "CHUNK_BYTES", 4 * g.n_nodes * 3)  # row blocks of 8 (the mask's) and 3 rows
    assert g.save(tmp_path / "g2.safetensors").read_bytes() == whole  # streamed in many blocks: the same file
    k = load_graph(h.save(tmp_path / "h.safetensors"), spill=spill)
    assert torch.equal(k.adjacency, g.adjacency) and list(spill.iterdir()) == []
    budget = g.n_features // 3
    b = attribute(m, tcs, ids, batch_size=16, max_features=budget, show_progress=False)
    b_spilled = attribute(m, tcs, ids, batch_size=16, max_features=budget, show_progress=False, spill=spill)
    assert torch.equal(b_spilled.adjacency, b.adjacency) and b_spilled.adjacency.is_contiguous()
    r = ReplacementModel(m, tcs)
    assert g.meta["engine"] == "sweep"
    ram = memory_estimate(m, r, ids.numel(), g.n_features, g.n_features, g.n_logits, 16, use_sweep=True)
    disk = memory_estimate(m, r, ids.numel(), g.n_features, g.n_features, g.n_logits, 16, use_sweep=True, spill=True)
    assert disk["disk"] == ram["adjacency"] and disk["total"] == ram["total"] - ram["adjacency"]
    limit = (disk["total"] + ram["total"]) / 2
    with pytest.raises(gw.GlassworkError, match=r"--spill DIR \(then about .* GiB of memory and .* GiB of disk\)"):
        attribute(m, tcs, ids, batch_size=16, max_memory=limit, show_progress=False)
    fits = attribute(m, tcs, ids, batch_size=16, max_memory=limit, spill=spill, show_progress=False)
    assert torch.equal(fits.adjacency, g.adjacency)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(gw.GlassworkError, match=r"a-file: cannot hold the spilled adjacency"):
        attribute(m, tcs, ids, batch_size=16, spill=tmp_path / "a-file", show_progress=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(gw.GlassworkError, match=r"spill: the adjacency \[.*\] needs .* GiB on disk; 0.00 GiB are free"):
        attribute(m, tcs, ids, batch_size=16, spill=spill, show_progress=False)


def test_bad_input_is_a_clear_error():
    m = make_tiny("llama")
    tcs = random_transcoders(m)
    with pytest.raises(gw.GlassworkError, match="empty"):
        attribute(m, tcs, "")
    with pytest.raises(gw.GlassworkError, match="context"):
        attribute(m, tcs, torch.ones(m.n_ctx + 1, dtype=torch.long))
    other = make_tiny("gpt2")
    with pytest.raises(gw.GlassworkError, match="trained on model"):
        attribute(other, tcs, prompt(other))
    wrong = random_transcoders(m)
    wrong[0] = gw.SparseCoder(gw.DictionaryConfig(kind="transcoder", d_in=m.d_model + 1, d_sae=8, d_out=m.d_model,
                                                  layer=0, activation="relu"))
    with pytest.raises(gw.GlassworkError, match="d_in"):
        attribute(m, wrong, prompt(m))
    with pytest.raises(gw.GlassworkError, match="not one token"):
        attribute(m, tcs, prompt(m), target="not a token")
    with pytest.raises(gw.GlassworkError, match="not in the vocabulary"):
        attribute(m, tcs, prompt(m), target=m.vocab_size + 5)
    with pytest.raises(gw.GlassworkError, match="node_threshold"):
        _random_graph().view(1.5)


@pytest.mark.model
def test_default_model_target_errors(default_model):
    m = default_model
    tcs = random_transcoders(m, d_sae=64, missing=tuple(range(2, 30)), activation="topk", k=2)
    with pytest.raises(gw.GlassworkError, match="not one token"):
        attribute(m, tcs, "The capital of France is", target=" Parisxyzzy")
    g = attribute(m, tcs, "The capital of France is", target=" Paris- London")
    assert g.n_logits == 1 and g.meta["logit_labels"] == [" Paris- London"]


def test_supernode_clustering_finds_planted_groups():
    """Rows built as two planted directions plus noise (and one loner) come back as those two groups; positions
    split groups; names come from the labels most members share."""
    from glasswork.circuits.supernodes import cluster_profiles, name_group, suggest
    g = torch.Generator().manual_seed(0)
    a, b, c = torch.randn(3, 40, generator=g)
    rows = torch.stack([a + 0.1 * torch.randn(40, generator=g) for _ in range(3)] +
                       [b + 0.1 * torch.randn(40, generator=g) for _ in range(2)] + [c])
    assert cluster_profiles(rows, 0.8) == [[0, 1, 2], [3, 4], [5]]
    assert cluster_profiles(rows, 1.01) == [[i] for i in range(6)]
    ids = [f"{i}_{i}_0" for i in range(6)]
    labels = ['fires on " Paris", " France"'] * 2 + ['fires on " city"', "", "", ""]
    found = suggest(ids, [0, 0, 0, 1, 1, 1], [3, 4, 6, 2, 2, 9], rows, labels, ["a", " b"], min_similarity=0.8)
    assert [s["node_ids"] for s in found] == [ids[:3], ids[3:5]] or [s["node_ids"] for s in found] == [ids[3:5], ids[:3]]
    by_pos = {s["position"]: s for s in found}
    assert by_pos[0]["name"] == "Paris L3-6" and by_pos[1]["name"] == "@b L2"
    assert name_group(["x", "y"], [1, 1], " is") == "@is L1"
    # with signed effects, features that push the target up and those that push it down never share a group
    effects = [0.5, -0.2, 0.3, 0.1, 0.4, 0.0]
    split = suggest(ids, [0, 0, 0, 1, 1, 1], [3, 4, 6, 2, 2, 9], rows, labels, ["a", " b"], min_similarity=0.8,
                    effects=effects)
    assert sorted(s["node_ids"] for s in split) == [[ids[0], ids[2]], ids[3:5]]


def test_viewer_json_is_named_by_its_prompt():
    from glasswork.circuits.graph import _slug
    assert _slug("The capital of France is") == "the-capital-of-france-is" and _slug("???") == "graph"
