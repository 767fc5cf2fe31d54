"""The pages in headless Chromium (Debian's, driven by Playwright): load each page, click a node, pin it, make a
supernode, search a feature, run a steer. Screenshots go to $GLASSWORK_HOME/screenshots and are checked non-blank."""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt install chromium)")]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server():
    import uvicorn

    from glasswork.io import home
    from glasswork.server import create_app
    from server_fixtures import shared_workdir
    root, parts = shared_workdir()
    for p in (root / "graphs").glob("france.state.json"):
        p.unlink()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(root, model=parts["model"], hosts={"127.0.0.1", "localhost"})
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    shots = home() / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    yield f"http://127.0.0.1:{port}", root, parts, shots
    srv.should_exit = True
    thread.join(5)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 860})
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    pg.close()
    assert not errors, errors


def shot(pg, shots: Path, name: str) -> Path:
    """Screenshot, checked to be more than a blank page (pixel variance)."""
    import numpy as np
    from PIL import Image
    path = shots / f"{name}.png"
    pg.screenshot(path=str(path))
    px = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert px.std() > 10, f"{path} looks blank (pixel std {px.std():.1f})"
    assert (px < 128).mean() > 0.01, f"{path} has almost no dark pixels"
    return path


def test_graph_viewer_click_pin_supernode(server, page):
    url, root, parts, shots = server
    page.goto(f"{url}/graph?name=france")
    page.wait_for_selector("svg#nodes circle.node")
    n_nodes = page.locator("svg#nodes .node").count()
    view = json.loads(page.evaluate("fetch('/api/graphs/france/view').then(r => r.text())"))
    assert n_nodes == len({n["node_id"] for n in view["nodes"]})  # ids are unique per drawn node
    # the strongest feature node (smallest cumulative influence) is clicked, pinned and named
    feats = sorted((n for n in view["nodes"] if n["feature_type"] not in ("embedding", "logit",
                                                                           "mlp reconstruction error")),
                   key=lambda n: n["influence"])
    first = next(n for n in feats if n["layer"] == "1")["node_id"]
    page.locator(f'svg#nodes [data-id="{first}"]').click()
    page.wait_for_selector("#pin-btn")
    assert page.locator("#side h3", has_text="Strongest inputs").count() == 1
    page.wait_for_selector("#node-feature .ctx")  # layer 1 is indexed: its feature page shows in the panel
    page.click("#pin-btn")
    page.wait_for_selector("#pin-btn:has-text('Unpin')")
    page.fill("#node-name", "capital feature")
    page.click("#name-btn")
    page.wait_for_selector("#side h2:has-text('capital feature')")
    second = feats[1]["node_id"] if feats[1]["node_id"] != first else feats[2]["node_id"]
    page.locator(f'svg#nodes [data-id="{second}"]').click()
    page.wait_for_selector("#pin-btn:has-text('Pin')")
    page.click("#pin-btn")
    page.wait_for_selector("#pin-btn:has-text('Unpin')")
    page.fill("#supernode-name", "France")
    page.click("#make-supernode")
    page.wait_for_selector(".supernode:has-text('France')")
    page.hover(f'svg#nodes [data-id="{first}"]')
    assert "capital feature" in page.inner_text("#tip")
    shot(page, shots, "graph-viewer")
    for _ in range(50):  # saved with the graph
        state_file = root / "graphs" / "france.state.json"
        if state_file.exists() and json.loads(state_file.read_text())["supernodes"]:
            break
        time.sleep(0.1)
    state = json.loads(state_file.read_text())
    assert state["supernodes"] == [["France", first, second]] and state["names"] == {first: "capital feature"}
    assert set(state["pinnedIds"]) == {first, second}
    # the pruning slider asks the server for a smaller view
    page.evaluate("""() => { const s = document.getElementById('node-threshold'); s.value = 0.3;
                             s.dispatchEvent(new Event('input')); }""")
    page.wait_for_function(f"document.querySelectorAll('svg#nodes .node').length < {n_nodes}")
    page.check("#pinned-only")
    page.wait_for_function("document.querySelectorAll('svg#nodes .node').length <= 2")


def test_graph_upload_and_trace(server, page):
    url, root, parts, shots = server
    viewer = parts["graph"].view(0.9, 0.99)
    f = root / "from-neuronpedia.json"
    f.write_text(json.dumps(viewer))
    page.goto(f"{url}/graph")
    page.wait_for_selector("svg#nodes .node")
    page.set_input_files("#upload", str(f))
    page.wait_for_function("document.getElementById('graph-select').value === 'from-neuronpedia'")
    page.wait_for_function(f"document.querySelectorAll('svg#nodes .node').length > 0")
    page.fill("#prompt", "Paris is the capital of")
    page.select_option("#dict-select", "tc")
    page.click("#attribute-btn")
    page.wait_for_function("document.getElementById('graph-select').value.startsWith('Paris-is-the-capital-of')",
                           timeout=60_000)
    page.wait_for_selector("svg#nodes .node")
    assert page.locator("#message .error").count() == 0


def test_feature_browser(server, page):
    url, root, parts, shots = server
    page.goto(f"{url}/features?index=sae")
    page.fill("#query", "weather")
    page.select_option("#mode", "label")
    page.click("#search-btn")
    page.wait_for_selector(f"#hits li[data-feature='{parts['live'][0]}']")
    page.click(f"#hits li[data-feature='{parts['live'][0]}']")
    page.wait_for_selector("#page .ctx span.t")
    assert "weather and rain words" in page.inner_text("#page")
    lit = page.eval_on_selector_all("#page .ctx span.t", "els => els.filter(e => e.style.background).length")
    assert lit > 0  # firing tokens highlighted
    assert page.locator("#page svg rect").count() > 0  # histogram bars
    shot(page, shots, "feature-page")
    page.fill("#query", "the")
    page.select_option("#mode", "token")
    page.click("#search-btn")
    page.wait_for_selector("#hits li[data-feature]")


def test_steering_playground(server, page):
    url, root, parts, shots = server
    page.goto(f"{url}/steer")
    page.wait_for_selector(".edit .e-feature")
    page.select_option(".edit .e-dict", "sae")
    page.fill(".edit .e-feature", str(parts["live"][0]))
    page.fill(".edit .e-value", "25")
    page.fill("#temperature", "0")
    page.fill("#max-new", "6")
    page.click("#steer-btn")
    page.wait_for_selector("#steered .prompt")
    from glasswork import steering as st
    m = parts["model"]
    ref = st.compare(m, "The weather today is", [st.clamp_feature(m, parts["sae"], parts["live"][0], 25.0)], 6, 0, 0)
    assert page.inner_text("#baseline") == "The weather today is" + ref["baseline"][0]
    assert page.inner_text("#steered") == "The weather today is" + ref["steered"][0]
    shot(page, shots, "steering")


def test_index_page(server, page):
    url, root, parts, shots = server
    page.goto(url)
    page.wait_for_selector("#graphs a")
    assert page.locator("#dicts a", has_text="sae").count() == 1
    shot(page, shots, "index")
