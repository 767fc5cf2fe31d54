"""SAELens and circuit-tracer formats: exact round trips, and files that reconstruct as their weights say (against a
brute-force reading of the raw tensors; the peers' own code on these files is tests/test_peers.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from glasswork.dictionaries import CrossLayerTranscoder, DictionaryConfig, SparseCoder, load, save
from glasswork.dictionaries.formats import (export_circuit_tracer, export_saelens, import_saelens,
                                            read_circuit_tracer)
from glasswork.io import GlassworkError


def _random_sae(act, seed=0, d=12, F_=30):
    torch.manual_seed(seed)
    sae = SparseCoder(DictionaryConfig(kind="sae", d_in=d, d_sae=F_, activation=act, k=5, model="m",
                                       hook_in="blocks.2.hook_resid_post", hook_out="blocks.2.hook_resid_post"))
    for p in sae.parameters():
        p.data.normal_()
    if sae.threshold is not None:
        sae.threshold.data = sae.threshold.data.abs()
    return sae


@pytest.mark.parametrize("act", ["relu", "topk", "jumprelu"])
def test_saelens_round_trip_exact(tmp_path, act):
    sae = _random_sae(act)
    export_saelens(sae, tmp_path / "sl")
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[act]
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    back = import_saelens(tmp_path / "sl")
    for name, t in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    x = torch.randn(20, 12)
    assert torch.equal(back(x), sae(x))
    save(back, tmp_path / "native")  # native round trip too
    assert torch.equal(load(tmp_path / "native")(x), sae(x))


def _brute_saelens(folder, x):
    """Reconstruction straight from the SAELens files, by the formulas SAELens documents."""
    cfg = json.loads((folder / "cfg.json").read_text())
    w = load_file(str(folder / "sae_weights.safetensors"))
    xin = x - w["b_dec"] if cfg["apply_b_dec_to_input"] else x
    pre = xin.double() @ w["W_enc"].double() + w["b_enc"].double()
    if cfg["architecture"] == "standard":
        acts = pre.relu()
    elif cfg["architecture"] == "topk":
        v, i = pre.topk(cfg["k"], -1)
        acts = torch.zeros_like(pre).scatter(-1, i, v.relu())
    else:
        acts = pre.relu() * (pre > w["threshold"].double())
    return acts @ w["W_dec"].double() + w["b_dec"].double()


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens_folder_reconstructs_as_weights_say(tmp_path, arch):
    torch.manual_seed(1)
    folder = tmp_path / arch
    folder.mkdir()
    d, F_ = 10, 24
    w = {"W_enc": torch.randn(d, F_), "W_dec": torch.randn(F_, d), "b_enc": torch.randn(F_), "b_dec": torch.randn(d)}
    if arch == "jumprelu":
        w["threshold"] = torch.randn(F_)  # some negative: SAELens's ReLU makes those act as 0
    save_file(w, str(folder / "sae_weights.safetensors"))
    cfg = {"d_in": d, "d_sae": F_, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": arch != "standard",
           "normalize_activations": "none", "reshape_activations": "none", "architecture": arch,
           "metadata": {"hook_name": "blocks.1.hook_resid_post", "model_name": "m"}}
    if arch == "topk":
        cfg.update(k=4, rescale_acts_by_decoder_norm=False)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    x = torch.randn(15, d)
    got = import_saelens(folder)(x).double()
    torch.testing.assert_close(got, _brute_saelens(folder, x), rtol=1e-5, atol=1e-4)


def test_saelens_bad_input(tmp_path):
    sae = _random_sae("topk")
    export_saelens(sae, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    (tmp_path / "a" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(GlassworkError, match="architecture"):
        import_saelens(tmp_path / "a")
    (tmp_path / "a" / "cfg.json").write_text(json.dumps({**cfg, "d_in": 13}))
    with pytest.raises(GlassworkError, match="W_enc"):
        import_saelens(tmp_path / "a")
    (tmp_path / "a" / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(GlassworkError, match="normalize_activations"):
        import_saelens(tmp_path / "a")


def _transcoders(act, skip, L=3, d=8, F_=20):
    torch.manual_seed(2)
    out = {}
    for l in range(L):
        t = SparseCoder(DictionaryConfig(kind="transcoder", d_in=d, d_sae=F_, activation=act, k=4, skip=skip,
                                         b_dec_in=False, layer=l, model="m", hook_in=f"blocks.{l}.ln2.hook_normalized",
                                         hook_out=f"blocks.{l}.hook_mlp_out"))
        for p in t.parameters():
            p.data.normal_()
        if act == "topk":
            t.b_enc.data += 6.0  # every token's k-th pre-activation positive: both TopK variants agree
        out[l] = t
    return out


@pytest.mark.parametrize("act,skip", [("relu", True), ("jumprelu", False), ("topk", True)])
def test_circuit_tracer_transcoders(tmp_path, act, skip):
    tcs = _transcoders(act, skip)
    summary = export_circuit_tracer(tcs, tmp_path / "ct")
    text = (tmp_path / "ct" / "config.yaml").read_text()
    assert "model_kind: \"transcoder_set\"" in text and "layer_2.safetensors" in text
    back = read_circuit_tracer(tmp_path / "ct")
    x = torch.randn(9, 8)
    for l, t in tcs.items():
        for name, v in t.state_dict().items():
            assert torch.equal(back[l].state_dict()[name], v), (l, name)
        # circuit-tracer's own formulas on the raw file: F.linear(x, W_enc, b_enc); acts @ W_dec + b_dec + x @ W_skip.T
        w = load_file(str(tmp_path / "ct" / f"layer_{l}.safetensors"))
        pre = F.linear(x, w["W_enc"], w["b_enc"])
        if act == "relu":
            acts = pre.relu()
        elif act == "jumprelu":
            acts = pre * (pre > w["activation_function.threshold"])
        else:
            assert "k" not in w  # circuit-tracer's loader refuses any tensor it does not know
            v, i = pre.topk(t.cfg.k, -1)  # raw values, no ReLU; k is in config.yaml
            acts = torch.zeros_like(pre).scatter(-1, i, v)
        want = acts @ w["W_dec"] + w["b_dec"] + (x @ w["W_skip"].T if "W_skip" in w else 0)
        torch.testing.assert_close(t(x), want, rtol=1e-5, atol=1e-4)
    assert summary["activation_variant"].startswith({"relu": "relu", "jumprelu": "jump_relu", "topk": "topk"}[act])


@pytest.mark.parametrize("window", [0, 2])
def test_circuit_tracer_clt(tmp_path, window):
    torch.manual_seed(3)
    clt = CrossLayerTranscoder(DictionaryConfig(kind="clt", d_in=6, d_sae=10, n_layers=4, window=window,
                                                activation="jumprelu", b_dec_in=False, model="m"))
    for p in clt.parameters():
        p.data.normal_()
    export_circuit_tracer(clt, tmp_path / "ct")
    w_dec0 = load_file(str(tmp_path / "ct" / "W_dec_0.safetensors"))["W_dec_0"]
    assert w_dec0.shape == (10, 4, 6)  # circuit-tracer wants all later layers; a window is padded with zeros
    back = read_circuit_tracer(tmp_path / "ct")
    x = torch.randn(5, 4, 6)
    want = clt(x)
    # the read-back CLT has no window (zeros beyond it): its outputs must be identical
    torch.testing.assert_close(back(x), want, rtol=0, atol=1e-5)


def test_circuit_tracer_refuses_a_clt_with_a_skip(tmp_path):
    clt = CrossLayerTranscoder(DictionaryConfig(kind="clt", d_in=6, d_sae=10, n_layers=2, activation="jumprelu",
                                                b_dec_in=False, skip=True, model="m"))
    with pytest.raises(GlassworkError, match="no place for a skip"):
        export_circuit_tracer(clt, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()


def test_circuit_tracer_needs_every_layer(tmp_path):
    tcs = _transcoders("relu", False)
    del tcs[1]
    with pytest.raises(GlassworkError, match="every layer"):
        export_circuit_tracer(tcs, tmp_path / "x")


# ---------------------------------------------------------------------------------------------------- imports

def _random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_import_sparsify_transcoders_and_sae_reproduce_its_equations(tmp_path):
    """Fixture files in sparsify's layout (its tensor names and shapes); codes topk(relu(x' W^T + b)), x' = x for a
    transcoder and x - b_dec for an SAE (sparsify 1.3.3 SparseCoder.encode), skip x @ W_skip^T."""
    from safetensors.torch import save_file

    from glasswork.dictionaries.imports import import_folder
    d, F, k = 8, 24, 4
    run = tmp_path / "run"
    weights = {}
    for layer, skip in ((0, False), (1, True)):
        w = {"encoder.weight": _random(F, d, seed=layer), "encoder.bias": _random(F, seed=10 + layer) * 0.1,
             "W_dec": _random(F, d, seed=20 + layer), "b_dec": _random(d, seed=30 + layer)}
        if skip:
            w["W_skip"] = _random(d, d, seed=40)
        (run / f"layers.{layer}.mlp").mkdir(parents=True)
        save_file(w, str(run / f"layers.{layer}.mlp" / "sae.safetensors"))
        (run / f"layers.{layer}.mlp" / "cfg.json").write_text(json.dumps(
            {"activation": "topk", "num_latents": F, "k": k, "skip_connection": skip, "transcode": True, "d_in": d}))
        weights[layer] = w
    got, fmt = import_folder(run)
    assert fmt == "sparsify" and sorted(got) == [0, 1] and got[1].W_skip is not None
    x = _random(10, d, seed=99)
    for layer, w in weights.items():
        pre = (x @ w["encoder.weight"].T + w["encoder.bias"]).relu()
        v, i = pre.topk(k, -1)
        want = torch.zeros_like(pre).scatter(-1, i, v) @ w["W_dec"] + w["b_dec"] + (
            x @ w["W_skip"].T if "W_skip" in w else 0)
        torch.testing.assert_close(got[layer](x), want, rtol=1e-5, atol=1e-5)
        assert got[layer].cfg.hook_in == f"blocks.{layer}.ln2.hook_normalized"
        assert got[layer].cfg.training["imported_from"]["format"] == "sparsify"
    sae_dir = tmp_path / "layers.3"
    sae_dir.mkdir()
    save_file({k_: v for k_, v in weights[0].items()}, str(sae_dir / "sae.safetensors"))
    (sae_dir / "cfg.json").write_text(json.dumps({"activation": "topk", "k": k, "transcode": False, "d_in": d}))
    sae, _ = import_folder(sae_dir)
    assert sae.cfg.kind == "sae" and sae.cfg.hook_in == "blocks.3.hook_resid_post"
    w = weights[0]
    v, i = ((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"]).relu().topk(k, -1)
    want = torch.zeros(10, F).scatter(-1, i, v) @ w["W_dec"] + w["b_dec"]
    torch.testing.assert_close(sae(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", ["AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder"])
def test_import_dictionary_learning_reproduces_its_equations(tmp_path, cls):
    """ae.pt + config.json in saprmarks/dictionary_learning's layout, reconstructed with its published forward."""
    from glasswork.dictionaries.imports import import_folder
    d, F, k = 8, 20, 3
    x = _random(12, d, seed=5)
    if cls == "JumpReluAutoEncoder":
        state = {"W_enc": _random(d, F, seed=1), "b_enc": _random(F, seed=2) * 0.1, "W_dec": _random(F, d, seed=3),
                 "b_dec": _random(d, seed=4), "threshold": _random(F, seed=6).abs() * 0.5}
        pre = x @ state["W_enc"] + state["b_enc"]
        want = (pre * (pre > state["threshold"])).relu() @ state["W_dec"] + state["b_dec"]
    else:
        bias = "bias" if cls == "AutoEncoder" else "b_dec"
        state = {"encoder.weight": _random(F, d, seed=1), "encoder.bias": _random(F, seed=2) * 0.1,
                 "decoder.weight": _random(d, F, seed=3), bias: _random(d, seed=4)}
        f = ((x - state[bias]) @ state["encoder.weight"].T + state["encoder.bias"]).relu()
        if cls != "AutoEncoder":
            state["k"] = torch.tensor(k)
        if cls == "AutoEncoderTopK":
            v, i = f.topk(k, -1)
            f = torch.zeros_like(f).scatter(-1, i, v)
        elif cls == "BatchTopKSAE":
            state["threshold"] = torch.tensor(0.4)
            f = f * (f > state["threshold"])
        want = f @ state["decoder.weight"].T + state[bias]
    folder = tmp_path / cls
    folder.mkdir()
    torch.save(state, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": cls, "layer": 3, "lm_name": "m",
                                                                "submodule_name": "resid_post_layer_3"}}))
    got, fmt = import_folder(folder)
    assert fmt == "dictionary-learning" and got.cfg.hook_in == "blocks.3.hook_resid_post"
    torch.testing.assert_close(got(x), want, rtol=1e-5, atol=1e-5)


