"""The feature index: one SQLite file beside the dictionary (DICT/features.sqlite), read by the CLI, the Python API
and the web app.

Schema (schema_version 1). Lists are JSON text so any reader (Python, JS) can use them without numpy.

  meta(key TEXT PRIMARY KEY, value TEXT)          value is JSON. Keys: schema_version, complete (true only in a
        finished file), model, dictionary (folder), hook, kind, d_sae, d_in, n_contexts, ctx_len, n_tokens,
        hist_edges (list of n_bins + 1 floats: log-spaced activation bin edges), top_k, n_quantiles, seconds, built_at
  contexts(ctx INTEGER PRIMARY KEY, tokens TEXT, text TEXT)
        tokens: JSON list of token ids (BOS first when the build used one); text: the decoded context.
        Only contexts used by some example are stored.
  vocab(token_id INTEGER PRIMARY KEY, str TEXT)   the string of every token id that appears in the index
  features(feature INTEGER PRIMARY KEY,
        n_fired INTEGER,          tokens where activation > 0
        freq REAL,                n_fired / n_tokens
        max_act REAL, mean_act REAL (mean over firing tokens),
        hist TEXT,                JSON list of n_bins counts of firing activations in meta.hist_edges bins
        top_logits TEXT,          JSON [[token_id, str, value], ...]: largest entries of W_dec[f] @ W_U
        bottom_logits TEXT,       JSON, smallest entries
        neighbors TEXT,           JSON [[feature, cosine], ...]: nearest decoder directions
        cofiring TEXT,            JSON [[feature, n_both, n_both / n_fired], ...]: features firing on the same tokens
        top_tokens TEXT)          JSON [[token_id, str, count, mean_act], ...]: tokens it fires on most
  examples(feature INTEGER, kind TEXT, rank INTEGER, ctx INTEGER, pos INTEGER, act REAL, acts BLOB, quantile INTEGER,
        PRIMARY KEY (feature, kind, rank))
        kind 'top': the top-k contexts by max activation (rank 0 = highest);
        kind 'quantile': a uniform sample of firing contexts, grouped in `quantile` 0..n_quantiles-1 by activation
        (0 = lowest); kind 'zero': contexts where the feature never fires (acts = '[]').
        pos: position of the max in the context; acts: BLOB, the feature's activation at every token of the context
        as little-endian float16 (numpy: np.frombuffer(acts, np.float16)); NULL for kind 'zero'.
  feature_tokens(feature INTEGER, token_id INTEGER, count INTEGER, mean_act REAL)  index on token_id:
        "which features fire on this token"
  labels(feature INTEGER, explainer TEXT, label TEXT, error TEXT, detection REAL, detection_baseline REAL,
        fuzzing REAL, fuzzing_baseline REAL, created TEXT, PRIMARY KEY (feature, explainer))
        label NULL and error set when an explainer failed for that feature.
  contexts_fts(text), labels_fts(label): FTS5 tables (rowid = ctx, resp. labels rowid) for text search.

A build writes a temp file beside the target and renames it over features.sqlite only when complete, so a file at the
final path is always a finished index (meta.complete = true); a killed build leaves only a temp file, removed by the
next build.
"""
from __future__ import annotations

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE contexts(ctx INTEGER PRIMARY KEY, tokens TEXT, text TEXT);
CREATE TABLE vocab(token_id INTEGER PRIMARY KEY, str TEXT);
CREATE TABLE features(feature INTEGER PRIMARY KEY, n_fired INTEGER, freq REAL, max_act REAL, mean_act REAL, hist TEXT,
                      top_logits TEXT, bottom_logits TEXT, neighbors TEXT, cofiring TEXT, top_tokens TEXT);
CREATE TABLE examples(feature INTEGER, kind TEXT, rank INTEGER, ctx INTEGER, pos INTEGER, act REAL, acts BLOB,
                      quantile INTEGER, PRIMARY KEY (feature, kind, rank));
