"""The graph viewer's routes (/api/graphs/...): list, pruned views, a node and its neighbours, subgraphs, supernode
suggestions, interventions on the graph's prompt, the viewer's saved state, and adding viewer JSON from elsewhere."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Literal, Optional

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import Field

from ..circuits.graph import parse_feature_id, view_features
from .security import check_name
from .site import Body, Site, site_of

router = APIRouter(prefix="/api/graphs")


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


@router.get("")
def list_graphs(site: Site = Depends(site_of)):
    return {"graphs": site.store.names(), "folder": str(site.store.folder)}


@router.get("/{name}/view")
def view(name: str, node_threshold: float = Query(0.8, gt=0, le=1), edge_threshold: float = Query(0.98, gt=0, le=1),
         budget: int = Query(100, ge=0, le=1_000_000), site: Site = Depends(site_of)):
    t0 = time.perf_counter()
    out = site.store.view(site.graph_or_404(name), node_threshold, edge_threshold, budget or None)
    if len(out["nodes"]) <= 5000:  # hover labels: the feature labels from the index, where there is one
        out["nodes"] = [dict(n) for n in out["nodes"]]
        site.name_features(site.store.dictionary_of(name), [n for n in out["nodes"] if n.get("feature_type") not in
                                                            ("embedding", "logit")])
    out["metadata"] = {**out["metadata"], "served_seconds": round(time.perf_counter() - t0, 4)}
    return out


@router.get("/{name}/node/{node_id}")
def node(name: str, node_id: str, top: int = Query(12, ge=1, le=100), site: Site = Depends(site_of)):
    site.graph_or_404(name)
    if len(node_id) > 200:
        raise HTTPException(400, "node id longer than 200 characters")
    try:
        out = site.store.node(name, node_id, top)
    except KeyError:
        raise HTTPException(404, f"graph '{name}' has no node '{node_id}'") from None
    dictionary = site.store.dictionary_of(name)
    site.name_features(dictionary, [out["node"]])  # the node's own label first: it may be made here
    out["feature"], out["feature_index"] = site.feature_of(dictionary, out["node"])
    site.name_features(dictionary, [out["node"], *out["inputs"], *out["outputs"]])
    return out


@router.get("/{name}/extras")
def extras(name: str, site: Site = Depends(site_of)):
    """What `glasswork attribute` measured beside the graph, where it did: the attention (QK) split, the inactive
    features that would move the target, what inhibits each target; with a label for every node they name."""
    meta = site.store.metadata_of(site.graph_or_404(name))
    qk, inactive, inhibitory = meta.get("qk"), meta.get("inactive"), meta.get("inhibitory")
    tokens = meta.get("str_tokens") or meta.get("prompt_tokens") or []
    ids = set()
    for h in (qk or {}).get("heads", []):
        for k in h["keys"]:
            ids |= {x[side] for x in k["pairs"] for side in ("query", "key")}
            ids |= {x["node"] for x in k["query_nodes"] + k["key_nodes"]}
    ids |= {x["node"] for x in (inactive or {}).get("features", [])}
    ids |= {x["node"] for t in inhibitory or [] for x in t["nodes"]}
    nodes = [{"node_id": i, "feature_type": _node_kind(i)} for i in sorted(ids)]
    site.name_features(site.store.dictionary_of(name), [n for n in nodes if n["feature_type"] != "embedding"])
    for n in nodes:
        if n["feature_type"] == "embedding":  # E_{token}_{pos}: the token itself
            pos = int(n["node_id"].rsplit("_", 1)[1])
            n["clerp"] = f"token {tokens[pos]!r}" if pos < len(tokens) else n["node_id"]
        elif n["node_id"] == "bias":
            n["clerp"] = "constant"  # biases, b_dec, position embeddings: what no node carries
    return {"qk": qk, "inactive": inactive, "inhibitory": inhibitory, "tokens": tokens,
            "labels": {n["node_id"]: n.get("clerp", n["node_id"]) for n in nodes}}


def _node_kind(node_id: str) -> str:
    if node_id.startswith("err_"):
        return "mlp reconstruction error"
    if node_id.startswith("E_"):
        return "embedding"
    return "bias" if node_id == "bias" else "transcoder"


@router.post("/{name}/subgraph")
def subgraph(name: str, body: Subgraph, site: Site = Depends(site_of)):
    site.graph_or_404(name)
    try:
        sg = site.store.subgraph(name, body.nodes, body.supernodes)
    except KeyError as e:
        raise HTTPException(404, f"graph '{name}' has no node '{str(e)[:200]}'") from None
    return {**sg, "nodes": site.node_records(name, sg["nodes"])}


@router.get("/{name}/suggestions")
def suggestions(name: str, node_threshold: float = Query(0.8, gt=0, le=1),
                edge_threshold: float = Query(0.98, gt=0, le=1), budget: int = Query(100, ge=0, le=1_000_000),
                min_similarity: float = Query(0.5, ge=-1, le=1), site: Site = Depends(site_of)):
    from ..circuits.supernodes import suggest_in_view
    store = site.store
    v = store.view(site.graph_or_404(name), node_threshold, edge_threshold, budget or None)
    feats = [dict(n) for n in view_features(v)]
    site.name_features(store.dictionary_of(name), feats)
    ids = [n["node_id"] for n in feats]
    found = suggest_in_view(v, feats, store.profiles(name, ids), store.effects(name, ids), min_similarity)
    return {"suggestions": found, "features": len(feats), "min_similarity": min_similarity}


@router.post("/{name}/intervene")
def graph_intervene(name: str, body: GraphIntervention, site: Site = Depends(site_of)):
    """Set or ablate graph features on the graph's own prompt and transcoders: the top next-token logits before
    and after (as `glasswork intervene`), and a short generation with the edit."""
    from ..circuits import Edit, generate, intervene_logits
    site.graph_or_404(name)
    edits = []
    for nid in body.node_ids:
        parsed = parse_feature_id(nid)
        if not parsed:
            raise HTTPException(400, f"node '{nid[:200]}' is not a feature node (LAYER_FEATURE_POS): only features "
                                     f"can be set or ablated")
        layer, feat, pos = parsed
        edits.append(Edit(layer, feat, [pos], None if body.scale is not None else body.value, body.scale))
    folder = site.resolve_dictionary(site.store.dictionary_of(name))
    if folder is None:
        raise HTTPException(400, f"graph '{name}' names no dictionary folder inside {site.root}: cannot intervene")
    prompt = site.store.metadata_of(name).get("prompt", "")
    if not prompt:
        raise HTTPException(400, f"graph '{name}' has no prompt in its metadata")
    with site.model_time():
        t0 = time.time()
        coders = site.res.coders(folder)  # per-layer transcoders {layer: coder} or one CLT
        cfg = next(iter(coders.values())).cfg if isinstance(coders, dict) else coders.cfg
        model = site.res.model(cfg.model or None)
        out = intervene_logits(model, coders, prompt, edits, mode=body.mode)
        out.pop("logits_after")
        out["token_strings"] = model.to_str_tokens(out["tokens"])
        if body.generate:
            out["plain"] = generate(model, coders, prompt, [], body.generate)
            out["generated"] = generate(model, coders, prompt, edits, body.generate)
        return {**out, "prompt": prompt, "mode": body.mode, "seconds": round(time.time() - t0, 3)}


@router.put("/{name}/state")
def save_state(name: str, state: State, site: Site = Depends(site_of)):
    site.graph_or_404(name)
    saved = site.store.save_state(name, state.model_dump())
    return {"saved": True, "state": saved}


@router.post("/upload")
def upload(body: Upload, site: Site = Depends(site_of)):
    name = check_name(body.name)
    path = site.store.add_json(name, body.graph)
    return {"name": name, "path": str(path)}


@router.post("/open")
def open_file(body: OpenFile, site: Site = Depends(site_of)):
    from ..io import read_json
    if "\x00" in body.path:
        raise HTTPException(400, "path: a NUL byte is not allowed in a path")
    p = Path(body.path).expanduser()
    p = p if p.is_absolute() else site.root / p
    if not site.res.allowed(p):
        raise HTTPException(400, f"{body.path[:200]}: only files inside {site.root} can be opened (upload others)")
    if p.suffix != ".json" or not p.is_file():
        raise HTTPException(400, f"{body.path}: expected an existing .json file (viewer JSON in the "
                                 f"attribution-graph schema)")
    name = check_name(body.name or re.sub(r"[^A-Za-z0-9._-]", "-", p.stem).strip(".-")[:128] or "graph")
    path = site.store.add_json(name, read_json(p, "graph JSON"))
    return {"name": name, "path": str(path)}
