"""Directions: directional ablation zeroes the component everywhere it is applied, orthogonalized weights match the
hooks, difference of means and probes match brute force, direction files round-trip, word arithmetic works."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import glasswork as gw
from glasswork import directions as dr
from glasswork import steering as st
from glasswork.models import Model

from conftest import make_tiny

POINTS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")


def component(model, ids, u, layers):
    """max |x . u| / |x| over tokens at resid_pre, resid_mid and resid_post of `layers`, captured after the edits."""
    names = [f"blocks.{l}.{p}" for l in layers for p in POINTS]
    _, cache = gw.capture(model, ids, names, stop_early=False)
    u = u / u.norm()
    return {n: float(((a @ u).abs() / a.norm(dim=-1)).max()) for n, a in cache.items()}


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_directional_ablation_zeroes_the_component_at_every_ablated_layer(kind):
    model = make_tiny(kind)
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(1))
    u = torch.randn(32, generator=torch.Generator().manual_seed(2))
    # Plant the direction so it is large before ablation (the check must be able to fail).
    before = component(model, ids, u, range(3))
    assert max(before.values()) > 0.05
    with st.steer(model, dr.directional_ablation(model, u)):
        after = component(model, ids, u, range(3))
    assert max(after.values()) < 1e-6, after
    # Only layer 1: zero there, not at layer 0.
    with st.steer(model, dr.directional_ablation(model, u, layers=[1])):
        some = component(model, ids, u, range(3))
    assert max(v for n, v in some.items() if n.startswith("blocks.1.")) < 1e-6
    assert max(v for n, v in some.items() if n.startswith("blocks.0.")) > 0.05


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox"])
def test_orthogonalized_model_matches_the_ablation_hooks(kind, tmp_path):
    model = make_tiny(kind)
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(1))
    u = torch.randn(32, generator=torch.Generator().manual_seed(3))
    clean = model.logits(ids)
    with st.steer(model, dr.directional_ablation(model, u)):
        hooked = model.logits(ids)
    folder = dr.orthogonalize(model, dr.Direction(u, "blocks.0.hook_resid_pre"), tmp_path / "orth")
    ortho = Model(AutoModelForCausalLM.from_pretrained(folder), None, "orth")
    assert torch.allclose(ortho.logits(ids), hooked, atol=1e-5)
    assert (hooked - clean).abs().max() > 1e-2  # the ablation does something
    assert torch.equal(model.logits(ids), clean)  # the source model is untouched
    assert json.loads((folder / "orthogonalized.json").read_text())["source_model"] == f"tiny-{kind}"
    with pytest.raises(gw.GlassworkError, match="not empty"):
        dr.orthogonalize(model, u, folder)


def test_orthogonalize_refuses_post_norm_models_and_bad_directions(tmp_path):
    with pytest.raises(gw.GlassworkError, match="normalizes after attention"):
        dr.orthogonalize(make_tiny("gemma2"), torch.randn(32), tmp_path / "g")
    assert not (tmp_path / "g").exists()
    model = make_tiny("llama")
    with pytest.raises(gw.GlassworkError, match=r"shape \[48\].*d_model = 32"):
        dr.orthogonalize(model, torch.randn(48), tmp_path / "x")
    with pytest.raises(gw.GlassworkError, match=r"shape \[16\]"):
        dr.directional_ablation(model, torch.randn(16))
    with pytest.raises(gw.GlassworkError, match="layer 3 does not exist"):
        dr.directional_ablation(model, torch.randn(32), layers=[3])


def test_direction_file_round_trip_and_errors(tmp_path):
    d = dr.Direction(torch.randn(32), "blocks.1.hook_resid_post", "mean_difference", "tiny", {"n_positive": 3})
    path = d.save(tmp_path / "concept")
    assert path.name == "concept.safetensors" and (tmp_path / "concept.json").exists()
    for ref in (tmp_path / "concept", path, tmp_path / "concept.json"):
        back = dr.load_direction(ref)
        assert torch.equal(back.vector, d.vector) and back.hook == d.hook and back.info == d.info
    meta = json.loads((tmp_path / "concept.json").read_text())
    (tmp_path / "concept.json").write_text(json.dumps({**meta, "d_model": 31}))
    with pytest.raises(gw.GlassworkError, match="d_model = 31"):
        dr.load_direction(path)
    with pytest.raises(gw.GlassworkError, match="not found"):
        dr.load_direction(tmp_path / "missing")


def test_feature_direction_is_the_decoder_row():
    sae = gw.SparseCoder(gw.DictionaryConfig(kind="sae", d_in=32, d_sae=20, k=4, hook_in="blocks.1.hook_resid_post",
                                             hook_out="blocks.1.hook_resid_post"))
    d = dr.feature_direction(sae, 7)
    assert torch.equal(d.vector, sae.W_dec[7].detach()) and d.hook == "blocks.1.hook_resid_post"
    with pytest.raises(gw.GlassworkError, match="feature 20 is out of range"):
        dr.feature_direction(sae, 20)


def test_fit_probe_recovers_a_planted_direction():
    gen = torch.Generator().manual_seed(0)
    true = torch.randn(64, generator=gen)
    x = torch.randn(600, 64, generator=gen) * torch.linspace(0.2, 30, 64) + 5  # badly scaled dims, like a residual
    y = ((x - 5) @ true > 0).float()
    w, b = dr.fit_probe(x[:400], y[:400])
    acc = float((((x[400:] @ w + b) > 0).float() == y[400:]).float().mean())
    assert acc > 0.9
    # Labels are sign(x . true). Compare in standardized units (w * sigma), where every dimension counts by how much
    # it moves the decision: near-constant dimensions leave their raw weight undetermined.
    sigma = x[:400].std(0)
    assert torch.cosine_similarity(w * sigma, true * sigma, dim=0) > 0.9


@pytest.mark.model
def test_mean_difference_matches_prompt_by_prompt_capture(default_model):
    m = default_model
    pos = ["The Eiffel Tower is in Paris", "I love French cheese and wine", "Bonjour, mon ami"]
    neg = ["The cat sat on the mat", "Two plus two is four"]
    hook = "blocks.6.hook_resid_post"
    d = dr.mean_difference(m, pos, neg, hook)

    def last(text):
        _, c = gw.capture(m, m.tokenize(text), [hook])
        return c[hook][0, -1]
    expected = torch.stack([last(t) for t in pos]).mean(0) - torch.stack([last(t) for t in neg]).mean(0)
    assert torch.allclose(d.vector, expected, atol=1e-4)  # right padding does not leak into the read token
    assert d.kind == "mean_difference" and d.info["n_positive"] == 3


@pytest.mark.model
def test_orthogonalized_default_model_loads_with_load_model(default_model, tmp_path):
    m = default_model
    ids = m.tokenize("The capital of France is")
    u = dr.mean_difference(m, ["The capital of France is Paris"], ["The capital of Spain is Madrid"],
                           "blocks.10.hook_resid_post")
    with st.steer(m, dr.directional_ablation(m, u)):
        hooked = m.logits(ids)
    folder = dr.orthogonalize(m, u, tmp_path / "smol-orth")
    ortho = gw.load_model(folder)
    assert torch.allclose(ortho.logits(ids), hooked, atol=1e-3)
    assert ortho.tokenizer.decode(ids[0, 1:]) == "The capital of France is"


@pytest.mark.model
def test_word_arithmetic_and_probe_on_the_default_model(default_model):
    m = default_model
    res = dr.analogy(m, " king", " man", " woman", " queen")
    assert res["rank"] == 1 and res["rank"] < res["rank_from_a_alone"]
    foods = [" bread", " cheese", " apple", " soup", " rice", " pizza", " salad", " cake", " pasta", " butter",
             " banana", " chicken", " carrot", " honey", " sandwich", " cookie"]
    other = [" car", " river", " chair", " mountain", " pencil", " cloud", " engine", " window", " bridge", " shoe",
             " guitar", " planet", " hammer", " ocean", " ladder", " bottle"]
    probe = dr.train_probe(m, [f"My favourite thing is{w}" for w in foods], [f"My favourite thing is{w}" for w in other],
                           "blocks.8.hook_resid_post", test_fraction=0.375, seed=0)
    assert probe.n_test == 12 and probe.test_accuracy >= 0.75