def test_import_gemma_scope_npz_and_circuit_tracer_through_the_cli(tmp_path):
    import numpy as np
    from typer.testing import CliRunner

    from glasswork.cli import app
    d, F = 8, 16
    p = {"W_enc": _random(d, F, seed=1), "W_dec": _random(F, d, seed=2), "b_enc": _random(F, seed=3) * 0.1,
         "b_dec": _random(d, seed=4), "threshold": _random(F, seed=5).abs() * 0.3}
    (tmp_path / "gs").mkdir()
    np.savez(tmp_path / "gs" / "params.npz", **{k: v.numpy() for k, v in p.items()})
    r = CliRunner().invoke(app, ["import", str(tmp_path / "gs"), "--out", str(tmp_path / "gs-native"), "--json"])
    assert r.exit_code == 0, r.output
    sae = load(tmp_path / "gs-native")
    x = _random(9, d, seed=7)
    pre = x @ p["W_enc"] + p["b_enc"]
    torch.testing.assert_close(sae(x), (pre > p["threshold"]) * pre.relu() @ p["W_dec"] + p["b_dec"], rtol=1e-5,
                               atol=1e-5)
    tcs = _transcoders("jumprelu", True)
    with torch.no_grad():
        for t in tcs.values():
            t.threshold.abs_()
    export_circuit_tracer(tcs, tmp_path / "ct")
    r = CliRunner().invoke(app, ["import", str(tmp_path / "ct"), "--out", str(tmp_path / "ct-native")])
    assert r.exit_code == 0, r.output
    from glasswork.dictionaries import load_transcoders
    back = load_transcoders(tmp_path / "ct-native")
    for layer, t in tcs.items():
        torch.testing.assert_close(back[layer](x), t(x))
        assert back[layer].cfg.training["imported_from"]["format"] == "circuit-tracer"


