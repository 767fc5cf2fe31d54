"""The vision feature index: one SQLite file per (model, hook, dictionary) with each unit's and each feature's
statistics, its top patches and its visualization. The web app's /vision page reads it (server/vision_routes.py).

Every image is stored once at its own resolution (the page enlarges it and draws the boxes):
  meta(key, value JSON)
  sources(name, png, scale)                      each source image, shrunk (scale: shrunk px per source px)
  patches(id, source, top, left, side, flipped, png)    each held-out patch and where it was cut from its source
  units(kind, id, frequency, max_act, entropy, weighted_entropy, top_source, histogram JSON, vis png)
  examples(kind, id, rank, patch, activation, row, col, rf_top, rf_left, rf_bottom, rf_right)
kind: 'unit' (a channel of the layer) | 'feature' (a dictionary latent); (row, col): the best position, rf_*: its
receptive field in the patch, inclusive."""
from __future__ import annotations

import io
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io import GlassworkError

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE sources (name TEXT PRIMARY KEY, png BLOB, scale REAL);
CREATE TABLE patches (id INTEGER PRIMARY KEY, source TEXT, top INTEGER, "left" INTEGER, side INTEGER,
                      flipped INTEGER, png BLOB);
CREATE TABLE units (kind TEXT, id INTEGER, frequency REAL, max_act REAL, entropy REAL, weighted_entropy REAL,
                    top_source TEXT, histogram TEXT, vis BLOB, PRIMARY KEY (kind, id));
CREATE TABLE examples (kind TEXT, id INTEGER, rank INTEGER, patch INTEGER, activation REAL, row INTEGER, col INTEGER,
                       rf_top INTEGER, rf_left INTEGER, rf_bottom INTEGER, rf_right INTEGER,
                       PRIMARY KEY (kind, id, rank));
"""
UNIT_FIELDS = ("id", "frequency", "max_act", "entropy", "weighted_entropy", "top_source")


def png(image: torch.Tensor | np.ndarray, scale: int = 1) -> bytes:
    """An image [h, w, 3] in 0..1 as PNG bytes, enlarged `scale` times by pixel repetition."""
    from PIL import Image
    a = torch.as_tensor(np.asarray(image)).float().clamp(0, 1)
    if scale > 1:
        a = a.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    buf = io.BytesIO()
    Image.fromarray((a.numpy() * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def outline(image: torch.Tensor, box: tuple[int, int, int, int], colour=(1.0, 0.85, 0.0), scale: int = 4) -> torch.Tensor:
    """image [h, w, 3] enlarged `scale` times with box (top, left, bottom, right), inclusive, drawn around."""
    a = image.float().repeat_interleave(scale, 0).repeat_interleave(scale, 1).clone()
    t, l, b, r = (box[0] * scale, box[1] * scale, (box[2] + 1) * scale - 1, (box[3] + 1) * scale - 1)
    c = torch.tensor(colour)
    for d in range(max(1, scale // 2)):  # lines scale/2 pixels thick, drawn inwards
        a[t + d, l:r + 1], a[b - d, l:r + 1], a[t:b + 1, l + d], a[t:b + 1, r - d] = c, c, c, c
    return a


def shrink(source: np.ndarray, longest: int = 160) -> tuple[torch.Tensor, float]:
    """A source image [h, w, 3] shrunk so its longest side is at most `longest` pixels, and the scale used."""
    img = torch.from_numpy(np.ascontiguousarray(source)).float()
    h, w = img.shape[:2]
    s = min(1.0, longest / max(h, w))
    small = F.interpolate(img.permute(2, 0, 1)[None], size=(max(1, round(h * s)), max(1, round(w * s))),
                          mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0).clamp(0, 1)
    return small, s


def write_index(path: str | Path, meta: dict, sources: list[dict], patches: list[dict], units: list[dict],
                examples: list[dict]) -> Path:
    """Write the index atomically (a temp file renamed over `path`); rows are dicts named as the SCHEMA's columns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        con.executescript(SCHEMA)
        con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        con.executemany("INSERT INTO sources VALUES (:name, :png, :scale)", sources)
        con.executemany("INSERT INTO patches VALUES (:id, :source, :top, :left, :side, :flipped, :png)", patches)
        con.executemany("INSERT INTO units VALUES (:kind, :id, :frequency, :max_act, :entropy, :weighted_entropy, "
                        ":top_source, :histogram, :vis)", [{**u, "histogram": json.dumps(u["histogram"])} for u in units])
        con.executemany("INSERT INTO examples VALUES (:kind, :id, :rank, :patch, :activation, :row, :col, :rf_top, "
                        ":rf_left, :rf_bottom, :rf_right)", examples)
        con.commit()
    finally:
        con.close()
    os.replace(tmp, path)
    return path


