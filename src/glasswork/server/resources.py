"""What a server reads from its folder: dictionaries (and their feature indexes), directions, and one model, each
opened on first use and kept. Folder layout (all optional):

  DIR/graphs/         NAME.safetensors (glasswork graphs), NAME.json (viewer JSON from any tool), NAME.state.json
  DIR/**/             any folder with config.json + weights.safetensors (a dictionary) or set.json (a set); a
                      features.sqlite beside a dictionary is its feature index
  DIR/directions/     NAME.safetensors + NAME.json (from `glasswork direction`)
Pages name dictionaries and indexes by their path relative to DIR, looked up in what was found: never opened as paths.
"""
from __future__ import annotations

import threading
from pathlib import Path

from ..dictionaries.saving import SET_INDEX, is_set, layer_folder, set_members
from ..io import GlassworkError, read_json
from .security import within

MAX_DEPTH = 4


def scan(root: Path, extra: list[Path] = ()) -> dict[str, Path]:
    """{key: folder} of dictionaries and sets under `root` (members of a set are listed with the set too)."""
    found: dict[str, Path] = {}

    def walk(folder: Path, depth: int):
        if is_set(folder) or (folder / "config.json").is_file() and \
                (folder / "weights.safetensors").is_file():
            found[_key(root, folder)] = folder
        if depth >= MAX_DEPTH:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            if within([root], child):  # a symlink out of the folder is not served
                walk(child, depth + 1)
    walk(root, 0)
    for folder in extra:
        folder = Path(folder)
        found[_key(root, folder)] = folder
        if is_set(folder):
            for name in set_members(folder):
                found[_key(root, folder / name)] = folder / name
    return found


def _key(root: Path, folder: Path) -> str:
    try:
        return folder.resolve().relative_to(root.resolve()).as_posix() or "."
    except ValueError:
        return folder.resolve().as_posix()


def describe(folder: Path) -> dict:
    """Kind, layer, hooks and whether a feature index is there, for the page's menus."""
    from ..features.index import index_path
    if is_set(folder):
        s = read_json(folder / SET_INDEX, "dictionary set index")
        members = set_members(folder)
        kinds = {m.get("kind") for m in members.values()}
        return {"kind": "set", "member_kind": "/".join(sorted(k for k in kinds if k)), "model": s.get("model", ""),
                "layers": sorted(m["layer"] for m in members.values() if m.get("layer") is not None),
                "has_index": False}
    cfg = read_json(folder / "config.json", "dictionary config")
    return {"kind": cfg.get("kind"), "model": cfg.get("model", ""), "layer": cfg.get("layer"),
            "hook_in": cfg.get("hook_in"), "hook_out": cfg.get("hook_out"), "d_sae": cfg.get("d_sae"),
            "has_index": index_path(folder).exists()}


class Resources:
    """Model, dictionaries, indexes: opened once, shared by requests (reads are thread-safe; model work is not,
    so it holds `compute`)."""

    def __init__(self, root: Path, model=None, dictionaries: list[Path] = ()):
        self.root = Path(root)
        self.extra = [Path(d) for d in dictionaries]
        self._model = model if not isinstance(model, str) else None
        self._model_name = model if isinstance(model, str) else None
        self._dicts: dict[str, object] = {}
        self._indexes: dict[Path, object] = {}
        self.lock = threading.RLock()  # held by every request that reads an index or runs the model
        self.compute = threading.Lock()

    def dictionaries(self) -> dict[str, Path]:
        return scan(self.root, self.extra)

    def allowed(self, path: Path) -> bool:
        """Inside the served folder or a dictionary folder the server was started with (symlinks resolved)."""
        return within([self.root, *self.extra], path)

    def folder(self, key: str) -> Path:
        found = self.dictionaries()
        if key not in found:
            raise KeyError(key)
        return found[key]

    def model(self, hint: str | None = None):
        with self.lock:
            if self._model is None:
                from ..models import load_model
                self._model = load_model(self._model_name or hint or None)
            return self._model

    def dictionary(self, folder: Path, layer: int | None = None):
        """One SparseCoder (a set's member for `layer`) and its folder."""
        from ..dictionaries import load
        folder = layer_folder(folder, layer) if layer is not None else folder
        if is_set(folder):
            raise GlassworkError(f"{folder} is a set of dictionaries: say which layer")
        with self.lock:
            key = folder.resolve()
            if key not in self._dicts:
                self._dicts[key] = load(folder).requires_grad_(False)
            return self._dicts[key], folder

    def coders(self, folder: Path):
        from ..dictionaries.saving import load_coders
        with self.lock:
            key = ("coders", folder.resolve())
            if key not in self._dicts:
                self._dicts[key] = load_coders(folder)
            return self._dicts[key]

    def index(self, folder: Path):
        """The FeatureIndex beside a dictionary folder, or None when it has none."""
        from ..features.index import FeatureIndex, index_path
        path = index_path(folder).resolve()
        with self.lock:
            if path not in self._indexes:
                if not path.exists() or not self.allowed(path):  # SQLite's side files go where the index is
                    return None
                self._indexes[path] = FeatureIndex(path)
            return self._indexes[path]

    def directions(self) -> dict[str, Path]:
        d = self.root / "directions"
        return {p.stem: p for p in sorted(d.glob("*.json"))} if d.is_dir() else {}
