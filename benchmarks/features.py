"""Feature index speed: features per second for the whole index of the default model's SAE (small_sae fixture),
against sae-dashboard 0.8.0 (own venv /work/peers/saedash) on the same SAE (exported to SAELens format here) and the
same token contexts, in one run. Also bytes on disk per feature.

Run: .venv/bin/python benchmarks/features.py [--contexts 64 --ctx-len 128 --peer-features 16]
Peer venv: python3 -m venv /work/peers/saedash && /work/peers/saedash/bin/pip install torch==2.13.0 &&
           /work/peers/saedash/bin/pip install sae-dashboard==0.8.0"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import glasswork as gw
from glasswork.features import build_index
from glasswork.features.index import default_contexts
from glasswork.training import quick

PEER = Path("/work/peers/saedash/bin/python")
PEER_SCRIPT = r'''
import json, sys, time, torch
from sae_lens import SAE
from transformer_lens import HookedTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer
from sae_dashboard.sae_vis_data import SaeVisConfig
from sae_dashboard.sae_vis_runner import SaeVisRunner
a = json.load(open(sys.argv[1]))
hf = AutoModelForCausalLM.from_pretrained(a["model_dir"])
tok = AutoTokenizer.from_pretrained(a["tok_dir"])
# TransformerLens 2.17 does not know SmolLM2-135M by name: build its Llama config by hand and convert the weights
from transformer_lens import HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_llama_weights
c = hf.config
cfg = HookedTransformerConfig(d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
    n_key_value_heads=c.num_key_value_heads, d_head=c.hidden_size // c.num_attention_heads, d_mlp=c.intermediate_size,
    d_vocab=c.vocab_size, n_ctx=2048, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
    rotary_dim=c.hidden_size // c.num_attention_heads, rotary_base=c.rope_theta if hasattr(c, "rope_theta") else
    c.rope_parameters["rope_theta"], gated_mlp=True, final_rms=True, eps=c.rms_norm_eps,
    original_architecture="LlamaForCausalLM", tokenizer_prepends_bos=False, default_prepend_bos=False)
model = HookedTransformer(cfg, tokenizer=tok)
model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                  center_unembed=False, fold_value_biases=False)
ids = torch.tensor([[1, 504, 3575, 282, 4649, 314]])
assert (model(ids) - hf(ids).logits).abs().max() < 1e-3, "TransformerLens model differs from HF"
sae = SAE.load_from_disk(a["sae_dir"], device="cpu")
tokens = torch.load(a["tokens"])
t0 = time.time()
cfg = SaeVisConfig(hook_point=a["hook"], features=list(range(a["n_features"])), minibatch_size_features=16,
                   minibatch_size_tokens=16, device="cpu", dtype="float32")
data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
print(json.dumps({"seconds": time.time() - t0, "n_features": a["n_features"]}))
'''


def saelens_export(d, folder: Path) -> None:
    """Minimal SAELens folder (cfg.json + sae_weights.safetensors) for a TopK SAE."""
    folder.mkdir(parents=True, exist_ok=True)
    c = d.cfg
    # sae-dashboard refuses TopK SAEs whose decoder rows are not unit norm: move the norms into the encoder (the
    # same SAE for ReLU; for TopK the selection can differ slightly, the work done is the same)
    norm = d.W_dec.detach().norm(dim=1)  # [d_sae]
    save_file({"W_enc": (d.W_enc.detach() * norm).contiguous(), "W_dec": (d.W_dec.detach() / norm[:, None]).contiguous(),
               "b_enc": (d.b_enc.detach() * norm).contiguous(), "b_dec": d.b_dec.detach().contiguous()},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "topk", "d_in": c.d_in, "d_sae": c.d_sae, "k": c.k, "dtype": "float32", "device": "cpu",
        "model_name": "smollm2-135m", "hook_name": c.hook_in, "hook_layer": c.layer, "hook_head_index": None,
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": c.k}, "rescale_acts_by_decoder_norm": True, "apply_b_dec_to_input": c.b_dec_in,
        "finetuning_scaling_factor": False, "normalize_activations": "none", "context_size": 128,
        "dataset_path": "", "prepend_bos": True, "sae_lens_training_version": None}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, default=64)
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--peer-features", type=int, default=16)
    ap.add_argument("--peer-timeout", type=int, default=900)
    ap.add_argument("--no-record", action="store_true", help="Print the table only (smoke runs).")
    args = ap.parse_args()
    model = gw.load_model()
    folder = quick.cached("small_sae", quick.small_sae_config(), model=model)
    sae = gw.load_dictionary(folder)
    ctx = default_contexts(model, args.contexts, args.ctx_len)
    work = Path(tempfile.mkdtemp(prefix="gw-featbench-"))
    t0 = time.time()
    path = build_index(model, sae, ctx, path=work / "features.sqlite")
    ours = time.time() - t0
    size = path.stat().st_size
    ours_fps = sae.d_sae / ours

    peer = {"error": "not run"}
    if PEER.exists():
        saelens_export(sae, work / "saelens")
        torch.save(ctx, work / "tokens.pt")
        # transformers 4.x (the peer's) cannot read the tokenizer class name transformers 5 wrote: a fixed copy
        src = gw.models.default_model_folder()
        (work / "tok").mkdir()
        (work / "tok" / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
        tcfg = json.loads((src / "tokenizer_config.json").read_text())
        tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        (work / "tok" / "tokenizer_config.json").write_text(json.dumps(tcfg))
        (work / "args.json").write_text(json.dumps({"tok_dir": str(work / "tok"),
            "model_dir": str(gw.models.default_model_folder()), "tl_name": "meta-llama/Llama-3.2-1B",
            "sae_dir": str(work / "saelens"), "tokens": str(work / "tokens.pt"), "hook": sae.cfg.hook_in,
            "n_features": args.peer_features}))
        (work / "peer.py").write_text(PEER_SCRIPT)
        try:
            out = subprocess.run([str(PEER), str(work / "peer.py"), str(work / "args.json")], capture_output=True,
                                 text=True, timeout=args.peer_timeout)
            peer = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else \
                {"error": out.stderr.strip().splitlines()[-1][:300] if out.stderr.strip() else f"rc {out.returncode}"}
        except subprocess.TimeoutExpired:
            peer = {"error": f"timed out after {args.peer_timeout} s"}
    peer_fps = peer["n_features"] / peer["seconds"] if "seconds" in peer else None
    ratio = f"{ours_fps / peer_fps:.0f}x" if peer_fps else "n/a"
    head = "| tool | features | tokens | seconds | features/s | bytes/feature | ratio |\n|---|---|---|---|---|---|---|"
    rows = [f"| glasswork (whole index) | {sae.d_sae} | {ctx.numel():,} | {ours:.1f} | {ours_fps:.1f} | "
            f"{size / sae.d_sae:,.0f} | 1 |"]
    if peer_fps:
        rows.append(f"| sae-dashboard 0.8.0 | {peer['n_features']} | {ctx.numel():,} | {peer['seconds']:.1f} | "
                    f"{peer_fps:.2f} | | glasswork {ratio} faster |")
    else:
        rows.append(f"| sae-dashboard 0.8.0 | - | - | - | - | - | did not run: {peer['error']} |")
    table = head + "\n" + "\n".join(rows)
    print(table)
    section = (f"\n## Feature index speed ({datetime.date.today()})\n\nMachine: 2-core CPU, shared (load average "
               f"{os.getloadavg()[0]:.1f} at the end). Command: `.venv/bin/python benchmarks/features.py "
               f"--contexts {args.contexts} --ctx-len {args.ctx_len} --peer-features {args.peer_features}`. SAE: "
               f"small_sae fixture (TopK k=16, d_sae 2304, blocks.6.hook_resid_post); the same {ctx.shape[0]} "
               f"contexts of {ctx.shape[1]} tokens for both.\n\n{table}\n")
    if not args.no_record:
        with open(Path(__file__).parent / "RESULTS.md", "a") as fh:
            fh.write(section)


if __name__ == "__main__":
    main()
