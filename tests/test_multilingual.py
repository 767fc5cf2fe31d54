"""Multilingual features: the concept words' token positions are the words, the per-concept maxima equal a manual
capture, the multilingual share is a hand count on planted activations, and bad input is a clear error."""
from __future__ import annotations

import pytest
import torch

import glasswork as gw
from glasswork.features.multilingual import PARALLEL, concept_activations, multilingual_share, word_positions

from server_fixtures import sparse_coder, tiny_text_model


def test_word_positions_and_activations_are_the_words():
    m = tiny_text_model()
    for concept in ("water", "king", "school"):
        for lang, (sentence, word) in PARALLEL[concept].items():
            ids = m.tokenize(sentence)
            got = "".join(m.to_str_tokens(ids[0, word_positions(m, sentence, word)])).strip()
            assert got == word, (lang, got, word)
    sae = sparse_coder(m, "sae", 0, 48, seed=7)
    few = {c: PARALLEL[c] for c in ("dog", "sea")}
    acts = concept_activations(m, sae, few)
    sentence, word = few["sea"]["fr"]
    ids = m.tokenize(sentence)
    x = gw.capture(m, ids, ["blocks.0.hook_resid_post"])[1]["blocks.0.hook_resid_post"][0]
    want = torch.stack([sae.encode(x[p:p + 1])[0] for p in word_positions(m, sentence, word)]).max(0).values
    torch.testing.assert_close(acts["sea"]["fr"], want)
    with pytest.raises(gw.GlassworkError, match="no sentences"):
        concept_activations(m, sae, {"dog": {}})
    with pytest.raises(gw.GlassworkError, match="does not occur"):
        concept_activations(m, sae, {"dog": {"en": ("A cat.", "dog")}})


def test_share_is_a_hand_count_on_planted_activations():
    F = 200
    frequency = torch.linspace(0.001, 0.2, F)
    z = torch.zeros(F)
    a = {"en": z.clone(), "fr": z.clone(), "de": z.clone()}
    a["en"][[10, 20, 30]] = torch.tensor([3.0, 2.0, 1.0])  # the concept's 3 features on the English word
    a["fr"][[10, 20]] = 1.0
    a["de"][[10, 30]] = 1.0  # only feature 10 fires in every other language
    b = {"en": z.clone(), "fr": z.clone(), "de": z.clone()}
    b["en"][[5, 6]] = torch.tensor([2.0, 1.0])  # only 2 features fire in English: the third pick is not counted
    b["fr"][[5, 6]] = 1.0
    b["de"][[5, 6]] = 1.0
    got = multilingual_share({"a": a, "b": b}, frequency, per_concept=3, n_random=50)
    assert got["n"] == 5 and got["share"] == pytest.approx(3 / 5)
    assert got["per_concept"]["a"]["multilingual"] == [10] and got["per_concept"]["b"]["multilingual"] == [5, 6]
    assert got["baseline"] < 0.05  # only 3 of 200 features fire in both other languages
    with pytest.raises(gw.GlassworkError, match="needs the 'en' sentence"):
        multilingual_share({"a": {"fr": z}}, frequency)