CREATE TABLE feature_tokens(feature INTEGER, token_id INTEGER, count INTEGER, mean_act REAL);
CREATE INDEX feature_tokens_by_token ON feature_tokens(token_id, count DESC);
CREATE TABLE labels(feature INTEGER, explainer TEXT, label TEXT, error TEXT, detection REAL, detection_baseline REAL,
                    fuzzing REAL, fuzzing_baseline REAL, created TEXT, PRIMARY KEY (feature, explainer));
CREATE VIRTUAL TABLE contexts_fts USING fts5(text, content='contexts', content_rowid='ctx');
CREATE VIRTUAL TABLE labels_fts USING fts5(label, content='labels', content_rowid='rowid');
CREATE TRIGGER labels_ai AFTER INSERT ON labels BEGIN
  INSERT INTO labels_fts(rowid, label) VALUES (new.rowid, new.label); END;
CREATE TRIGGER labels_ad AFTER DELETE ON labels BEGIN
  INSERT INTO labels_fts(labels_fts, rowid, label) VALUES ('delete', old.rowid, old.label); END;
CREATE TRIGGER labels_au AFTER UPDATE ON labels BEGIN
  INSERT INTO labels_fts(labels_fts, rowid, label) VALUES ('delete', old.rowid, old.label);
  INSERT INTO labels_fts(rowid, label) VALUES (new.rowid, new.label); END;
"""

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..dictionaries.saving import is_set, set_member
from ..io import GlassworkError, read_json
from ..progress import progress
from .stats import FeatureStats, StatsConfig, decoder_neighbors, logit_effects

INDEX_NAME = "features.sqlite"


def index_path(where: str | os.PathLike) -> Path:
    """DICT folder -> DICT/features.sqlite; a .sqlite path stays as it is."""
    where = Path(where)
    return where if where.suffix in (".sqlite", ".db") else where / INDEX_NAME


# ---------------------------------------------------------------------------------------------------- build

def check_match(model, dictionary) -> None:
    """A dictionary trained on another model or hook size cannot be read on this one: say which field differs."""
    cfg = dictionary.cfg
    if cfg.d_in != model.d_model:
        raise GlassworkError(f"dictionary config d_in = {cfg.d_in}, but model '{model.name}' has d_model = "
                             f"{model.d_model} at hook '{cfg.hook_in}': this dictionary was not trained on this model")
    if cfg.model and model.name and Path(str(cfg.model)).name != Path(str(model.name)).name:
        raise GlassworkError(f"dictionary config model = '{cfg.model}', but the model given is '{model.name}': "
                             f"pass the model it was trained on")
    hooks = cfg.hook_in if isinstance(cfg.hook_in, list) else [cfg.hook_in]
    if not all(hooks) or (cfg.kind == "clt" and len(hooks) != cfg.n_layers):
        raise GlassworkError("dictionary config hook_in is missing (a CLT: one per layer): the index needs to know "
                             "where to read activations")
    from ..hooks import canonical
    for hook in hooks:
        canonical(model, hook)  # raises a GlassworkError for an unknown hook point


def contexts_from_texts(model, texts, ctx_len: int, n_contexts: int | None = None) -> torch.Tensor:
    """Token contexts [n, ctx_len] (data.corpus.token_rows: BOS + ctx_len - 1 tokens of the concatenated texts)."""
    from itertools import islice

    from ..data.corpus import token_rows
    rows = list(islice(token_rows(model, texts, ctx_len), n_contexts or None))
    if not rows:
        raise GlassworkError(f"the texts hold too few tokens for one context of {ctx_len} tokens")
    return torch.stack(rows)


def default_contexts(model, n_contexts: int, ctx_len: int) -> torch.Tensor:
    """Contexts from glasswork's default corpus (the text the quick dictionaries train on)."""
    from ..training.quick import fixture_texts
    return contexts_from_texts(model, fixture_texts()(), ctx_len, n_contexts)


