"""`glasswork demo`: the main job on the default model, from nothing to an explored model, as cached stages.

    corpus       fetch + tokenize the default corpus
    harvest      the residual stream after layer 15 into an activation store          OUT/store
    sae          a TopK SAE on it (trained from the store), evaluated on held-out text  OUT/sae-l15
    transcoders  TopK transcoders for all 30 MLPs, one pass straight from the model    OUT/transcoders
    features     the SAE's feature index (SQLite) with built-in labels and scores     OUT/sae-l15/features.sqlite
    graphs       attribution graphs for two prompts through the transcoders            OUT/graphs/*.safetensors
    steering     one SAE feature clamped (the clearest of a few tried), baseline and steered text side by side
                                                                                       OUT/stages/steering.json
    then `serve` opens OUT in the web app (skipped with serve=False / --no-serve).

Each stage's result is kept in OUT/stages/<stage>.json and a stage already recorded is skipped, so a rerun (or a run
after a kill) picks up where the last one stopped; the harvest and the training resume inside a stage too.
OUT defaults to $GLASSWORK_HOME/demo (quick runs: $GLASSWORK_HOME/demo-quick)."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .io import GlassworkError, home, read_json, relative_path, write_json

LAYER = 15  # the SAE's layer: the middle of SmolLM2-135M's 30
HOOK = f"blocks.{LAYER}.hook_resid_post"
STORE, SAE, TRANSCODERS, GRAPHS = "store", "sae-l15", "transcoders", "graphs"  # the stages' folders in OUT
VIEW_BUDGET = 100  # feature and error nodes in a graph's first view (the viewer's default)
PROMPTS = {"france": "The capital of France is",
           "mary-john": "When Mary and John went to the store, John gave a drink to"}
STEER_PROMPT = "My favourite thing to do on a weekend is"


@dataclass
class DemoConfig:
    harvest_tokens: int = 120_000
    sae_d: int = 4608
    sae_k: int = 32
    sae_epochs: int = 3  # passes over the harvested store
    sae_batch: int = 512
    tc_tokens: int = 286_000  # ~6 minutes of training on a 2-core AMX Xeon (benchmarks/RESULTS.md, 2026-12-05)
    tc_kl_steps: int = 40  # then ~2 minutes fine-tuning all 30 spliced in on the model's KL: lower KL, same FVU
    tc_d: int = 2304
    tc_k: int = 16
    tc_batch: int = 508  # four 128-token sequences (BOS dropped): at equal time, a higher replacement score than 2 or 8
    tc_mix: int = 16  # batches whose tokens are shuffled together (one batch of 4 sequences is 1-4 documents)
    tc_skip: bool = True  # skip transcoders: the skip fitted by least squares, the sparse part learns what it leaves
    tc_shuffle: bool = True  # sequences from across the corpus, not its first ~100 documents: lower FVU, fewer dead
    tc_decay_start: float = 0.5  # the lr decays over the second half: lower FVU and KL at the same tokens
    tc_aux_coeff: float = 0.0  # no AuxK: it revives nothing in so few steps and took a third of each step
    tc_init_pick: str = "spread"  # seeds spread over the input directions: fewer dead latents, lower FVU and KL
    tc_revive_rate: float = 0.03  # silent latents' biases raised until they fire: no layer >10% never firing, same FVU
    index_contexts: int = 512
    index_ctx: int = 64
    tc_index_contexts: int = 256  # the 30 transcoder layers are indexed in one pass over these contexts
    label_features: int = 200  # the most frequent live features get built-in labels and detection scores
    eval_tokens: int = 8064  # 8 batches of 8 sequences x 126 scored tokens
    max_features: int = 4096  # attribution feature budget
    ctx_len: int = 128

    @classmethod
    def quick(cls) -> "DemoConfig":
        return cls(harvest_tokens=24_000, sae_d=2304, sae_epochs=2, sae_batch=256, tc_tokens=24_000, tc_batch=254,
                   tc_kl_steps=2, tc_d=1152, index_contexts=128, tc_index_contexts=96, label_features=60, eval_tokens=1008,
                   max_features=1024)


def _stage(run: "DemoRun", name: str, fn: Callable[["DemoRun"], dict], log: Callable[[str], None]) -> dict:
    """Run a stage once: its result is kept in OUT/stages/NAME.json and returned from there afterwards."""
    path = run.out / "stages" / f"{name}.json"
    if path.exists():
        rec = read_json(path, f"demo stage record '{name}'")
        log(f"[{name}] done before ({rec.get('seconds', '?')} s then), skipped: {path}")
        return rec
    t0 = time.time()
    log(f"[{name}] ...")
    result = {**fn(run), "seconds": round(time.time() - t0, 2)}
    write_json(path, result)
    log(f"[{name}] done in {result['seconds']} s: {_brief(name, result)}")
    return result


def _brief(name: str, r: dict) -> str:
    """One line a person reads: what the stage made and where."""
    if name == "corpus":
        return f"{r['train_tokens']:,} training tokens"
    if name == "harvest":
        return f"{r['tokens']:,} tokens of {r['hooks'][0]} in {r['store']}"
    if name in ("sae", "transcoders"):
        return f"{r['path']} ({', '.join(f'{k} {v}' for k, v in r['metrics'].items())})"
    if name == "features":
        t = r.get("transcoders", {})
        return (f"SAE: {r['live']} live features, {r['labelled']} labelled, index {r['index']}; transcoders: "
                f"{t.get('indexes')} layer indexes, {t.get('live')} live features")
    if name == "graphs":
        return "; ".join(f"{k}: {g['nodes']} nodes, {g['edges']} edges, replacement {g['replacement_score']}; first "
                         f"view {g['view_nodes']} nodes keeping {g['view_influence_kept']:.0%} of the influence"
                         + (f"; faithfulness: rank correlation {g['faithfulness']['spearman']} on the real model"
                            if g.get("faithfulness") else "")
                         for k, g in r["graphs"].items())
    if name == "steering":
        return (f"feature {r['feature']} (fires on {', '.join(r['fires_on'])}) clamped to {r['clamp']}: its words in "
                f"{r['words_in_steered']} steered vs {r['words_in_baseline']} baseline completions, its activation on "
                f"them {r['activation_steered']} vs {r['activation_baseline']}")
    return ""


def _train(tc, source, folder: Path) -> dict:
    """Train into `folder`, resuming from its checkpoint after a kill; a folder already complete is just returned."""
    from .training import finished, train
    if finished(folder, tc):
        return {}
    res = train(tc, source, folder, resume=True)
    res.pop("dicts", None)
    return res


def demo(out: str | Path | None = None, quick: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the demo; returns {stage: result}. Serving is separate: `serve_demo(out)`."""
    import torch

    from .models import load_model
    t_load = time.time()
    run = DemoRun(load_model(), DemoConfig.quick() if quick else DemoConfig(), demo_folder(out, quick))
    log(f"model {run.model.name}: {run.model.n_layers} layers, d_model {run.model.d_model} (loaded in "
        f"{time.time() - t_load:.1f} s); demo folder {run.out}")
    torch.manual_seed(0)
    results: dict[str, dict] = {}
    for i, (name, fn) in enumerate(STAGES):
        log(f"stage {i + 1}/{len(STAGES)}")
        results[name] = _stage(run, name, fn, log)
    return results


