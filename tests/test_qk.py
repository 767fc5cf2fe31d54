"""QK attribution: a head's pre-softmax scores split into (query node, key node) terms that sum to the score the real
model computes (its attention pattern comes back from them), each node's term equal to removing that node in the
frozen model, on tiny Llama (grouped-query), Qwen2 (q/k biases), Qwen3 (q/k norms), Gemma 2 (soft-cap), GPT-2 and
GPT-NeoX (no grouped heads, position embeddings / partial rotary), per-layer transcoders and a CLT."""
from __future__ import annotations

import pytest
import torch

import glasswork as gw
from glasswork.circuits import ReplacementModel, attribute
from glasswork.circuits.attribution import logit_targets
from glasswork.circuits.qk import QKSplit, add_qk, qk_attribution

from conftest import make_tiny
from test_circuits import prompt, random_clt, random_transcoders

KINDS = ["llama", "qwen2", "qwen3", "gemma2", "gpt2", "gpt_neox"]


def _real_pattern(m, ids, layer):
    """The real model's attention weights at `layer` [heads, seq, seq] (a plain eager forward)."""
    before = m.hf.config._attn_implementation
    m.hf.set_attn_implementation("eager")
    try:
        out = m.hf(input_ids=ids.view(1, -1), output_attentions=True)
    finally:
        m.hf.set_attn_implementation(before)
    return out.attentions[layer][0].float()


def _tiny_split(coders_of, seq: int):
    """A tiny Llama, its coders, a prompt, the replacement model, its clean pass and the QK split over it."""
    m = make_tiny("llama")
    coders = coders_of(m)
    ids = prompt(m, seq)
    r = ReplacementModel(m, coders)
    c = r.clean(ids.view(1, -1))
    return m, coders, ids, r, c, QKSplit(r, c, ids)


def _close(got, want, rel=1e-4):
    """Equal to fp32 precision relative to the vector's size (a component near 0 is not held to its own scale)."""
    err, size = float((got.double() - want.double()).norm()), float(want.double().norm())
    assert err <= rel * size + 1e-6, f"relative error {err / max(size, 1e-30):.2e}"


def _removed(split, r, c, ids, layer, head, p, where, vector):
    """The head's query at p in the frozen model with `vector` taken out of `where` ('embed' or a layer)."""
    seq = ids.numel()
    constants = r.constants(c)
    probe = torch.zeros(1, seq, r.model.d_model)
    pos, vec = vector
    probe[0, pos] = -vec
    taps: dict = {}
    with torch.no_grad():
        r.frozen(c, constants, ids.view(1, -1), {where: probe}, taps)
    return taps[layer]["query"][0, head, p]


@pytest.mark.parametrize("kind", KINDS)
def test_qk_terms_sum_to_the_real_score(kind):
    m = make_tiny(kind)
    tcs = random_transcoders(m, missing=(), skip_layers=(0,))
    ids = prompt(m, 7)
    if kind == "gemma2":  # token 0 is a random Gemma's zero padding row (its residual stays exactly 0): use its BOS
        ids[0] = m.hf.config.bos_token_id
    r = ReplacementModel(m, tcs)
    c = r.clean(ids.view(1, -1))
    split = QKSplit(r, c, ids)
    seq, layer, p = ids.numel(), m.n_layers - 1, ids.numel() - 1
    real = _real_pattern(m, ids, layer)
    n_heads = real.shape[0]
    for head in range(n_heads):
        parts = split.split(layer, head, p, list(range(p + 1)))
        q_real = c.qk[r.attns[layer]][0][0, head, p]
        g = split.kv_head(layer, head)
        scores = []
        for s, (Q, K) in enumerate(parts):
            assert Q.shape[1] == len(split.ids)
            _close(Q.sum(1), q_real)  # the query's node terms (bias included) sum to the real query
            _close(K.sum(1), c.qk[r.attns[layer]][1][0, g, s])
            pair_sum = (Q.T.double() @ K.double()).sum() * split.scaling(layer)  # every (query, key) pair's term
            scores.append(pair_sum)
        scores = torch.stack(scores)
        cap = split.softcap(layer)
        if cap:
            scores = torch.tanh(scores / cap) * cap
        # the real model's attention weights come back from the summed pair terms
        torch.testing.assert_close(scores.softmax(-1).float(), real[head, p, :p + 1], rtol=1e-4, atol=1e-5)
    # one node's term is what removing that node does in the frozen model: a feature, an error and a token
    Q, _ = split.split(layer, 0, p, [0])[0]
    n_feat, L = split.n_feat, m.n_layers
    f = int(Q[:, :n_feat].norm(dim=0).argmax())
    fl, fp, fi = int(split.feats.layer[f]), int(split.feats.pos[f]), int(split.feats.index[f])
    vec = split.feats.activation[f] * tcs[fl].W_dec[fi].detach()
    base = _removed(split, r, c, ids, layer, 0, p, "embed", (0, torch.zeros(m.d_model)))
    _close(Q[:, f], base - _removed(split, r, c, ids, layer, 0, p, fl, (fp, vec)))
    e = n_feat + 0 * seq + (p - 1)  # the error of layer 0 at position p - 1
    _close(Q[:, e], base - _removed(split, r, c, ids, layer, 0, p, 0, (p - 1, split.errors[0, p - 1])))
    t = n_feat + L * seq + p  # the token at p
    _close(Q[:, t], base - _removed(split, r, c, ids, layer, 0, p, "embed", (p, c.embed[p])))
    assert split.ids[f] == f"{fl}_{fi}_{fp}" and split.ids[e] == f"err_0_{p - 1}" and split.ids[-1] == "bias"


