"""The peers' own code on glasswork's exports and files: circuit-tracer loads our transcoder set and CLT and its
attribute() gives our edges; its pydantic graph model validates our viewer JSON and its own graph files keep the same
nodes; SAELens loads our SAE export and reconstructs as we do; we read what SAELens and sparsify write.

Each peer runs in its own venv (benchmarks/_peers.py: where, which version); a test skips with the reason when its
peer is absent. `python benchmarks/peers.py --install all` makes the venvs and runs this file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _peers import peer_model_folder, peer_python, why_absent  # noqa: E402

PROMPT = "Rivers carry water down from the"  # named by no issue


def _need(name: str) -> Path:
    python = peer_python(name)
    if python is None:
        pytest.skip(why_absent(name))
    return python


def _inputs(model, ids):
    import glasswork as gw
    names = [f"blocks.{layer}.ln2.hook_normalized" for layer in range(model.n_layers)]
    _, acts = gw.capture(model, ids.view(1, -1), names)
    return [acts[n][0, 1:] for n in names]  # [seq - 1, d] per layer, BOS left out


def _transcoders(model, ids, active: int = 12, width: int = 256) -> dict:
    """JumpReLU transcoders with a linear skip and output bias, random but with thresholds set so about `active`
    features fire per token: every part of the export (W_enc, W_dec, b_enc, b_dec, W_skip, threshold) is used."""
    import glasswork as gw
    tcs = {}
    for layer, x in enumerate(_inputs(model, ids)):
        cfg = gw.DictionaryConfig(kind="transcoder", d_in=model.d_model, d_sae=width, activation="jumprelu",
                                  skip=True, b_dec_in=False, layer=layer, model=model.name,
                                  hook_in=f"blocks.{layer}.ln2.hook_normalized", hook_out=f"blocks.{layer}.hook_mlp_out")
        tc = gw.SparseCoder(cfg)
        tc.reset_parameters(seed=layer)
        gen = torch.Generator().manual_seed(100 + layer)
        with torch.no_grad():
            tc.b_enc.copy_(0.05 * torch.randn(width, generator=gen))
            tc.b_dec.copy_(0.02 * torch.randn(model.d_model, generator=gen))
            tc.W_skip.copy_(0.02 * torch.randn(model.d_model, model.d_model, generator=gen))
            tc.threshold.fill_(float(tc.pre_acts(x).flatten().quantile(1 - active / width)))
        tcs[layer] = tc.requires_grad_(False)
    return tcs


def _clt(model, ids, active: int = 8, width: int = 64):
    """A JumpReLU CLT over every layer (each feature writes to all later layers), thresholds set per layer."""
    import glasswork as gw
    clt = gw.CrossLayerTranscoder(gw.DictionaryConfig(kind="clt", d_in=model.d_model, d_sae=width,
                                                      n_layers=model.n_layers, activation="jumprelu", b_dec_in=False,
                                                      model=model.name))
    clt.reset_parameters(seed=3)
    x = torch.stack(_inputs(model, ids), 1)  # [seq - 1, L, d]
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        clt.b_dec.copy_(0.02 * torch.randn(clt.b_dec.shape, generator=gen))
        pre = clt.pre_acts(x)  # [seq - 1, L, F]
        for layer in range(model.n_layers):
            clt.threshold[layer].fill_(float(pre[:, layer].flatten().quantile(1 - active / width)))
    return clt.requires_grad_(False)


def _peer_graph(python: Path, config: Path, ids: torch.Tensor, out: Path, view_dir: Path | None = None) -> dict:
    cmd = [str(python), str(ROOT / "benchmarks" / "_circuit_tracer_run.py"), str(peer_model_folder()), str(config),
           ",".join(map(str, ids.tolist())), "64", "2", str(out), "transformerlens", "0"]
    if view_dir is not None:
        cmd.append(str(view_dir))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return load_file(str(out))


def _assert_same_edges(g, peer: dict) -> None:
    """Both tools order nodes features (layer, pos, index), errors (layer-major), tokens, logits; rows are targets."""
    a, b = g.dense(), peer["adjacency"].float()
    assert a.shape == b.shape
    assert g.node_index[g.n_nodes - g.n_logits:].tolist() == peer["logit_tokens"].tolist()
    chosen = peer["active_features"][peer["selected_features"].long()]  # [n, 3] (layer, pos, feature)
    ours = torch.stack([g.node_layer, g.node_pos, g.node_index.int()], 1)[:g.n_features]
    assert torch.equal(chosen.int(), ours.int())
    assert g.n_features > 100 and (a != 0).sum() > 1000  # a real graph, not an empty one
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["transcoders", "clt"])
def test_circuit_tracer_attributes_our_export_with_our_edges(default_model, tmp_path, kind):
    """A JumpReLU transcoder set with skips and biases, and a JumpReLU CLT writing to every later layer."""
    import glasswork as gw
    from glasswork.dictionaries.formats import export_circuit_tracer
    python = _need("circuit-tracer")
    ids = default_model.tokenize(PROMPT).flatten()
    coders = _transcoders(default_model, ids) if kind == "transcoders" else _clt(default_model, ids)
    summary = export_circuit_tracer(coders, tmp_path / "export")
    assert summary["model_kind"] == ("transcoder_set" if kind == "transcoders" else "cross_layer_transcoder")
    graph = gw.attribute(default_model, coders, ids, show_progress=False)
    _assert_same_edges(graph, _peer_graph(python, tmp_path / "export" / "config.yaml", ids, tmp_path / "peer.st"))


def _node_key(node: dict) -> tuple:
    """What a viewer node is, from its fields: the two tools spell error and logit ids differently (errors err_L_P
    here, 0_L_P in circuit-tracer; logits at layer n_layers here, n_layers + 1 there)."""
    kind, pos = node["feature_type"], node["ctx_idx"]
    if kind == "embedding":
        return "embedding", pos
    if kind == "logit":
        return "logit", pos, node["feature"]
    if kind == "mlp reconstruction error":
        return "error", int(node["layer"]), pos
    return "feature", int(node["layer"]), pos, int(node["node_id"].split("_")[1])


@pytest.mark.model
@pytest.mark.slow
def test_circuit_tracer_validates_our_graph_json_and_keeps_the_same_nodes(default_model, small_transcoders, tmp_path):
    """Trained transcoders (so that features, not only errors, survive pruning): circuit-tracer's pydantic model
    validates our viewer JSON, and its own graph file of the same graph keeps the same nodes and edges."""
    import glasswork as gw
    from glasswork.dictionaries.formats import export_circuit_tracer
    python = _need("circuit-tracer")
    tcs = gw.load_transcoders(small_transcoders)
    export_circuit_tracer(tcs, tmp_path / "export")
    ids = default_model.tokenize(PROMPT).flatten()
    graph = gw.attribute(default_model, tcs, PROMPT, show_progress=False, dictionary="../tc")  # text: the slug
    peer = _peer_graph(python, tmp_path / "export" / "config.yaml", ids, tmp_path / "peer.st", tmp_path / "views")
    _assert_same_edges(graph, peer)
    view = graph.view(0.8, 0.98)
    (tmp_path / "ours.json").write_text(json.dumps(view))
    check = ("import json, sys\nfrom circuit_tracer.frontend.graph_models import Model\n"
             "m = Model(**json.load(open(sys.argv[1])))\nprint(json.dumps({'nodes': len(m.nodes), "
             "'links': len(m.links), 'slug': m.metadata.slug}))")
    res = subprocess.run([str(python), "-c", check, str(tmp_path / "ours.json")], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    checked = json.loads(res.stdout.strip().splitlines()[-1])
    assert checked == {"nodes": len(view["nodes"]), "links": len(view["links"]), "slug": view["metadata"]["slug"]}
    assert view["metadata"]["slug"] == "rivers-carry-water-down-from-the"
    assert view["metadata"]["info"]["dictionary"] == "../tc"  # as given: relative, no local path
    theirs = json.loads((tmp_path / "views" / "peer.json").read_text())  # its create_graph_files at 0.8 / 0.98
    ours = {n["node_id"]: _node_key(n) for n in view["nodes"]}
    their = {n["node_id"]: _node_key(n) for n in theirs["nodes"]}
    # its file drops kept nodes left without a kept edge (embeddings and logits stay); ours lists every kept node
    linked = {e["source"] for e in view["links"]} | {e["target"] for e in view["links"]}
    kept = {ours[i] for i in ours if i in linked or ours[i][0] in ("embedding", "logit")}
    assert kept == set(their.values()) and len(ours) >= len(their)
    assert sum(k[0] == "feature" for k in kept) >= 5
    ours_links = {(ours[e["source"]], ours[e["target"]]): e["weight"] for e in view["links"]}
    their_links = {(their[e["source"]], their[e["target"]]): e["weight"] for e in theirs["links"]}
    assert ours_links.keys() == their_links.keys()
    top = max(abs(w) for w in ours_links.values())
    assert max(abs(ours_links[k] - their_links[k]) for k in ours_links) <= 1e-4 * top


@pytest.mark.parametrize("act", ["relu", "topk", "jumprelu"])
def test_sae_lens_loads_our_export_and_reconstructs_as_we_do(tmp_path, act):
    import glasswork as gw
    from glasswork.dictionaries.formats import export_saelens
    python = _need("sae-lens")
    torch.manual_seed(0)
    sae = gw.SparseCoder(gw.DictionaryConfig(kind="sae", d_in=24, d_sae=60, activation=act, k=7, model="m",
                                             hook_in="blocks.3.hook_resid_post", hook_out="blocks.3.hook_resid_post"))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
        if sae.threshold is not None:
            sae.threshold.abs_()
    export_saelens(sae, tmp_path / "sae")
    x = torch.randn(40, 24)
    from safetensors.torch import save_file
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    script = ("import sys, torch\nfrom safetensors.torch import load_file, save_file\nfrom sae_lens import SAE\n"
              "sae = SAE.load_from_disk(sys.argv[1], device='cpu')\nx = load_file(sys.argv[2])['x']\n"
              "with torch.no_grad():\n    save_file({'acts': sae.encode(x), 'out': sae(x)}, sys.argv[3])\n"
              "print(type(sae).__name__)")
    res = subprocess.run([str(python), "-c", script, str(tmp_path / "sae"), str(tmp_path / "x.safetensors"),
                          str(tmp_path / "theirs.safetensors")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == {"relu": "StandardSAE", "topk": "TopKSAE",
                                                   "jumprelu": "JumpReLUSAE"}[act]
    theirs = load_file(str(tmp_path / "theirs.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(theirs["acts"], sae.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs["out"], sae(x), rtol=1e-5, atol=1e-4)
    assert (theirs["acts"] != 0).float().mean() < 0.9  # sparse codes, not a trivially dense comparison


def test_we_read_what_sae_lens_writes(tmp_path):
    from safetensors.torch import load_file

    from glasswork.dictionaries.formats import import_saelens
    python = _need("sae-lens")
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
    res = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    ref = load_file(str(tmp_path / "ref.safetensors"))
    for name in ("topk", "standard", "jumprelu"):
        sae = import_saelens(tmp_path / name)
        torch.testing.assert_close(sae.encode(ref["x"]), ref[name + "_acts"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(ref["x"]), ref[name], rtol=1e-5, atol=1e-4)


def test_we_read_what_sparsify_writes(tmp_path):
    """sparsify's own SparseCoder (a skip transcoder at layers.3.mlp, an SAE at layers.5) saved by its own code;
    glasswork's import reconstructs as its forward does."""
    from safetensors.torch import save_file

    from glasswork.dictionaries.imports import import_folder
    python = _need("sparsify")
    x = torch.randn(30, 16)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    script = """
import sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
from sparsify import SparseCoder, SparseCoderConfig
torch.manual_seed(0)
root, x = Path(sys.argv[1]), load_file(sys.argv[2])["x"]
out = {}
for name, kw in (("layers.3.mlp", dict(transcode=True, skip_connection=True)), ("layers.5", {})):
    coder = SparseCoder(16, SparseCoderConfig(num_latents=48, k=5, **kw))
    with torch.no_grad():
        for p in coder.parameters():
            p.normal_()
        out[name] = coder(x).sae_out
    coder.save_to_disk(root / "run" / name)
save_file(out, str(root / "theirs.safetensors"))
"""
    res = subprocess.run([str(python), "-c", script, str(tmp_path), str(tmp_path / "x.safetensors")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    theirs = load_file(str(tmp_path / "theirs.safetensors"))
    for name in ("layers.3.mlp", "layers.5"):
        coder, fmt = import_folder(tmp_path / "run" / name)
        assert fmt == "sparsify" and coder.cfg.kind == ("transcoder" if name.endswith("mlp") else "sae")
        with torch.no_grad():
            torch.testing.assert_close(coder(x), theirs[name], rtol=1e-5, atol=1e-4)
