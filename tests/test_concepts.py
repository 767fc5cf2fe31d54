"""Concept features: the contrast scores equal a brute-force count of firing on the concept's tokens and elsewhere;
the index search's precision equals a hand count over each feature's top examples; bad input is a clear error."""
from __future__ import annotations

import pytest
import torch

import glasswork as gw
from glasswork.features.concepts import concept_features, contrast, indexes_of, safety_features

from server_fixtures import TEXTS, shared_workdir, sparse_coder, tiny_text_model


def test_contrast_equals_a_brute_force_count():
    m = tiny_text_model()
    sae = sparse_coder(m, "sae", 0, 48, seed=7)
    sentences = ["Rain is expected tomorrow in London.", "The rain fell all evening long.", "Heavy rain and wind."]
    neutral = torch.stack([m.tokenize(t)[0, :8] for t in TEXTS[:4]])
    got = contrast(m, sae, sentences, ["rain"], neutral=neutral, top=48)
    on, off = torch.zeros(48), torch.zeros(48)
    n_on = n_off = 0
    rows = [(m.tokenize(t)[0], True) for t in sentences] + [(row, False) for row in neutral]
    for ids, is_sentence in rows:
        x = gw.capture(m, ids.view(1, -1), ["blocks.0.hook_resid_post"])[1]["blocks.0.hook_resid_post"][0]
        for pos in range(1, ids.numel()):  # BOS left out
            fired = (sae.encode(x[pos:pos + 1]) > 0).float()[0]
            word = m.to_str_tokens(ids[pos:pos + 1])[0].strip().lower()
            if is_sentence and word == "rain":
                on += fired
                n_on += 1
            else:
                off += fired
                n_off += 1
    assert n_on == 3
    for r in got:
        f = r["feature"]
        assert r["on"] == pytest.approx(float(on[f] / n_on), abs=1e-4)
        assert r["off"] == pytest.approx(float(off[f] / n_off), abs=1e-4)
    assert [r["score"] for r in got] == sorted((r["score"] for r in got), reverse=True)
    with pytest.raises(gw.GlassworkError, match="whole token"):
        contrast(m, sae, sentences, ["raining"], neutral=neutral)
    with pytest.raises(gw.GlassworkError, match="concept words"):
        contrast(m, sae, sentences, [" "], neutral=neutral)


def test_index_search_precision_is_a_hand_count():
    root, _ = shared_workdir()
    index = gw.FeatureIndex(root / "sae")
    rows = concept_features(index, ["rain", "weather", "sunny"], top=100)
    assert rows
    for r in rows:
        firing = [e["tokens"][e["pos"]].strip().lower() for e in index.examples(r["feature"], "top")]
        assert r["precision"] == pytest.approx(sum(t in {"rain", "weather", "sunny"} for t in firing) / len(firing),
                                               abs=1e-4)
        assert set(r["words"]) <= {"rain", "weather", "sunny"} and r["coverage"] == len(r["words"])
    assert [(r["precision"], r["coverage"]) for r in rows] == sorted(((r["precision"], r["coverage"]) for r in rows),
                                                                      key=lambda x: (-x[0], -x[1]))
    index.close()
    assert set(indexes_of(root / "tc")) == {"L0", "L1"} and set(indexes_of(root / "sae")) == {"sae"}
    found = safety_features(indexes_of(root / "tc"), {"weather": ["rain", "weather"]}, top=2, min_precision=0.0)
    assert len(found["weather"]) <= 2 and all(r["index"] in ("L0", "L1") for r in found["weather"])
    with pytest.raises(gw.GlassworkError, match="no concept words"):
        concept_features(gw.FeatureIndex(root / "sae"), [])
    with pytest.raises(gw.GlassworkError, match="no feature index"):
        safety_features({}, {"x": ["y"]})