@dataclass
class IndexTarget:
    """One set of features to index: a dictionary, or one layer of a cross-layer transcoder."""

    path: Path  # where its index goes
    hook: str  # the hook point its encoder reads
    encode: Callable[[torch.Tensor], torch.Tensor]  # acts at `hook` [B, S, d_in] -> features [B, S, F]
    W_dec: torch.Tensor  # [F, d_out]: what a feature writes (a CLT feature: summed over the layers it writes to)
    meta: dict  # dictionary, kind, d_sae, d_in (and layer for a set member or a CLT layer)


def layer_index_path(folder: str | os.PathLike, layer: int | None = None) -> Path:
    """The index holding `layer`'s features: a set's member/features.sqlite, a CLT's features-layer{NN}.sqlite, or
    the folder's own features.sqlite (one dictionary)."""
    folder = Path(folder)
    if layer is not None and is_set(folder):
        return set_member(folder, layer) / INDEX_NAME
    if layer is not None and (folder / "config.json").is_file() and \
            read_json(folder / "config.json", "dictionary config").get("kind") == "clt":
        return folder / f"features-layer{layer:02d}.sqlite"
    return index_path(folder)


def index_targets(dictionary, folder: Path) -> list[IndexTarget]:
    """What to index, with the index paths under `folder`: one dictionary (SparseCoder), each layer of a CLT, or each
    member of a set ({layer: coder})."""
    if isinstance(dictionary, dict):
        return [t for layer, d in sorted(dictionary.items())
                for t in index_targets(d, layer_index_path(folder, layer).parent)]
    cfg = dictionary.cfg
    base = {"dictionary": str(Path(folder).resolve()), "kind": cfg.kind, "d_sae": dictionary.d_sae, "d_in": cfg.d_in}
    if cfg.kind == "clt":
        return [IndexTarget(Path(folder) / f"features-layer{i:02d}.sqlite", cfg.hook_in[i],
                            lambda x, i=i: dictionary.encode_layer(x, i), dictionary.writes(i).detach(),
                            {**base, "layer": i}) for i in range(cfg.n_layers)]
    return [IndexTarget(index_path(folder), cfg.hook_in, dictionary.encode, dictionary.W_dec.detach(),
                        {**base, "layer": cfg.layer})]