@dataclass
class DemoRun:
    """What every stage reads: the loaded model, the config and the demo folder."""

    model: object
    cfg: DemoConfig
    out: Path

    def heldout(self):
        """Contexts from held-out documents in a seeded order: a sample across the split, not its start."""
        from .data import corpus
        cfg = self.cfg
        return corpus.contexts(self.model, split="heldout", ctx_len=cfg.ctx_len, seed=1, tokens=cfg.eval_tokens)


def corpus_stage(run: DemoRun) -> dict:
    """Fetch and tokenize the default corpus."""
    from .data import corpus
    model, cfg = run.model, run.cfg
    info = corpus.info()
    ids = corpus.contexts(model, ctx_len=cfg.ctx_len)
    return {**info, "train_contexts": len(ids), "train_tokens": ids.numel()}


def harvest_stage(run: DemoRun) -> dict:
    """The residual stream after layer LAYER into an activation store (resumes after a kill)."""
    from .data.store import ActivationStore, harvest
    model, cfg, store_dir = run.model, run.cfg, run.out / STORE
    t0 = time.time()
    harvest(model, [HOOK], store_dir, cfg.harvest_tokens, ctx_len=cfg.ctx_len, dtype="bf16")
    info = ActivationStore(store_dir, model=model).info()
    return {"store": str(store_dir), "hooks": info["hooks"], "tokens": info["tokens"],
            "mb": round(info["bytes"] / 1e6, 1), "tokens_per_s": round(cfg.harvest_tokens / (time.time() - t0), 1)}


