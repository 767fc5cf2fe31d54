"""Feature index: statistics equal a brute-force computation, bad input gets clear errors, a killed build never
leaves a half-written index."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import glasswork as gw
from glasswork.features.index import FeatureIndex, build_index
from glasswork.features.stats import StatsConfig

from conftest import make_tiny

HOOK = "blocks.1.hook_resid_post"


def tiny_sae(model, d_sae=48, activation="relu", seed=0, **kw):
    cfg = gw.DictionaryConfig(kind="sae", d_in=model.d_model, d_sae=d_sae, activation=activation, model=model.name,
                              hook_in=HOOK, **kw)
    sae = gw.SparseCoder(cfg)
    sae.reset_parameters(seed=seed)
    return sae


def tiny_contexts(model, n=40, S=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randint(1, model.vocab_size, (n, S), generator=g)
    ctx[:, 0] = model.bos_token_id
    return ctx


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    model = make_tiny("llama")
    sae = tiny_sae(model)
    ctx = tiny_contexts(model)
    with torch.no_grad():  # sparse like a trained SAE: each feature fires on about 10% of tokens
        _, cache = gw.capture(model, ctx, [HOOK])
        sae.b_enc -= sae.pre_acts(cache[HOOK]).flatten(0, 1).quantile(0.9, dim=0)
    path = build_index(model, sae, ctx, path=tmp_path_factory.mktemp("fi") / "features.sqlite", batch_size=7,
                       cfg=StatsConfig(top_k=5, n_quantiles=3, per_quantile=2, n_zero=3))
    with torch.no_grad():
        _, cache = gw.capture(model, ctx, [HOOK])
        acts = sae.encode(cache[HOOK]).double()  # [n, S, F] brute force, float64
    acts[ctx == model.bos_token_id] = 0
    return model, sae, ctx, acts, FeatureIndex(path)


def live(acts, n=6):
    fired = (acts > 0).flatten(0, 1).sum(0)
    return [int(f) for f in torch.nonzero(fired).flatten()[:n]]


def test_counts_and_histogram_match_brute_force(built):
    model, sae, ctx, acts, ix = built
    edges = np.array(ix.meta["hist_edges"])
    assert ix.meta["n_tokens"] == ctx.numel()
    for f in live(acts) + [int((acts > 0).flatten(0, 1).sum(0).argmin())]:
        rec = ix.feature(f, with_examples=False)
        a = acts[..., f].flatten().numpy()
        v = a[a > 0]
        assert rec["n_fired"] == len(v)
        assert rec["freq"] == pytest.approx(len(v) / a.size)
        assert rec["max_act"] == pytest.approx(a.max(), rel=1e-5)
        if len(v):
            assert rec["mean_act"] == pytest.approx(v.mean(), rel=1e-5)
        expect = [int(((v > edges[b]) | (b == 0)).__and__((v <= edges[b + 1]) | (b == len(edges) - 2)).sum())
                  for b in range(len(edges) - 1)]
        assert rec["hist"] == expect


def test_top_contexts_match_brute_force(built):
    model, sae, ctx, acts, ix = built
    for f in live(acts):
        per_ctx = acts[..., f].amax(1)  # [n]
        order = per_ctx.argsort(descending=True)
        expect = [int(c) for c in order[:5] if per_ctx[c] > 0]
        top = ix.examples(f, "top")
        assert [e["ctx"] for e in top] == expect
        for e in top:
            row = acts[e["ctx"], :, f]
            assert e["act"] == pytest.approx(float(row.max()), rel=1e-4)
            assert e["pos"] == int(row.argmax())
            np.testing.assert_allclose(e["acts"], row.numpy(), rtol=2e-3, atol=1e-3)  # stored in float16
            assert e["token_ids"] == ctx[e["ctx"]].tolist()


def test_quantile_and_zero_samples_are_what_they_claim(built):
    model, sae, ctx, acts, ix = built
    for f in live(acts):
        q = ix.examples(f, "quantile")
        n_firing = int((acts[..., f].amax(1) > 0).sum())
        assert len(q) == min(6, n_firing)
        for e in q:
            assert float(acts[e["ctx"], :, f].max()) == pytest.approx(e["act"], rel=1e-4) and e["act"] > 0
        qs = sorted((e["quantile"], e["act"]) for e in q)
        assert [a for _, a in qs] == sorted(a for _, a in qs)  # higher quantile, higher activation
        for e in ix.examples(f, "zero"):
            assert float(acts[e["ctx"], :, f].max()) == 0.0


def test_tokens_cofiring_logits_neighbors_match_brute_force(built):
    model, sae, ctx, acts, ix = built
    fire = (acts > 0).flatten(0, 1).double()  # [N, F]
    joint = fire.T @ fire
    W = sae.W_dec.detach().double()
    logits = W @ model.W_U.detach().double()
    unit = W / W.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    cos.fill_diagonal_(-math.inf)
    toks = ctx.flatten()
    for f in live(acts):
        rec = ix.feature(f, with_examples=False)
        counts = torch.bincount(toks[fire[:, f] > 0], minlength=model.vocab_size)
        for t, _, c, _ in rec["top_tokens"]:
            assert c == counts[t]
        assert rec["top_tokens"][0][2] == counts.max()
        j = joint[f].clone()
        j[f] = 0
        for g, n_both, _ in rec["cofiring"]:
            assert n_both == j[g]
        assert rec["cofiring"][0][1] == j.max()
        assert [t for t, _, _ in rec["top_logits"]] == logits[f].topk(10).indices.tolist()
        assert [t for t, _, _ in rec["bottom_logits"]] == (-logits[f]).topk(10).indices.tolist()
        assert [g for g, _ in rec["neighbors"]] == cos[f].topk(10).indices.tolist()


def test_topk_sae_and_dense_vs_sparse_cofiring_agree(tmp_path):
    model = make_tiny("llama")
    sae = tiny_sae(model, activation="topk", k=4)
    ctx = tiny_contexts(model, n=12)
    a = FeatureIndex(build_index(model, sae, ctx, path=tmp_path / "a.sqlite"))
    b = FeatureIndex(build_index(model, sae, ctx, path=tmp_path / "b.sqlite", cfg=StatsConfig(dense_cofiring_max_f=1)))
    for f in a.live_features()[:8]:
        ra, rb = a.feature(f, False), b.feature(f, False)
        assert [c for _, c, _ in ra["cofiring"]] == [c for _, c, _ in rb["cofiring"]]  # same counts (ties may swap)
        assert {g: c for g, c, _ in ra["cofiring"]}.items() >= {g: c for g, c, _ in rb["cofiring"]
                                                                if c > ra["cofiring"][-1][1]}.items()
        assert ra["top_tokens"] == rb["top_tokens"]


def test_queries_by_token_and_text(built):
    model, sae, ctx, acts, ix = built
    f = live(acts)[0]
    tok = ix.feature(f, False)["top_tokens"][0][0]
    assert f in [h["feature"] for h in ix.by_token(tok, limit=1000)]
    assert f in [h["feature"] for h in ix.by_token(f"<{tok}>", limit=1000)]
    ix.set_label(f, "test", "fires on zebra crossings")
    assert ix.search("zebra")[0]["feature"] == f
    top_ctx = ix.examples(f)[0]["ctx"]
    word = ix.examples(f)[0]["tokens"][5]
    assert any(h["where"].startswith("context") for h in ix.search(word.strip("<>")))
    assert top_ctx >= 0


def test_bad_input_mismatch_and_out_of_range(built, tmp_path):
    model, sae, ctx, acts, ix = built
    other = make_tiny("gpt2")  # d_model 32 too, but another model name
    with pytest.raises(gw.GlassworkError, match="model"):
        build_index(other, sae, ctx, path=tmp_path / "x.sqlite")
    wide = gw.SparseCoder(gw.DictionaryConfig(kind="sae", d_in=48, d_sae=8, model=model.name, hook_in=HOOK, k=4))
    with pytest.raises(gw.GlassworkError, match="d_in = 48"):
        build_index(model, wide, ctx, path=tmp_path / "x.sqlite")
    bad_hook = tiny_sae(model)
    bad_hook.cfg.hook_in = "blocks.9.hook_resid_post"
    with pytest.raises(gw.GlassworkError, match="unknown hook point"):
        build_index(model, bad_hook, ctx, path=tmp_path / "x.sqlite")
    assert not (tmp_path / "x.sqlite").exists()
    for bad in (-1, 48, 10**9):
        with pytest.raises(gw.GlassworkError, match="out of range"):
            ix.feature(bad)
    with pytest.raises(gw.GlassworkError, match="no feature index"):
        FeatureIndex(tmp_path / "nothing")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(gw.GlassworkError, match="not a glasswork feature index"):
        FeatureIndex(tmp_path / "junk.sqlite")


KILL_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import make_tiny
import glasswork as gw
from glasswork.features.index import build_index
m = make_tiny("llama")
sae = gw.SparseCoder(gw.DictionaryConfig(kind="sae", d_in=32, d_sae=1024, activation="relu", model=m.name,
                                         hook_in="blocks.1.hook_resid_post"))
ctx = torch.randint(1, 97, ({n}, 64)); ctx[:, 0] = m.bos_token_id
print("start", flush=True)
build_index(m, sae, ctx, path={path!r}, batch_size=4)
print("done", flush=True)
"""


