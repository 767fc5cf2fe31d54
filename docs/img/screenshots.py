"""Make the README's screenshots: serve WORKDIR (a graph in graphs/, indexed dictionaries) and photograph the graph
viewer with a node clicked, and a feature page. Usage: python docs/img/screenshots.py WORKDIR GRAPH NODE INDEX FEATURE
"""
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from glasswork.server import create_app

workdir, graph, node, index, feature = sys.argv[1:6]
out = Path(__file__).parent
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = uvicorn.Server(uvicorn.Config(create_app(workdir), host="127.0.0.1", port=port, log_level="warning"))
threading.Thread(target=server.run, daemon=True).start()
while not server.started:
    time.sleep(0.05)
url = f"http://127.0.0.1:{port}"
with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
    pg = b.new_page(viewport={"width": 1500, "height": 900})
    pg.goto(f"{url}/graph?name={graph}")
    pg.wait_for_selector("svg#nodes .node")
    pg.locator(f'svg#nodes [data-id="{node}"]').click()
    pg.wait_for_selector("#pin-btn")
    time.sleep(0.5)
    pg.screenshot(path=str(out / "graph-viewer.png"))
    pg.goto(f"{url}/features?index={index}&feature={feature}")
    pg.wait_for_selector("#page .ctx")
    pg.screenshot(path=str(out / "feature-page.png"), full_page=False)
    b.close()
server.should_exit = True
print("wrote", out / "graph-viewer.png", out / "feature-page.png")