class NotATensor:
    """A pickled object that is not a tensor: what torch.load(weights_only=True) must refuse."""


def test_import_refuses_unknown_layouts_lying_configs_and_pickled_objects(tmp_path):
    import collections
    from typer.testing import CliRunner

    from glasswork.cli import app
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.bin").write_bytes(b"x")
    (tmp_path / "pickle").mkdir()
    torch.save({"encoder.weight": torch.zeros(4, 2), "extra": NotATensor()}, tmp_path / "pickle" / "ae.pt")
    (tmp_path / "counter").mkdir()
    torch.save({"encoder.weight": torch.zeros(4, 2), "extra": collections.Counter(a=1)}, tmp_path / "counter" / "ae.pt")
    from safetensors.torch import save_file
    (tmp_path / "lies").mkdir()
    save_file({"encoder.weight": torch.zeros(6, 4), "encoder.bias": torch.zeros(6), "W_dec": torch.zeros(5, 4),
               "b_dec": torch.zeros(4)}, str(tmp_path / "lies" / "sae.safetensors"))
    (tmp_path / "lies" / "cfg.json").write_text(json.dumps({"activation": "topk", "k": 2, "d_in": 4}))
    for name, needle in (("odd", "not a dictionary layout"), ("pickle", "refused"), ("counter", "state dict of tensors"),
                         ("lies", "'W_dec' has shape")):
        out = tmp_path / f"{name}-out"
        r = CliRunner().invoke(app, ["import", str(tmp_path / name), "--out", str(out)])
        assert r.exit_code == 2 and needle in " ".join(r.output.split()), r.output
        assert not out.exists()