def test_killed_build_never_leaves_a_half_written_index(tmp_path):
    path = tmp_path / "features.sqlite"
    tests = str(Path(__file__).parent)
    env = {**os.environ, "GLASSWORK_PROGRESS": "0"}
    for delay in (1.0, 2.5):  # once while computing, once (likely) while writing
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(tests=tests, n=120, path=str(path))],
                                stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"start"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if path.exists():  # the build finished before the kill: then it must be complete
            assert FeatureIndex(path).meta["complete"] is True
            path.unlink()
        else:
            with pytest.raises(gw.GlassworkError):
                FeatureIndex(path)
    leftovers = list(tmp_path.glob(".features.sqlite.*"))
    out = subprocess.run([sys.executable, "-c", KILL_SCRIPT.format(tests=tests, n=8, path=str(path))],
                         capture_output=True, env=env)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    ix = FeatureIndex(path)
    assert ix.meta["complete"] is True and ix.meta["n_contexts"] == 8
    assert not list(tmp_path.glob(".features.sqlite.*")), f"stale temp files kept: {leftovers}"


# ---------------------------------------------------------------------------------------------------- labels

import http.server  # noqa: E402
import threading  # noqa: E402

from glasswork.features import explain, scoring  # noqa: E402


class _Handler(http.server.BaseHTTPRequestHandler):
    calls = {"n": 0}

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["model"] == "tiny-chat" and body["messages"][-1]["role"] == "user"
        _Handler.calls["n"] += 1
        mode = self.path.split("/")[1]
        if mode == "slow":
            time.sleep(1.5)
            self.close_connection = True
            return  # the client has given up by now
        elif mode == "html":
            raw = b"<html>502 Bad Gateway</html>"
            self.send_response(200), self.send_header("Content-Length", str(len(raw))), self.end_headers()
            self.wfile.write(raw)
            return
        elif mode == "alternate":  # every other answer is garbage
            content = "Label: numbers in lists" if _Handler.calls["n"] % 2 else "#### 1234 ????"
        else:
            content = "Label: \"numbers in lists\"\nextra line"
        raw = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200), self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw))), self.end_headers()
        self.wfile.write(raw)


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_openai_client_good_timeout_and_garbage(built, server):
    model, sae, ctx, acts, ix = built
    rec = ix.feature(live(acts)[0])
    good = explain.make_explainer("openai", f"{server}/good/v1", "tiny-chat")
    assert good.explain(rec) == "numbers in lists"
    slow = explain.LMExplainer(explain.OpenAIChat(f"{server}/slow/v1", "tiny-chat", timeout=0.3, retries=1,
                                                  backoff=0.01))
    t0 = time.time()
    with pytest.raises(gw.GlassworkError, match="no answer after 2 tries"):
        slow.explain(rec)
    assert time.time() - t0 < 3
    with pytest.raises(gw.GlassworkError, match="not an OpenAI chat completion"):
        explain.make_explainer("openai", f"{server}/html/v1", "tiny-chat").explain(rec)
    with pytest.raises(gw.GlassworkError, match="no answer"):  # nothing listens there
        explain.LMExplainer(explain.OpenAIChat("http://127.0.0.1:9/v1", "tiny-chat", timeout=0.3, retries=0)).explain(rec)
    with pytest.raises(gw.GlassworkError, match="base-url"):
        explain.make_explainer("openai")


