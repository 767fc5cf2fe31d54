"""`create_app(workdir)`: the web app, a thin face on the Python API. Pages (plain ES modules in static/) call these
JSON routes:

  GET  /api/graphs                              graph files in DIR/graphs
  GET  /api/graphs/{name}/view?node_threshold=&edge_threshold=&budget=   a pruned view (viewer JSON): at most
                                                `budget` features and errors (default 100, 0: all), capped in size
  GET  /api/graphs/{name}/node/{node_id}        a node, its strongest inputs and outputs, its feature page if indexed
  PUT  /api/graphs/{name}/state                 pinned nodes, supernodes and names, saved beside the graph
  POST /api/graphs/{name}/subgraph {nodes, supernodes}   those nodes and their direct edges (supernodes summed)
  GET  /api/graphs/{name}/suggestions?...&min_similarity=   supernodes suggested from the view's features
  POST /api/graphs/{name}/intervene {node_ids, value|scale, mode, generate}   logits before/after, a generation
  POST /api/graphs/upload   {name, graph}       store viewer JSON from another tool (circuit-tracer, Neuronpedia)
  POST /api/graphs/open     {path, name?}       the same from a .json file on this machine
  GET  /api/dictionaries, /api/directions       what DIR holds
  GET  /api/features/search?index=&q=&mode=label|text|token[&layer=]   (layer: one layer of a set or a CLT)
  GET  /api/features/top?index=[&layer=]        the most frequent live features, labelled first (the page's start)
  GET  /api/features/{feature}?index=[&layer=]  a feature page's data
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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from ..circuits.graph import NOT_FEATURES, parse_feature_id, view_features
from ..features.scoring import ensure_labels
from ..io import GlassworkError, relative_path
from .graphs import GraphStore
from .jobs import Jobs
from .resources import Resources, describe
from .security import Guard, check_name

STATIC = Path(__file__).parent / "static"
PAGES = {"/": "index.html", "/graph": "graph.html", "/features": "features.html", "/steer": "steer.html"}
MAX_PROMPT = 2000  # characters: a prompt past this is a mistake or an attack, and attribution cost grows with it
MAX_NEW_TOKENS = 200


class Body(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # NaN / Infinity in a body: a 422 naming the field


class State(Body):
    pinnedIds: list[str] = Field(default_factory=list, max_length=5000)
    supernodes: list[list[str]] = Field(default_factory=list, max_length=1000)
    names: dict[str, str] = Field(default_factory=dict, max_length=5000)
    clickedId: str = Field("", max_length=200)


class Subgraph(Body):
    nodes: list[str] = Field(default_factory=list, max_length=5000)
    supernodes: list[list[str]] = Field(default_factory=list, max_length=1000)


class GraphIntervention(Body):
    node_ids: list[str] = Field(..., min_length=1, max_length=500)
    value: Optional[float] = Field(0.0, ge=-1e4, le=1e4)  # the activation to set (0: ablate)
    scale: Optional[float] = Field(None, ge=-1e4, le=1e4)  # or multiply the activation
    mode: Literal["free", "frozen"] = "frozen"
    generate: int = Field(0, ge=0, le=60)


class Upload(Body):
    name: str = Field(..., max_length=128)
    graph: dict


class OpenFile(Body):
    path: str = Field(..., max_length=4096)
    name: Optional[str] = Field(None, max_length=128)


class FeatureEdit(Body):
    dictionary: str = Field(..., max_length=1000)
    feature: int = Field(..., ge=0)
    layer: Optional[int] = Field(None, ge=0)
    value: Union[float, str] = "10x"  # a number, or 'Nx' = N times the feature's max activation


class DirectionEdit(Body):
    direction: str = Field(..., max_length=128)
    coeff: float = Field(..., ge=-1e4, le=1e4)
    hook: Optional[str] = Field(None, max_length=200)
    ablate: bool = False


class Steer(Body):
    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT)
    edits: list[Union[FeatureEdit, DirectionEdit]] = Field(..., min_length=1, max_length=16)
    positions: Literal["all", "prompt", "generated"] = "all"
    max_new_tokens: int = Field(30, ge=1, le=MAX_NEW_TOKENS)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    temperature: float = Field(0.7, ge=0, le=5)


class Attribute(Body):
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

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):  # the offending input is not echoed (NaN has no JSON)
        return JSONResponse({"detail": [{"loc": list(x.get("loc", ())), "msg": x.get("msg", "")} for x in e.errors()]},
                            status_code=422)

    @app.exception_handler(OSError)
    async def _os_error(request, e: OSError):  # a read-only or full WORKDIR: say so, no traceback
        return JSONResponse({"detail": f"cannot write in {root}: {e.strerror or e}"}, status_code=403)

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
    def view(name: str, node_threshold: float = Query(0.8, gt=0, le=1), edge_threshold: float = Query(0.98, gt=0, le=1),
             budget: int = Query(100, ge=0, le=1_000_000)):
        t0 = time.perf_counter()
        out = store.view(graph_or_404(name), node_threshold, edge_threshold, budget or None)
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
        name_features(dictionary, [out["node"]])  # the node's own label first: it may be made here
        out["feature"], out["feature_index"] = feature_of(dictionary, out["node"])
        name_features(dictionary, [out["node"], *out["inputs"], *out["outputs"]])
        return out

    def name_features(dictionary: str, nodes: list[dict]) -> None:
        """Give every node a readable label: a feature's label from its layer's index (a built-in label made and
        stored on first sight where it has none), else 'L{layer} #{id}'; errors 'error L{layer} @{pos}'."""
        wanted: dict[int, list[tuple[dict, int]]] = {}
        for n in nodes:
            if n.get("clerp"):
                continue
            parts = n["node_id"].split("_")
            if n.get("feature_type", "") == "mlp reconstruction error" and len(parts) == 3:
                n["clerp"] = f"error L{parts[1]} @{parts[2]}"
            elif len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
                wanted.setdefault(int(parts[0]), []).append((n, int(parts[1])))
        for layer, pairs in wanted.items():
            index = layer_index(dictionary, layer)
            labels = {}
            if index is not None:
                with res.lock:
                    labels = ensure_labels(index, [f for _, f in pairs], limit=40)  # a request stays short
            for n, f in pairs:
                n["clerp"] = labels.get(f) or f"L{layer} #{f}"

    def layer_index(dictionary: str, layer: int):
        """The feature index of one layer of a graph's dictionary (a set member, a CLT layer), or None."""
        from ..features.index import layer_index_path
        folder = resolve_dictionary(dictionary)
        if folder is None:
            return None
        try:
            return res.index(layer_index_path(folder, layer))
        except GlassworkError:
            return None

    def resolve_dictionary(dictionary: str) -> Path | None:
        """A graph's dictionary: a path relative to the graph's folder (how glasswork records it), else to WORKDIR, or
        absolute; served only when it lies inside WORKDIR or a --dictionary folder (never a path elsewhere)."""
        if not dictionary:
            return None
        folder = Path(dictionary)
        for candidate in ([folder] if folder.is_absolute() else [store.folder / folder, root / folder]):
            if candidate.exists() and res.allowed(candidate):
                return candidate
        return None

    def feature_of(dictionary: str, node: dict):
        """The feature page of a graph node when its layer's feature index exists: (record, index key, layer)."""
        parsed = parse_feature_id(node.get("node_id", ""))
        if not dictionary or not parsed or node.get("feature_type") in NOT_FEATURES:
            return None, None
        layer, feat, _ = parsed
        index = layer_index(dictionary, layer)
        if index is None or not 0 <= feat < index.d_sae:
            return None, None
        with res.lock:
            rec = index.feature(feat)
        per_layer_file = index.path.name != "features.sqlite"  # a CLT layer: the page needs the layer too
        return rec, {"path": str(index.path), "key": index_key(index.path), "layer": layer if per_layer_file else None}

    def index_key(path: Path) -> str | None:
        """The dictionary key (and layer) under which /api/features serves this index."""
        for key, folder in res.dictionaries().items():
            if folder.resolve() == path.parent.resolve():
                return key
        return None

    def node_records(name: str, ids: list[str]) -> list[dict]:
        try:
            recs = store.records(name, ids)
        except KeyError as e:
            raise HTTPException(404, f"graph '{name}' has no node '{str(e)[:200]}'") from None
        names = store.state(name).get("names", {})
        recs = [{**r, "clerp": names.get(r["node_id"], r.get("clerp", ""))} for r in recs]
        name_features(store.dictionary_of(name), recs)
        return recs

    @app.post("/api/graphs/{name}/subgraph")
    def subgraph(name: str, body: Subgraph):
        graph_or_404(name)
        try:
            sg = store.subgraph(name, body.nodes, body.supernodes)
        except KeyError as e:
            raise HTTPException(404, f"graph '{name}' has no node '{str(e)[:200]}'") from None
        return {**sg, "nodes": node_records(name, sg["nodes"])}

    @app.get("/api/graphs/{name}/suggestions")
    def suggestions(name: str, node_threshold: float = Query(0.8, gt=0, le=1),
                    edge_threshold: float = Query(0.98, gt=0, le=1), budget: int = Query(100, ge=0, le=1_000_000),
                    min_similarity: float = Query(0.5, ge=-1, le=1)):
        from ..circuits.supernodes import suggest_in_view
        v = store.view(graph_or_404(name), node_threshold, edge_threshold, budget or None)
        feats = [dict(n) for n in view_features(v)]
        name_features(store.dictionary_of(name), feats)
        ids = [n["node_id"] for n in feats]
        found = suggest_in_view(v, feats, store.profiles(name, ids), store.effects(name, ids), min_similarity)
        return {"suggestions": found, "features": len(feats), "min_similarity": min_similarity}

    @app.post("/api/graphs/{name}/intervene")
    def graph_intervene(name: str, body: GraphIntervention):
        """Set or ablate graph features on the graph's own prompt and transcoders: the top next-token logits before
        and after (as `glasswork intervene`), and a short generation with the edit."""
        from ..circuits import Edit, generate, intervene_logits
        graph_or_404(name)
        edits = []
        for nid in body.node_ids:
            parsed = parse_feature_id(nid)
            if not parsed:
                raise HTTPException(400, f"node '{nid[:200]}' is not a feature node (LAYER_FEATURE_POS): only features "
                                         f"can be set or ablated")
            layer, feat, pos = parsed
            edits.append(Edit(layer, feat, [pos], None if body.scale is not None else body.value, body.scale))
        folder = resolve_dictionary(store.dictionary_of(name))
        if folder is None:
            raise HTTPException(400, f"graph '{name}' names no dictionary folder inside {root}: cannot intervene")
        prompt = store.metadata_of(name).get("prompt", "")
        if not prompt:
            raise HTTPException(400, f"graph '{name}' has no prompt in its metadata")
        if not res.compute.acquire(timeout=300):
            raise HTTPException(503, "the model is busy with another job; try again")
        try:
            t0 = time.time()
            coders = res.coders(folder)  # per-layer transcoders {layer: coder} or one CLT
            cfg = next(iter(coders.values())).cfg if isinstance(coders, dict) else coders.cfg
            model = res.model(cfg.model or None)
            out = intervene_logits(model, coders, prompt, edits, mode=body.mode)
            out.pop("logits_after")
            out["token_strings"] = model.to_str_tokens(out["tokens"])
            if body.generate:
                out["plain"] = generate(model, coders, prompt, [], body.generate)
                out["generated"] = generate(model, coders, prompt, edits, body.generate)
            return {**out, "prompt": prompt, "mode": body.mode, "seconds": round(time.time() - t0, 3)}
        finally:
            res.compute.release()

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
        if "\x00" in body.path:
            raise HTTPException(400, "path: a NUL byte is not allowed in a path")
        p = Path(body.path).expanduser()
        p = p if p.is_absolute() else root / p
        if not res.allowed(p):
            raise HTTPException(400, f"{body.path[:200]}: only files inside {root} can be opened (upload others)")
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

    def index_or_404(key: str, layer: int | None = None):
        from ..features.index import layer_index_path
        try:
            folder = res.folder(key)
        except KeyError:
            raise HTTPException(404, f"no dictionary '{key[:200]}' under {root}") from None
        index = res.index(layer_index_path(folder, layer))
        if index is None:
            raise HTTPException(404, f"dictionary '{key}' has no feature index (run `glasswork features build`)")
        return index

    @app.get("/api/features/search")
    def search(index: str = Query(..., max_length=1000), q: str = Query(..., min_length=1, max_length=200),
               mode: Literal["label", "text", "token"] = "text", limit: int = Query(20, ge=1, le=200),
               layer: Optional[int] = Query(None, ge=0, le=10_000)):
        fi = index_or_404(index, layer)
        with res.lock:
            if q.strip().isascii() and q.strip().isdigit() and mode != "token":
                f = int(q)
                hits = [{"feature": f, "where": "id", "text": ""}] if f < fi.d_sae else []
            elif mode == "token":
                hits = fi.by_token(q, limit) or (fi.by_token(" " + q, limit) if not q.startswith(" ") else [])
            else:
                hits = [h for h in fi.search(q, limit * 3) if mode == "text" or h["where"] == "label"][:limit]
            labels = fi.labels()
            stats = fi.frequencies([h["feature"] for h in hits])
        return {"hits": [{**h, "label": labels.get(h["feature"], ""), "freq": stats.get(h["feature"], (None,))[0],
                          "max_act": stats.get(h["feature"], (None, None))[1]} for h in hits]}

    @app.get("/api/features/top")
    def top_features(index: str = Query(..., max_length=1000), limit: int = Query(30, ge=1, le=500),
                     layer: Optional[int] = Query(None, ge=0, le=10_000)):
        """The most frequent live features, labelled ones first: what a person sees before searching."""
        fi = index_or_404(index, layer)
        with res.lock:
            labels = fi.labels()
            rows = fi.live_by_frequency()
        rows = sorted(rows, key=lambda r: (r[0] not in labels, -r[1]))[:limit]
        return {"features": [{"feature": f, "freq": q, "label": labels.get(f, "")} for f, q in rows]}

    @app.get("/api/features/{feature}")
    def feature_page(feature: int, index: str = Query(..., max_length=1000),
                     layer: Optional[int] = Query(None, ge=0, le=10_000)):
        fi = index_or_404(index, layer)
        with res.lock:
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
                                  batch_size=body.batch_size, dictionary=relative_path(folder, store.folder))
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


def served_hosts(host: str) -> set[str]:
    """The Host header names a server bound to `host` answers to."""
    import socket
    names = {"127.0.0.1", "localhost", "::1"}
    if host in names:
        return names | {host}
    names |= {host} - {"0.0.0.0", "::"}
    try:
        me = socket.gethostname()
        names |= {me, socket.getfqdn()} | set(socket.gethostbyname_ex(me)[2])
    except OSError:
        pass
    return names


def serve(workdir: str | Path, host: str = "127.0.0.1", port: int = 8765, model=None,
          dictionaries: list[str | Path] = ()) -> None:
    """Run the app with uvicorn (blocking). Only this machine's own names are accepted as Host headers, for every
    --host (DNS rebinding): loopback names, and for another address that address, the host name and its addresses."""
    import uvicorn
    hosts = served_hosts(host)
    uvicorn.run(create_app(workdir, model, dictionaries, hosts=hosts), host=host, port=port, log_level="warning")
