"""`create_app(workdir)`: the web app, a thin face on the Python API. Pages (plain ES modules in static/) call these
JSON routes (graph_routes.py, feature_routes.py, model_routes.py; what they share: site.py):

  GET  /api/graphs                              graph files in DIR/graphs
  GET  /api/graphs/{name}/view?node_threshold=&edge_threshold=&budget=   a pruned view (viewer JSON): at most
                                                `budget` features and errors (default 100, 0: all), capped in size
  GET  /api/graphs/{name}/node/{node_id}        a node, its strongest inputs and outputs, its feature page if indexed
  GET  /api/graphs/{name}/extras                what was measured beside it (QK split, inactive and inhibitory
                                                features, from `glasswork attribute`), every node named labelled
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
  GET  /api/vision                              the vision feature indexes in DIR/vision (`glasswork vision`)
  GET  /api/vision/{name}/units?kind=unit|feature&order=entropy|weighted|frequency|id   units or features, listed
  GET  /api/vision/{name}/units/{kind}/{id}     one's page: statistics, histogram, top patches with boxes
  GET  /api/vision/{name}/image/{patch|source|vis}/{key}   a stored PNG
Bad input answers 4xx with {"detail": "..."}: names with slashes or '..', bodies over the cap, wrong JSON types.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ..io import GlassworkError
from . import feature_routes, graph_routes, model_routes, vision_routes
from .graphs import GraphStore
from .jobs import Jobs
from .resources import Resources
from .security import Guard
from .site import Site

STATIC = Path(__file__).parent / "static"
PAGES = {"/": "index.html", "/graph": "graph.html", "/features": "features.html", "/steer": "steer.html",
         "/vision": "vision.html"}


def create_app(workdir: str | Path, model=None, dictionaries: list[str | Path] = (), hosts: set[str] | None = None,
               max_body: int = 1 << 20, upload_body: int = 256 << 20, max_nodes: int = 2500,
               max_links: int = 25000) -> FastAPI:
    """The app over `workdir` (see resources.py for its layout). `model`: a Model or a name (default: loaded on
    first use from the dictionary's config). `hosts`: Host header names accepted (None: any). `max_body`: request
    bytes (uploads: `upload_body`). Views carry at most `max_nodes` nodes and `max_links` links."""
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    app = FastAPI(title="Glasswork", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.site = Site(root, Resources(root, model, [Path(d) for d in dictionaries]),
                          GraphStore(root / "graphs", max_nodes, max_links), Jobs())

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
    for routes in (graph_routes, feature_routes, model_routes, vision_routes):
        app.include_router(routes.router)
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