def test_import_from_the_hub_by_name_reads_a_hub_snapshot(tmp_path):
    """`glasswork import hf:ORG/REPO/PATH` through huggingface_hub's own code, on a cache laid out as a hub snapshot
    (no hub is reachable here; offline, snapshot_download resolves refs/main in that cache)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--saes"
    saes = {name: _random_sae("topk", seed=i) for i, name in enumerate(("layer_3", "layer_5"))}
    for name, sae in saes.items():
        export_saelens(sae, repo / "snapshots" / commit / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "GLASSWORK_PROGRESS": "0"}
    cli = [str(Path(sys.executable).parent / "glasswork"), "import"]
    for source, name in (("hf:someone/saes/layer_5", "layer_5"), (f"hf:someone/saes/layer_3@{commit}", "layer_3")):
        out = tmp_path / f"native-{name}"
        r = subprocess.run([*cli, source, "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        got = load(out)
        x = torch.randn(9, got.cfg.d_in)
        torch.testing.assert_close(got(x), saes[name](x))
        assert got.cfg.training["imported_from"]["hub"] == source[3:]
    for source, needle in (("hf:someone/missing", "could not fetch someone/missing"),
                           ("hf:someone/saes/layer_9", "has no folder 'layer_9'"), ("hf:nothing", "expected hf:ORG/REPO")):
        out = tmp_path / "never"
        r = subprocess.run([*cli, source, "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 2 and needle in " ".join((r.stderr + r.stdout).split()), r.stderr + r.stdout
        assert "Traceback" not in r.stderr and not out.exists()
