"""Runs inside circuit-tracer's own venv (called by benchmarks/attribute.py): one graph, its time, peak memory, and its
adjacency written for the numerical comparison.
A transcoder set or a cross-layer transcoder (config.yaml's model_kind), as glasswork exports them.
Args: MODEL_DIR CONFIG_YAML IDS(comma-separated) BATCH THREADS OUT [BACKEND: transformerlens (default) | nnsight]
[MAX_FEATURE_NODES: 0 = all] [VIEW_DIR: also write its own graph file there (create_graph_files, 0.8 / 0.98),
as peer.json].
TransformerLens (told the local folder is an official name) reads its config there and takes the HF module and tokenizer loaded here
(no hub access)."""
import json
import resource
import sys
import time

import torch
import yaml

model_dir, config, ids, batch, threads, out = sys.argv[1:7]
backend = sys.argv[7] if len(sys.argv) > 7 else "transformerlens"
max_feature_nodes = int(sys.argv[8]) if len(sys.argv) > 8 and int(sys.argv[8]) > 0 else None
torch.set_num_threads(int(threads))
from circuit_tracer import ReplacementModel, attribute  # noqa: E402
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt  # noqa: E402
from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set  # noqa: E402

cfg = yaml.safe_load(open(config))

t0 = time.time()
from pathlib import Path  # noqa: E402
if cfg["model_kind"] == "cross_layer_transcoder":
    tcs = load_clt(str(Path(config).parent), feature_input_hook=cfg["feature_input_hook"],
                   feature_output_hook=cfg["feature_output_hook"], scan=cfg.get("scan", "glasswork-export"),
                   device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False, lazy_encoder=False)
else:
    paths = {i: str(Path(config).parent / p) for i, p in enumerate(cfg["transcoders"])}  # relative to the config
    tcs = load_transcoder_set(paths, scan=cfg.get("scan", "glasswork-export"),
                              feature_input_hook=cfg["feature_input_hook"],
                              feature_output_hook=cfg["feature_output_hook"], device=torch.device("cpu"),
                              lazy_encoder=False, lazy_decoder=False)  # weights in memory: its faster setting
if cfg.get("activation") == "topk":  # its file loader makes every transcoder ReLU; set the TopK it has, zeroing
    from circuit_tracer.transcoder.activation_functions import TopK  # negative winners as glasswork (and SAELens) do

    class ReLUTopK(TopK):
        def forward(self, x):
            return super().forward(x).relu()
    for t in tcs.transcoders:
        t.activation_function = ReLUTopK(int(cfg["k"]))
if backend == "transformerlens":
    import transformer_lens.loading_from_pretrained as tl_loading
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tl_loading.OFFICIAL_MODEL_NAMES.append(model_dir)  # TL's list lacks SmolLM2; it reads a local folder's config
    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    _convert = tl_loading.convert_hf_model_config

    def convert(name, **kwargs):  # TL's Llama conversion ignores rope_theta (it would use 10000, not SmolLM2's 1e5)
        return {**_convert(name, **kwargs), "rotary_base": float(hf.config.rope_theta)}
    tl_loading.convert_hf_model_config = convert
    model = ReplacementModel.from_pretrained_and_transcoders(
        model_dir, tcs, backend="transformerlens", hf_model=hf, tokenizer=AutoTokenizer.from_pretrained(model_dir),
        device=torch.device("cpu"), dtype=torch.float32)
else:
    model = ReplacementModel.from_pretrained_and_transcoders(model_dir, tcs, backend="nnsight", device=torch.device("cpu"),
                                                             dtype=torch.float32)
load_s = time.time() - t0
tokens = torch.tensor([int(x) for x in ids.split(",")])
t0 = time.time()
graph = attribute(tokens, model, batch_size=int(batch), max_feature_nodes=max_feature_nodes)
seconds = time.time() - t0
if len(sys.argv) > 9:
    from circuit_tracer.utils.create_graph_files import create_graph_files
    create_graph_files(graph, slug="peer", output_path=sys.argv[9], scan=cfg.get("scan", "glasswork-export"),
                       node_threshold=0.8, edge_threshold=0.98)
from safetensors.torch import save_file  # noqa: E402
save_file({"adjacency": graph.adjacency_matrix.float().contiguous(), "active_features": graph.active_features.contiguous(),
           "selected_features": graph.selected_features.contiguous(),
           "logit_tokens": torch.tensor([t.vocab_idx for t in graph.logit_targets])}, out)
print(json.dumps({"seconds": seconds, "load_seconds": load_s, "peak_rss_mb": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024, "n_features": int(len(graph.selected_features)),
    "n_nodes": int(graph.adjacency_matrix.shape[0])}))
