"""Scaling and feature splitting: the power-law fit recovers a planted law, the splits are the brute-force nearest
decoder directions, a small sweep trains and evaluates each (width, tokens), and bad input is a clear error."""
from __future__ import annotations

import math

import pytest
import torch

import glasswork as gw
from glasswork.scaling import check_widths, power_law, splits, sweep

from server_fixtures import tiny_text_model


def test_power_law_recovers_a_planted_law():
    x = [512, 1024, 2048, 4096, 8192]
    fit = power_law(x, [3.0 * v ** -0.35 for v in x])
    assert fit["a"] == pytest.approx(3.0, rel=1e-9) and fit["b"] == pytest.approx(0.35, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0)
    noisy = power_law(x, [3.0 * v ** -0.35 * (1 + 0.05 * (-1) ** i) for i, v in enumerate(x)])
    assert 0.3 < noisy["b"] < 0.4 and noisy["r2"] < 1.0
    with pytest.raises(gw.GlassworkError, match="2 or more"):
        power_law([1], [1])
    with pytest.raises(gw.GlassworkError, match="positive"):
        power_law([1, 2], [0, 1])


def _coder(d_sae, seed):
    cfg = gw.DictionaryConfig(kind="sae", d_in=16, d_sae=d_sae, activation="relu")
    c = gw.SparseCoder(cfg)
    c.reset_parameters(seed=seed)
    return c


def test_splits_are_the_nearest_decoder_directions():
    ds = [_coder(8, 0), _coder(16, 1), _coder(32, 2)]
    got = splits(ds, [0, 5], top=3)
    for rec in got:
        u = ds[0].W_dec[rec["feature"]].detach().double()
        for big, children in zip(ds[1:], rec["children"]):
            cos = [float(big.W_dec[j].detach().double() @ u / (big.W_dec[j].detach().double().norm() * u.norm()))
                   for j in range(big.d_sae)]
            want = sorted(range(big.d_sae), key=lambda j: -cos[j])[:3]
            assert [j for j, _ in children] == want
            assert [c for _, c in children] == pytest.approx([cos[j] for j in want], abs=1e-4)
    with pytest.raises(gw.GlassworkError, match="outside"):
        splits(ds, [8])
    with pytest.raises(gw.GlassworkError, match="2 or more"):
        splits(ds[:1], [0])


def test_widths_are_checked():
    assert check_widths([64, 128]) == [64, 128]
    with pytest.raises(gw.GlassworkError, match="given twice"):
        check_widths([64, 128, 64])
    with pytest.raises(gw.GlassworkError, match="no widths"):
        check_widths([])


def test_a_small_sweep_trains_and_evaluates_each_run(tmp_path):
    from glasswork.data.store import harvest
    m = tiny_text_model()
    hook = "blocks.1.hook_resid_post"
    harvest(m, [hook], tmp_path / "store", 2048, ctx_len=16)
    ctx = torch.randint(1, 1000, (4, 16))
    ctx[:, 0] = m.bos_token_id
    rows = sweep(m, tmp_path / "store", hook, [(16, 1024), (64, 1024), (64, 2048)], tmp_path / "runs", k=4,
                 eval_contexts=ctx, eval_tokens=60, batch_size=128)
    assert [(r["width"], r["tokens"]) for r in rows] == [(16, 1024), (64, 1024), (64, 2048)]
    for r in rows:
        assert gw.load_dictionary(r["path"]).d_sae == r["width"] and 0 <= r["fvu"] and math.isfinite(r["kl"])
    with pytest.raises(gw.GlassworkError, match="given twice"):
        sweep(m, tmp_path / "store", hook, [(16, 1024), (16, 1024)], tmp_path / "runs")
