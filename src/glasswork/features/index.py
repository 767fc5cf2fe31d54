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
  examples(feature INTEGER, kind TEXT, rank INTEGER, ctx INTEGER, pos INTEGER, act REAL, acts TEXT, quantile INTEGER,
        PRIMARY KEY (feature, kind, rank))
        kind 'top': the top-k contexts by max activation (rank 0 = highest);
        kind 'quantile': a uniform sample of firing contexts, grouped in `quantile` 0..n_quantiles-1 by activation
        (0 = lowest); kind 'zero': contexts where the feature never fires (acts = '[]').
        pos: position of the max in the context; acts: JSON [[pos, value], ...] of every firing token of the context.
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
CREATE TABLE examples(feature INTEGER, kind TEXT, rank INTEGER, ctx INTEGER, pos INTEGER, act REAL, acts TEXT,
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
