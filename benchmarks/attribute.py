"""Attribution speed: seconds and peak memory per graph, glasswork (its sweep engine, and its autograd engine for the
before/after) vs circuit-tracer (TransformerLens backend, its fastest on CPU; nnsight beside on short prompts), same
model, same transcoders, same prompts, in one run; whether the adjacency matrices agree; and the share of the fp32
matmul bound each run reaches (its backward passes' FLOPs / seconds / this CPU's measured [512, d] x [d, d] rate).
Also glasswork's time vs prompt length and dictionary width.

Peer setup (once): `python benchmarks/peers.py --install circuit-tracer` (its own venv, benchmarks/_peers.py: torch
2.13.0, circuit-tracer 0.5.0, nnsight <0.7). circuit-tracer loads the default model from a copy of the converted HF
folder whose config.json also carries rope_theta at the top level (its transformers 4.57 reads it there; 5.x nests it).

Transcoders: --dictionary DIR (ReLU or JumpReLU; exported to circuit-tracer's format here), or by default 30 random
ReLU transcoders of --width features whose encoder biases are set so that ~--active features fire per token.
Each tool runs in its own process with the same torch thread count (--threads); peak memory is that process's max RSS.

  .venv/bin/python benchmarks/attribute.py [--dictionary DIR] [--threads 2] [--width 4608] [--no-peer] [--no-scaling]
      [--no-record]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _peers import peer_model_folder, peer_python, why_absent
from glasswork.circuits.attribution import AUTOGRAD_BATCH, SWEEP_BATCH, matmul_rate

ROOT = Path(__file__).resolve().parent.parent
# Five prompts of 6-31 tokens that no issue names (the last two long enough for the 20+ token target).
PROMPTS = ["The cat sat on the", "Dogs are loyal animals, and cats are", "In 1969, Neil Armstrong walked on the",
           "After the long winter, the farmers planted corn and wheat in the fields, hoping the summer rain would",
           "The museum guide explained that the ancient vase had been found by divers near the coast of Greece, "
           "buried under the sand for nearly two thousand"]
SCALING_TEXT = ("The old lighthouse keeper climbed the stairs every evening to light the lamp, and the ships that "
                "passed the rocky coast at night would see its beam sweep across the dark water while he wrote")


def random_transcoders(model, width: int, active: int, seed: int = 0) -> dict:
    """ReLU transcoders with random unit decoder rows (encoder = decoder^T) and a per-layer encoder bias that lets
    about `active` features fire per token on a calibration text."""
    import glasswork as gw
    ids = model.tokenize(SCALING_TEXT)
    _, acts = gw.capture(model, ids, [f"blocks.{l}.ln2.hook_normalized" for l in range(model.n_layers)])
    tcs = {}
    for layer in range(model.n_layers):
        cfg = gw.DictionaryConfig(kind="transcoder", d_in=model.d_model, d_sae=width, activation="relu", layer=layer,
                                  model=model.name, hook_in=f"blocks.{layer}.ln2.hook_normalized",
                                  hook_out=f"blocks.{layer}.hook_mlp_out")
        tc = gw.SparseCoder(cfg)
        tc.reset_parameters(seed=seed + layer)
        with torch.no_grad():
            pre = tc.pre_acts(acts[f"blocks.{layer}.ln2.hook_normalized"][0, 1:])  # [seq, width], BOS left out
            tc.b_enc.fill_(-float(pre.flatten().quantile(1 - active / width)))
        tcs[layer] = tc.requires_grad_(False)
    return tcs


def export_circuit_tracer(tcs: dict, folder: Path) -> Path:
    """circuit-tracer's transcoder-set format, written by glasswork's own exporter (dictionaries/formats.py)."""
    from glasswork.dictionaries.formats import export_circuit_tracer as export
    if any(t.cfg.b_dec_in and bool(t.b_dec.any()) for t in tcs.values()):
        raise SystemExit("these transcoders subtract b_dec before encoding; circuit-tracer encodes the raw input")
    export(tcs, folder)
    return folder / "config.yaml"


def load_coders(folder: str):
    """A transcoder set ({layer: SparseCoder}) or one cross-layer transcoder, as `glasswork attribute` reads it."""
    from glasswork.dictionaries.saving import load_coders as load
    return load(Path(folder))


def run_ours(dictionary: str, ids: str, batch: int, threads: int, out: str, max_features: int | None = None,
             engine: str = "auto", max_memory: float | None = None, spill: str = "") -> dict:
    """In a fresh process: load, attribute, save the graph; time and peak memory of that process."""
    cmd = [sys.executable, __file__, "--_ours", dictionary, ids, str(batch), str(threads), out,
           str(max_features or 0), engine, str(max_memory or 0), spill]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "GLASSWORK_PROGRESS": "0"})
    if res.returncode:
        raise SystemExit(f"glasswork run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _anon_peak() -> dict:
    """Sample this process's anonymous and file-backed resident memory (/proc/self/status) every 0.1 s: a mapped
    adjacency's pages are file-backed (the OS can write them back and drop them), the rest is anonymous."""
    import threading
    peak = {"anon_kb": 0, "file_kb": 0}

    def sample():
        while True:
            fields = dict(ln.split(":", 1) for ln in Path("/proc/self/status").read_text().splitlines() if ":" in ln)
            peak["anon_kb"] = max(peak["anon_kb"], int(fields.get("RssAnon", "0 kB").split()[0]))
            peak["file_kb"] = max(peak["file_kb"], int(fields.get("RssFile", "0 kB").split()[0]))
            time.sleep(0.1)
    threading.Thread(target=sample, daemon=True).start()
    return peak