def sae_stage(run: DemoRun) -> dict:
    """A TopK SAE trained from the store, evaluated on held-out text."""
    from . import evals
    from .data.store import ActivationStore
    from .dictionaries import load as load_dictionary
    from .training import TrainConfig
    from .training.sources import StoreSource
    model, cfg, store_dir, sae_dir, hook = run.model, run.cfg, run.out / STORE, run.out / SAE, HOOK
    store = ActivationStore(store_dir, model=model)
    tc = TrainConfig(kind="sae", arch="topk", hooks=[hook], d_sae=cfg.sae_d, k=cfg.sae_k, batch_size=cfg.sae_batch,
                     tokens=cfg.sae_epochs * store.info()["tokens"], lr=2e-3, warmup_steps=20, model=model.name)
    res = _train(tc, StoreSource(store, [hook], tc.batch_size, seed=0), sae_dir)
    sae = load_dictionary(sae_dir)
    ev = evals.evaluate(sae, model, run.heldout(), tokens=cfg.eval_tokens)
    return {"path": str(sae_dir), "d_sae": cfg.sae_d, "k": cfg.sae_k, "tokens": tc.tokens,
            "tokens_per_s": res.get("tokens_per_second"), "metrics": _metrics(ev, sae_dir.name)}


def transcoders_stage(run: DemoRun) -> dict:
    """Skip transcoders for every MLP, in one pass straight from the model, evaluated spliced in."""
    from . import evals
    from .data import corpus
    from .dictionaries import load_transcoders
    from .training import TrainConfig
    from .training.sources import ModelSource
    model, cfg, tc_dir = run.model, run.cfg, run.out / TRANSCODERS
    # measured in benchmarks/RESULTS.md ("Why the transcoders explain little", "Shuffled sequences for all 30
    # layers", the budget rows of 2026-12-05): the fitted skip, latents seeded on tokens, mixed and shuffled batches,
    # the lr's decay over the second half and no AuxK cut FVU and KL at a fixed CPU budget; batches of 4 sequences
    # raise the replacement score at the same budget
    tc = TrainConfig(kind="transcoder", arch="topk", layers=list(range(model.n_layers)), d_sae=cfg.tc_d, k=cfg.tc_k,
                     tokens=cfg.tc_tokens, batch_size=cfg.tc_batch, ctx=cfg.ctx_len, lr=3e-3, warmup_steps=10,
                     decay_start=cfg.tc_decay_start, aux_coeff=cfg.tc_aux_coeff, b_dec_init="mean", skip=cfg.tc_skip,
                     skip_fit=cfg.tc_skip, init="data", init_pick=cfg.tc_init_pick, revive_rate=cfg.tc_revive_rate,
                     mix=cfg.tc_mix, shuffle=cfg.tc_shuffle, kl_steps=cfg.tc_kl_steps, model=model.name)
    source = ModelSource.from_config(model, corpus.default_texts, tc)
    res = _train(tc, source, tc_dir)
    tcs = load_transcoders(tc_dir)
    ev = evals.evaluate({f"layer{l}": d for l, d in tcs.items()}, model, run.heldout(),
                        tokens=cfg.eval_tokens)
    per_layer = {str(l): {"fvu": round(ev["dictionaries"][f"layer{l}"]["fvu"], 3),
                          "l0": round(ev["dictionaries"][f"layer{l}"]["l0"], 1)} for l in tcs}
    return {"path": str(tc_dir), "layers": len(tcs), "d_sae": cfg.tc_d, "k": cfg.tc_k, "tokens": cfg.tc_tokens,
            "tokens_per_s": res.get("tokens_per_second"), "metrics": _metrics(ev, None), "per_layer": per_layer}