@torch.no_grad()
def build_indexes(model, targets: list[IndexTarget], contexts: torch.Tensor, batch_size: int = 16,
                  cfg: StatsConfig | None = None, skip_bos: bool = True, what: str = "") -> list[Path]:
    """Index every target in one pass over `contexts` ([n, ctx_len] token ids): one forward records every hook the
    targets read, each target's features update its own statistics; each index is written atomically."""
    from ..hooks import capture
    cfg = cfg or StatsConfig()
    contexts = contexts.long().cpu()
    n, S = contexts.shape
    hooks = sorted({t.hook for t in targets})
    stats = [FeatureStats(t.meta["d_sae"], S, model.vocab_size, cfg) for t in targets]
    n_feat = sum(t.meta["d_sae"] for t in targets)
    t0 = time.time()
    with progress(what or f"indexing {n_feat} features", total=n * S, unit="tokens") as bar:
        for lo in range(0, n, batch_size):
            ids = contexts[lo:lo + batch_size]
            _, cache = capture(model, ids.to(model.device), hooks)
            bos = ids == model.bos_token_id
            for t, st in zip(targets, stats):
                acts = t.encode(cache[t.hook].to(t.W_dec.dtype)).cpu()  # [B, S, F]
                if skip_bos:  # the BOS position is an attention sink with outlier activations: not a feature example
                    acts[bos] = 0
                st.update(acts, ids)
            bar.advance(ids.numel())
    seconds = round(time.time() - t0, 2)
    W_U = model.W_U.detach()
    for t, st in zip(targets, stats):
        result = st.finish()
        logits = logit_effects(t.W_dec, W_U, cfg.n_logits) if t.W_dec.shape[1] == W_U.shape[0] else None
        neighbors = decoder_neighbors(t.W_dec, cfg.n_neighbors)
        meta = {"schema_version": SCHEMA_VERSION, "complete": True, "model": model.name, **t.meta, "hook": t.hook,
                "n_contexts": n, "ctx_len": S, "n_tokens": st.n_tokens, "hist_edges": result["hist_edges"].tolist(),
                "top_k": cfg.top_k, "n_quantiles": cfg.n_quantiles, "skip_bos": skip_bos, "stats_seconds": seconds,
                "indexed_together": len(targets),
                "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        _write_atomic(Path(t.path), meta, result, logits, neighbors, contexts, model)
    return [Path(t.path) for t in targets]


def _model_for(model, cfg):
    """The model given, or the one the dictionary config names."""
    from ..models import load_model
    return load_model(model or cfg.model or None) if model is None or isinstance(model, (str, os.PathLike)) else model


def _contexts(model, contexts, texts, n_contexts: int, ctx_len: int) -> torch.Tensor:
    if contexts is not None:
        return contexts
    return contexts_from_texts(model, texts, ctx_len, n_contexts) if texts else \
        default_contexts(model, n_contexts, ctx_len)


def build_index(model, dictionary, contexts: torch.Tensor | None = None, *, texts: list[str] | None = None,
                path: str | os.PathLike | None = None, n_contexts: int = 512, ctx_len: int = 64, batch_size: int = 16,
                cfg: StatsConfig | None = None, skip_bos: bool = True) -> Path:
    """Compute every feature's statistics in one pass over `contexts` ([n, ctx_len] token ids; or `texts`; default:
    the default corpus) and write the index to `path` (default DICT/features.sqlite). Returns the path.

    `dictionary` is a SparseCoder or a dictionary folder; `model` a Model, a name, or None (the dictionary's model).
    A set of transcoders or a cross-layer transcoder has one index per layer: `build_set_index`."""
    from ..dictionaries import load as load_dictionary
    folder = None
    if not hasattr(dictionary, "cfg"):
        folder = Path(dictionary)
        if is_set(folder):
            raise GlassworkError(f"{folder} is a set of dictionaries: index all its layers with build_set_index")
        dictionary = load_dictionary(folder)
    if dictionary.cfg.kind == "clt":
        raise GlassworkError(f"{folder or 'build_index'}: a cross-layer transcoder has one index per layer: use "
                             f"build_set_index")
    model = _model_for(model, dictionary.cfg)
    check_match(model, dictionary)
    if path is None and folder is None:
        raise GlassworkError("build_index: pass path= (or the dictionary as a folder, to write DICT/features.sqlite)")
    target = index_targets(dictionary, folder or Path("."))[0]
    target.path = Path(path) if path is not None else folder / INDEX_NAME
    ctx = _contexts(model, contexts, texts, n_contexts, ctx_len)
    return build_indexes(model, [target], ctx, batch_size, cfg, skip_bos,
                         what=f"indexing {dictionary.d_sae} features")[0]


def build_set_index(model, folder: str | os.PathLike, contexts: torch.Tensor | None = None, *,
                    texts: list[str] | None = None, n_contexts: int = 512, ctx_len: int = 64, batch_size: int = 16,
                    cfg: StatsConfig | None = None, skip_bos: bool = True) -> list[Path]:
    """Index every layer of a transcoder set folder (each member gets member/features.sqlite) or of a cross-layer
    transcoder folder (CLT/features-layer{NN}.sqlite) in one pass over the corpus. Returns the paths, by layer."""
    from ..dictionaries import load as load_dictionary
    from ..dictionaries import load_transcoders
    folder = Path(folder)
    if is_set(folder):
        coders = load_transcoders(folder)
        checked = list(coders.values())
    else:
        coders = load_dictionary(folder)
        if coders.cfg.kind != "clt":
            raise GlassworkError(f"{folder}: expected a set of transcoders (set.json) or a cross-layer transcoder, got "
                                 f"one {coders.cfg.kind}: index it with build_index")
        checked = [coders]
    model = _model_for(model, checked[0].cfg)
    for d in checked:
        check_match(model, d)
    targets = index_targets(coders, folder)
    ctx = _contexts(model, contexts, texts, n_contexts, ctx_len)
    n_feat = sum(t.meta["d_sae"] for t in targets)
    return build_indexes(model, targets, ctx, batch_size, cfg, skip_bos,
                         what=f"indexing {len(targets)} layers, {n_feat:,} features")


def _decoder(model):
    tok = model.tokenizer
    if tok is None:
        return lambda ids: [f"<{i}>" for i in ids], lambda ids: " ".join(f"<{i}>" for i in ids)
    return (lambda ids: [tok.decode([i]) for i in ids]), (lambda ids: tok.decode(ids))


def _example_rows(kind: str, slots: dict, quantile: torch.Tensor | None = None) -> tuple[list[tuple], set[int]]:
    """Rows for the examples table from kept slots [F, K, ...]; only filled slots (and, but for 'zero', firing ones)."""
    F, K = slots["ctx"].shape
    ok = (slots["ctx"] >= 0) & (slots["key"] > float("-inf"))
    if kind != "zero":
        ok &= slots["val"] > 0
    order = slots["val"].argsort(dim=1, descending=True, stable=True)  # kept slots are unordered: best first
    f_idx, k_idx = ok.gather(1, order).nonzero(as_tuple=True)
    k_idx = order[f_idx, k_idx]
    ctx, pos, val = (slots[x][f_idx, k_idx].tolist() for x in ("ctx", "pos", "val"))
    acts = [a.numpy().tobytes() for a in slots["acts"][f_idx, k_idx]] if "acts" in slots else [None] * len(ctx)
    q = quantile[f_idx, k_idx].tolist() if quantile is not None else [None] * len(ctx)
    rank_in_f = torch.arange(len(f_idx)) - torch.searchsorted(f_idx, f_idx)
    rows = list(zip(f_idx.tolist(), [kind] * len(ctx), rank_in_f.tolist(), ctx, pos,
                    val, acts, q))
    return rows, set(ctx)


def _write_atomic(path: Path, meta: dict, r: dict, logits, neighbors, contexts: torch.Tensor, model) -> None:
    """Write the whole index into a temp file beside `path`, then rename it into place (never a half-written index)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.building*"):
        stale.unlink()  # left by a killed build
    tmp = path.parent / f".{path.name}.{os.getpid()}.building"
    decode_each, decode_all = _decoder(model)
    try:
        db = sqlite3.connect(tmp)
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.executescript(SCHEMA)
        examples, used = [], set()
        for kind, slots, q in (("top", r["top"], None), ("quantile", r["sample"], r["sample"]["quantile"]),
                               ("zero", r["zero"], None)):
            rows, ctxs = _example_rows(kind, slots, q)
            examples += rows
            used |= ctxs
        db.executemany("INSERT INTO examples VALUES (?,?,?,?,?,?,?,?)", examples)
        used = sorted(used)
        ctx_tokens = contexts[used].tolist() if used else []
        db.executemany("INSERT INTO contexts VALUES (?,?,?)",
                       [(c, json.dumps(t), decode_all(t[1:] if meta["skip_bos"] else t))
                        for c, t in zip(used, ctx_tokens)])
        db.execute("INSERT INTO contexts_fts(contexts_fts) VALUES ('rebuild')")

        vocab_ids = {t for ts in ctx_tokens for t in ts}
        tf, tt, tc, tm = (x.tolist() for x in r["top_tokens"])
        vocab_ids |= set(tt)
        if logits is not None:
            tv, ti, bv, bi = logits
            vocab_ids |= set(ti.flatten().tolist()) | set(bi.flatten().tolist())
        vocab_ids = sorted(vocab_ids)
        strs = dict(zip(vocab_ids, decode_each(vocab_ids)))
        db.executemany("INSERT INTO vocab VALUES (?,?)", list(strs.items()))
        db.executemany("INSERT INTO feature_tokens VALUES (?,?,?,?)",
                       [(f, t, c, round(m, 5)) for f, t, c, m in zip(tf, tt, tc, tm)])

        F = meta["d_sae"]
        per_f = lambda: [[] for _ in range(F)]  # noqa: E731
        top_tokens, cofiring = per_f(), per_f()
        for f, t, c, m in zip(tf, tt, tc, tm):
            top_tokens[f].append([t, strs[t], c, round(m, 4)])
        n_fired = r["n_fired"].tolist()
        for a, b, c in zip(*(x.tolist() for x in r["cofiring"])):
            cofiring[a].append([b, c, round(c / max(n_fired[a], 1), 4)])

        def pairs(ids, vals, with_str=False):
            ids, vals = ids.tolist(), vals.tolist()
            if with_str:
                return [json.dumps([[i, strs[i], round(v, 4)] for i, v in zip(ri, rv)]) for ri, rv in zip(ids, vals)]
            return [json.dumps([[i, round(v, 4)] for i, v in zip(ri, rv)]) for ri, rv in zip(ids, vals)]

        empty = ["[]"] * F
        top_l, bot_l = (pairs(ti, tv, True), pairs(bi, bv, True)) if logits is not None else (empty, empty)
        neigh = pairs(neighbors[1], neighbors[0])
        hist = [json.dumps(h) for h in r["hist"].tolist()]
        db.executemany("INSERT INTO features VALUES (?,?,?,?,?,?,?,?,?,?,?)", zip(
            range(F), n_fired, r["freq"].tolist(), r["max_act"].tolist(), r["mean_act"].tolist(), hist, top_l, bot_l,
            neigh, [json.dumps(c) for c in cofiring], [json.dumps(t) for t in top_tokens]))
        meta["complete"] = True
        db.executemany("INSERT INTO meta VALUES (?,?)", [(k, json.dumps(v)) for k, v in meta.items()])
        db.commit()
        db.execute("PRAGMA journal_mode=WAL")  # persistent: readers (web app) and label writers can share the file
        db.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        for leftover in path.parent.glob(f"{tmp.name}*"):
            leftover.unlink()


# ---------------------------------------------------------------------------------------------------- read

class FeatureIndex:
    """A finished feature index: `FeatureIndex(path_or_dict_folder)`; `.feature(id)`, `.search(text)`,
    `.by_token(token)`, `.labels()`, `.set_label(...)`."""

    def __init__(self, where: str | os.PathLike):
        self.path = index_path(where)
        if not self.path.exists():
            raise GlassworkError(f"{self.path}: no feature index here (build one with `glasswork features build`)")
        try:
            self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self.meta = {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}
        except sqlite3.DatabaseError as e:
            raise GlassworkError(f"{self.path}: not a glasswork feature index ({e})") from None
        if not self.meta.get("complete"):
            raise GlassworkError(f"{self.path}: feature index is incomplete (meta.complete is not true); rebuild it")
        if self.meta.get("schema_version") != SCHEMA_VERSION:
            raise GlassworkError(f"{self.path}: index schema_version {self.meta.get('schema_version')}, this glasswork "
                                 f"reads {SCHEMA_VERSION}; rebuild it")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.d_sae: int = self.meta["d_sae"]

    def __repr__(self) -> str:
        return f"FeatureIndex({str(self.path)!r}, d_sae={self.d_sae}, model={self.meta['model']!r})"

    def close(self) -> None:
        self.db.close()

    def check_id(self, feature: int) -> int:
        if not isinstance(feature, int) or not 0 <= feature < self.d_sae:
            raise GlassworkError(f"{self.path}: feature id {feature} is out of range (expected 0..{self.d_sae - 1})")
        return feature

    def strs(self, token_ids: list[int]) -> list[str]:
        found = dict(self.db.execute(f"SELECT token_id, str FROM vocab WHERE token_id IN "
                                     f"({','.join('?' * len(token_ids))})", token_ids)) if token_ids else {}
        return [found.get(t, f"<{t}>") for t in token_ids]

    def examples(self, feature: int, kind: str = "top") -> list[dict]:
        """Examples of `kind` ('top', 'quantile', 'zero'): dicts with ctx, pos, act, quantile, token_ids, tokens,
        acts (one value per token of the context)."""
        rows = self.db.execute("SELECT e.ctx, e.pos, e.act, e.acts, e.quantile, c.tokens FROM examples e JOIN contexts "
                               "c ON c.ctx = e.ctx WHERE e.feature = ? AND e.kind = ? ORDER BY e.rank",
                               (self.check_id(feature), kind)).fetchall()
        out = []
        for ctx, pos, act, acts, q, tokens in rows:
            ids = json.loads(tokens)
            dense = np.frombuffer(acts, dtype=np.float16).astype(float).tolist() if acts else [0.0] * len(ids)
            out.append({"ctx": ctx, "pos": pos, "act": act, "quantile": q, "token_ids": ids, "tokens": self.strs(ids),
                        "acts": dense})
        return out

    def feature(self, feature: int, with_examples: bool = True) -> dict:
        """Everything the index knows about one feature (the data of a feature page)."""
        row = self.db.execute("SELECT * FROM features WHERE feature = ?", (self.check_id(feature),)).fetchone()
        names = [d[0] for d in self.db.execute("SELECT * FROM features LIMIT 0").description]
        rec = dict(zip(names, row))
        for key in ("hist", "top_logits", "bottom_logits", "neighbors", "cofiring", "top_tokens"):
            rec[key] = json.loads(rec[key])
        rec["labels"] = self.labels_of(feature)
        if with_examples:
            for kind in ("top", "quantile", "zero"):
                rec[kind] = self.examples(feature, kind)
        return rec

    def labels_of(self, feature: int) -> list[dict]:
        cur = self.db.execute("SELECT * FROM labels WHERE feature = ? ORDER BY explainer", (feature,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def labels(self, explainer: str | None = None) -> dict[int, str]:
        """{feature: label}: of one explainer, or the best-scoring label of any explainer."""
        if explainer:
            rows = self.db.execute("SELECT feature, label FROM labels WHERE explainer = ? AND label IS NOT NULL",
                                   (explainer,))
        else:
            rows = self.db.execute("SELECT feature, label FROM labels WHERE label IS NOT NULL "
                                   "ORDER BY COALESCE(detection, -1) ASC")
        return dict(rows.fetchall())

    def frequencies(self, features: list[int]) -> dict[int, tuple[float, float]]:
        """{feature: (firing frequency, max activation)} of the given features."""
        if not features:
            return {}
        rows = self.db.execute(f"SELECT feature, freq, max_act FROM features WHERE feature IN "
                               f"({','.join('?' * len(features))})", [int(f) for f in features])
        return {f: (freq, top) for f, freq, top in rows}

    def mean_activations(self) -> torch.Tensor:
        """[d_sae] each feature's mean activation when it fires (0 for a feature that never fired)."""
        out = torch.zeros(self.d_sae)
        for f, a in self.db.execute("SELECT feature, mean_act FROM features WHERE n_fired > 0"):
            out[f] = float(a or 0.0)
        return out

    def live_by_frequency(self) -> list[tuple[int, float]]:
        """[(feature, firing frequency)] of every feature that fired, most frequent first."""
        return self.db.execute("SELECT feature, freq FROM features WHERE n_fired > 0 ORDER BY freq DESC").fetchall()

    def detection_scores(self, explainer: str) -> list[tuple[float, float | None]]:
        """[(detection, its random-label baseline)] of one explainer's scored labels."""
        return self.db.execute("SELECT detection, detection_baseline FROM labels WHERE explainer = ? AND detection IS "
                               "NOT NULL", (explainer,)).fetchall()

    def labels_beating_baseline(self, explainer: str) -> list[tuple[int, str]]:
        """[(feature, label)] of one explainer's labels whose detection beats the baseline, best margin first."""
        return self.db.execute("SELECT feature, label FROM labels WHERE explainer = ? AND label IS NOT NULL AND "
                               "detection > detection_baseline ORDER BY detection - detection_baseline DESC",
                               (explainer,)).fetchall()

    def set_label(self, feature: int, explainer: str, label: str | None, error: str | None = None,
                  scores: dict | None = None) -> None:
        s = scores or {}
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO labels VALUES (?,?,?,?,?,?,?,?,?)", (
                self.check_id(feature), explainer, label, error, s.get("detection"), s.get("detection_baseline"),
                s.get("fuzzing"), s.get("fuzzing_baseline"), datetime.now(timezone.utc).isoformat(timespec="seconds")))

    def live_features(self) -> list[int]:
        return [f for (f,) in self.db.execute("SELECT feature FROM features WHERE n_fired > 0 ORDER BY feature")]

    def search(self, text: str, limit: int = 20) -> list[dict]:
        """Features whose label or top contexts match `text` (FTS5 query syntax; plain words are ANDed)."""
        query = " ".join(f'"{w}"' for w in text.replace('"', " ").split()) or '""'
        hits = [{"feature": f, "where": "label", "text": t, "score": -s} for f, t, s in self.db.execute(
            "SELECT l.feature, l.label, bm25(labels_fts) FROM labels_fts JOIN labels l ON l.rowid = labels_fts.rowid "
            "WHERE labels_fts MATCH ? ORDER BY bm25(labels_fts) LIMIT ?", (query, limit))]
        for ctx, t, s in self.db.execute("SELECT rowid, text, bm25(contexts_fts) FROM contexts_fts WHERE contexts_fts "
                                         "MATCH ? ORDER BY bm25(contexts_fts) LIMIT ?", (query, limit)).fetchall():
            for f, act in self.db.execute("SELECT feature, act FROM examples WHERE ctx = ? AND kind = 'top' "
                                          "ORDER BY act DESC LIMIT 3", (ctx,)):
                hits.append({"feature": f, "where": f"context {ctx}", "text": t, "score": -s, "act": act})
        seen, out = set(), []
        for h in hits:
            if h["feature"] not in seen:
                seen.add(h["feature"])
                out.append(h)
        return out[:limit]

    def by_token(self, token: str | int, limit: int = 20) -> list[dict]:
        """Features that fire most often on a token (given as id or exact string, e.g. ' Paris')."""
        ids = [token] if isinstance(token, int) else \
            [t for (t,) in self.db.execute("SELECT token_id FROM vocab WHERE str = ?", (token,))]
        if not ids:
            return []
        rows = self.db.execute(f"SELECT feature, token_id, count, mean_act FROM feature_tokens WHERE token_id IN "
                               f"({','.join('?' * len(ids))}) ORDER BY count DESC LIMIT ?", (*ids, limit))
        return [{"feature": f, "token_id": t, "count": c, "mean_act": m} for f, t, c, m in rows]


def typical_activations(folder, layers) -> dict:
    """{layer: [d_sae] mean activations when firing} from the feature index of each layer of a dictionary folder (a
    set or a CLT) that has one: what an inactive feature would typically write."""
    out = {}
    for layer in layers:
        path = layer_index_path(folder, layer)
        if path.exists():
            index = FeatureIndex(path)
            try:
                out[layer] = index.mean_activations()
            finally:
                index.close()
    return out
