"""The vision pages' routes: the feature indexes in WORKDIR/vision/*.db (made by `glasswork vision`), a list of
units or features, one's page, and the stored images (patches, source images, visualizations) as PNG."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response

from ..io import GlassworkError
from ..vision.index import VisionIndex
from .security import check_name
from .site import Site, site_of

router = APIRouter(prefix="/api/vision")


def _index(site: Site, name: str) -> VisionIndex:
    check_name(name, "vision index name")
    path = site.root / "vision" / f"{name}.db"
    if not path.exists():
        raise HTTPException(404, f"no vision index '{name}' in {site.root / 'vision'} (run `glasswork vision`)")
    return VisionIndex(path)


@router.get("")
def list_indexes(site: Site = Depends(site_of)):
    out = []
    for path in sorted((site.root / "vision").glob("*.db")):
        try:
            out.append({"name": path.stem, **VisionIndex(path).meta})
        except GlassworkError as e:
            out.append({"name": path.stem, "error": str(e)})
    return {"indexes": out}


@router.get("/{name}/units")
def list_units(name: str, kind: Literal["unit", "feature"] = "feature",
               order: Literal["entropy", "weighted", "frequency", "id"] = "entropy",
               limit: int = Query(200, ge=1, le=5000), site: Site = Depends(site_of)):
    return {"units": _index(site, name).list(kind, order, limit)}


@router.get("/{name}/units/{kind}/{unit}")
def unit_page(name: str, kind: Literal["unit", "feature"], unit: int, site: Site = Depends(site_of)):
    page = _index(site, name).page(kind, unit)
    if page is None:
        raise HTTPException(404, f"vision index '{name}' has no {kind} {unit}")
    return page


@router.get("/{name}/image/{what}/{key}")
def image(name: str, what: Literal["patch", "source", "vis"], key: str, site: Site = Depends(site_of)):
    check_name(key, "image key")
    try:
        data = _index(site, name).image(what, key)
    except ValueError:
        raise HTTPException(400, f"image key '{key}' is not valid for '{what}'") from None
    if data is None:
        raise HTTPException(404, f"vision index '{name}' has no {what} image '{key}'")
    return Response(data, media_type="image/png")
