"""`glasswork features build|show|search|label|export` and `glasswork fires`: thin faces on glasswork.features."""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import List, Optional

import typer

from .common import JSON_OPT, emit, err, run_verb

features_app = typer.Typer(help="Feature index: build it, read feature pages, search, label, export.",
                           no_args_is_help=True)
WHERE = typer.Argument(..., help="Dictionary folder (its index is DICT/features.sqlite) or an index .sqlite file.")


def _open(where: Path):
    from ..features.index import FeatureIndex
    return FeatureIndex(where)


def _ids(text: Optional[str]) -> Optional[list[int]]:
    from ..errors import GlassworkError
    if not text:
        return None
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise GlassworkError(f"--features '{text[:80]}': expected feature ids, comma-separated (e.g. 3,17,42)") from None


@features_app.command("build")
def build(dictionary: Path = typer.Argument(..., help="Dictionary folder: one dictionary, a transcoder set or a CLT."),
          model: Optional[str] = typer.Option(None, help="Model (default: the one the dictionary names)."),
          contexts: int = typer.Option(512, min=1, help="Number of contexts from the corpus."),
          ctx_len: int = typer.Option(64, min=2, help="Tokens per context (BOS included)."),
          batch_size: int = typer.Option(16, min=1, help="Contexts per forward pass."),
          top_k: int = typer.Option(20, min=1, help="Top activating contexts kept per feature."),
          text_file: Optional[Path] = typer.Option(None, help="Read contexts from this text file (default: corpus)."),
          out: Optional[Path] = typer.Option(None, help="Index path (default DICT/features.sqlite; one dictionary)."),
          as_json: bool = JSON_OPT):
    """Compute every feature's statistics in one pass and write the SQLite feature index. A transcoder set or a
    cross-layer transcoder gets one index per layer, all from the same pass."""
    def go():
        from ..dictionaries.saving import is_set
        from ..io import GlassworkError, check_out, read_json
        from ..features.index import FeatureIndex, build_index, build_set_index
        from ..features.stats import StatsConfig
        if out is not None:
            check_out(out, "file")
        texts = None
        if text_file is not None:
            if not text_file.exists():
                raise GlassworkError(f"{text_file}: text file not found")
            texts = [t for t in text_file.read_text(errors="replace").splitlines() if t.strip()]
            if not texts:
                raise GlassworkError(f"{text_file}: the text file is empty (no line of text to index)")
        stats = StatsConfig(top_k=top_k)
        per_layer = is_set(dictionary) or ((dictionary / "config.json").is_file() and read_json(
            dictionary / "config.json", "dictionary config").get("kind") == "clt")
        if per_layer and out is not None:
            raise GlassworkError(f"--out: {dictionary} has one index per layer, written beside each layer; drop --out")
        t0 = time.time()
        if per_layer:
            paths = build_set_index(model, dictionary, texts=texts, n_contexts=contexts, ctx_len=ctx_len,
                                    batch_size=batch_size, cfg=stats)
        else:
            paths = [build_index(model, dictionary, texts=texts, path=out, n_contexts=contexts, ctx_len=ctx_len,
                                 batch_size=batch_size, cfg=stats)]
        secs = time.time() - t0
        ixs = [FeatureIndex(p) for p in paths]
        d_sae, live = sum(ix.d_sae for ix in ixs), sum(len(ix.live_features()) for ix in ixs)
        size = sum(p.stat().st_size for p in paths)
        summary = {"index": [str(p) for p in paths] if per_layer else str(paths[0]), "d_sae": d_sae,
                   "live_features": live, "n_tokens": ixs[0].meta["n_tokens"], "seconds": round(secs, 2),
                   "features_per_second": round(d_sae / secs, 1), "bytes": size, "bytes_per_feature": round(size / d_sae)}
        where = f"{len(paths)} indexes under {dictionary}" if per_layer else str(paths[0])
        emit(summary, as_json, f"wrote {where}: {d_sae} features ({live} live) over {ixs[0].meta['n_tokens']:,} "
                               f"tokens in {secs:.1f} s")
    run_verb(go)


@features_app.command("show")
def show(where: Path = WHERE, feature: int = typer.Argument(..., help="Feature id."), as_json: bool = JSON_OPT):
    """Print a feature page: statistics, label, logits, neighbours, contexts with firing tokens highlighted."""
    def go():
        from ..features.render import show as render
        ix = _open(where)
        rec = ix.feature(feature)
        if as_json:
            emit(rec, True)
        else:
            render(rec, ix.meta)
    run_verb(go)


