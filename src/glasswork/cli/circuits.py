"""`glasswork attribute` (trace one prediction into a graph) and `glasswork intervene` (check it on the real model)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import GlassworkError


def summarize(graph, node_threshold: float, edge_threshold: float, top: int = 10) -> dict:
    """Counts, scores, the targets and the most influential features of a graph (for --json and the README)."""
    from ..circuits.graph import FEATURE
    node_mask, edge_rows, _, _ = graph.pruned_edges(node_threshold, edge_threshold)
    infl = graph.node_influence()
    feats = (graph.node_kind == FEATURE).nonzero().flatten()
    best = feats[infl[feats].argsort(descending=True)[:top]].tolist()
    return {
        "prompt": graph.meta.get("prompt"), "n_tokens": graph.input_ids.numel(),
        "targets": [{"label": lab, "prob": round(float(p), 4)} for lab, p in
                    zip(graph.meta.get("logit_labels", []), graph.node_activation[graph.n_nodes - graph.n_logits:])],
        "active_features": graph.meta.get("n_active_features", graph.n_features), "features": graph.n_features,
        "nodes": graph.n_nodes, "edges": graph.n_edges,
        "pruned_nodes": int(node_mask.sum()), "pruned_edges": len(edge_rows),
        "pruned_features": int(node_mask[feats].sum()),
        "scores": {k: round(v, 4) for k, v in graph.meta.get("scores", {}).items()},
        "top_features": [{"node_id": graph.node_id(i), "layer": int(graph.node_layer[i]), "pos": int(graph.node_pos[i]),
                          "token": graph.meta["str_tokens"][int(graph.node_pos[i])],
                          "feature": int(graph.node_index[i]), "influence": round(float(infl[i]), 4),
                          "activation": round(float(graph.node_activation[i]), 3)} for i in best],
        "seconds": graph.meta.get("seconds")}


def attribute_cmd(
        prompt: str = typer.Option(..., help="The text whose next-token prediction to trace."),
        dictionary: Path = typer.Option(..., help="Folder of per-layer transcoders (a set) or a cross-layer transcoder."),
        model: Optional[str] = typer.Option(None, help="Model name or folder (default: smollm2-135m)."),
        target: Optional[List[str]] = typer.Option(None, help="Target: a token (' Paris') or 'A-B' (a logit "
                                                   "difference); repeatable. Default: top tokens to p=0.95, at most 10."),
        node_threshold: float = typer.Option(0.8, help="Keep nodes to this cumulative influence."),
        edge_threshold: float = typer.Option(0.98, help="Keep edges to this cumulative influence."),
        max_features: Optional[int] = typer.Option(None, help="Keep at most this many features (most influential "
                                                   "first), for long prompts."),
        batch_size: Optional[int] = typer.Option(None, min=1, help="Targets per backward pass (default: 512 for the "
                                                 "sweep engine, 64 for autograd)."),
        engine: str = typer.Option("auto", help="auto | sweep (Llama-family models: the hand-written backward) | "
                                   "autograd (any architecture); both give the same edges."),
        max_memory: Optional[float] = typer.Option(None, min=0.001, help="GiB the graph may take (its estimate is "
                                                   "checked before any backward pass; over it: stop, say what fits)."),
        spill: Optional[Path] = typer.Option(None, help="Keep the adjacency in a file in this folder, mapped into memory "
                                             "and written as its rows are computed (RAM holds only the blocks in use; "
                                             "the file is deleted at once and never outlives the run)."),
        qk: int = typer.Option(0, min=0, max=64, help="Also split the attention scores of this many heads (those with "
                               "the largest effect on the top target) into (query node, key node) pairs; kept in the "
                               "graph, shown by the viewer. 0: off."),
        faithfulness: int = typer.Option(20, min=0, max=1000, help="Check this many of the most influential features on "
                                         "the real model: each one ablated there vs. its total effect in the graph "
                                         "(rank correlation, mean ratio; kept in the graph). 0: off."),
        inactive: int = typer.Option(10, min=0, max=1000, help="List this many features that did not fire but would "
                                     "move the top target most at their typical activation (the 5 first checked on the "
                                     "real model), and what inhibits each target; kept in the graph. 0: off."),
        out: Path = typer.Option(Path("graph.safetensors"), help="Native graph file (the whole graph, once)."),
        viewer_json: Optional[Path] = typer.Option(None, "--viewer-json", help="Also write the pruned graph as the "
                                                   "attribution-graph viewer's JSON."),
        as_json: bool = typer.Option(False, "--json", help="Print one machine-readable JSON object summarizing the result.")):
    """Trace one prediction: the attribution graph of PROMPT through the replacement model."""
    from .common import emit, run_verb

    def go():
        from ..models import load_model
        from ..circuits.attribution import attribute
        from ..dictionaries.saving import load_coders
        from ..io import check_out
        check_out(out, "file")
        if viewer_json is not None:
            check_out(viewer_json, "file", "--viewer-json")
        t0 = time.time()
        m = load_model(model)
        coders = load_coders(dictionary)
        for name, t in (("--node-threshold", node_threshold), ("--edge-threshold", edge_threshold)):
            if not 0 < t <= 1:
                raise GlassworkError(f"{name} must be in (0, 1] (got {t})")
        targets = list(target) if target else None
        from ..io import relative_path
        graph = attribute(m, coders, prompt, target=targets, max_features=max_features, batch_size=batch_size,
                          engine=engine, max_memory=None if max_memory is None else max_memory * 2**30, spill=spill,
                          dictionary=relative_path(dictionary, Path(out).parent))  # relative to the graph file
        if qk:
            from ..circuits.qk import add_qk
            add_qk(graph, m, coders, n_heads=qk)
        if faithfulness and graph.logit_token(0) >= 0:
            from ..circuits.faithfulness import add_faithfulness
            add_faithfulness(graph, m, coders, faithfulness)
        if inactive and graph.logit_token(0) >= 0:
            from ..circuits.inactive import add_inactive
            from ..features.index import typical_activations
            layers = sorted(coders) if isinstance(coders, dict) else range(m.n_layers)
            add_inactive(graph, m, coders, typical_activations(dictionary, layers) or None, top=inactive)
        graph.save(out)
        summary = summarize(graph, node_threshold, edge_threshold)
        if qk:
            summary["qk"] = qk_brief(graph.meta["qk"])
        if "inactive" in graph.meta:
            summary["inactive"] = graph.meta["inactive"]["features"][:5]
            summary["inhibitory"] = [{k: x[k] for k in ("target", "negative_total", "shares")} | {"nodes": x["nodes"][:3]}
                                     for x in graph.meta["inhibitory"][:3]]
        if "faithfulness" in graph.meta:
            summary["faithfulness"] = {k: v for k, v in graph.meta["faithfulness"].items() if k != "features"}
        summary.update(path=str(out), node_threshold=node_threshold, edge_threshold=edge_threshold,
                       total_seconds=round(time.time() - t0, 2))
        if viewer_json is not None:
            graph.to_json(viewer_json, node_threshold, edge_threshold)
            summary["viewer_json"] = str(viewer_json)
        emit(summary, as_json, _human(summary))
    run_verb(go)


def qk_brief(report: dict) -> list[dict]:
    """Per head: its effect on the target and, for the key it attends to most, the score and its top pair."""
    out = []
    for h in report["heads"]:
        k = max(h["keys"], key=lambda k: k["pattern"])
        top = k["pairs"][0] if k["pairs"] else {}
        out.append({"layer": h["layer"], "head": h["head"], "effect": round(h["effect"], 4), "key_pos": k["key_pos"],
                    "pattern": round(k["pattern"], 3), "score": round(k["score"], 4), "top_pair": top})
    return out


def _human(s: dict) -> str:
    lines = [f"[bold]{s['prompt']!r}[/] -> " + ", ".join(f"{t['label']!r} {t['prob']:.2f}" for t in s["targets"]),
             f"{s['features']} features, {s['nodes']} nodes, {s['edges']} edges; pruned to {s['pruned_nodes']} nodes "
             f"({s['pruned_features']} features) and {s['pruned_edges']} edges; replacement "
             f"{s['scores'].get('replacement')}, completeness {s['scores'].get('completeness')}; {s['seconds']} s",
             "most influential features:"]
    lines += [f"  {f['node_id']:>16}  layer {f['layer']:>2} on {f['token']!r}: influence {f['influence']}, "
              f"activation {f['activation']}" for f in s["top_features"]]
    if s.get("faithfulness"):
        f = s["faithfulness"]
        lines.append(f"faithfulness: the top {f['n_features']} features ablated in the real model vs. their total effect "
                     f"in the graph: rank correlation {f['spearman']}, same sign {f['same_sign']}, mean ratio real / "
                     f"graph {f['mean_ratio']}, slope {f['slope']}")
    if s.get("inactive"):
        lines.append("inactive features that would move the top target most at their typical activation "
                     "(predicted; checked on the real model):")
        lines += [f"  {x['node']:>16}  at {x['typical_activation']:.2f}: {x['predicted']:+.3f}"
                  + (f" (real model {x['real']:+.3f})" if "real" in x else "") for x in s["inactive"]]
    if s.get("inhibitory"):
        lines += [f"inhibits {x['target']!r} most: " + ", ".join(f"{n['node']} {n['effect']:+.3f}" for n in x["nodes"])
                  + f" (features carry {x['shares']['features']:.0%} of the negative effect)" for x in s["inhibitory"]]
    if s.get("qk"):
        lines.append("attention (QK): the heads with the largest effect on the top target, at the last position:")
        lines += [f"  layer {h['layer']:>2} head {h['head']:>2}: effect {h['effect']}; attends most to position "
                  f"{h['key_pos']} (weight {h['pattern']}), score {h['score']} = sum of pairs, the largest "
                  f"{h['top_pair'].get('query')} x {h['top_pair'].get('key')}: {h['top_pair'].get('score', 0):.4f}"
                  for h in s["qk"]]
    lines.append(f"graph: {s['path']}" + (f", viewer JSON: {s['viewer_json']}" if s.get("viewer_json") else ""))
    return "\n".join(lines)


def intervene_cmd(
        prompt: str = typer.Option(..., help="Text to run."),
        dictionary: Path = typer.Option(..., help="Folder of per-layer transcoders (a set)."),
        feature: List[str] = typer.Option(..., help="LAYER:FEATURE or LAYER:FEATURE:POS; repeat for a supernode."),
        value: Optional[float] = typer.Option(None, help="Set the features to this activation (0 ablates)."),
        scale: Optional[float] = typer.Option(None, help="Multiply the features' activations by this."),
        mode: str = typer.Option("free", help="free: the real model responds; frozen: attention, norms and other "
                                 "features fixed (the graph's direct effects)."),
        generate_tokens: int = typer.Option(0, "--generate", min=0, max=2000, help="Also generate this many tokens with the edit."),
        model: Optional[str] = typer.Option(None, help="Model name or folder (default: smollm2-135m)."),
        as_json: bool = typer.Option(False, "--json", help="Print one machine-readable JSON object summarizing the result.")):
    """Set or ablate features (a supernode when repeated) and show how the top next-token logits change."""
    from .common import emit, run_verb

    def go():
        from ..models import load_model
        from ..circuits.interventions import Edit, generate, intervene_logits
        from ..dictionaries.saving import load_coders
        if (value is None) == (scale is None):
            raise GlassworkError("give exactly one of --value or --scale")
        edits = []
        for spec in feature:
            parts = spec.split(":")
            try:
                nums = [int(p) for p in parts]
            except ValueError:
                nums = []
            if len(nums) not in (2, 3):
                raise GlassworkError(f"--feature '{spec}': expected LAYER:FEATURE or LAYER:FEATURE:POS")
            edits.append(Edit(nums[0], nums[1], [nums[2]] if len(nums) == 3 else None, value, scale))
        m = load_model(model)
        coders = load_coders(dictionary)
        res = intervene_logits(m, coders, prompt, edits, mode=mode)
        res.pop("logits_after")
        res["token_strings"] = m.to_str_tokens(res["tokens"])
        if generate_tokens:
            res["plain"] = generate(m, coders, prompt, [], generate_tokens)
            res["generated"] = generate(m, coders, prompt, edits, generate_tokens)
        rows = [f"{t!r:>14}  p {a:.3f} -> {b:.3f}  logit {c:+.3f}" for t, a, b, c in
                zip(res["token_strings"], res["prob_before"], res["prob_after"], res["change"])]
        if generate_tokens:
            rows += [f"plain:  {res['plain']!r}", f"edited: {res['generated']!r}"]
        emit(res, as_json, "\n".join(rows))
    run_verb(go)


def global_cmd(
        dictionary: Path = typer.Option(..., help="Folder of per-layer transcoders (a set) or a cross-layer transcoder; "
                                        "global.sqlite is written there."),
        prompts: Optional[Path] = typer.Option(None, help="A text file, one prompt per line (default: --n contexts of "
                                               "--ctx tokens from the default corpus' held-out split)."),
        n: int = typer.Option(16, min=1, help="Corpus contexts when no --prompts file is given."),
        ctx: int = typer.Option(12, min=2, max=512, help="Tokens per corpus context (BOS included)."),
        max_features: Optional[int] = typer.Option(512, min=1, help="Feature budget of each prompt's graph."),
        model: Optional[str] = typer.Option(None, help="Model name or folder (default: smollm2-135m)."),
        as_json: bool = typer.Option(False, "--json", help="Print one machine-readable JSON object summarizing the result.")):
    """Global circuits: attribute a prompt set and keep each feature-to-feature edge's mean over the prompts where both
    fired (and how often) in DICTIONARY/global.sqlite; feature pages then show their top upstream and downstream
    features across the dataset. Under `torchrun --nproc-per-node N` the prompts are split over the ranks."""
    from .common import emit, run_verb

    def go():
        from ..circuits.global_circuits import aggregate, write_global
        from ..dictionaries.saving import load_coders
        from ..data import corpus
        from ..io import check_out
        from ..models import load_model
        from ..training import distributed as dist
        check_out(Path(dictionary) / "global.sqlite", "file")
        todo = corpus.prompt_lines(prompts) if prompts is not None else None  # bad input before any loading
        t0 = time.time()
        dist.init()
        m = load_model(model)
        coders = load_coders(dictionary)
        if todo is None:
            todo = list(corpus.contexts(m, split="heldout", ctx_len=ctx, n_contexts=n, seed=2))
        edges = aggregate(m, coders, todo, max_features=max_features)
        summary = {"dictionary": str(dictionary), "prompts": len(todo), "edges": len(edges), "ranks": dist.world()}
        if dist.is_main():
            summary["path"] = str(write_global(dictionary, edges, len(todo)))
        top = sorted(edges.items(), key=lambda kv: -abs(kv[1][0]))[:5]
        summary["strongest"] = [{"source": f"{sl}/{si}", "target": f"{tl}/{ti}", "mean": round(t / k, 4), "n": k}
                                for (sl, si, tl, ti), (t, k) in top]
        summary["seconds"] = round(time.time() - t0, 2)
        if dist.is_main():
            emit(summary, as_json, "\n".join(
                [f"{summary['edges']:,} feature-to-feature edges from {summary['prompts']} prompts "
                 f"({summary['ranks']} rank(s), {summary['seconds']} s) -> {summary.get('path')}", "strongest in sum:"] +
                [f"  {e['source']:>10} -> {e['target']:<10} mean {e['mean']:+.4f} over {e['n']} prompt positions"
                 for e in summary["strongest"]]))
        dist.finish()
    run_verb(go)