def _ours_child(dictionary, ids, batch, threads, out, max_features, engine, max_memory, spill=""):
    torch.set_num_threads(int(threads))
    peak = _anon_peak()
    import glasswork as gw
    t0 = time.time()
    model = gw.load_model()
    tcs = load_coders(dictionary)
    load_s = time.time() - t0
    tokens = torch.tensor([int(x) for x in ids.split(",")])
    t0 = time.time()
    g = gw.attribute(model, tcs, tokens, batch_size=int(batch) or None, show_progress=False,
                     max_features=int(max_features) or None, engine=engine,
                     max_memory=float(max_memory) * 2**30 if float(max_memory) else None, spill=spill or None)
    seconds = time.time() - t0
    flops = {name: graph_flops(model, tcs, tokens, g.n_logits, name) for name in ("ours", "circuit-tracer")}
    from glasswork.circuits.attribution import memory_estimate
    from glasswork.circuits.replacement import ReplacementModel
    n_active = g.meta["n_active_features"]
    est = memory_estimate(model, ReplacementModel(model, tcs), tokens.numel(), n_active, g.n_features, g.n_logits,
                          int(batch) or (SWEEP_BATCH if g.meta["engine"] == "sweep" else AUTOGRAD_BATCH),
                          g.meta["engine"] == "sweep", spill=bool(spill))["total"]
    g.save(out)
    node_mask, edge_rows, _, _ = g.pruned_edges(0.8, 0.98)
    print(json.dumps({"pruned_nodes": int(node_mask.sum()), "pruned_edges": len(edge_rows),
                      "top_logit": g.meta["logit_labels"][0], "seconds": seconds, "load_seconds": load_s, "n_features": g.n_features, "n_nodes": g.n_nodes,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "peak_anon_mb": peak["anon_kb"] / 1024, "peak_file_mb": peak["file_kb"] / 1024,
                      "spill": bool(spill), "adjacency_mb": g.adjacency.numel() * 4 / 2**20,
                      "scores": g.meta["scores"], "edges": g.n_edges,
                      "engine": g.meta["engine"], "flops": flops, "n_active": n_active,
                      "estimate_mb": est / 2**20}))


def graph_flops(model, tcs, tokens, n_logit: int, tool: str) -> float:
    """The backward passes' FLOPs: glasswork's (each target over its prefix and the layers below it, BOS a sink)
    or circuit-tracer's (each target over every layer and position: its batches run the whole backward)."""
    from glasswork.circuits.attribution import flop_estimate
    from glasswork.circuits.replacement import Features, ReplacementModel
    r = ReplacementModel(model, tcs)
    feats, _ = r.features(r.clean(tokens.view(1, -1)))
    keep = feats.pos > 0
    feats = Features(feats.layer[keep], feats.pos[keep], feats.index[keep], feats.activation[keep])
    if tool == "ours":
        return flop_estimate(model, r, feats, tokens.numel(), n_logit, sink_bos=True)
    full = Features(torch.full_like(feats.layer, model.n_layers - 1), torch.full_like(feats.pos, tokens.numel() - 1),
                    feats.index, feats.activation)  # every row costs what the top target at the last position costs
    return flop_estimate(model, r, full, tokens.numel(), n_logit, sink_bos=False)


