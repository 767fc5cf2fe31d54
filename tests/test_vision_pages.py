"""The vision run end to end (a small config of every stage), its cached rerun, `glasswork vision`'s bad input,
the /api/vision routes and the /vision page in headless Chromium."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glasswork.io import GlassworkError

pytestmark = pytest.mark.model
SMALL = dict(train_per_source=12, heldout_per_source=8, d_sae=256, k=4, epochs=2, top_k=8, vis_units=2, vis_steps=32)


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory):
    from glasswork.vision.run import VisionConfig, run_vision
    out = tmp_path_factory.mktemp("vision")
    logs: list[str] = []
    res = run_vision(out, VisionConfig(**SMALL), log=logs.append)
    return out, res, logs


def test_every_stage_writes_its_record_figures_and_index(vision_run):
    out, res, logs = vision_run
    assert list(res) == ["filters", "tuning", "units", "sae", "monosemanticity", "visualize", "steer", "index"]
    for name in res:
        assert json.loads((out / "stages" / f"{name}.json").read_text())["seconds"] >= 0
    pngs = {p.name for p in (out / "img").glob("*.png")}
    assert {"filters.png", "stimuli.png", "units.png", "features.png", "monosemanticity.png", "visualizations.png",
            "steering.png", "steering-dose.png"} <= pngs
    assert sum(res["filters"]["fractions"].values()) == pytest.approx(1.0)
    held = 8 * 23
    assert res["index"]["units"] == 128 and res["index"]["examples"] == 8 * (128 + res["index"]["features"])
    assert res["steer"]["class"] == "automobile" and 0 <= res["steer"]["p_after"] <= 1
    assert res["sae"]["heldout_positions"] == held * 100
    # a rerun skips every stage and returns the same records
    from glasswork.vision.run import VisionConfig, run_vision
    again: list[str] = []
    assert run_vision(out, VisionConfig(**SMALL), log=again.append) == json.loads(json.dumps(res))
    assert sum("done before, skipped" in line for line in again) == len(res)
    with pytest.raises(GlassworkError, match="other settings"):
        run_vision(out, VisionConfig(**{**SMALL, "k": 5}))


def test_vision_routes(vision_run):
    from fastapi.testclient import TestClient
    from glasswork.server import create_app
    out, res, _ = vision_run
    client = TestClient(create_app(out))
    indexes = client.get("/api/vision").json()["indexes"]
    assert [x["name"] for x in indexes] == ["features"] and indexes[0]["hook"] == "conv2d_3"
    units = client.get("/api/vision/features/units?kind=feature&order=entropy&limit=5000").json()["units"]
    assert len(units) == res["index"]["features"]
    first = client.get("/api/vision/features/units?kind=feature&order=entropy&limit=3").json()["units"]
    assert first == units[:3]  # the limit cuts the same order
    keys = [(u["entropy"], u["weighted_entropy"], u["id"]) for u in units]
    assert keys == sorted(keys)  # entropy, then the weighted score (id breaks further ties; this fixture has none)
    page = client.get(f"/api/vision/features/units/feature/{units[0]['id']}").json()
    assert len(page["examples"]) == 8
    acts = [e["activation"] for e in page["examples"]]
    assert acts == sorted(acts, reverse=True) and page["max_act"] == pytest.approx(acts[0])
    e = page["examples"][0]
    assert 0 <= e["rf_top"] <= e["rf_bottom"] < 32 and e["rf_bottom"] - e["rf_top"] == 13  # conv2d_3 sees 14 px
    for what, key in (("patch", e["patch"]), ("source", e["source"])):
        r = client.get(f"/api/vision/features/image/{what}/{key}")
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    assert client.get("/api/vision/features/units/feature/99999").status_code == 404
    assert client.get("/api/vision/nope/units").status_code == 404
    assert client.get("/api/vision/..%2Fx/units").status_code in (400, 404)
    assert client.get("/api/vision/features/image/patch/abc").status_code == 400


def test_cli_vision_bad_input(tmp_path):
    from glasswork.cli import app

    def fails(args: list[str], message: str) -> None:
        r = CliRunner().invoke(app, ["vision", *args])
        assert r.exit_code != 0 and message in " ".join(r.output.split())  # rich wraps long lines

    fails(["--out", str(tmp_path / "v"), "--steer-class", "unicorn"], "not a class of the default image model")
    fails(["--out", str(tmp_path / "v2"), "--hook", "dense"], "is not a conv layer")
    (tmp_path / "file").write_text("x")
    fails(["--out", str(tmp_path / "file")], "is a file")
    assert not (tmp_path / "v").exists() and not (tmp_path / "v2").exists()


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt install chromium)")
def test_vision_page_in_a_browser(vision_run):
    from playwright.sync_api import sync_playwright
    from glasswork.io import home
    from glasswork.server import create_app
    from server_fixtures import served
    from test_browser import ARGS, shot
    out, res, _ = vision_run
    with served(create_app(out, hosts={"127.0.0.1"})) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/vision")
        page.wait_for_selector("#patches .tile img")
        page.wait_for_function("[...document.querySelectorAll('#patches img')].every(i => i.naturalWidth == 32)")
        assert page.locator("#patches .tile").count() == 8 and page.locator("#patches .rf").count() == 8
        first = page.inner_text("#unit-title")
        page.select_option("#kind", "unit")
        page.wait_for_function(f"document.querySelector('#unit-title').textContent != '{first}'")
        page.locator("#hits li").nth(1).click()
        page.wait_for_function("document.querySelector('#hits li.selected') !== null")
        assert page.inner_text("#unit-title").startswith("unit ")
        page.wait_for_function("[...document.querySelectorAll('#contexts img')].every(i => i.naturalWidth > 0)")
        shot(page, home() / "screenshots", "vision-page")
        browser.close()
        assert not errors, errors
