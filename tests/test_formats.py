"""SAELens and circuit-tracer formats: exact round trips, and files that reconstruct as their weights say (against
sae-lens itself when its peer venv exists, always against a brute-force reading of the raw tensors)."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from glasswork.dictionaries import CrossLayerTranscoder, DictionaryConfig, SparseCoder, load, save
from glasswork.dictionaries.formats import (export_circuit_tracer, export_saelens, import_saelens,
                                            read_circuit_tracer)
from glasswork.io import GlassworkError

SAELENS_PY = Path("/work/peers/saelens/bin/python")


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


@pytest.mark.skipif(not SAELENS_PY.exists(), reason="sae-lens peer venv (/work/peers/saelens) not installed")
def test_against_sae_lens_itself(tmp_path):
    script = f"""
import torch
from safetensors.torch import save_file
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
torch.manual_seed(0)
x = torch.randn(25, 16)
out = {{"x": x}}
for name, cls, cc, kw in [("topk", TopKSAE, TopKSAEConfig, {{"k": 6}}), ("standard", StandardSAE, StandardSAEConfig, {{}}),
                          ("jumprelu", JumpReLUSAE, JumpReLUSAEConfig, {{}})]:
    sae = cls(cc(d_in=16, d_sae=40, **kw))
    for p in sae.parameters():
        p.data.normal_()
    sae.save_model("{tmp_path}/" + name)
    with torch.no_grad():
        out[name] = sae(x)
        out[name + "_acts"] = sae.encode(x)
save_file(out, "{tmp_path}/ref.safetensors")
"""
    subprocess.run([str(SAELENS_PY), "-c", script], check=True, capture_output=True, timeout=300)
    ref = load_file(str(tmp_path / "ref.safetensors"))
    for name in ("topk", "standard", "jumprelu"):
        sae = import_saelens(tmp_path / name)
        torch.testing.assert_close(sae.encode(ref["x"]), ref[name + "_acts"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(ref["x"]), ref[name], rtol=1e-5, atol=1e-4)


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


def test_circuit_tracer_needs_every_layer(tmp_path):
    tcs = _transcoders("relu", False)
    del tcs[1]
    with pytest.raises(GlassworkError, match="every layer"):
        export_circuit_tracer(tcs, tmp_path / "x")