@features_app.command("search")
def search(where: Path = WHERE, query: str = typer.Argument(..., help="Words (labels and contexts), or a token."),
           token: bool = typer.Option(False, "--token", help="Treat QUERY as one exact token (e.g. ' Paris')."),
           limit: int = typer.Option(20, min=1, help="At most this many features."), as_json: bool = JSON_OPT):
    """Find features by label or context text, or by the token they fire on."""
    def go():
        ix = _open(where)
        hits = ix.by_token(int(query) if query.isdigit() else query, limit) if token else ix.search(query, limit)
        labels = ix.labels()
        for h in hits:
            h["label"] = labels.get(h["feature"])
        lines = [f"#{h['feature']:<6} {h.get('where', 'token x' + str(h.get('count')))}: "
                 f"{(h.get('label') or h.get('text') or '')[:100]!r}" for h in hits]
        emit({"query": query, "hits": hits}, as_json, "\n".join(lines) or "no match")
    run_verb(go)


@features_app.command("concepts")
def concepts(where: Path = typer.Argument(..., help="Dictionary folder (one dictionary, a transcoder set, a CLT) or "
                                          "an index .sqlite file."),
             concept: Optional[List[str]] = typer.Option(None, help="A built-in concept (violence, weapons, danger, "
                                                         "deception, crime, spam, hacking); repeatable. Default: all."),
             words: Optional[str] = typer.Option(None, help="Your own concept instead: words, comma-separated."),
             sentences: Optional[Path] = typer.Option(None, help="With --words and --contrast: a text file of "
                                                      "sentences using them, one per line."),
             contrast: bool = typer.Option(False, "--contrast", help="Run the model on sentences using the words and "
                                           "rank features by firing on them vs elsewhere (else: search the index)."),
             layer: Optional[int] = typer.Option(None, min=0, help="With --contrast on a transcoder set: its layer."),
             top: int = typer.Option(3, min=1, help="Features per concept."),
             min_precision: float = typer.Option(0.5, min=0, max=1, help="Index search: keep features whose top "
                                                 "examples fire on the concept's words at least this often."),
             as_json: bool = JSON_OPT):
    """Find features about a concept (safety-relevant ones built in): by the model on sentences that use its words
    (--contrast), or from the feature index by the tokens features fire on."""
    def go():
        from ..errors import GlassworkError
        from ..features import concepts as cf
        if words is not None:
            chosen = {"words": [w for w in words.split(",") if w.strip()]}
            probe = {"words": cf_sentences(sentences) if sentences is not None else None}
        else:
            unknown = [c for c in concept or [] if c not in cf.SAFETY_CONCEPTS]
            if unknown:
                raise GlassworkError(f"--concept '{unknown[0]}': expected one of {', '.join(cf.SAFETY_CONCEPTS)} "
                                     f"(or give --words)")
            chosen = {c: cf.SAFETY_CONCEPTS[c] for c in (concept or cf.SAFETY_CONCEPTS)}
            probe = {c: cf.SAFETY_SENTENCES[c] for c in chosen}
        if contrast:
            found = _contrast(where, layer, chosen, probe, top)
        else:
            found = cf.safety_features(cf.indexes_of(where), chosen, top, min_precision)
        lines = []
        for c, rows in found.items():
            lines.append(f"{c}: " + ("none" if not rows else ""))
            lines += [f"  #{r['feature']:<6} " + (f"on {r['on']:.2f} vs {r['off']:.2f} elsewhere" if contrast else
                                                  f"{r['index']}: precision {r['precision']:.2f}, fires on "
                                                  f"{', '.join(r['words'][:5])} ({r['count']}x)")
                      + f": {r['label'][:80]!r}" for r in rows]
        emit({"where": str(where), "mode": "contrast" if contrast else "index", "concepts": found}, as_json,
             "\n".join(lines))
    run_verb(go)


def cf_sentences(path: Path) -> list[str]:
    from ..data.corpus import prompt_lines
    return prompt_lines(path)


def _contrast(where: Path, layer: Optional[int], chosen: dict, probe: dict, top: int) -> dict:
    """The --contrast search on one dictionary (a set's member for `layer`), labelled from its index where there is
    one (built-in labels made for the features found)."""
    from ..dictionaries import load
    from ..dictionaries.saving import is_set, layer_folder
    from ..errors import GlassworkError
    from ..features.concepts import contrast
    from ..features.index import FeatureIndex, index_path
    from ..features.scoring import ensure_labels
    from ..models import load_model
    if is_set(where) and layer is None:
        raise GlassworkError(f"{where} is a set of dictionaries: say which one with --layer")
    folder = layer_folder(where, layer) if layer is not None else where
    if any(v is None for v in probe.values()):
        raise GlassworkError("--contrast with --words needs --sentences (a file of sentences that use the words)")
    d = load(folder).requires_grad_(False)
    model = load_model(d.cfg.model or None)
    index = FeatureIndex(folder) if index_path(folder).exists() else None
    out = {}
    for c, words in chosen.items():
        rows = contrast(model, d, probe[c], words, top=top)
        labels = ensure_labels(index, [r["feature"] for r in rows]) if index is not None else {}
        out[c] = [{**r, "label": labels.get(r["feature"]) or ""} for r in rows]
    return out


