"""Small real artifacts for the web-app tests: a tiny random Llama with the default model's tokenizer (so prompts are
text), random transcoders saved as a set, a graph traced through them, an SAE and feature indexes, a direction."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

import glasswork as gw
from glasswork.features.stats import StatsConfig

TEXTS = ["The weather today is sunny and warm, with a light breeze from the sea.",
         "Paris is the capital of France, and Berlin is the capital of Germany.",
         "When Mary and John went to the store, John gave a drink to Mary.",
         "The cat sat on the mat while the dog slept by the fire all evening long.",
         "Rain is expected tomorrow in London, so take an umbrella to work."] * 6
PROMPT = "The capital of France is"


@contextmanager
def served(app) -> Iterator[str]:
    """`app` served by uvicorn on a free loopback port in a thread, for the block: yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(5)


def tiny_text_model(n_layers: int = 2, seed: int = 0):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from glasswork.models import Model, default_model_folder
    tok = AutoTokenizer.from_pretrained(default_model_folder())
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id or 1)
    return Model(LlamaForCausalLM(cfg).eval(), tok, "tiny-llama-text")


def sparse_coder(m, kind: str, layer: int, d_sae: int, seed: int):
    hook_in = f"blocks.{layer}.ln2.hook_normalized" if kind == "transcoder" else f"blocks.{layer}.hook_resid_post"
    hook_out = f"blocks.{layer}.hook_mlp_out" if kind == "transcoder" else hook_in
    cfg = gw.DictionaryConfig(kind=kind, d_in=m.d_model, d_sae=d_sae, d_out=m.d_model, activation="relu",
                              layer=layer, model=m.name, hook_in=hook_in, hook_out=hook_out)
    d = gw.SparseCoder(cfg)
    d.reset_parameters(seed=seed)
    with torch.no_grad():
        d.b_enc.fill_(-0.05)
    return d.requires_grad_(False)


def build_workdir(root: Path) -> dict:
    """root/tc (a transcoder set; every layer indexed in one pass), root/sae (indexed, labelled), root/graphs/france.safetensors,
    root/directions/up. Returns the pieces for reference computations."""
    m = tiny_text_model()
    tcs = {layer: sparse_coder(m, "transcoder", layer, 64, seed=layer) for layer in range(m.n_layers)}
    gw.save_set({f"layer_{layer:02d}": tc for layer, tc in tcs.items()}, root / "tc")
    sae = sparse_coder(m, "sae", 0, 48, seed=7)
    gw.save_dictionary(sae, root / "sae")
    stats = StatsConfig(top_k=6, n_quantiles=3, per_quantile=2, n_zero=2)
    gw.build_index(m, sae, texts=TEXTS, path=root / "sae" / "features.sqlite", n_contexts=24, ctx_len=16, cfg=stats)
    gw.features.build_set_index(m, root / "tc", texts=TEXTS, n_contexts=24, ctx_len=16, cfg=stats)  # every layer
    index = gw.FeatureIndex(root / "sae")
    live = index.live_features()
    index.set_label(live[0], "test", "weather and rain words", scores={"detection": 0.8, "detection_baseline": 0.5})
    index.close()
    graph = gw.attribute(m, tcs, PROMPT, show_progress=False, dictionary=str((root / "tc").resolve()))
    from glasswork.circuits.faithfulness import add_faithfulness
    from glasswork.circuits.qk import add_qk
    add_qk(graph, m, tcs, n_heads=2)  # the viewer's attention (QK) panel
    add_faithfulness(graph, m, tcs, n_features=8)  # the viewer's faithfulness line
    from glasswork.circuits.inactive import add_inactive
    from glasswork.features.index import typical_activations
    add_inactive(graph, m, tcs, typical_activations(root / "tc", sorted(tcs)), top=6, verify=2)
    graph.save(root / "graphs" / "france.safetensors")
    from glasswork.circuits.global_circuits import aggregate, write_global
    write_global(root / "tc", aggregate(m, tcs, [PROMPT, *TEXTS[:3]], max_features=None), 4)  # glasswork global
    vec = gw.Direction(torch.randn(m.d_model, generator=torch.Generator().manual_seed(3)), "blocks.0.hook_resid_post",
                       model=m.name)
    vec.save(root / "directions" / "up")
    return {"model": m, "transcoders": tcs, "sae": sae, "graph": graph, "live": live}


_BUILT: dict = {}


def shared_workdir() -> tuple[Path, dict]:
    """One workdir per test process (test_server and test_browser share it)."""
    import tempfile
    if "root" not in _BUILT:
        import atexit
        import shutil
        root = Path(tempfile.mkdtemp(prefix="glasswork-server-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _BUILT["parts"] = build_workdir(root)
        _BUILT["root"] = root
    return _BUILT["root"], _BUILT["parts"]


def synthetic_graph(n_nodes: int = 10_000, n_edges: int = 1_000_000, n_layers: int = 4, seq: int = 10,
                    n_logits: int = 5, seed: int = 0):
    """A random acyclic Graph with exactly `n_edges` nonzero edges (sources in lower layers, at earlier positions)."""
    from glasswork.circuits.graph import ERROR, FEATURE, LOGIT, TOKEN, Graph
    g = torch.Generator().manual_seed(seed)
    n_err, n_tok = n_layers * seq, seq
    nf = n_nodes - n_err - n_tok - n_logits
    kind = torch.cat([torch.full((nf,), FEATURE), torch.full((n_err,), ERROR), torch.full((n_tok,), TOKEN),
                      torch.full((n_logits,), LOGIT)]).to(torch.int8)
    layer = torch.cat([torch.sort(torch.randint(0, n_layers, (nf,), generator=g)).values,
                       torch.arange(n_layers).repeat_interleave(seq), torch.full((n_tok,), -1),
                       torch.full((n_logits,), n_layers)]).int()
    pos = torch.cat([torch.randint(0, seq, (nf,), generator=g), torch.arange(seq).repeat(n_layers), torch.arange(seq),
                     torch.full((n_logits,), seq - 1)]).int()
    index = torch.cat([torch.randint(0, 4096, (nf,), generator=g), torch.full((n_err,), -1),
                       torch.randint(0, 97, (n_tok + n_logits,), generator=g)])
    rows = torch.cat([torch.arange(nf), torch.arange(n_nodes - n_logits, n_nodes)])
    r = torch.randint(0, len(rows), (6 * n_edges,), generator=g)
    c = torch.randint(0, n_nodes - n_logits, (6 * n_edges,), generator=g)
    ok = (layer[c] < layer[rows[r]]) & (pos[c] <= pos[rows[r]])
    flat = torch.unique(r[ok] * n_nodes + c[ok])
    flat = flat[torch.randperm(len(flat), generator=g)[:n_edges]]
    assert len(flat) == n_edges
    adj = torch.zeros(len(rows), n_nodes)
    adj.view(-1)[flat] = torch.randn(n_edges, generator=g)
    meta = {"prompt": "synthetic", "str_tokens": [f"t{i}" for i in range(seq)], "model": "synthetic",
            "n_layers": n_layers, "d_sae": 4096, "feature_type": "transcoder",
            "logit_labels": [f"l{j}" for j in range(n_logits)]}
    return Graph(adj, kind, layer, pos, index, torch.rand(n_nodes, generator=g), torch.full((n_logits,), 1 / n_logits),
                 torch.arange(seq), meta)