def test_qk_with_a_cross_layer_transcoder():
    m, clt, ids, r, c, split = _tiny_split(random_clt, 6)
    layer, p = m.n_layers - 1, ids.numel() - 1
    real = _real_pattern(m, ids, layer)
    parts = split.split(layer, 1, p, list(range(p + 1)))
    scores = torch.stack([(Q.T.double() @ K.double()).sum() * split.scaling(layer) for Q, K in parts])
    torch.testing.assert_close(scores.softmax(-1).float(), real[1, p, :p + 1], rtol=1e-4, atol=1e-5)


def test_head_effects_are_ablation_effects_and_the_report_reads_them():
    m, tcs, ids, r, c, split = _tiny_split(random_transcoders, 8)
    target = logit_targets(m, c.logits[-1])[0]
    p = ids.numel() - 1
    effects = split.head_effects(target.vector, p)
    layer, head = divmod(int(effects.abs().flatten().argmax()), effects.shape[1])
    constants = r.constants(c)
    z = split.taps[layer]["z"].detach()
    probe = torch.zeros_like(z)
    probe[0, p, head] = -z[0, p, head]  # the head's output at p removed in the frozen model
    with torch.no_grad():
        _, final = r.frozen(c, constants, ids.view(1, -1), {("z", layer): probe})
    change = float((split.final[0, -1] - final[0, -1]) @ target.vector)
    assert change == pytest.approx(float(effects[layer, head]), rel=1e-4, abs=1e-6)

    rep = qk_attribution(m, tcs, ids, n_heads=2, n_keys=2, top_pairs=5)
    assert [(h["layer"], h["head"]) for h in rep["heads"]][0] == (layer, head)
    rec = rep["heads"][0]["keys"][0]
    q_real, k_real = c.qk[r.attns[layer]][0][0, head, p], c.qk[r.attns[layer]][1][0, split.kv_head(layer, head)]
    assert rec["score"] == pytest.approx(float(q_real @ k_real[rec["key_pos"]]) * split.scaling(layer), rel=1e-4)
    assert len(rec["pairs"]) == 5 and abs(rec["pairs"][0]["score"]) >= abs(rec["pairs"][-1]["score"])
    # the graph keeps the same report in its metadata when asked
    g = attribute(m, tcs, ids, show_progress=False)
    add_qk(g, m, tcs, n_heads=2, n_keys=2, top_pairs=5)
    assert g.meta["qk"]["heads"][0]["keys"][0]["score"] == pytest.approx(
        rep["heads"][0]["keys"][0]["score"], rel=1e-5)
    with pytest.raises(gw.GlassworkError, match="does not exist"):
        qk_attribution(m, tcs, ids, heads=[(0, 99)])


def test_default_model_qk_reproduces_its_attention(default_model, small_transcoders):
    """On SmolLM2-135M with trained transcoders: the summed pair terms of the heads with the largest effect give back
    the model's own attention weights at the last position."""
    m = default_model
    tcs = gw.load_transcoders(small_transcoders)
    ids = m.tokenize("The capital of France is").flatten()
    r = ReplacementModel(m, tcs)
    c = r.clean(ids.view(1, -1))
    split = QKSplit(r, c, ids)
    p = ids.numel() - 1
    effects = split.head_effects(logit_targets(m, c.logits[-1])[0].vector, p)
    for i in effects.abs().flatten().topk(2).indices.tolist():
        layer, head = divmod(i, effects.shape[1])
        parts = split.split(layer, head, p, list(range(p + 1)))
        scores = torch.stack([(Q.T.double() @ K.double()).sum() * split.scaling(layer) for Q, K in parts])
        real = _real_pattern(m, ids, layer)[head, p, :p + 1]
        torch.testing.assert_close(scores.softmax(-1).float(), real, rtol=1e-4, atol=1e-5)