def test_failed_labels_are_recorded_and_the_rest_kept(built, server, tmp_path):
    model, sae, ctx, acts, _ = built
    import shutil
    path = tmp_path / "f.sqlite"
    shutil.copy(built[4].path, path)
    ix = FeatureIndex(path)
    feats = live(acts, 6)
    _Handler.calls["n"] = 0
    ex = explain.make_explainer("openai", f"{server}/alternate/v1", "tiny-chat")
    res = scoring.label_features(ix, ex, features=feats)
    assert res["n_labeled"] == 3 and res["n_errors"] == 3
    rows = {lab["feature"]: lab for f in feats for lab in ix.labels_of(f)}
    assert sorted(rows) == sorted(feats)
    assert sum(r["label"] == "numbers in lists" for r in rows.values()) == 3
    assert all("garbage answer" in r["error"] for r in rows.values() if r["label"] is None)
    assert ix.search("lists")[0]["feature"] in feats


def test_builtin_labels_beat_random_labels_on_distinct_features(built):
    model, sae, ctx, acts, ix = built
    feats = live(acts, 12)
    res = scoring.label_features(ix, explain.BuiltinExplainer(), scoring.KeywordScorer(), features=feats)
    assert res["n_errors"] == 0
    for f in feats:
        rec = ix.feature(f)
        lab = ix.labels_of(f)[0]
        top_tok = explain.firing_tokens(rec).most_common(1)[0][0]
        assert json.dumps(top_tok) in lab["label"]
        assert 0 <= lab["detection"] <= 1 and 0 <= lab["fuzzing"] <= 1
    # the keyword scorer is a real test: a label naming tokens absent from the contexts scores at chance
    rec = ix.feature(next(f for f in feats if ix.examples(f, "zero")))
    nothing = scoring.score_label(scoring.KeywordScorer(), 'fires on "zzzqqq"', rec, [])
    assert nothing["detection"] == 0.5 and nothing["fuzzing"] <= 0.5  # fuzzing: only one class when all tokens fire


