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

    for name, prompt in (("france", "The capital of France is"),
                         ("mary-john", "When Mary and John went to the store, John gave a drink to")):
        g = gw.load_graph(out / "graphs" / f"{name}.safetensors")
        assert g.meta["prompt"] == prompt and g.n_features > 0
        view = g.view(0.8, 0.98)
        rec = stages["graphs"]["graphs"][name]
        assert (len(view["nodes"]), len(view["links"])) == (rec["nodes"], rec["edges"])
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
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pg = b.new_page(viewport={"width": 1500, "height": 900})
            errors = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(f"http://127.0.0.1:{port}/graph?name=france")
            pg.wait_for_selector("svg#nodes circle.node")
            pg.locator(f'svg#nodes [data-id="{node}"]').click()
            pg.wait_for_selector("#side h3:has-text('Strongest inputs')")
            time.sleep(0.3)
            graph_png = shot(pg, shots, "demo-graph-viewer")
            pg.goto(f"http://127.0.0.1:{port}/features?index=sae-l15&feature={feature}")
            pg.wait_for_selector("#page .ctx span.t")
            assert ix.labels("builtin")[feature] in pg.inner_text("#page")
            feature_png = shot(pg, shots, "demo-feature-page")
            b.close()
            assert not errors, errors
    finally:
        srv.should_exit = True
        thread.join(5)
    target = os.environ.get("GLASSWORK_README_IMAGES")
    if target:
        shutil.copy(graph_png, Path(target) / "graph-viewer.png")
        shutil.copy(feature_png, Path(target) / "feature-page.png")
