"""`create_app(workdir)`: the web app, a thin face on the Python API. Pages (plain ES modules in static/) call these
JSON routes:

  GET  /api/graphs                              graph files in DIR/graphs
  GET  /api/graphs/{name}/view?node_threshold=&edge_threshold=   a pruned view (viewer JSON, capped in size)
  GET  /api/graphs/{name}/node/{node_id}        a node, its strongest inputs and outputs, its feature page if indexed
  PUT  /api/graphs/{name}/state                 pinned nodes, supernodes and names, saved beside the graph
  POST /api/graphs/upload   {name, graph}       store viewer JSON from another tool (circuit-tracer, Neuronpedia)
  POST /api/graphs/open     {path, name?}       the same from a .json file on this machine
  GET  /api/dictionaries, /api/directions       what DIR holds
  GET  /api/features/search?index=&q=&mode=label|text|token
  GET  /api/features/{feature}?index=           a feature page's data
  POST /api/steer           {prompt, edits, ...}   baseline and steered generations, same seed
  POST /api/attribute       {prompt, dictionary}   starts a job; GET /api/jobs/{id} polls it; the graph lands in graphs/
Bad input answers 4xx with {"detail": "..."}: names with slashes or '..', bodies over the cap, wrong JSON types.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Literal, Optional, Union

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from ..io import GlassworkError
from .graphs import GraphStore
from .jobs import Jobs
from .resources import Resources, describe, member_for_layer
from .security import Guard, check_name

STATIC = Path(__file__).parent / "static"
PAGES = {"/": "index.html", "/graph": "graph.html", "/features": "features.html", "/steer": "steer.html"}
MAX_PROMPT = 2000  # characters: a prompt past this is a mistake or an attack, and attribution cost grows with it
MAX_NEW_TOKENS = 200


class State(BaseModel):
    pinnedIds: list[str] = Field(default_factory=list, max_length=5000)
    supernodes: list[list[str]] = Field(default_factory=list, max_length=1000)
    names: dict[str, str] = Field(default_factory=dict, max_length=5000)
    clickedId: str = Field("", max_length=200)


class Upload(BaseModel):
    name: str = Field(..., max_length=128)
    graph: dict


class OpenFile(BaseModel):
    path: str = Field(..., max_length=4096)
    name: Optional[str] = Field(None, max_length=128)


class FeatureEdit(BaseModel):
    dictionary: str = Field(..., max_length=1000)
    feature: int = Field(..., ge=0)
    layer: Optional[int] = Field(None, ge=0)
    value: Union[float, str] = "10x"  # a number, or 'Nx' = N times the feature's max activation


class DirectionEdit(BaseModel):
    direction: str = Field(..., max_length=128)
    coeff: float = Field(..., ge=-1e4, le=1e4)
    hook: Optional[str] = Field(None, max_length=200)
    ablate: bool = False


class Steer(BaseModel):
    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT)
    edits: list[Union[FeatureEdit, DirectionEdit]] = Field(..., min_length=1, max_length=16)
    positions: Literal["all", "prompt", "generated"] = "all"
    max_new_tokens: int = Field(30, ge=1, le=MAX_NEW_TOKENS)
    seed: int = 0
    temperature: float = Field(0.7, ge=0, le=5)


class Attribute(BaseModel):
    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT)
    dictionary: str = Field(..., max_length=1000)
    name: Optional[str] = Field(None, max_length=128)
    max_features: Optional[int] = Field(None, ge=1, le=1_000_000)
    batch_size: int = Field(64, ge=1, le=4096)


def create_app(workdir: str | Path, model=None, dictionaries: list[str | Path] = (), hosts: set[str] | None = None,
               max_body: int = 1 << 20, upload_body: int = 256 << 20, max_nodes: int = 2500,
               max_links: int = 25000) -> FastAPI:
    """The app over `workdir` (see resources.py for its layout). `model`: a Model or a name (default: loaded on
    first use from the dictionary's config). `hosts`: Host header names accepted (None: any). `max_body`: request
    bytes (uploads: `upload_body`). Views carry at most `max_nodes` nodes and `max_links` links."""
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    res = Resources(root, model, [Path(d) for d in dictionaries])
    store = GraphStore(root / "graphs", max_nodes, max_links)
    jobs = Jobs()
    app = FastAPI(title="Glasswork", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.resources, app.state.graphs, app.state.jobs = res, store, jobs

    @app.exception_handler(GlassworkError)
    async def _bad_input(request, e: GlassworkError):
        return JSONResponse({"detail": str(e)}, status_code=400)

    for route, page in PAGES.items():
        app.add_api_route(route, _page(page), methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # --- graphs --------------------------------------------------------------------------------------------------
    def graph_or_404(name: str):
        check_name(name)
        if store.path(name) is None:
            raise HTTPException(404, f"no graph named '{name}' in {store.folder}")
        return name

    @app.get("/api/graphs")
    def list_graphs():
        return {"graphs": store.names(), "folder": str(store.folder)}

    @app.get("/api/graphs/{name}/view")
    def view(name: str, node_threshold: float = Query(0.8, gt=0, le=1), edge_threshold: float = Query(0.98, gt=0, le=1)):
        t0 = time.perf_counter()
        out = store.view(graph_or_404(name), node_threshold, edge_threshold)
        if len(out["nodes"]) <= 5000:  # hover labels: the feature labels from the index, where there is one
            out["nodes"] = [dict(n) for n in out["nodes"]]
            name_features(store.dictionary_of(name), [n for n in out["nodes"] if n.get("feature_type") not in
                                                      ("embedding", "logit")])
        out["metadata"] = {**out["metadata"], "served_seconds": round(time.perf_counter() - t0, 4)}
        return out

    @app.get("/api/graphs/{name}/node/{node_id}")
    def node(name: str, node_id: str, top: int = Query(12, ge=1, le=100)):
        graph_or_404(name)
        if len(node_id) > 200:
            raise HTTPException(400, "node id longer than 200 characters")
        try:
            out = store.node(name, node_id, top)
        except KeyError:
            raise HTTPException(404, f"graph '{name}' has no node '{node_id}'") from None
        dictionary = store.dictionary_of(name)
        out["feature"], out["feature_index"] = feature_of(dictionary, out["node"])
        name_features(dictionary, [out["node"], *out["inputs"], *out["outputs"]])
        return out

    def name_features(dictionary: str, nodes: list[dict]) -> None:
        """Give nodes without a label a readable one: the feature's label from its index, else 'L{layer} #{id}';
        errors 'error L{layer} @{pos}'."""
        for n in nodes:
            if n.get("clerp"):
                continue
            parts = n["node_id"].split("_")
            kind = n.get("feature_type", "")
            if kind == "mlp reconstruction error" and len(parts) == 3:
                n["clerp"] = f"error L{parts[1]} @{parts[2]}"
            elif len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
                n["clerp"] = layer_labels(dictionary, int(parts[0])).get(int(parts[1])) or f"L{parts[0]} #{parts[1]}"

    def layer_labels(dictionary: str, layer: int) -> dict:
        folder = resolve_dictionary(dictionary)
        try:
            index = res.index(member_for_layer(folder, layer)) if folder is not None and folder.exists() else None
        except GlassworkError:
            index = None
        if index is None:
            return {}
        with res._lock:
            return index.labels()

    def resolve_dictionary(dictionary: str) -> Path | None:
        if not dictionary:
            return None
        folder = Path(dictionary)
        return (root / folder) if not folder.is_absolute() and (root / folder).exists() else folder

    def feature_of(dictionary: str, node: dict):
        """The feature page of a graph node when its dictionary (a set member for its layer) has an index."""
        m = re.match(r"^(\d+)_(\d+)_(\d+)$", node.get("node_id", ""))
        if not dictionary or not m or node.get("feature_type") in ("embedding", "logit", "mlp reconstruction error"):
            return None, None
        layer, feat = int(m.group(1)), int(m.group(2))
        folder = resolve_dictionary(dictionary)
        try:
            index = res.index(member_for_layer(folder, layer)) if folder.exists() else None
        except GlassworkError:
            return None, None
        if index is None or not 0 <= feat < index.d_sae:
            return None, None
        with res._lock:
            return index.feature(feat), str(index.path)

    @app.put("/api/graphs/{name}/state")
    def save_state(name: str, state: State):
        graph_or_404(name)
        saved = store.save_state(name, state.model_dump())
        return {"saved": True, "state": saved}

    @app.post("/api/graphs/upload")
    def upload(body: Upload):
        name = check_name(body.name)
        path = store.add_json(name, body.graph)
        return {"name": name, "path": str(path)}

    @app.post("/api/graphs/open")
    def open_file(body: OpenFile):
        p = Path(body.path).expanduser()
        if p.suffix != ".json" or not p.is_file():
            raise HTTPException(400, f"{body.path}: expected an existing .json file (viewer JSON in the "
                                     f"attribution-graph schema)")
        from ..io import read_json
        name = check_name(body.name or re.sub(r"[^A-Za-z0-9._-]", "-", p.stem).strip(".-")[:128] or "graph")
        path = store.add_json(name, read_json(p, "graph JSON"))
        return {"name": name, "path": str(path)}

    # --- dictionaries, features ------------------------------------------------------------------------------------
    @app.get("/api/dictionaries")
    def list_dictionaries():
        out = []
        for key, folder in res.dictionaries().items():
            try:
                out.append({"key": key, **describe(folder)})
            except GlassworkError as e:
                out.append({"key": key, "error": str(e)})
        return {"dictionaries": out}

    @app.get("/api/directions")
    def list_directions():
        from ..io import read_json
        return {"directions": [{"name": k, **{x: read_json(p).get(x) for x in ("hook", "kind", "model", "norm")}}
                               for k, p in res.directions().items()]}

    def index_or_404(key: str):
        try:
            folder = res.folder(key)
        except KeyError:
            raise HTTPException(404, f"no dictionary '{key[:200]}' under {root}") from None
        index = res.index(folder)
        if index is None:
            raise HTTPException(404, f"dictionary '{key}' has no feature index (run `glasswork features build`)")
        return index

    @app.get("/api/features/search")
    def search(index: str = Query(..., max_length=1000), q: str = Query(..., min_length=1, max_length=200),
               mode: Literal["label", "text", "token"] = "text", limit: int = Query(20, ge=1, le=200)):
        fi = index_or_404(index)
        with res._lock:
            if q.strip().isdigit() and mode != "token":
                f = int(q)
                hits = [{"feature": f, "where": "id", "text": ""}] if f < fi.d_sae else []
            elif mode == "token":
                hits = fi.by_token(q, limit) or (fi.by_token(" " + q, limit) if not q.startswith(" ") else [])
            else:
                hits = [h for h in fi.search(q, limit * 3) if mode == "text" or h["where"] == "label"][:limit]
            labels = fi.labels()
            stats = {f: (n, m) for f, n, m in fi.db.execute(
                f"SELECT feature, freq, max_act FROM features WHERE feature IN ({','.join('?' * len(hits))})",
                [h["feature"] for h in hits])} if hits else {}
        return {"hits": [{**h, "label": labels.get(h["feature"], ""), "freq": stats.get(h["feature"], (None,))[0],
                          "max_act": stats.get(h["feature"], (None, None))[1]} for h in hits]}

    @app.get("/api/features/{feature}")
    def feature_page(feature: int, index: str = Query(..., max_length=1000)):
        fi = index_or_404(index)
        with res._lock:
            rec = fi.feature(fi.check_id(feature))
            meta = {k: fi.meta.get(k) for k in ("model", "hook", "kind", "d_sae", "n_tokens", "hist_edges")}
        return {**rec, "meta": meta}

    # --- steering ----------------------------------------------------------------------------------------------------
    @app.post("/api/steer")
    def steer(body: Steer):
        from .. import steering as st
        from ..directions import directional_ablation, load_direction
        if not res.compute.acquire(timeout=300):
            raise HTTPException(503, "the model is busy with another job; try again")
        try:
            t0 = time.time()
            ivs, model = [], None
            for e in body.edits:
                if isinstance(e, FeatureEdit):
                    try:
                        folder = res.folder(e.dictionary)
                    except KeyError:
                        raise HTTPException(404, f"no dictionary '{e.dictionary[:200]}' under {root}") from None
                    d, member = res.dictionary(folder, e.layer)
                    model = model or res.model(d.cfg.model or None)
                    ivs.append(st.clamp_feature(model, d, e.feature, e.value, body.positions, dictionary_folder=member))
                else:
                    paths = res.directions()
                    if e.direction not in paths:
                        raise HTTPException(404, f"no direction '{e.direction}' in {root / 'directions'}")
                    vec = load_direction(paths[e.direction])
                    model = model or res.model(vec.model or None)
                    if e.ablate:
                        ivs += directional_ablation(model, vec.vector, positions=body.positions)
                    else:
                        ivs.append(st.add_direction(model, e.hook or vec.hook, vec.vector, e.coeff, body.positions))
            out = st.compare(model, body.prompt, ivs, body.max_new_tokens, body.seed, body.temperature)
            return {**out, "interventions": [iv.label for iv in ivs], "seconds": round(time.time() - t0, 3)}
        finally:
            res.compute.release()

    # --- attribution on demand -----------------------------------------------------------------------------------------
    @app.post("/api/attribute")
    def start_attribution(body: Attribute):
        try:
            folder = res.folder(body.dictionary)
        except KeyError:
            raise HTTPException(404, f"no dictionary '{body.dictionary[:200]}' under {root}") from None
        slug = re.sub(r"[^A-Za-z0-9]+", "-", body.prompt).strip("-")[:40] or "graph"
        name = check_name(body.name or f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}")

        def work():
            from ..circuits import attribute
            coders = res.coders(folder)
            some = coders if not isinstance(coders, dict) else next(iter(coders.values()))
            with res.compute:
                model = res.model(some.cfg.model or None)
                graph = attribute(model, coders, body.prompt, max_features=body.max_features,
                                  batch_size=body.batch_size, dictionary=str(folder.resolve()))
            graph.save(store.folder / f"{name}.safetensors")
            store.forget(name)
            return {"graph": name, "nodes": graph.n_nodes, "features": graph.n_features,
                    "scores": graph.meta.get("scores", {})}
        job = jobs.start("attribute", work)
        return {"job": job.id, "graph": name}

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str):
        j = jobs.get(job_id) if re.match(r"^[0-9a-f]{1,32}$", job_id) else None
        if j is None:
            raise HTTPException(404, f"no job '{job_id[:40]}'")
        return j.public()

    app.add_middleware(Guard, max_body=max_body, upload_body=upload_body, hosts=hosts or set())
    return app


def _page(name: str):
    def page():
        return FileResponse(STATIC / name, media_type="text/html")
    return page


def serve(workdir: str | Path, host: str = "127.0.0.1", port: int = 8765, model=None,
          dictionaries: list[str | Path] = ()) -> None:
    """Run the app with uvicorn (blocking). A loopback host accepts only loopback Host headers (DNS rebinding)."""
    import uvicorn
    loopback = host in ("127.0.0.1", "localhost", "::1")
    hosts = {"127.0.0.1", "localhost", "::1", host} if loopback else None
    uvicorn.run(create_app(workdir, model, dictionaries, hosts=hosts), host=host, port=port, log_level="warning")