@features_app.command("label")
def label(where: Path = WHERE,
          explainer: str = typer.Option("builtin", help="builtin | openai | hf."),
          base_url: Optional[str] = typer.Option(None, help="openai: endpoint base URL, e.g. http://localhost:8000/v1"),
          model: Optional[str] = typer.Option(None, help="openai: model name; hf: model name or folder."),
          api_key_env: Optional[str] = typer.Option(None, help="openai: environment variable holding the API key."),
          scorer: str = typer.Option("keyword", help="keyword (deterministic) | lm (the explainer's model)."),
          features: Optional[str] = typer.Option(None, help="Feature ids, comma-separated (default: all live)."),
          n: Optional[int] = typer.Option(None, help="Label this many random live features instead."),
          timeout: float = typer.Option(30.0, help="openai: seconds per request."),
          seed: int = typer.Option(0, min=0, max=2**32 - 1), as_json: bool = JSON_OPT):
    """Label features automatically and score each label (detection, fuzzing) against random labels."""
    def go():
        import os

        from ..progress import progress
        from ..features.explain import make_explainer
        from ..features.scoring import KeywordScorer, LMScorer, label_features
        ix = _open(where)
        key = os.environ.get(api_key_env) if api_key_env else None
        ex = make_explainer(explainer, base_url, model, key, timeout)
        sc = LMScorer(ex.client) if scorer == "lm" and hasattr(ex, "client") else KeywordScorer()
        ids = _ids(features)
        if n is not None:
            live = ix.live_features()
            ids = sorted(random.Random(seed).sample(live, min(n, len(live))))
        total = len(ids) if ids is not None else len(ix.live_features())
        t0 = time.time()
        with progress("labelling", total=total, unit="features") as bar:
            res = label_features(ix, ex, sc, ids, seed=seed, on_progress=bar.advance)
        res["seconds"] = round(time.time() - t0, 2)
        res.pop("results") if not as_json else None
        emit(res, as_json, f"{res['n_labeled']} labels ({res['n_errors']} errors) by {res['explainer']}; detection "
                           f"beats the random-label baseline for {res['n_detection_beats_baseline']}")
    run_verb(go)


@features_app.command("export")
def export(where: Path = WHERE, out: Path = typer.Option(..., help="Output folder for batch-N.json files."),
           features: Optional[str] = typer.Option(None, help="Feature ids, comma-separated (default: all)."),
           model_id: Optional[str] = typer.Option(None, help="Neuronpedia model id (default: the model's name)."),
           author_id: str = typer.Option("glasswork", help="Neuronpedia user id the labels are credited to."),
           as_json: bool = JSON_OPT):
    """Export feature data in Neuronpedia's upload format (SAEDashboard NeuronpediaRunner batch files)."""
    def go():
        from ..io import check_out, new_output
        from ..features.neuronpedia import export as np_export
        with new_output(check_out(out, "folder")):
            res = np_export(_open(where), out, _ids(features), model_id, author_id=author_id)
        emit(res, as_json, f"wrote {len(res['files'])} batch files ({res['n_features']} features) to {out}")
    run_verb(go)


def fires_cmd(dictionary: Path = typer.Argument(..., help="Dictionary folder (labels from DICT/features.sqlite)."),
              text: str = typer.Option(..., "--text", help="Text to read."),
              top: int = typer.Option(5, min=1, help="Features per token."),
              model: Optional[str] = typer.Option(None, help="Model (default: the one the dictionary names)."),
              as_json: bool = JSON_OPT):
    """What fires here: for each token of TEXT, the most active features with their labels."""
    def go():
        from ..dictionaries import load as load_dictionary
        from ..models import load_model
        from ..features.firing import fires
        from ..features.index import FeatureIndex, index_path
        d = load_dictionary(dictionary)
        m = load_model(model or d.cfg.model or None)
        ix = FeatureIndex(dictionary) if index_path(dictionary).exists() else None
        rows = fires(m, d, text, top, ix)
        if as_json:
            emit({"text": text, "tokens": rows}, True)
        else:
            from ..features.render import fires_table
            err.print(fires_table(rows))
    run_verb(go)