def features_stage(run: DemoRun) -> dict:
    """The SAE's feature index with built-in labels and scores, and one index per transcoder layer."""
    from .features import BuiltinExplainer, FeatureIndex, StatsConfig, build_index, build_set_index, label_features
    from .features.index import layer_index_path
    model, cfg, sae_dir, tc_dir = run.model, run.cfg, run.out / SAE, run.out / TRANSCODERS
    path = sae_dir / "features.sqlite"
    if not path.exists():
        build_index(model, sae_dir, n_contexts=cfg.index_contexts, ctx_len=cfg.index_ctx)
    t0 = time.time()
    tc_paths = [layer_index_path(tc_dir, layer) for layer in range(model.n_layers)]
    if not all(p.exists() for p in tc_paths):  # every graph node gets a feature page: all layers, one pass
        light = StatsConfig(top_k=8, n_quantiles=3, per_quantile=2, n_zero=4)  # 69k features: ~4 KB each
        build_set_index(model, tc_dir, n_contexts=cfg.tc_index_contexts, ctx_len=cfg.index_ctx, cfg=light)
    tc_live = sum(len(FeatureIndex(p).live_features()) for p in tc_paths)
    tc_seconds = round(time.time() - t0, 1)
    ix = FeatureIndex(path)
    live = ix.live_features()
    freq = {f: ix.feature(f, with_examples=False)["n_fired"] for f in live}
    pick = sorted(live, key=lambda f: -freq[f])[:cfg.label_features]
    done = set(ix.labels("builtin"))
    todo = [f for f in pick if f not in done]  # a resumed stage labels only what is left
    res = label_features(ix, BuiltinExplainer(), features=todo) if todo else {}
    labelled = ix.labels("builtin")
    scored = ix.detection_scores("builtin")
    beats = sum(1 for d, b in scored if b is not None and d > b)
    return {"index": str(path), "live": len(live), "d_sae": ix.d_sae, "labelled": len(labelled),
            "beat_random_baseline": f"{beats}/{len(scored)}", "errors": res.get("n_errors", 0),
            "examples": {str(f): labelled.get(f, "") for f in pick[:8]},
            "transcoders": {"indexes": len(tc_paths), "live": tc_live, "d_sae": cfg.tc_d * model.n_layers,
                            "contexts": cfg.tc_index_contexts, "seconds": tc_seconds}}


def graphs_stage(run: DemoRun) -> dict:
    """Attribution graphs of PROMPTS through the transcoders, their features labelled."""
    from .circuits import attribute
    from .circuits.faithfulness import add_faithfulness
    from .circuits.graph import view_features
    from .circuits.inactive import add_inactive
    from .circuits.qk import add_qk
    from .dictionaries import load_transcoders
    from .features import FeatureIndex, ensure_labels
    from .features.index import layer_index_path, typical_activations
    model, cfg, tc_dir, graph_dir = run.model, run.cfg, run.out / TRANSCODERS, run.out / GRAPHS
    tcs = load_transcoders(tc_dir)
    graph_dir.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, prompt in PROMPTS.items():
        t0 = time.time()
        g = attribute(model, tcs, prompt, max_features=cfg.max_features,
                      dictionary=relative_path(tc_dir, graph_dir))  # relative: the folder can move
        faithful = add_faithfulness(g, model, tcs, n_features=20)  # the top features checked on the real model
        add_qk(g, model, tcs, n_heads=4)  # the viewer's attention (QK) panel
        add_inactive(g, model, tcs, typical_activations(tc_dir, sorted(tcs)) or None)  # what the graph does not show
        g.save(graph_dir / f"{name}.safetensors")
        full, view = g.view(0.8, 0.98), g.view(0.8, 0.98, max_nodes=VIEW_BUDGET)
        scores = g.meta.get("scores", {})
        top = [n for n in view["nodes"] if n["feature_type"] == "logit"][:3]
        by_layer: dict[int, list[int]] = {}  # every feature the pruned graph shows gets a label now
        for n in view_features(full):
            by_layer.setdefault(int(n["layer"]), []).append(int(n["node_id"].split("_")[1]))
        labelled = sum(sum(1 for x in ensure_labels(FeatureIndex(layer_index_path(tc_dir, layer)), fs).values()
                           if x) for layer, fs in by_layer.items())
        made[name] = {"prompt": prompt, "path": str(graph_dir / f"{name}.safetensors"),
                      "nodes": len(full["nodes"]), "edges": len(full["links"]),
                      "view_nodes": len(view["nodes"]), "view_edges": len(view["links"]),
                      "view_influence_kept": view["metadata"]["info"]["influence_kept"],
                      "features_labelled": f"{labelled}/{sum(map(len, by_layer.values()))}",
                      "nodes_total": g.n_nodes, "features_total": g.n_features,
                      "replacement_score": round(float(scores.get("replacement", float("nan"))), 3),
                      "completeness_score": round(float(scores.get("completeness", float("nan"))), 3),
                      "faithfulness": {k: faithful[k] for k in ("spearman", "same_sign", "mean_ratio", "slope")},
                      "targets": [n["clerp"] for n in top],  # 'Output " Paris" (p=0.749)'
                      "seconds": round(time.time() - t0, 1)}
    return {"graphs": made}