class _Client:
    """A chat client that answers from a fixed rule, to check that LMScorer parses answers and keeps their order."""
    name = "rule"

    def chat(self, messages, max_tokens=64):
        n = messages[-1]["content"].count("\n") - 1
        return "\n".join(f"{i + 1}: {i % 2}" for i in range(n))


def test_lm_scorer_parses_answers_and_rejects_garbage(built):
    preds = scoring.LMScorer(_Client()).detect("x", [{"tokens": ["a"]}, {"tokens": ["b"]}, {"tokens": ["c"]}])
    assert preds == [False, True, False]
    bad = type("Bad", (), {"name": "bad", "chat": lambda self, m, max_tokens=0: "I think so"})()
    with pytest.raises(gw.GlassworkError, match="garbage answer"):
        scoring.LMScorer(bad).detect("x", [{"tokens": ["a"]}])


def test_fires_render_export_and_cli(built, tmp_path):
    model, sae, ctx, acts, ix = built
    from rich.console import Console

    from glasswork.features import neuronpedia, render
    f = live(acts)[0]
    con = Console(record=True, width=120)
    render.show(ix.feature(f), ix.meta, con)
    page = con.export_text()
    assert f"feature {f}" in page and "top contexts" in page
    res = neuronpedia.export(ix, tmp_path / "np", features=[f, live(acts)[1]])
    batch = json.loads(Path(res["files"][0]).read_text())
    feat = batch["features"][0]
    assert feat["feature_index"] == f and len(feat["pos_str"]) == 10
    assert feat["frac_nonzero"] == pytest.approx(ix.feature(f, False)["freq"])
    top = feat["activations"][0]
    assert len(top["tokens"]) == len(top["values"]) and max(top["values"]) == pytest.approx(
        ix.examples(f)[0]["act"], rel=2e-3)
    with pytest.raises(gw.GlassworkError, match="out of range"):
        neuronpedia.export(ix, tmp_path / "np2", features=[10**6])


