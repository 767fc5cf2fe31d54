"""The main job, as a new user runs it: `glasswork demo --quick --no-serve` end to end on the default model (the real
CLI in a subprocess), its outputs load, and a second run reuses every stage."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import glasswork as gw

pytestmark = [pytest.mark.model, pytest.mark.slow]


def run_demo(out, timeout=1500):
    env = {**os.environ, "GLASSWORK_PROGRESS": "0"}
    t0 = time.time()
    cli = str(Path(sys.executable).parent / "glasswork")  # the installed command, as a user runs it
    r = subprocess.run([cli, "demo", "--quick", "--no-serve", "--json", "--out", str(out)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), time.time() - t0, r.stderr


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, default_model):
    out = tmp_path_factory.mktemp("demo")
    return out, *run_demo(out)


def test_quick_demo_outputs_load(demo_run, default_model):
    out, summary, _, log = demo_run
    stages = summary["stages"]
    assert list(stages) == ["corpus", "harvest", "sae", "transcoders", "features", "graphs", "steering"]
    assert "url" not in summary  # --no-serve

    store = gw.ActivationStore(out / "store", model=default_model)
    assert store.info()["tokens"] >= 24_000
    sae = gw.load_dictionary(out / "sae-l15")
    assert sae.cfg.hook_in == "blocks.15.hook_resid_post" and sae.cfg.model == default_model.name
    # the SAE learned something: far better than the mean, and splicing it keeps most of the model's loss
    assert stages["sae"]["metrics"]["fvu"] < 0.6 and stages["sae"]["metrics"]["ce_loss_score"] > 0.5
    tcs = gw.load_transcoders(out / "transcoders")
    assert sorted(tcs) == list(range(30))
    assert all(t.W_skip is not None for t in tcs.values())  # skip transcoders, the skip fitted before training

    ix = gw.FeatureIndex(out / "sae-l15" / "features.sqlite")
    assert ix.d_sae == sae.d_sae and len(ix.live_features()) == stages["features"]["live"] > 0
    assert len(ix.labels("builtin")) == stages["features"]["labelled"] > 0
    # every transcoder layer has its own index, from one pass
    paths = [gw.features.layer_index_path(out / "transcoders", layer) for layer in range(30)]
    assert all(p.exists() for p in paths) and stages["features"]["transcoders"]["indexes"] == 30
    assert sum(len(gw.FeatureIndex(p).live_features()) for p in paths) == stages["features"]["transcoders"]["live"]

    for name, prompt in (("france", "The capital of France is"),
                         ("mary-john", "When Mary and John went to the store, John gave a drink to")):
        g = gw.load_graph(out / "graphs" / f"{name}.safetensors")
        assert g.meta["prompt"] == prompt and g.n_features > 0
        view = g.view(0.8, 0.98)
        rec = stages["graphs"]["graphs"][name]
        assert (len(view["nodes"]), len(view["links"])) == (rec["nodes"], rec["edges"])
        first = g.view(0.8, 0.98, max_nodes=100)  # the viewer's first view: at most 100 features and errors
        assert len(first["nodes"]) == rec["view_nodes"] and sum(
            n["feature_type"] not in ("embedding", "logit") for n in first["nodes"]) <= 100
    # the graph's top target is the model's own top next token
    france = gw.load_graph(out / "graphs" / "france.safetensors")
    top = default_model.logits(default_model.tokenize("The capital of France is"))[0, -1].argmax().item()
    assert default_model.tokenizer.decode([top]) in stages["graphs"]["graphs"]["france"]["targets"][0]

    st = stages["steering"]
    assert len(st["steered"]) == len(st["baseline"]) == 4 and st["steered"] != st["baseline"]
    layer, index = map(int, st["feature"].split("/"))
    assert layer == 15 and 0 <= index < sae.d_sae and ix.labels("builtin").get(index) == st["label"]


def test_second_run_reuses_the_cache(demo_run):
    out, first, _, _ = demo_run
    second, seconds, log = run_demo(out, timeout=120)
    assert seconds < 60, f"second run took {seconds:.0f} s"
    assert log.count("skipped") == len(first["stages"])
    # the same results, read back from the stage records
    assert second["stages"] == first["stages"]


def test_demo_opens_in_the_browser(demo_run):
    """The demo's folder in the real web app and headless Chromium: the France graph (click the most influential
    feature at the last token) and the page of the feature the steering stage clamped. GLASSWORK_README_IMAGES=docs/img also writes the README's
    first-screen images from here."""
    import shutil
    import socket
    import threading

    from test_browser import ARGS, CHROMIUM, shot
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt install chromium)")
    import uvicorn
    from playwright.sync_api import sync_playwright

    from glasswork.server import create_app
    out, summary, _, _ = demo_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(out), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    shots = gw.home() / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    ix = gw.FeatureIndex(out / "sae-l15" / "features.sqlite")
    feature = int(summary["stages"]["steering"]["feature"].split("/")[1])  # labelled, fires on content words
    view = gw.load_graph(out / "graphs" / "france.safetensors").view(0.8, 0.98)
    last = len(view["metadata"]["prompt_tokens"]) - 1
    feats = [n for n in view["nodes"] if n["feature_type"] == "transcoder" and n["ctx_idx"] == last]
    node = min(feats, key=lambda n: n["influence"])["node_id"]  # at " is"; cumulative influence: smallest = most
    from fastapi.testclient import TestClient
    api = TestClient(create_app(out))
    for name in ("france", "mary-john"):  # every feature node of the first views: a label and a top context
        v = api.get(f"/api/graphs/{name}/view").json()
        for n in v["nodes"]:
            if n["feature_type"] in ("embedding", "logit", "mlp reconstruction error"):
                continue
            d = api.get(f"/api/graphs/{name}/node/{n['node_id']}").json()
            assert d["node"]["clerp"] and not d["node"]["clerp"].startswith(f"L{n['layer']} #"), d["node"]
            assert d["feature"] is not None and d["feature"]["top"], n["node_id"]
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pg = b.new_page(viewport={"width": 1500, "height": 900})
            errors = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(f"http://127.0.0.1:{port}/graph?name=france")
            pg.wait_for_selector("svg#nodes circle.node")
            pg.wait_for_function("document.getElementById('counts').textContent.includes('influence')")
            time.sleep(0.3)
            first_png = shot(pg, shots, "demo-graph-default")
            drawn = pg.eval_on_selector_all("svg#nodes .node", "els => els.map(e => e.dataset.id)")
            assert sum(not (i.startswith("E_") or i.startswith("30_")) for i in drawn) <= 100
            labels = pg.eval_on_selector_all("text.logit-label", "els => els.map(e => { const r = "
                                             "e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })")
            from test_browser import boxes_intersect
            assert labels and not boxes_intersect(labels)
            pg.locator(f'svg#nodes [data-id="{node}"]').click()
            pg.wait_for_selector("#node-feature .ctx")
            assert not pg.inner_text("#side h2").startswith("L")
            time.sleep(0.3)
            graph_png = shot(pg, shots, "demo-graph-viewer")
            # the inline ablation shows what `glasswork intervene` prints for the same node
            pg.click("#ablate-btn")
            pg.select_option("#iv-mode", "frozen")
            pg.fill("#iv-generate", "0")
            pg.click("#iv-run")
            pg.wait_for_selector("#iv-table", timeout=120_000)
            shown = pg.eval_on_selector_all("#iv-table td[data-change]", "els => els.map(e => Number(e.dataset.change))")
            shot(pg, shots, "demo-graph-intervention")
            pg.goto(f"http://127.0.0.1:{port}/features?index=sae-l15&feature={feature}")
            pg.wait_for_selector("#page .ctx span.t")
            assert ix.labels("builtin")[feature] in pg.inner_text("#page")
            feature_png = shot(pg, shots, "demo-feature-page")
            b.close()
            assert not errors, errors
    finally:
        srv.should_exit = True
        thread.join(5)
    layer, f, pos = node.split("_")
    cli = str(Path(sys.executable).parent / "glasswork")
    r = subprocess.run([cli, "intervene", "--prompt", "The capital of France is", "--dictionary",
                        str(out / "transcoders"), "--feature", f"{layer}:{f}:{pos}", "--value", "0", "--mode", "frozen",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert shown == pytest.approx(json.loads(r.stdout.strip().splitlines()[-1])["change"], abs=1e-4)
    # the attention (QK) split from the CLI, kept in the graph file
    qk_graph = out / "graphs" / "qk.safetensors"
    r = subprocess.run([cli, "attribute", "--prompt", "The capital of France is", "--dictionary", str(out / "transcoders"),
                        "--qk", "2", "--out", str(qk_graph), "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    heads = summary["qk"]
    assert summary["faithfulness"]["n_features"] == 20 and -1 <= summary["faithfulness"]["spearman"] <= 1
    saved = gw.load_graph(qk_graph).meta["qk"]
    assert len(heads) == len(saved["heads"]) == 2
    assert [(h["layer"], h["head"]) for h in heads] == [(h["layer"], h["head"]) for h in saved["heads"]]
    assert all(k["pairs"] for h in saved["heads"] for k in h["keys"])
    qk_graph.unlink()
    target = os.environ.get("GLASSWORK_README_IMAGES")
    if target:
        shutil.copy(first_png, Path(target) / "graph-default.png")
        shutil.copy(graph_png, Path(target) / "graph-viewer.png")
        shutil.copy(feature_png, Path(target) / "feature-page.png")