def steering_stage(run: DemoRun) -> dict:
    """One SAE feature clamped (the clearest of a few tried): baseline and steered text."""
    from . import steering
    from .dictionaries import load as load_dictionary
    from .features import FeatureIndex
    model, sae_dir = run.model, run.out / SAE
    sae = load_dictionary(sae_dir)
    ix = FeatureIndex(sae_dir / "features.sqlite")
    best, tried = pick_steering(model, sae, ix, sae_dir, STEER_PROMPT)
    feature, words, clamp_to = best["feature"], best["words"], best["clamp"]
    clamp = steering.clamp_feature(model, sae, feature, clamp_to, positions="all", dictionary_folder=sae_dir)
    res = steering.compare(model, STEER_PROMPT, [clamp], max_new_tokens=30, seed=0, temperature=0.7, n=4)
    return {"feature": f"{LAYER}/{feature}", "label": best["label"], "fires_on": words, "clamp": clamp_to,
            "prompt": STEER_PROMPT, "baseline": res["baseline"], "steered": res["steered"],
            "words_in_baseline": f"{word_hits(res['baseline'], words)}/{len(res['baseline'])}",
            "words_in_steered": f"{word_hits(res['steered'], words)}/{len(res['steered'])}",
            "activation_baseline": concept_activation(model, sae, feature, STEER_PROMPT, res["baseline"]),
            "activation_steered": concept_activation(model, sae, feature, STEER_PROMPT, res["steered"]),
            "tried": tried,
            "command": f"glasswork steer --feature {LAYER}/{feature} --dictionary {sae_dir} --clamp "
                       f"{clamp_to} --n 4 --prompt \"{STEER_PROMPT}\""}

STAGES: list[tuple[str, Callable[[DemoRun], dict]]] = [
    ("corpus", corpus_stage), ("harvest", harvest_stage), ("sae", sae_stage), ("transcoders", transcoders_stage),
    ("features", features_stage), ("graphs", graphs_stage), ("steering", steering_stage)]


STOPWORDS = {"the", "and", "that", "this", "with", "from", "were", "have", "which", "their", "there", "when", "been",
             "also", "into", "they", "than", "then", "what", "some", "such", "used", "using", "other", "more", "most"}


def steer_candidates(ix, n: int = 6) -> list[tuple[int, str, list[str]]]:
    """Features worth steering with: labelled ones whose label beats the random-label baseline (best margin first)
    and that fire on content words (a concept a person can spot in text). Returns [(feature, label, words)]."""
    from .features.explain import firing_tokens
    rows = ix.labels_beating_baseline("builtin")
    if not rows:
        raise GlassworkError(f"{ix.path}: no labelled feature beats its random-label baseline: nothing to steer with")
    out = []
    for feature, label in rows:
        top = [w.strip() for w, _ in firing_tokens(ix.feature(int(feature))).most_common(3)]  # what the label names
        words = [w for w in dict.fromkeys(top) if w.isalpha() and len(w) >= 4 and w.lower() not in STOPWORDS]
        if len(words) >= 2:
            out.append((int(feature), label, words))
        if len(out) == n:
            break
    return out or [(int(rows[0][0]), rows[0][1], [])]


