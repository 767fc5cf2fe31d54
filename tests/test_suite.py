"""The evaluation suite: sparse probing and absorption against hand computations on planted structure, the model
paths (pooling, word activations) against one-at-a-time brute force on the default model, and clear errors."""
from __future__ import annotations

import math

import pytest
import torch

import glasswork as gw
from glasswork.directions import fit_probe
from glasswork.errors import GlassworkError
from glasswork.hooks import capture
from glasswork.suite import absorption as ab
from glasswork.suite import probing, run_suite, tasks


def planted(n=240, d=12, width=40, feature=17, seed=0):
    """Raw activations whose dimension 3 carries the label weakly, codes whose latent `feature` carries it cleanly."""
    gen = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=gen) < 0.5).float()
    acts = torch.randn(n, d, generator=gen)
    acts[:, 3] += 1.5 * y
    codes = torch.rand(n, width, generator=gen).relu() * (torch.rand(n, width, generator=gen) < 0.2)
    codes[:, feature] = 2.0 * y + 0.05 * torch.rand(n, generator=gen)
    return acts, codes, y


def test_top_latents_equal_hand_mean_differences():
    _, codes, y = planted()
    diff = [abs(float(codes[y == 1, j].mean() - codes[y == 0, j].mean())) for j in range(codes.shape[1])]
    hand = sorted(range(len(diff)), key=lambda j: -diff[j])[:5]
    assert probing.top_by_mean_difference(codes, y, 5).tolist() == hand
    with pytest.raises(GlassworkError, match="both classes"):
        probing.top_by_mean_difference(codes, torch.ones(len(y)), 1)


def test_sparse_probing_finds_the_planted_feature():
    acts, codes, y = planted()
    train, test = torch.arange(0, 160), torch.arange(160, 240)
    out = probing.sparse_probing(acts, codes, y, train, test, ks=(1, 2))
    assert out["latents"][1] == [17] and out["sae_top_k"][1] == 1.0
    # the accuracy is the hand count of the fitted probe's right answers
    w, b = fit_probe(acts[train], y[train])
    assert out["llm"] == pytest.approx(float(((acts[test] @ w + b > 0).float() == y[test]).float().mean()))
    assert 0.6 < out["llm"] < 1.0  # the raw dimension is a noisy copy: the sparse latent beats it here
    assert probing.top_by_mean_difference(acts[train], y[train], 1).tolist() == [3]


def test_main_latents_follow_feature_splitting():
    n = 100
    positive = torch.zeros(n, dtype=torch.bool)
    positive[:50] = True
    codes = torch.zeros(n, 10)
    codes[:30, 3] = 1.0  # latent 3 covers 60% of the class, latent 9 the other 40%
    codes[30:50, 9] = 1.0
    codes[50:55, 5] = 0.1  # a weak latent on negatives
    assert ab.main_latents(codes, positive) == [3, 9]
    assert ab.main_latents(codes, positive, min_f1_gain=0.9) == [3]
    assert ab.f1(codes[:, 3] > 0, positive) == pytest.approx(2 * 30 / (30 + 50))


def test_planted_absorption_is_measured():
    d, width = 8, 4
    W_dec = torch.zeros(width, d)
    W_dec[0, 0] = 1.0  # the main latent: along the probe
    W_dec[1, :2] = 1 / math.sqrt(2)  # the absorbing latent: half along the probe, half a token direction
    W_dec[2, 2] = 1.0  # unrelated
    W_dec[3, 0], W_dec[3, 3] = 0.01, 1.0  # cos 0.01 with the probe: below tau_cos
    probe = torch.zeros(d)
    probe[0] = 3.0
    codes = torch.zeros(12, width)
    codes[:6, 0], codes[:6, 2] = 1.0, 1.0  # main fires
    codes[6:10, 1], codes[6:10, 2] = 1.0, 0.3  # main silent, absorbed by latent 1
    codes[10, 3] = 1.0  # main silent, only a latent below tau_cos: not absorbed
    correct = torch.ones(12, dtype=torch.bool)
    correct[11] = False
    full, frac = ab.absorbed(codes, W_dec, probe, correct, [0], tau_cos=0.025)
    assert full.tolist() == [False] * 6 + [True] * 4 + [False, False]
    assert frac[:6].tolist() == [0.0] * 6 and frac[6:10].tolist() == pytest.approx([1.0] * 4)
    assert frac[10] == 0.0 and math.isnan(frac[11])
    # partial: the main latent fires at 1, the absorbing one at 1 too: it carries 0.707 / 1.707 of the projection
    both = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    full, frac = ab.absorbed(both, W_dec, probe, torch.tensor([True]), [0], tau_cos=0.025)
    # the default threshold, 3 / sqrt(8) > 0.707: latent 1 no longer counts as aligned
    assert not ab.absorbed(codes, W_dec, probe, correct, [0])[0].any()
    assert not full[0] and float(frac[0]) == pytest.approx((1 / math.sqrt(2)) / (1 + 1 / math.sqrt(2)), rel=1e-5)


def test_tasks_and_errors():
    docs = tasks.python_source_documents(max_files=5)
    assert docs and all(isinstance(x, str) for x in docs)
    assert tasks.passages("aa bb cc dd ee", chars=6) == ["aa bb", "cc dd"]  # 'ee' is a short tail: dropped
    with pytest.raises(GlassworkError, match="unknown probing task 'nope'"):
        tasks.build_task("nope", 10)


@pytest.mark.model
def test_pooling_and_word_activations_equal_one_at_a_time(default_model, small_sae):
    sae = gw.load_dictionary(small_sae)
    hook = sae.cfg.hook_in
    docs = ["The cat sat on the mat and looked at the door.", "def f(x):\n    return x + 1", "Short one."]
    acts, codes = probing.pooled(default_model, sae, docs, ctx=8, batch_size=2)
    for i, doc in enumerate(docs):
        ids = default_model.tokenize(doc)[:, :8]
        _, cache = capture(default_model, ids, [hook])
        x = cache[hook][0, 1:].float()
        torch.testing.assert_close(acts[i], x.mean(0), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(codes[i], sae.encode(x).mean(0), rtol=1e-4, atol=1e-4)
    words = [" cat", " house", " river"]
    rows = ab.word_activations(default_model, hook, words, batch_size=2)
    for i, w in enumerate(words):
        ids = default_model.tokenize(ab.PREFIX + w)
        _, cache = capture(default_model, ids, [hook])
        torch.testing.assert_close(rows[i], cache[hook][0, -1].float(), rtol=1e-4, atol=1e-4)


@pytest.mark.model
def test_absorption_on_the_default_model_and_transcoder_refused(default_model, small_sae, small_transcoders):
    sae = gw.load_dictionary(small_sae)
    out = ab.first_letter_absorption(default_model, sae, n_words=800, min_words=25)
    rates = [r["absorption_rate"] for r in out["letters"]]
    assert rates and all(0 <= r <= 1 for r in rates)
    assert out["mean_absorption_rate"] == pytest.approx(sum(rates) / len(rates))
    assert out["mean_probe_f1"] > 0.3  # the model knows first letters at layer 6 better than chance
    tc = gw.load_transcoders(small_transcoders)
    one = next(iter(tc.values()))
    with pytest.raises(GlassworkError, match="absorption needs an SAE"):
        ab.first_letter_absorption(default_model, one, n_words=50)
    with pytest.raises(GlassworkError, match="unknown part"):
        run_suite(default_model, sae, parts=("probing", "speed"))
