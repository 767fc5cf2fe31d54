"""`Site`: what every route of one app shares (its folder, resources, graph store, jobs) and the lookups routes have
in common: a graph by name, a dictionary by key, the feature index of a graph's layer, readable node labels. One
`Site` per app, on `app.state.site`; a route asks for it with `site: Site = Depends(site_of)` (no closures).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict

from ..circuits.graph import NOT_FEATURES, parse_feature_id
from ..features.scoring import ensure_labels
from ..io import GlassworkError
from .graphs import GraphStore
from .jobs import Jobs
from .resources import Resources
from .security import check_name

BUSY_SECONDS = 300  # a request waits this long for the model before answering 503


class Body(BaseModel):
    """A request body: NaN / Infinity in it is a 422 naming the field."""
    model_config = ConfigDict(allow_inf_nan=False)


def site_of(request: Request) -> "Site":
    return request.app.state.site


@dataclass
class Site:
    root: Path  # WORKDIR
    res: Resources
    store: GraphStore
    jobs: Jobs

    # --- lookups that answer 404 -------------------------------------------------------------------------------------
    def graph_or_404(self, name: str) -> str:
        check_name(name)
        if self.store.path(name) is None:
            raise HTTPException(404, f"no graph named '{name}' in {self.store.folder}")
        return name

    def folder_or_404(self, key: str) -> Path:
        """The dictionary folder served under `key`."""
        try:
            return self.res.folder(key)
        except KeyError:
            raise HTTPException(404, f"no dictionary '{key[:200]}' under {self.root}") from None

    def index_or_404(self, key: str, layer: int | None = None):
        """The feature index of dictionary `key` (of its `layer` for a set or a CLT)."""
        from ..features.index import layer_index_path
        index = self.res.index(layer_index_path(self.folder_or_404(key), layer))
        if index is None:
            raise HTTPException(404, f"dictionary '{key}' has no feature index (run `glasswork features build`)")
        return index

    @contextmanager
    def model_time(self) -> Iterator[None]:
        """Hold the model for one request's work (one at a time), or answer 503 after waiting BUSY_SECONDS."""
        if not self.res.compute.acquire(timeout=BUSY_SECONDS):
            raise HTTPException(503, "the model is busy with another job; try again")
        try:
            yield
        finally:
            self.res.compute.release()

    # --- a graph's dictionary and its features -----------------------------------------------------------------------
    def resolve_dictionary(self, dictionary: str) -> Path | None:
        """A graph's dictionary: a path relative to the graph's folder (how glasswork records it), else to WORKDIR, or
        absolute; served only when it lies inside WORKDIR or a --dictionary folder (never a path elsewhere)."""
        if not dictionary:
            return None
        folder = Path(dictionary)
        for candidate in ([folder] if folder.is_absolute() else [self.store.folder / folder, self.root / folder]):
            if candidate.exists() and self.res.allowed(candidate):
                return candidate
        return None

    def layer_index(self, dictionary: str, layer: int):
        """The feature index of one layer of a graph's dictionary (a set member, a CLT layer), or None."""
        from ..features.index import layer_index_path
        folder = self.resolve_dictionary(dictionary)
        if folder is None:
            return None
        try:
            return self.res.index(layer_index_path(folder, layer))
        except GlassworkError:
            return None

    def name_features(self, dictionary: str, nodes: list[dict]) -> None:
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
            index = self.layer_index(dictionary, layer)
            labels = {}
            if index is not None:
                with self.res.lock:
                    labels = ensure_labels(index, [f for _, f in pairs], limit=40)  # a request stays short
            for n, f in pairs:
                n["clerp"] = labels.get(f) or f"L{layer} #{f}"

    def feature_of(self, dictionary: str, node: dict):
        """The feature page of a graph node when its layer's feature index exists: (record, where it is served)."""
        parsed = parse_feature_id(node.get("node_id", ""))
        if not dictionary or not parsed or node.get("feature_type") in NOT_FEATURES:
            return None, None
        layer, feat, _ = parsed
        index = self.layer_index(dictionary, layer)
        if index is None or not 0 <= feat < index.d_sae:
            return None, None
        with self.res.lock:
            rec = index.feature(feat)
        per_layer_file = index.path.name != "features.sqlite"  # a CLT layer: the page needs the layer too
        return rec, {"path": str(index.path), "key": self.index_key(index.path),
                     "layer": layer if per_layer_file else None}

    def index_key(self, path: Path) -> str | None:
        """The dictionary key (and layer) under which /api/features serves this index."""
        for key, folder in self.res.dictionaries().items():
            if folder.resolve() == path.parent.resolve():
                return key
        return None

    def node_records(self, name: str, ids: list[str]) -> list[dict]:
        """Graph `name`'s nodes `ids` as viewer records, with the names a person gave them, else their labels."""
        try:
            recs = self.store.records(name, ids)
        except KeyError as e:
            raise HTTPException(404, f"graph '{name}' has no node '{str(e)[:200]}'") from None
        names = self.store.state(name).get("names", {})
        recs = [{**r, "clerp": names.get(r["node_id"], r.get("clerp", ""))} for r in recs]
        self.name_features(self.store.dictionary_of(name), recs)
        return recs