def word_hits(texts: list[str], words: list[str]) -> int:
    """How many texts contain one of `words` as a word (case-insensitive; 'line' counts in 'lines', not 'online')."""
    import re
    pats = [re.compile(rf"\b{re.escape(w)}", re.I) for w in words]
    return sum(any(p.search(t) for p in pats) for t in texts)


def pick_steering(model, sae, ix, folder, prompt: str, clamps=("2x", "4x"), n: int = 6) -> tuple[dict, list[dict]]:
    """Try each candidate feature at each clamp (2 samples of 20 tokens, seed 0) and keep the one whose concept words
    show up most in the steered text (ties: the weaker clamp, whose text stays more readable). Returns (best, tried)."""
    from . import steering
    sample = dict(max_new_tokens=20, seed=0, temperature=0.7, n=2)
    baseline = steering.generate(model, prompt, (), **sample)  # the same for every candidate: generated once
    tried = []
    for feature, label, words in steer_candidates(ix, n):
        for clamp in clamps:
            edit = steering.clamp_feature(model, sae, feature, clamp, positions="all", dictionary_folder=folder)
            steered = steering.generate(model, prompt, [edit], **sample)
            tried.append({"feature": feature, "label": label, "words": words, "clamp": clamp,
                          "hits": word_hits(steered, words), "baseline_hits": word_hits(baseline, words)})
    best = max(tried, key=lambda t: (t["hits"] - t["baseline_hits"], -clamps.index(t["clamp"])))
    return best, tried


def concept_activation(model, sae, feature: int, prompt: str, completions: list[str]) -> float:
    """How much the concept is in the text: the feature's mean activation over the completions' tokens, read by the
    unsteered model (the clamp itself is not in this forward)."""
    import torch

    from .hooks import capture
    n_prompt = model.tokenize(prompt).shape[1]
    acts = []
    with torch.no_grad():
        for text in completions:
            ids = model.tokenize(prompt + text)
            if ids.shape[1] <= n_prompt:
                continue
            _, cache = capture(model, ids, [sae.cfg.hook_in])
            codes = sae.encode(cache[sae.cfg.hook_in][0, n_prompt:].float())  # [new tokens, d_sae]
            acts.append(codes[:, feature].mean())
    return round(float(sum(acts) / max(1, len(acts))), 4)


def _metrics(ev: dict, name: str | None) -> dict:
    """The few numbers a person wants from an eval: reconstruction, sparsity and what splicing costs the model."""
    m = {"ce_loss_score": round(ev["ce_loss_score"], 3), "kl": round(ev["kl"], 3)}
    if name is not None:
        d = next(iter(ev["dictionaries"].values()))
        m = {"fvu": round(d["fvu"], 3), "l0": round(d["l0"], 1), "dead": round(d.get("dead_fraction", 0.0), 3), **m}
    else:
        fvus = [d["fvu"] for d in ev["dictionaries"].values()]
        m = {"mean_fvu": round(sum(fvus) / len(fvus), 3), **m}
    return m


def demo_folder(out: str | Path | None, quick: bool) -> Path:
    return Path(out) if out is not None else home() / ("demo-quick" if quick else "demo")


def report(results: dict) -> str:
    """What the demo made, for a person: one block per stage."""
    lines = []
    for name, r in results.items():
        lines.append(f"{name:12s} {_brief(name, r)}")
    st = results.get("steering")
    if st:
        lines += ["", f"steering: feature {st['feature']} ({st['label']}) clamped to {st['clamp']} its max activation, "
                      f"prompt {st['prompt']!r}, seed 0:",
                  f"  baseline: {st['baseline'][0]!r}", f"  steered:  {st['steered'][0]!r}",
                  f"  again: {st['command']}"]
    return "\n".join(lines)


def clean(out: Path) -> None:
    """Remove a demo folder (for `glasswork demo --fresh`)."""
    if out.exists():
        if not (out / "stages").exists():
            raise GlassworkError(f"{out} does not look like a demo folder (no stages/): not removing it")
        shutil.rmtree(out)

