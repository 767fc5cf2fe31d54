"""The web app stays inside its folder: symlinks out of it, open-by-path elsewhere and graphs naming outside
dictionaries are refused or ignored, nothing is written outside; Host and Origin checks compare whole names and ports;
non-finite numbers and odd text get a 4xx naming the field; a bounded fuzz over every route finds no 5xx and no byte of
an outside file in any response."""
from __future__ import annotations

import json
import random
import shutil
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from glasswork.server import create_app
from glasswork.server.app import served_hosts
from glasswork.server.security import Guard

from server_fixtures import shared_workdir

SECRET = "TOP-SECRET-7f3a9c"


@pytest.fixture(scope="module")
def confined(tmp_path_factory):
    """A copy of the shared workdir plus an outside folder holding a secret graph and a dictionary, linked in."""
    base, parts = shared_workdir()
    root = tmp_path_factory.mktemp("served") / "work"
    shutil.copytree(base, root)
    outside = tmp_path_factory.mktemp("elsewhere")
    view = parts["graph"].view(0.9, 0.99)
    view["metadata"]["prompt"] = SECRET
    (outside / "secret.json").write_text(json.dumps(view))
    shutil.copytree(base / "sae", outside / "sae", ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    (root / "graphs" / "evil.json").symlink_to(outside / "secret.json")
    (root / "linked-sae").symlink_to(outside / "sae", target_is_directory=True)
    named = parts["graph"].view(0.9, 0.99)
    named["metadata"]["info"]["dictionary"] = str(outside / "sae")  # a graph naming a dictionary elsewhere
    (root / "graphs" / "names-outside.json").write_text(json.dumps(named))
    rel = parts["graph"].view(0.9, 0.99)
    rel["metadata"]["info"]["dictionary"] = "../../" + outside.name + "/sae"
    (root / "graphs" / "names-dotdot.json").write_text(json.dumps(rel))
    app = create_app(root, model=parts["model"], hosts={"testserver", "127.0.0.1", "localhost"})
    return TestClient(app, raise_server_exceptions=False), root, outside, parts


def no_secret(r) -> None:
    assert SECRET not in r.text and r.status_code < 500, (r.status_code, r.text[:300])


def test_symlinks_out_of_the_folder_are_not_served(confined):
    c, root, outside, _ = confined
    names = {g["name"] for g in c.get("/api/graphs").json()["graphs"]}
    assert "evil" not in names and "france" in names
    for path in ("/api/graphs/evil/view", "/api/graphs/evil/node/E_1_0"):
        r = c.get(path)
        assert r.status_code == 404
        no_secret(r)
    keys = {d["key"] for d in c.get("/api/dictionaries").json()["dictionaries"]}
    assert "linked-sae" not in keys and not any(k.startswith(str(outside)) for k in keys)
    assert c.get("/api/features/1", params={"index": "linked-sae"}).status_code == 404


def test_open_by_path_only_inside_the_folder(confined):
    c, root, outside, _ = confined
    for path in (str(outside / "secret.json"), "../" * 8 + str(outside / "secret.json").lstrip("/"), "/etc/passwd"):
        r = c.post("/api/graphs/open", json={"path": path})
        assert r.status_code == 400 and "inside" in r.json()["detail"]
        no_secret(r)
    assert not (root / "graphs" / "secret.json").exists()
    shutil.copy(root / "graphs" / "names-outside.json", root / "inside.json")
    assert c.post("/api/graphs/open", json={"path": "inside.json", "name": "copied"}).status_code == 200


def test_graph_metadata_never_opens_an_outside_dictionary(confined):
    c, root, outside, _ = confined
    for name in ("names-outside", "names-dotdot"):
        v = c.get(f"/api/graphs/{name}/view", params={"budget": 0}).json()
        feat = next(n for n in v["nodes"] if n["feature_type"] not in ("embedding", "logit", "mlp reconstruction error"))
        d = c.get(f"/api/graphs/{name}/node/{feat['node_id']}").json()
        assert d["feature"] is None and d["feature_index"] is None
        assert c.post(f"/api/graphs/{name}/intervene", json={"node_ids": [feat["node_id"]]}).status_code == 400
    assert not list(outside.rglob("*-wal")) and not list(outside.rglob("*-shm"))  # nothing written outside


def test_host_and_origin_compare_whole_names_and_ports(confined, tmp_path):
    c, root, _, _ = confined
    assert c.get("/api/graphs", headers={"host": "evil.example"}).status_code == 421
    body = {"pinnedIds": [], "supernodes": [], "names": {}, "clickedId": ""}
    ok = c.put("/api/graphs/france/state", json=body, headers={"origin": "http://testserver"})
    assert ok.status_code == 200
    for origin in ("http://testserver:9999", "http://localhost:8765", "http://testserver.evil.example"):
        assert c.put("/api/graphs/france/state", json=body, headers={"origin": origin}).status_code == 403
    hosts = served_hosts("0.0.0.0")  # exposed: still only this machine's names
    assert "127.0.0.1" in hosts and "evil.example" not in hosts and "0.0.0.0" not in hosts
    guard = Guard(None, 1, 1, hosts)
    assert guard.hosts == hosts and served_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    r = c.post("/api/graphs/upload", json={"name": "nl\n", "graph": {"nodes": [], "links": []}})
    assert r.status_code == 400 and not (root / "graphs" / "nl\n.json").exists()


@pytest.mark.parametrize("raw,field", [
    ('{"pinnedIds": [NaN], "supernodes": [], "names": {}, "clickedId": ""}', "pinnedIds"),
    ('{"node_ids": ["0_1_2"], "value": NaN}', "value"),
    ('{"node_ids": ["0_1_2"], "value": Infinity}', "value"),
    ('{"prompt": "hi", "edits": [{"direction": "up", "coeff": NaN}]}', "coeff"),
    ('{"prompt": "hi", "edits": [{"direction": "up", "coeff": 1}], "seed": 1180591620717411303424}', "seed"),
])
def test_non_finite_and_out_of_range_numbers_are_a_4xx_naming_the_field(confined, raw, field):
    c, _, _, _ = confined
    route = {"value": "/api/graphs/france/intervene", "coeff": "/api/steer", "seed": "/api/steer",
             "pinnedIds": "/api/graphs/france/state"}[field]
    method = c.put if route.endswith("state") else c.post
    r = method(route, content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
    assert field in json.dumps(r.json()["detail"])


def test_uploaded_graph_with_nan_and_odd_search_text(confined):
    c, root, _, parts = confined
    view = parts["graph"].view(0.9, 0.99)
    view["links"][0]["weight"] = float("nan")
    r = c.post("/api/graphs/upload", content=json.dumps({"name": "nan", "graph": view}),
               headers={"content-type": "application/json"})
    assert r.status_code == 400 and "links[0].weight" in r.json()["detail"]
    assert not (root / "graphs" / "nan.json").exists()
    for q in ("²", "½", "\"", "a OR", "NEAR(", "*"):
        r = c.get("/api/features/search", params={"index": "sae", "q": q})
        assert r.status_code == 200, (q, r.text[:200])


def test_a_place_that_cannot_be_written_is_a_403_and_loses_nothing(confined):
    # root ignores file modes, so a folder stands where the state file would go: the write fails as on a read-only disk
    c, root, _, _ = confined
    blocker = root / "graphs" / "france.state.json"
    before = blocker.read_bytes() if blocker.is_file() else None
    graph = next((root / "graphs").glob("france.*"))
    graph_bytes = graph.read_bytes()
    if blocker.is_file():
        blocker.unlink()
    blocker.mkdir()
    try:
        r = c.put("/api/graphs/france/state", json={"pinnedIds": [], "supernodes": [], "names": {}})
        assert r.status_code == 403 and r.json()["detail"].startswith(f"cannot write in {root}")
        assert "Traceback" not in r.text and blocker.is_dir() and not any(blocker.iterdir())
        assert graph.read_bytes() == graph_bytes  # the graph itself is untouched
        assert not [p for p in (root / "graphs").iterdir() if p.name.startswith(".france.state")]  # no temp file left
    finally:
        blocker.rmdir()
        if before is not None:
            blocker.write_bytes(before)


def test_bounded_fuzz_no_5xx_and_nothing_from_outside(confined):
    """A few hundred random requests against every route (127.0.0.1 only: the in-process test client)."""
    c, root, outside, parts = confined
    rng = random.Random(0)
    nasty = ["..", "../..", "%2e%2e", "evil", "france", "linked-sae", str(outside / "sae"), "\x00", "²", "a" * 300,
             "nan", "-1", "1e309", "0_0_0", "E_1_0", "err_0_1", " ", "{}", "[]", "sae", "tc", "tc/layer_01"]
    values = [float("nan"), float("inf"), -1, 0, 2**70, "x", None, [], {}, "1e309", 3.5, True]
    routes = [("GET", "/api/graphs/{n}/view"), ("GET", "/api/graphs/{n}/node/{n}"), ("GET", "/api/graphs/{n}/suggestions"),
              ("POST", "/api/graphs/{n}/subgraph"), ("PUT", "/api/graphs/{n}/state"), ("POST", "/api/graphs/upload"),
              ("POST", "/api/graphs/open"), ("GET", "/api/features/search"), ("GET", "/api/features/{n}"),
              ("GET", "/api/features/top"), ("POST", "/api/graphs/{n}/intervene"), ("GET", "/api/jobs/{n}"),
              ("GET", "/api/dictionaries"), ("GET", "/api/directions"), ("GET", "/static/{n}")]
    for i in range(300):
        method, route = rng.choice(routes)
        part = rng.choice(nasty)
        path = route.replace("{n}", quote(part, safe="" if rng.random() < 0.5 else "/%"))
        params = {k: rng.choice(nasty + [str(v) for v in values]) for k in
                  rng.sample(["index", "q", "mode", "layer", "budget", "node_threshold", "top", "limit"], 3)}
        body = {k: rng.choice(values + nasty) for k in
                rng.sample(["name", "graph", "path", "nodes", "supernodes", "node_ids", "value", "mode", "pinnedIds",
                            "names"], 3)}
        raw = json.dumps(body, allow_nan=True)
        if method == "GET":
            r = c.get(path, params=params)
        else:
            r = c.request(method, path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code < 500, (i, method, path, params, raw[:200], r.status_code, r.text[:300])
        no_secret(r)
    assert not list(outside.rglob("*-wal")) and not list(outside.rglob("*-shm"))