# What Neuronpedia's importer reads, transcribed from its source (github.com/hijohnnylin/neuronpedia, utils/neuronpedia-
# utils/neuronpedia_utils/convert-saedashboard-to-neuronpedia-export.py: the keys it indexes; db_models/feature.py,
# activation.py, explanation.py: the types of the records they fill). [T] is a list of T; float takes an int too.
NP_BATCH = {"model_id": str, "layer": (int, str), "sae_id_suffix": (str, type(None)), "features": list}
NP_FEATURE = {"feature_index": int, "pos_str": [str], "pos_values": [float], "neg_str": [str], "neg_values": [float],
              "frac_nonzero": float, "activations": list,
              **{k: [float] for k in ("freq_hist_data_bar_heights", "freq_hist_data_bar_values",
                                      "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
                                      "decoder_weights_dist", "neuron_alignment_values", "neuron_alignment_l1",
                                      "correlated_neurons_pearson", "correlated_neurons_l1",
                                      "correlated_features_pearson", "correlated_features_l1", "topkCosSimValues")},
              **{k: [int] for k in ("neuron_alignment_indices", "correlated_neurons_indices",
                                    "correlated_features_indices", "topkCosSimIndices")}}
NP_ACTIVATION = {"tokens": [str], "values": [float], "bin_min": float, "bin_max": float, "bin_contains": float,
                 "qualifying_token_index": int}
NP_EXPLANATION = {"id": str, "modelId": str, "layer": str, "index": str, "description": str, "authorId": str}
NP_EXPLANATION_OPTIONAL = {"embedding", "triggeredById", "typeName", "explanationModelName", "notes", "createdAt"}


def _np_conforms(obj: dict, schema: dict, where: str) -> None:
    for key, kind in schema.items():
        assert key in obj, f"{where}: Neuronpedia's importer reads '{key}'"
        value = obj[key]
        if isinstance(kind, list):
            assert isinstance(value, list), f"{where}.{key}: a list"
            want = (int, float) if kind[0] is float else kind[0]
            bad = [v for v in value if not isinstance(v, want) or isinstance(v, bool)]
            assert not bad, f"{where}.{key}: items must be {kind[0].__name__} (got {bad[:3]})"
        else:
            want = (int, float) if kind is float else kind
            assert isinstance(value, want) and not isinstance(value, bool), f"{where}.{key}: {kind} (got {value!r})"