def run_peer(config: Path, ids: str, batch: int, threads: int, out: str, backend: str = "transformerlens",
             max_feature_nodes: int = 0) -> dict:
    python = peer_python("circuit-tracer")
    if python is None:
        raise SystemExit(why_absent("circuit-tracer") + " (or run with --no-peer)")
    cmd = [str(python), str(ROOT / "benchmarks" / "_circuit_tracer_run.py"), str(peer_model_folder()), str(config),
           ids, str(batch), str(threads), out, backend, str(max_feature_nodes)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"circuit-tracer run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def compare(ours_path: str, peer_path: str) -> dict:
    """Both tools order nodes features (layer, pos, index), errors (layer-major), tokens, logits; rows are targets."""
    from safetensors.torch import load_file

    from glasswork.circuits import load_graph
    g = load_graph(ours_path)
    peer = load_file(peer_path)
    a, b = g.dense(), peer["adjacency"].float()
    same_logits = g.node_index[g.n_nodes - g.n_logits:].tolist() == peer["logit_tokens"].tolist()
    if a.shape != b.shape:
        return {"same_shape": False, "ours": list(a.shape), "peer": list(b.shape), "same_logits": same_logits}
    sel = peer["active_features"][peer["selected_features"].long()]  # [n, 3] (layer, pos, feature)
    ours_ids = torch.stack([g.node_layer, g.node_pos, g.node_index.int()], 1)[:g.n_features]
    same_features = torch.equal(sel.int(), ours_ids.int())
    diff = (a - b).abs().max().item()
    return {"same_shape": True, "same_features": same_features, "same_logits": same_logits,
            "max_abs_diff": diff, "max_abs_edge": a.abs().max().item(), "rel_diff": diff / a.abs().max().item(),
            "nonzero_edges_ours": int((a != 0).sum()), "nonzero_edges_peer": int((b != 0).sum())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dictionary", help="transcoder set folder (default: random ReLU transcoders)")
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--active", type=int, default=32, help="features firing per token (random transcoders)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both tools")
    ap.add_argument("--batch", type=int, default=0, help="glasswork targets per pass (0: the engine's default)")
    ap.add_argument("--peer-batch", type=int, default=128, help="circuit-tracer batch (128 was its fastest on CPU)")
    ap.add_argument("--nnsight-max-tokens", type=int, default=10,
                    help="run circuit-tracer's (slower) nnsight backend too on prompts up to this length")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="run the first N of the five prompts")
    ap.add_argument("--long", default="", help="also time these prompt lengths (tokens, e.g. 128,512) from a held-out "
                    "corpus document, with --long-max-features and --max-memory")
    ap.add_argument("--long-max-features", type=int, default=4096, help="0: the whole graph")
    ap.add_argument("--spill", default="", help="a folder: glasswork's --spill on the long prompts (the adjacency in a "
                    "file mapped from there)")
    ap.add_argument("--max-memory", type=float, default=None, help="GiB: glasswork's --max-memory on the long prompts")
    ap.add_argument("--long-peer-max-tokens", type=int, default=128,
                    help="run circuit-tracer (same feature budget) on long prompts up to this length")
    ap.add_argument("--no-autograd", action="store_true", help="skip glasswork's autograd engine (the 'before')")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    import glasswork as gw
    torch.set_num_threads(args.threads)
    model = gw.load_model()
    work = Path(tempfile.mkdtemp(prefix="gw-attr-bench-"))
    try:
        if args.dictionary:
            dictionary = args.dictionary
            tcs = load_coders(dictionary)
        else:
            tcs = random_transcoders(model, args.width, args.active)
            dictionary = str(gw.save_set({f"layer_{l:02d}": t for l, t in tcs.items()}, work / "tcs"))
        width = tcs.d_sae if isinstance(tcs, gw.CrossLayerTranscoder) else next(iter(tcs.values())).d_sae
        rate = matmul_rate(torch.device("cpu"), model.d_model, seconds=1.0)
        rows = []
        config = None if args.no_peer else export_circuit_tracer(tcs, work / "ct")
        for prompt in PROMPTS[:args.prompts]:
            ids = ",".join(map(str, model.tokenize(prompt)[0].tolist()))
            n_tok = len(ids.split(","))
            ours = run_ours(dictionary, ids, args.batch, args.threads, str(work / "ours.safetensors"))
            row = {"prompt": prompt, "tokens": n_tok, "ours": ours, "rate": rate}
            if not args.no_autograd:
                row["autograd"] = run_ours(dictionary, ids, args.batch, args.threads, str(work / "a.safetensors"),
                                           engine="autograd")
            if config is not None:
                row["peer"] = run_peer(config, ids, args.peer_batch, args.threads, str(work / "peer.safetensors"))
                row["agreement"] = compare(str(work / "ours.safetensors"), str(work / "peer.safetensors"))
                if n_tok <= args.nnsight_max_tokens:
                    row["peer_nnsight"] = run_peer(config, ids, args.peer_batch, args.threads,
                                                   str(work / "peer_nn.safetensors"), backend="nnsight")
            rows.append(row)
            print(json.dumps(row), flush=True)
        scaling = []
        if not args.no_scaling:
            words = SCALING_TEXT.split()
            for n in (4, 8, 16):
                ids = ",".join(map(str, model.tokenize(" ".join(words[:n]))[0].tolist()))
                r = run_ours(dictionary, ids, args.batch, args.threads, str(work / "s.safetensors"))
                scaling.append({"kind": "length", "tokens": len(ids.split(",")), "width": width, **r})
                print(json.dumps(scaling[-1]), flush=True)
            if not args.dictionary:
                ids = ",".join(map(str, model.tokenize(PROMPTS[0])[0].tolist()))
                for w in (1152, 18432):
                    d = str(gw.save_set({f"layer_{l:02d}": t for l, t in
                                         random_transcoders(model, w, args.active).items()}, work / f"tcs{w}"))
                    r = run_ours(d, ids, args.batch, args.threads, str(work / "s.safetensors"))
                    scaling.append({"kind": "width", "tokens": len(ids.split(",")), "width": w, **r})
                    print(json.dumps(scaling[-1]), flush=True)
        long_rows = []
        for n in [int(x) for x in args.long.split(",") if x]:
            ids = ",".join(map(str, long_prompt_ids(model, n)))
            row = {"tokens": n, "ours": run_ours(dictionary, ids, args.batch, args.threads, str(work / "l.safetensors"),
                                                 max_features=args.long_max_features, max_memory=args.max_memory,
                                                 spill=args.spill)}
            if config is not None and n <= args.long_peer_max_tokens:
                row["peer"] = run_peer(config, ids, args.peer_batch, args.threads, str(work / "lp.safetensors"),
                                       max_feature_nodes=args.long_max_features)
            long_rows.append(row)
            print(json.dumps(row), flush=True)
        report(args, rows, scaling, width, rate, long_rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _share(run: dict, tool: str, rate: float) -> str:
    return f"{run['flops'][tool] / run['seconds'] / rate:.0%}" if run else "-"


def long_prompt_ids(model, n: int) -> list[int]:
    """The first n tokens (BOS first) of the first held-out corpus document that long."""
    from glasswork.data.corpus import heldout_texts
    for text in heldout_texts():
        ids = model.tokenize(text)[0]
        if ids.numel() >= n:
            return ids[:n].tolist()
    raise SystemExit(f"no held-out document has {n} tokens")


def report(args, rows, scaling, width, rate, long_rows=()):
    load = os.getloadavg()
    nan = float("nan")
    lines = [f"## Attribution graphs: glasswork vs circuit-tracer ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             "",
             f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), fp32 matmul "
             f"{rate / 1e9:.0f} GFLOP/s ([512, d] x [d, d], {args.threads} threads, measured at the start); load "
             f"average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end. torch threads: {args.threads} for "
             "every run, each in its own process, one at a time. Transcoders: "
             + (args.dictionary if args.dictionary else f"30 random ReLU transcoders, width {width}, ~{args.active} "
                f"active per token") + ".",
             f"Command: `.venv/bin/python benchmarks/attribute.py {' '.join(sys.argv[1:])}`. Peer: circuit-tracer 0.5.0 "
             "(TransformerLens 3.2.1 backend, and nnsight 0.6.3 on prompts up to "
             f"{args.nnsight_max_tokens} tokens; transformers 4.57.3) in its own venv (`benchmarks/peers.py`: `pip install "
             "torch==2.13.0` then `pip install circuit-tracer==0.5.0 'nnsight>=0.6,<0.7'`), batch "
             f"{args.peer_batch}; glasswork batch {args.batch or 'default (sweep 512, autograd 64)'}. Seconds are "
             "`attribute()` only. FLOP share: the run's backward-pass FLOPs (glasswork: each target over its prefix "
             "and the layers below it; circuit-tracer: every layer and position per target) / seconds / the rate "
             "above.",
             "",
             "| prompt | tokens | features | glasswork sweep s | glasswork autograd s | circuit-tracer TL s | "
             "speedup vs TL | circuit-tracer nnsight s | FLOP share sweep / TL | glasswork MB | TL MB | "
             "max abs diff / max edge | pruned nodes (0.8 / 0.98) | replacement |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, a, p, nn = r["ours"], r.get("autograd", {}), r.get("peer", {}), r.get("peer_nnsight", {})
        ag = r.get("agreement", {})
        agree = (f"{ag['rel_diff']:.1e}" if ag.get("same_shape") and ag.get("same_features") else
                 ("n/a" if not ag else f"differ: {ag}"))
        speed = p["seconds"] / o["seconds"] if p else nan
        lines.append(f"| {r['prompt']} | {r['tokens']} | {o['n_features']:,} | {o['seconds']:.1f} | "
                     f"{a.get('seconds', nan):.1f} | {p.get('seconds', nan):.1f} | {speed:.1f}x | "
                     f"{nn.get('seconds', nan):.1f} | {_share(o, 'ours', rate)} / "
                     f"{_share(dict(p, flops=o['flops']) if p else {}, 'circuit-tracer', rate)} | "
                     f"{o['peak_rss_mb']:.0f} | {p.get('peak_rss_mb', nan):.0f} | {agree} | {o['pruned_nodes']} | "
                     f"{o['scores']['replacement']:.3f} |")
    if long_rows:
        budget = args.long_max_features or "none (the whole graph)"
        lines += ["", f"Long prompts (a held-out corpus document, cut to length), feature budget "
                  f"{budget} (rows chosen by influence), --max-memory {args.max_memory} GiB, "
                  f"adjacency {'in a file mapped from ' + args.spill + ' (--spill)' if args.spill else 'in RAM'}; "
                  "circuit-tracer with max_feature_nodes at the same budget (its rows are chosen by its own rounds, "
                  "so the two graphs are not compared edge by edge). Peak MB is the process's max RSS, model load "
                  "included; anonymous / file-backed: the peaks of each part of it (sampled every 0.1 s); the "
                  "mapped adjacency's pages are file-backed, which the OS writes back and drops under pressure:", "",
                  "| tokens | active features | feature rows x nodes | adjacency MB | glasswork s | glasswork peak MB "
                  "(anonymous / file-backed) | estimate MB (RAM + disk) | circuit-tracer TL s | circuit-tracer peak MB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in long_rows:
            o, p = r["ours"], r.get("peer", {})
            lines.append(f"| {r['tokens']} | {o['n_active']:,} | {o['n_features']:,} x {o['n_nodes']:,} | "
                         f"{o['adjacency_mb']:,.0f} | {o['seconds']:.0f} | {o['peak_rss_mb']:,.0f} "
                         f"({o['peak_anon_mb']:,.0f} / {o['peak_file_mb']:,.0f}) | {o['estimate_mb']:,.0f}"
                         f"{' + ' + format(o['adjacency_mb'], ',.0f') if o['spill'] else ''} | "
                         f"{p.get('seconds', nan):.0f} | {p.get('peak_rss_mb', nan):,.0f} |")
    if scaling:
        lines += ["", "glasswork alone, time vs prompt length and dictionary width:", "",
                  "| varied | tokens | width | features | seconds | peak MB |", "|---|---|---|---|---|---|"]
        lines += [f"| {s['kind']} | {s['tokens']} | {s['width']} | {s['n_features']} | {s['seconds']:.1f} | "
                  f"{s['peak_rss_mb']:.0f} |" for s in scaling]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_record:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_ours":
        _ours_child(*sys.argv[2:11])
    else:
        main()
