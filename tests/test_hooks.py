"""Hook points read and change the real activations, on tiny models of every architecture and the default model."""
import pytest
import torch

import glasswork as gw
from glasswork.io import GlassworkError

from conftest import make_tiny


def _check_hook_identities(model, ids):
    clean = model.logits(ids)
    names = gw.hook_points(model)
    logits, cache = gw.capture(model, ids, names, stop_early=False)
    assert torch.equal(logits, clean)  # hooks attached, logits exactly the plain forward
    hidden = model.hf(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in range(model.n_layers):
        b = f"blocks.{layer}."
        if layer < model.n_layers - 1:  # HF applies the final norm to its last hidden state
            assert torch.equal(cache[b + "hook_resid_post"], hidden[layer + 1])
        torch.testing.assert_close(cache[b + "hook_resid_pre"] + cache[b + "hook_attn_out"], cache[b + "hook_resid_mid"],
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(cache[b + "hook_resid_mid"] + cache[b + "hook_mlp_out"], cache[b + "hook_resid_post"],
                                   rtol=1e-6, atol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(model.mlp(layer, cache[b + "ln2.hook_normalized"]), cache[b + "hook_mlp_out"],
                                       rtol=1e-6, atol=1e-6)
    assert torch.equal(cache["blocks.0.hook_resid_pre"], hidden[0])


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gemma2", "gpt2", "gpt_neox", "gpt_neox_seq"])
def test_hook_identities_tiny(kind):
    model = make_tiny(kind)
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        _check_hook_identities(model, ids)


@pytest.mark.model
def test_hook_identities_default_model(default_model):
    ids = default_model.tokenize("When Mary and John went to the store, John gave a drink to")
    with torch.no_grad():
        _check_hook_identities(default_model, ids)


def test_capture_stops_early_and_matches_full():
    model = make_tiny("llama")
    ids = torch.randint(0, 97, (2, 9))
    calls = []
    handle = model.layer(2).register_forward_hook(lambda *a: calls.append(1))
    logits, early = gw.capture(model, ids, ["blocks.1.hook_mlp_out", "blocks.0.hook_mlp_in"])
    handle.remove()
    assert logits is None and calls == []  # layer 2 never ran
    _, full = gw.capture(model, ids, ["blocks.1.hook_mlp_out", "blocks.0.hook_mlp_in"], stop_early=False)
    assert torch.equal(early["blocks.1.hook_mlp_out"], full["blocks.1.hook_mlp_out"])
    assert torch.equal(early["blocks.0.hook_mlp_in"], full["blocks.0.hook_mlp_in"])


@pytest.mark.parametrize("kind", ["llama", "gemma2", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("point", ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                                   "hook_mlp_out", "ln2.hook_normalized"])
def test_intervene_replace_is_seen_downstream(kind, point):
    model = make_tiny(kind)
    ids = torch.randint(0, 97, (1, 7))
    name = f"blocks.1.{point}"
    clean = model.logits(ids)
    with gw.intervene(model, {name: lambda a: a}):  # identity edit: nothing changes
        assert torch.equal(model.logits(ids), clean)
    target = torch.randn(model.d_model)
    with gw.intervene(model, {name: gw.replace(target, positions=[3])}):
        _, cache = gw.capture(model, ids, [name, "blocks.2.hook_resid_pre"], stop_early=False)
        edited = model.logits(ids)
    torch.testing.assert_close(cache[name][0, 3], target)
    assert not torch.allclose(edited[0, 3], clean[0, 3])
    torch.testing.assert_close(edited[0, :3], clean[0, :3])  # causal: earlier positions untouched


def test_intervene_add_during_generate():
    model = make_tiny("llama")
    ids = torch.randint(0, 97, (1, 5))
    base = model.hf.generate(ids, max_new_tokens=6, do_sample=False)
    with gw.intervene(model, {"blocks.0.hook_resid_post": gw.add(torch.randn(model.d_model) * 50)}):
        steered = model.hf.generate(ids, max_new_tokens=6, do_sample=False)
    assert steered.shape == base.shape and not torch.equal(steered, base)
    assert torch.equal(model.hf.generate(ids, max_new_tokens=6, do_sample=False), base)  # hooks removed


def test_unknown_hook_point_lists_valid_ones():
    model = make_tiny("llama")
    with pytest.raises(GlassworkError, match="hook_resid_post"):
        gw.capture(model, torch.zeros(1, 3, dtype=torch.long), ["blocks.0.hook_resid_middle"])
    with pytest.raises(GlassworkError, match="unknown hook point 'blocks.7.hook_resid_pre'"):
        gw.capture(model, torch.zeros(1, 3, dtype=torch.long), ["blocks.7.hook_resid_pre"])


def test_unknown_model_name_is_clear():
    with pytest.raises(GlassworkError, match="unknown model 'no-such-model'"):
        gw.load_model("no-such-model")
    with pytest.raises(GlassworkError, match="local folder"):
        gw.load_model("some-org/no-such-model")


@pytest.mark.model
def test_default_model_predicts_paris(default_model):
    ids = default_model.tokenize("The capital of France is")
    probs = default_model.logits(ids)[0, -1].softmax(-1)
    top = probs.argmax().item()
    assert default_model.to_str_tokens([top]) == [" Paris"] and probs[top] > 0.5
    assert default_model.n_layers == 30 and default_model.d_model == 576 and default_model.d_mlp == 1536