def test_neuronpedia_export_is_what_its_importer_reads(built, tmp_path):
    model, sae, ctx, acts, ix = built
    from glasswork.features import neuronpedia
    feats = live(acts)[:3]
    ix.set_label(feats[0], "np-test", "the word ' the'", scores={"detection": 0.8125})
    ix.set_label(feats[1], "np-test", "commas", scores={})
    res = neuronpedia.export(ix, tmp_path / "np", features=feats, batch_size=2, author_id="user-1")
    assert len(res["files"]) == 2

    def strict(text):  # NaN / Infinity are not JSON, and its importer would store them as text
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON number {c}"))
    seen = []
    for path in res["files"]:
        batch = strict(Path(path).read_text())
        _np_conforms(batch, NP_BATCH, Path(path).name)
        for feat in batch["features"]:
            where = f"{Path(path).name}:feature {feat.get('feature_index')}"
            _np_conforms(feat, NP_FEATURE, where)
            assert feat["activations"], where
            for i, act in enumerate(feat["activations"]):
                _np_conforms(act, NP_ACTIVATION, f"{where}.activations[{i}]")
                assert act["values"] and len(act["values"]) == len(act["tokens"])  # it takes max(values)
                assert 0 <= act["qualifying_token_index"] < len(act["tokens"])
            seen.append(feat["feature_index"])
    assert seen == feats
    lines = (tmp_path / "np" / "explanations.jsonl").read_text().splitlines()
    records = [strict(line) for line in lines]
    for rec in records:
        _np_conforms(rec, NP_EXPLANATION, "explanations.jsonl")
        assert set(rec) <= set(NP_EXPLANATION) | NP_EXPLANATION_OPTIONAL, set(rec) - set(NP_EXPLANATION)
    assert res["n_explanations"] == len(records) and len({r["id"] for r in records}) == len(records)
    ours = [r for r in records if r["explanationModelName"] == "np-test"]  # other tests label the same index
    assert [r["index"] for r in ours] == [str(feats[0]), str(feats[1])]
    assert ours[0]["authorId"] == "user-1" and ours[0]["notes"] == "glasswork detection score 0.812"
    assert ours[0]["layer"] == f"{batch['layer']}-glasswork" and ours[1]["notes"] is None
    # fires: per token, the top features, matching a brute-force encode
    text_ids = ctx[0]
    sae_acts = acts[0]
    out = fires_ids(model, sae, text_ids)
    assert [x["feature"] for x in out[3]["features"]] == [int(i) for i in sae_acts[4].topk(3).indices
                                                          if sae_acts[4, i] > 0]


def fires_ids(model, sae, ids):
    """gw.fires on token ids (tiny models have no tokenizer): patch tokenize for this model."""
    model.tokenize = lambda text, bos=True: ids[None]
    model.to_str_tokens = lambda t: [f"<{i}>" for i in t.flatten().tolist()]
    return gw.fires(model, sae, "ignored", top=3)


