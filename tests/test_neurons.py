"""The neurons of an MLP as a dictionary: they reconstruct the layer's MLP output exactly (FVU 0) on tiny Llama,
GPT-2 and GPT-NeoX and the default model, and index like any dictionary; a model whose MLP output is normalized
(Gemma 2) is a clear error."""
from __future__ import annotations

import pytest
import torch

import glasswork as gw
from glasswork.dictionaries.neurons import Neurons
from glasswork.hooks import capture, mlp_hooks

from conftest import make_tiny


def _fvu(m, n, layer, ids):
    hin, hout = mlp_hooks(layer)
    _, c = capture(m, ids, [hin, hout])
    rec = n.decode(n.encode(c[hin]))
    return float((rec - c[hout]).pow(2).sum() / (c[hout] - c[hout].mean((0, 1))).pow(2).sum())


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2", "gpt_neox"])
def test_neurons_reconstruct_the_mlp_exactly(kind):
    m = make_tiny(kind)
    ids = torch.randint(1, 90, (2, 7), generator=torch.Generator().manual_seed(0))
    for layer in range(m.n_layers):
        n = Neurons(m, layer)
        assert n.d_sae == m.d_mlp and _fvu(m, n, layer, ids) < 1e-10


def test_gemma_and_bad_layers_are_clear_errors():
    with pytest.raises(gw.GlassworkError, match="normalizes the MLP's output"):
        Neurons(make_tiny("gemma2"), 0)
    with pytest.raises(gw.GlassworkError, match="outside"):
        Neurons(make_tiny("llama"), 7)


def test_default_model_neurons_index_like_a_dictionary(default_model, tmp_path):
    m = default_model
    n = Neurons(m, 15)
    ids = m.tokenize("The capital of France is Paris, and the capital of Italy is Rome.")
    assert n.d_sae == 1536 and _fvu(m, n, 15, ids) < 1e-10
    ctx = torch.stack([ids[0, :12], ids[0, 4:16]])
    path = gw.build_index(m, n, ctx, path=tmp_path / "neurons.sqlite")
    index = gw.FeatureIndex(path)
    f = index.live_features()[0]
    hin = mlp_hooks(15)[0]
    _, c = capture(m, ctx, [hin])
    acts = n.encode(c[hin])[:, 1:, f]  # BOS left out, as the index does
    assert index.feature(f, with_examples=False)["max_act"] == pytest.approx(float(acts.max()), rel=1e-3)
    index.close()