class VisionIndex:
    """Read access to one vision index file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise GlassworkError(f"{self.path}: vision feature index not found")
        try:
            self.con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self.meta = {k: json.loads(v) for k, v in self.con.execute("SELECT key, value FROM meta")}
        except sqlite3.DatabaseError as e:
            raise GlassworkError(f"{self.path}: not a vision feature index ({e})") from None

    def list(self, kind: str, order: str = "entropy", limit: int = 200) -> list[dict]:
        if kind not in ("unit", "feature"):
            raise GlassworkError(f"kind must be 'unit' or 'feature' (got '{kind}')")
        column = {"entropy": "entropy ASC, weighted_entropy ASC", "weighted": "weighted_entropy ASC",
                  "frequency": "frequency DESC", "id": "id ASC"}.get(order)
        if column is None:
            raise GlassworkError(f"order must be entropy, weighted, frequency or id (got '{order}')")
        # id breaks ties, so a shorter limit gives a prefix of a longer one
        rows = self.con.execute(f"SELECT {', '.join(UNIT_FIELDS)} FROM units WHERE kind = ? ORDER BY {column}, "
                                "id ASC LIMIT ?", (kind, limit)).fetchall()
        return [dict(zip(UNIT_FIELDS, r)) for r in rows]

    def page(self, kind: str, unit: int) -> dict | None:
        row = self.con.execute(f"SELECT {', '.join(UNIT_FIELDS)}, histogram, vis IS NOT NULL FROM units "
                               "WHERE kind = ? AND id = ?", (kind, unit)).fetchone()
        if row is None:
            return None
        cols = ("rank", "patch", "activation", "row", "col", "rf_top", "rf_left", "rf_bottom", "rf_right", "source",
                "top", "left", "side", "flipped", "scale")
        examples = self.con.execute(
            "SELECT e.rank, e.patch, e.activation, e.row, e.col, e.rf_top, e.rf_left, e.rf_bottom, e.rf_right, "
            "p.source, p.top, p.\"left\", p.side, p.flipped, s.scale FROM examples e JOIN patches p ON p.id = e.patch "
            "JOIN sources s ON s.name = p.source WHERE e.kind = ? AND e.id = ? ORDER BY e.rank", (kind, unit)).fetchall()
        return {"kind": kind, **dict(zip(UNIT_FIELDS, row[:len(UNIT_FIELDS)])),
                "histogram": json.loads(row[len(UNIT_FIELDS)]), "has_vis": bool(row[-1]),
                "examples": [dict(zip(cols, e)) for e in examples]}

    def image(self, what: str, key: str) -> bytes | None:
        """PNG bytes: what = 'patch' (key: patch id), 'source' (key: name) or 'vis' (key: 'unit.3' / 'feature.7')."""
        if what == "patch":
            row = self.con.execute("SELECT png FROM patches WHERE id = ?", (int(key),)).fetchone()
        elif what == "source":
            row = self.con.execute("SELECT png FROM sources WHERE name = ?", (key,)).fetchone()
        elif what == "vis":
            kind, _, unit = key.partition(".")
            row = self.con.execute("SELECT vis FROM units WHERE kind = ? AND id = ?", (kind, int(unit))).fetchone()
        else:
            raise GlassworkError(f"image must be patch, source or vis (got '{what}')")
        return row[0] if row else None
