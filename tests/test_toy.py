"""Toy models of superposition: the paper's findings hold in small runs, the hand-written gradients equal autograd's,
a seed fixes the data, the SAE recovers the features, and `glasswork toy` writes loadable files."""
from __future__ import annotations

import json
import math

import pytest
import torch

from glasswork.io import GlassworkError, load_tensors
from glasswork.toy import (ReproduceSettings, SAESettings, ToyConfig, ToyModel, decaying_importance, dims_per_feature,
                           feature_dimensionality, geometry_2d, gradients, plateau, reproduce, sae_recovery, sample,
                           train)
from glasswork.toy.model import check_importance, check_sparsity


@pytest.fixture(scope="module")
def five_in_two():
    """n=5, m=2, importance 0.9^i, trained at a dense and a sparse setting (the paper's steps and batch)."""
    model, loss = train(ToyConfig(n_features=5, n_hidden=2, steps=6000, batch=1024, seed=0),
                        torch.tensor([0.0, 0.3, 0.95]), decaying_importance(5))
    return model


def test_gradients_equal_autograd():
    n, m = 7, 3
    sp = check_sparsity(torch.tensor([0.0, 0.5, 0.9, 0.99]), n)
    imp = check_importance(decaying_importance(n), 4, n)
    gen = torch.Generator().manual_seed(1)
    model = ToyModel(n, m, sp, imp, gen).double()
    with torch.no_grad():
        model.b.normal_(0, 0.3, generator=gen)
    x = sample(256, sp, gen).double()
    model.loss(x).sum().backward()
    gW, gb = gradients(model, x)
    torch.testing.assert_close(gW, model.W.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gb, model.b.grad, rtol=1e-10, atol=1e-12)


def test_data_has_the_asked_sparsity():
    sp = check_sparsity(torch.tensor([0.0, 0.9]), 5)
    x = sample(20_000, sp, torch.Generator().manual_seed(0))  # [2, 20000, 5]
    zero = (x == 0).double().mean((1, 2))
    assert abs(zero[0].item()) < 1e-3 and abs(zero[1].item() - 0.9) < 0.01
    active = x[1][x[1] > 0]
    assert active.max() < 1 and abs(active.mean().item() - 0.5) < 0.02  # uniform [0, 1) when active


def test_high_sparsity_gives_a_pentagon(five_in_two):
    g = geometry_2d(five_in_two.W[2].detach())
    assert g["n_represented"] == 5
    assert all(0.8 < nrm < 1.3 for nrm in g["norms"])
    assert all(abs(gap - 72) < 6 for gap in g["gaps"]), g["gaps"]


def test_low_sparsity_represents_only_two_features(five_in_two):
    for i in (0, 1):
        g = geometry_2d(five_in_two.W[i].detach())
        assert g["n_represented"] == 2, g["norms"]
        assert sorted(g["represented"]) == [0, 1]  # the two most important
        assert abs(dims_per_feature(five_in_two.W[i:i + 1].detach()).item() - 1) < 0.05


def test_dims_per_feature_sticks_at_one_half():
    # 1/(1-S): dense, then close steps through the plateau (near 2.3-3.5 for n/m = 5), then sparser
    inverse = torch.tensor([1.0, 2.3, 2.6, 2.9, 3.3, 6.0])
    model, _ = train(ToyConfig(n_features=20, n_hidden=4, steps=4000, batch=1024, seed=0), 1 - 1 / inverse, 1.0)
    dpf = dims_per_feature(model.W.detach())
    p = plateau((1 - 1 / inverse).tolist(), dpf.tolist())
    assert p is not None and p["points"] >= 3, dpf
    assert abs(p["mean"] - 0.5) < 0.05, (p, dpf)
    assert dpf[0] > 0.95 and dpf[-1] < 0.45  # dense: m features, one dimension each; sparser: below the plateau
    dims = feature_dimensionality(model.W.detach())
    assert dims.max() <= 1 + 1e-4


def test_sae_recovers_the_features_at_high_sparsity(five_in_two):
    rows = sae_recovery(five_in_two, SAESettings(rows=8192, tokens=150_000), instances=[2])
    assert rows[0]["represented"] == 5
    assert rows[0]["recovery"] >= 0.9, rows


def test_same_seed_same_data(tmp_path):
    st = ReproduceSettings(steps=300, batch=256, phase_grid=3, phase_steps=200)
    a = reproduce(tmp_path / "a", seed=3, parts=["geometry", "phase"], settings=st)
    b = reproduce(tmp_path / "b", seed=3, parts=["geometry", "phase"], settings=st)
    c = reproduce(tmp_path / "c", seed=4, parts=["geometry"], settings=st)
    da, db = (tmp_path / "a" / "data.json").read_bytes(), (tmp_path / "b" / "data.json").read_bytes()
    assert da == db
    assert json.loads(da)["geometry"] != json.loads((tmp_path / "c" / "data.json").read_bytes())["geometry"]
    assert a["files"].keys() == b["files"].keys() and "geometry.png" in c["files"]


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(GlassworkError, match="sparsity must be in"):
        train(ToyConfig(steps=1), torch.tensor([1.0]))
    with pytest.raises(GlassworkError, match="n_hidden"):
        ToyConfig(n_features=2, n_hidden=3).check()
    with pytest.raises(GlassworkError, match="unknown part"):
        reproduce(tmp_path, parts=["pentagons"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(GlassworkError, match="not a folder"):
        reproduce(tmp_path / "file", parts=["geometry"])


def test_cli_quick_json(tmp_path):
    from typer.testing import CliRunner

    from glasswork.cli import app
    out = tmp_path / "toy"
    res = CliRunner().invoke(app, ["toy", "--out", str(out), "--quick", "--json", "--seed", "1"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    for path in summary["files"].values():
        assert (out / path.split("/")[-1]).stat().st_size > 0
    for name in ("geometry", "dims-per-feature", "feature-dimensionality", "phase-diagram", "sae-recovery"):
        assert (out / f"toy-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        page = (out / f"toy-{name}.html").read_text()
        assert "<svg" in page and "data-tip" in page and "<script src" not in page
    data = json.loads((out / "data.json").read_text())
    weights = load_tensors(out / "weights.safetensors")
    assert torch.equal(weights["geometry.W"], torch.tensor([g["W"] for g in data["geometry"]["instances"]]))
    assert len(data["phase"]["phase"]) == ReproduceSettings.quick().phase_grid
    assert all(math.isfinite(r["dims_per_feature"]) for r in data["dimensionality"]["instances"])
    bad = CliRunner().invoke(app, ["toy", "--out", str(tmp_path / "x"), "--part", "nope"])
    assert bad.exit_code == 2 and "unknown part" in bad.output
