"""The feature browser's routes: what WORKDIR holds (/api/dictionaries, /api/directions) and the feature index of a
dictionary (/api/features/...): search by label, text or token, the most frequent live features, a feature's page."""
from __future__ import annotations

from typing import Literal, Optional

from fastapi import APIRouter, Depends, Query

from ..io import GlassworkError, read_json
from .resources import describe
from .site import Site, site_of

router = APIRouter(prefix="/api")


@router.get("/dictionaries")
def list_dictionaries(site: Site = Depends(site_of)):
    out = []
    for key, folder in site.res.dictionaries().items():
        try:
            out.append({"key": key, **describe(folder)})
        except GlassworkError as e:
            out.append({"key": key, "error": str(e)})
    return {"dictionaries": out}


@router.get("/directions")
def list_directions(site: Site = Depends(site_of)):
    return {"directions": [{"name": k, **{x: read_json(p).get(x) for x in ("hook", "kind", "model", "norm")}}
                           for k, p in site.res.directions().items()]}


@router.get("/features/search")
def search(index: str = Query(..., max_length=1000), q: str = Query(..., min_length=1, max_length=200),
           mode: Literal["label", "text", "token"] = "text", limit: int = Query(20, ge=1, le=200),
           layer: Optional[int] = Query(None, ge=0, le=10_000), site: Site = Depends(site_of)):
    fi = site.index_or_404(index, layer)
    with site.res.lock:
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


@router.get("/features/top")
def top_features(index: str = Query(..., max_length=1000), limit: int = Query(30, ge=1, le=500),
                 layer: Optional[int] = Query(None, ge=0, le=10_000), site: Site = Depends(site_of)):
    """The most frequent live features, labelled ones first: what a person sees before searching."""
    fi = site.index_or_404(index, layer)
    with site.res.lock:
        labels = fi.labels()
        rows = fi.live_by_frequency()
    rows = sorted(rows, key=lambda r: (r[0] not in labels, -r[1]))[:limit]
    return {"features": [{"feature": f, "freq": q, "label": labels.get(f, "")} for f, q in rows]}


@router.get("/features/{feature}")
def feature_page(feature: int, index: str = Query(..., max_length=1000),
                 layer: Optional[int] = Query(None, ge=0, le=10_000), site: Site = Depends(site_of)):
    fi = site.index_or_404(index, layer)
    with site.res.lock:
        rec = fi.feature(fi.check_id(feature))
        meta = {k: fi.meta.get(k) for k in ("model", "hook", "kind", "d_sae", "n_tokens", "hist_edges")}
    return {**rec, "meta": meta, "global": _global(site, site.folder_or_404(index), layer, feature)}


def _global(site: Site, folder, layer: int | None, feature: int) -> dict | None:
    """The feature's top upstream and downstream features across a prompt set (`glasswork global`), labelled: from
    global.sqlite beside a CLT, or in the set a per-layer transcoder belongs to."""
    from ..circuits.global_circuits import GLOBAL_DB, global_neighbors
    if layer is None:  # a set member: its layer from its config, the database in the set's folder
        cfg = folder / "config.json"
        layer = read_json(cfg, "dictionary config").get("layer") if cfg.is_file() else None
        folder = folder.parent
    if layer is None or not (folder / GLOBAL_DB).exists():
        return None
    out = global_neighbors(folder, layer, feature)
    nodes = [{"node_id": f"{x['layer']}_{x['feature']}_0", "feature_type": "transcoder"}
             for x in out["upstream"] + out["downstream"]]
    site.name_features(str(folder.resolve()), nodes)
    for x, n in zip(out["upstream"] + out["downstream"], nodes):
        x["label"] = n["clerp"]
    return out