@pytest.mark.model
def test_cli_build_show_label_fires_on_the_default_model(small_sae, tmp_path):
    import shutil
    d = tmp_path / "sae"
    shutil.copytree(small_sae, d)
    run = lambda *a: subprocess.run([str(Path(sys.executable).parent / "glasswork"), *a], capture_output=True, text=True,  # noqa
                                    env={**os.environ, "GLASSWORK_PROGRESS": "0"})
    out = run("features", "build", str(d), "--contexts", "24", "--ctx-len", "32", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["d_sae"] == 2304 and summary["n_tokens"] == 24 * 32
    ix = FeatureIndex(d)
    f = ix.live_features()[0]
    out = run("features", "label", str(d), "--features", str(f), "--json")
    assert json.loads(out.stdout)["n_labeled"] == 1, out.stderr
    out = run("features", "show", str(d), str(f))
    assert out.returncode == 0 and f"feature {f}" in out.stdout
    out = run("features", "show", str(d), "99999")
    assert out.returncode == 2 and "out of range" in out.stderr
    out = run("fires", str(d), "--text", "The capital of France is Paris", "--json")
    rows = json.loads(out.stdout)["tokens"]
    assert [r["token"] for r in rows][-1] == " Paris" and len(rows[0]["features"]) == 5


def test_set_and_clt_indexes_in_one_pass_equal_brute_force(tmp_path):
    """A transcoder set and a CLT: one pass writes one index per layer; each layer's counts, maxima and top contexts
    equal the brute-force activations of that layer's encoder (a set member indexed alone gives the same file)."""
    model = make_tiny("llama")
    ctx = tiny_contexts(model, n=24)
    stats = StatsConfig(top_k=4, n_quantiles=2, per_quantile=2, n_zero=2)
    hooks = [f"blocks.{layer}.ln2.hook_normalized" for layer in range(model.n_layers)]
    tcs = {}
    for layer, hook in enumerate(hooks):
        cfg = gw.DictionaryConfig(kind="transcoder", d_in=model.d_model, d_sae=20, d_out=model.d_model,
                                  activation="relu", layer=layer, model=model.name, hook_in=hook,
                                  hook_out=f"blocks.{layer}.hook_mlp_out")
        tcs[layer] = gw.SparseCoder(cfg)
        tcs[layer].reset_parameters(seed=layer)
    gw.save_set({f"layer_{layer:02d}": d for layer, d in tcs.items()}, tmp_path / "set")
    paths = gw.features.build_set_index(model, tmp_path / "set", ctx, cfg=stats, batch_size=5)
    assert paths == [tmp_path / "set" / f"layer_{layer:02d}" / "features.sqlite" for layer in tcs]
    clt_cfg = gw.DictionaryConfig(kind="clt", d_in=model.d_model, d_sae=16, d_out=model.d_model, activation="relu",
                                  n_layers=model.n_layers, model=model.name, hook_in=hooks,
                                  hook_out=[f"blocks.{layer}.hook_mlp_out" for layer in tcs])
    clt = gw.CrossLayerTranscoder(clt_cfg)
    clt.reset_parameters(seed=5)
    gw.save_dictionary(clt, tmp_path / "clt")
    clt_paths = gw.features.build_set_index(model, tmp_path / "clt", ctx, cfg=stats, batch_size=5)
    assert clt_paths == [gw.features.layer_index_path(tmp_path / "clt", layer) for layer in tcs]
    with torch.no_grad():
        _, cache = gw.capture(model, ctx, hooks)
        x = torch.stack([cache[h] for h in hooks], dim=2)  # [n, S, L, d]
        clt_acts = clt.encode(x).double()  # [n, S, L, F]
        for layer in tcs:
            for acts, path in ((tcs[layer].encode(cache[hooks[layer]]).double(), paths[layer]),
                               (clt_acts[:, :, layer], clt_paths[layer])):
                acts[ctx == model.bos_token_id] = 0
                ix = FeatureIndex(path)
                assert ix.meta["layer"] == layer and ix.meta["indexed_together"] == len(tcs)
                rows = {f: (n, m) for f, n, m in ix.db.execute("SELECT feature, n_fired, max_act FROM features")}
                fired = (acts > 0).flatten(0, 1).sum(0)
                peak = acts.flatten(0, 1).max(0).values
                for f in range(acts.shape[-1]):
                    assert rows[f][0] == int(fired[f])
                    assert rows[f][1] == pytest.approx(float(peak[f]), rel=1e-5, abs=1e-6)
                f = int(fired.argmax())
                best = acts[..., f].max(1).values.argsort(descending=True)[:4].tolist()
                assert sorted(e["ctx"] for e in ix.examples(f, "top")) == sorted(best)
    alone = build_index(model, tcs[1], ctx, path=tmp_path / "alone.sqlite", cfg=stats, batch_size=5)
    a, b = FeatureIndex(alone), FeatureIndex(paths[1])
    assert a.db.execute("SELECT * FROM features").fetchall() == b.db.execute("SELECT * FROM features").fetchall()
    with pytest.raises(gw.GlassworkError, match="build_set_index"):
        build_index(model, tmp_path / "set", ctx)
    with pytest.raises(gw.GlassworkError, match="transcoders"):
        gw.features.build_set_index(model, tmp_path / "set" / "layer_00", ctx)
