"""Activation store: activations at chosen hook points over a corpus, harvested once to disk, read back in shuffled
batches with bounded memory.

Batch format (what the trainer and every reader consumes): a dict {hook_name: FloatTensor [batch, d]} whose rows are
the SAME token positions for every hook (a transcoder needs mlp_in and mlp_out of one token together).
`ActivationStore.batches(...)` and `stream_activations(...)` (straight from the model, no disk) both yield it.

On disk (DIR):
- shard-00000.safetensors ...: one tensor per hook [rows, d] (fp32 or bf16) and "token_ids" [rows] (int64). A shard
  holds whole contexts, so a row's position in its context is row % ctx_len (position 0 = BOS).
- manifest.json: "config" (model, hooks, dtype, ctx_len, tokens, source, seed, batch_size, shard_contexts: what a
  resumed harvest must match), "dims" {hook: d}, "shards" [{file, rows, bytes, sha256, norm_sums}], "mean_norm"
  {hook: mean L2 norm over non-BOS rows}, "n_rows", "complete", "glasswork_version".
Shards are written atomically and the manifest is rewritten after each one, so a harvest killed at any moment resumes
with the same command at the first missing shard, and the result is bitwise the store an uninterrupted run makes."""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..io import GlassworkError, load_tensors, read_json, require_keys, save_tensors, write_json

MANIFEST = "manifest.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class HarvestConfig:
    model: str
    hooks: list[str]
    tokens: int
    ctx_len: int = 128
    batch_size: int = 16  # contexts per model forward
    dtype: str = "fp32"  # storage dtype: fp32 | bf16
    source: str = "default"  # corpus source (see glasswork.data.corpus), or "ids:<sha256>" for given token ids
    split: str = "train"
    seed: int = 0
    shard_contexts: int = 0  # contexts per shard (0: about 64 MB per shard)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_name(model) -> str:
    return model if isinstance(model, str) else model.name


# ---------------------------------------------------------------------------------------------------- harvesting

def _check_hooks(model, hooks: list[str]) -> None:
    """Unknown names raise a GlassworkError that lists the valid ones."""
    from ..hooks import parse
    if not hooks:
        raise GlassworkError("--hooks: give at least one hook point, e.g. blocks.6.hook_resid_post")
    for h in hooks:
        parse(model, h)
    if len(set(hooks)) != len(hooks):
        raise GlassworkError(f"--hooks: a hook point is named twice ({hooks})")


@torch.no_grad()
def harvest(model, hooks: list[str], out: str | os.PathLike, tokens: int, ctx_len: int = 128, batch_size: int = 16,
            dtype: str = "fp32", source: str = "default", split: str = "train", seed: int = 0,
            shard_contexts: int = 0, ids: torch.Tensor | None = None, field: str = "text",
            fail_after_shards: int | None = None) -> Path:
    """Run the model over `tokens` tokens of a corpus and store the activations at `hooks` in `out`.

    `ids` [n, ctx_len] gives the token contexts directly instead of a corpus source. Re-running with the same
    arguments resumes (or returns at once when complete); other arguments against an existing store raise.
    `fail_after_shards` (tests) raises after writing that many shards, as a kill would stop it."""
    from ..hooks import capture
    from ..progress import progress
    out = Path(out)
    if dtype not in DTYPES:
        raise GlassworkError(f"--dtype '{dtype}': expected one of {', '.join(DTYPES)}")
    if tokens <= 0 or batch_size <= 0:
        raise GlassworkError(f"--tokens and --batch-size must be positive (got {tokens}, {batch_size})")
    _check_hooks(model, hooks)
    if ids is not None:
        if ids.ndim != 2 or ids.shape[1] != ctx_len:
            raise GlassworkError(f"ids: expected token contexts [n, {ctx_len}], got {list(ids.shape)}")
        source = "ids:" + hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest()[:16]
    n_ctx = -(-tokens // ctx_len)
    if not shard_contexts:  # about 64 MB of activations per shard, whole forward batches
        row_bytes = model.d_model * len(hooks) * (2 if dtype == "bf16" else 4)
        shard_contexts = max(batch_size, (64 << 20) // (row_bytes * ctx_len) // batch_size * batch_size)
    cfg = HarvestConfig(model=model.name, hooks=list(hooks), tokens=n_ctx * ctx_len, ctx_len=ctx_len,
                        batch_size=batch_size, dtype=dtype, source=str(source), split=split, seed=seed,
                        shard_contexts=shard_contexts)
    manifest = _start_manifest(out, cfg)
    if manifest["complete"]:
        return out
    for tmp in out.glob(".*.tmp"):  # half-written files of a killed run (atomic writes never left them in place)
        tmp.unlink()
    if ids is None:
        from .corpus import contexts
        ids = contexts(model, source, ctx_len, split, seed, n_contexts=n_ctx, field=field)
    ids = ids[:n_ctx]
    if len(ids) < n_ctx:
        raise GlassworkError(f"ids: {len(ids)} contexts given, {n_ctx} needed for {tokens} tokens")
    n_shards = -(-n_ctx // shard_contexts)
    done = len(manifest["shards"])
    device = model.device
    store_dtype = DTYPES[dtype]
    with progress(f"harvest {out.name}", total=cfg.tokens, completed=done * shard_contexts * ctx_len) as bar:
        for s in range(done, n_shards):
            chunk = ids[s * shard_contexts:(s + 1) * shard_contexts]
            parts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
            for b in range(0, len(chunk), batch_size):
                batch = chunk[b:b + batch_size].to(device)
                _, acts = capture(model, batch, hooks, stop_early=True)
                for h in hooks:  # acts[h]: [batch, ctx_len, d] -> rows [batch * ctx_len, d]
                    parts[h].append(acts[h].reshape(-1, acts[h].shape[-1]).to("cpu", store_dtype))
                bar.advance(batch.numel())
            tensors = {h: torch.cat(p) for h, p in parts.items()}
            tensors["token_ids"] = chunk.reshape(-1).clone()
            _write_shard(out, manifest, s, tensors, ctx_len)
            if fail_after_shards is not None and s + 1 - done >= fail_after_shards:
                raise RuntimeError(f"injected failure after {fail_after_shards} shard(s)")
    manifest["complete"] = True
    write_json(out / MANIFEST, manifest)
    return out


def _start_manifest(out: Path, cfg: HarvestConfig) -> dict:
    """A fresh manifest, or the existing one when its config matches (resume); anything else raises."""
    from ..version import __version__
    path = out / MANIFEST
    if path.exists():
        manifest = _read_manifest(out)
        if manifest["config"] != asdict(cfg) and not manifest["shards"] and not manifest["complete"]:
            path.unlink()  # a harvest that failed before its first shard: its settings may be corrected freely
            return _start_manifest(out, cfg)
        if manifest["config"] != asdict(cfg):
            diff = {k: (manifest["config"].get(k), v) for k, v in asdict(cfg).items() if manifest["config"].get(k) != v}
            raise GlassworkError(f"{path}: this folder holds a store harvested with other settings "
                                 f"(field: (stored, asked) = {diff}); nothing was changed. Use another --out, "
                                 f"or the stored settings to resume")
        for i, shard in enumerate(manifest["shards"]):
            _check_size(out, shard)
        return manifest
    if out.exists() and any(out.iterdir()):
        raise GlassworkError(f"{out}: folder exists and is not an activation store (no {MANIFEST}); nothing was "
                             f"changed. Use an empty or new --out")
    manifest = {"format": "glasswork-activation-store", "glasswork_version": __version__, "config": asdict(cfg),
                "dims": {}, "shards": [], "n_rows": 0, "mean_norm": {}, "complete": False,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(path, manifest)
    return manifest


def _write_shard(out: Path, manifest: dict, index: int, tensors: dict[str, torch.Tensor], ctx_len: int) -> None:
    """Write one shard atomically, then record it (rows, size, sha256, norm sums) in the manifest."""
    name = f"shard-{index:05d}.safetensors"
    save_tensors(out / name, tensors)
    keep = torch.arange(len(tensors["token_ids"])) % ctx_len != 0  # BOS rows are outliers: left out of the norms
    hooks = [h for h in tensors if h != "token_ids"]
    manifest["shards"].append({"file": name, "rows": len(tensors["token_ids"]), "bytes": (out / name).stat().st_size,
                               "sha256": _sha256(out / name),
                               "norm_sums": {h: tensors[h][keep].float().norm(dim=-1).double().sum().item()
                                             for h in hooks}})
    manifest["dims"] = {h: tensors[h].shape[-1] for h in hooks}
    manifest["n_rows"] = sum(s["rows"] for s in manifest["shards"])
    counted = sum(s["rows"] - s["rows"] // ctx_len for s in manifest["shards"])
    manifest["mean_norm"] = {h: sum(s["norm_sums"][h] for s in manifest["shards"]) / counted for h in hooks}
    write_json(out / MANIFEST, manifest)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    m = read_json(path, "activation store manifest")
    require_keys(m, ["config", "dims", "shards", "n_rows", "complete"], path, "activation store manifest")
    require_keys(m["config"], ["model", "hooks", "ctx_len", "dtype"], path, "manifest 'config'")
    if not isinstance(m["shards"], list):
        raise GlassworkError(f"{path}: field 'shards' must be a list (got {type(m['shards']).__name__})")
    for i, shard in enumerate(m["shards"]):
        require_keys(shard, ["file", "rows", "bytes"], path, f"manifest shards[{i}]")
        if not isinstance(shard["file"], str) or "/" in shard["file"] or shard["file"].startswith("."):
            raise GlassworkError(f"{path}: shards[{i}].file must be a file name in the store (got {shard['file']!r})")
        if not all(isinstance(shard[k], int) and not isinstance(shard[k], bool) for k in ("rows", "bytes")):
            raise GlassworkError(f"{path}: shards[{i}] 'rows' and 'bytes' must be integers")
    return m


def _check_size(folder: Path, shard: dict) -> None:
    path = folder / shard["file"]
    if not path.exists():
        raise GlassworkError(f"{path}: shard listed in {folder / MANIFEST} is missing")
    size = path.stat().st_size
    if size != shard["bytes"]:
        raise GlassworkError(f"{path}: shard is {size} bytes, manifest says {shard['bytes']} (truncated or "
                             f"overwritten); harvest into a new folder")


# ---------------------------------------------------------------------------------------------------- reading

class ActivationStore:
    """A harvested store, read back. `model` (a name or Model) checks the store was made with that model."""

    def __init__(self, folder: str | os.PathLike, model=None, verify: bool = True, allow_incomplete: bool = False):
        self.folder = Path(folder)
        self.manifest = _read_manifest(self.folder)
        cfg = self.manifest["config"]
        self.config = cfg
        self.model_name: str = cfg["model"]
        self.hooks: list[str] = list(cfg["hooks"])
        self.dims: dict[str, int] = dict(self.manifest["dims"])
        self.ctx_len: int = cfg["ctx_len"]
        self.shards: list[dict] = self.manifest["shards"]
        self.n_rows: int = self.manifest["n_rows"]
        self.verify = verify  # check each shard's sha256 as it is read
        if model is not None and _model_name(model) != self.model_name:
            raise GlassworkError(f"{self.folder / MANIFEST}: store was harvested from model '{self.model_name}', "
                                 f"not '{_model_name(model)}'")
        if not self.manifest["complete"] and not allow_incomplete:
            raise GlassworkError(f"{self.folder}: harvest incomplete ({len(self.shards)} shards so far); rerun the "
                                 f"same `glasswork harvest` command to finish it")
        for shard in self.shards:
            _check_size(self.folder, shard)

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.folder)!r}, model={self.model_name!r}, hooks={self.hooks}, rows={self.n_rows})"

    @property
    def mean_norm(self) -> dict[str, float]:
        return dict(self.manifest.get("mean_norm", {}))

    def read_shard(self, i: int, hooks: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Shard i: {hook: [rows, d], "token_ids": [rows]}, checked against the manifest."""
        shard = self.shards[i]
        path = self.folder / shard["file"]
        _check_size(self.folder, shard)
        if self.verify and _sha256(path) != shard["sha256"]:
            raise GlassworkError(f"{path}: shard is corrupt (sha256 differs from {self.folder / MANIFEST})")
        tensors = load_tensors(path, "activation shard")
        for key in (hooks or self.hooks) + ["token_ids"]:
            if key not in tensors or len(tensors[key]) != shard["rows"]:
                raise GlassworkError(f"{path}: shard has no tensor '{key}' of {shard['rows']} rows (corrupt)")
        return tensors

    def _check(self, hooks: list[str]) -> None:
        missing = [h for h in hooks if h not in self.hooks]
        if missing:
            raise GlassworkError(f"{self.folder}: store has no hook(s) {missing} (it holds {self.hooks})")

    def batches(self, batch_size: int, hooks: list[str] | None = None, shuffle: bool = True, seed: int = 0,
                drop_bos: bool = True, buffer_rows: int = 65536, dtype: torch.dtype = torch.float32,
                start: int = 0, loop: bool = False, drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Batches {hook: [batch_size, d]} of the same rows for every hook.

        Each epoch reads the shards one at a time in a seeded random order and mixes them in a shuffle buffer:
        fewer than buffer_rows + batch_size + one shard's rows are held. Every stored row (but BOS rows with drop_bos) comes out
        exactly once per epoch. loop=True runs epochs forever (rows left over at an epoch's end open the next one,
        so every batch is full); else the last batch may be short unless drop_last. `start` skips batches (resume)."""
        hooks = list(hooks or self.hooks)
        self._check(hooks)
        self.peak_rows = 0  # the most rows held at once (buffer + the shard being mixed in): for tests and tuning
        step = 0
        epoch = 0
        stored = DTYPES[self.config["dtype"]]  # the buffer keeps the stored dtype (bf16 stays half the size)
        buf: dict[str, torch.Tensor] = {h: torch.empty(0, self.dims[h], dtype=stored) for h in hooks}
        while True:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.shards), generator=g).tolist() if shuffle else range(len(self.shards))
            for i in order:
                shard = self.read_shard(i, hooks)
                keep = torch.arange(shard["token_ids"].shape[0]) % self.ctx_len != 0 if drop_bos else slice(None)
                buf = {h: torch.cat([buf[h], shard[h][keep]]) for h in hooks}
                del shard
                n = len(buf[hooks[0]])
                self.peak_rows = max(self.peak_rows, n)
                if shuffle:
                    perm = torch.randperm(n, generator=g)
                    buf = {h: a[perm] for h, a in buf.items()}
                # keep buffer_rows rows to mix with the next shard; hand out the rest in full batches
                n_out = max(0, n - buffer_rows) // batch_size * batch_size
                for b in range(0, n_out, batch_size):
                    if step >= start:
                        yield {h: a[b:b + batch_size].to(dtype) for h, a in buf.items()}
                    step += 1
                buf = {h: a[n_out:] for h, a in buf.items()}
            n = len(buf[hooks[0]])
            last = n // batch_size * batch_size if loop or drop_last else n
            for b in range(0, last, batch_size):
                if step >= start:
                    yield {h: a[b:b + batch_size].to(dtype) for h, a in buf.items()}
                step += 1
            buf = {h: a[last:] for h, a in buf.items()}
            if not loop:
                return
            epoch += 1

    def info(self, verify: bool = False) -> dict:
        """Summary of the store; verify=True also checks every shard's sha256."""
        bad = []
        if verify:
            for i, s in enumerate(self.shards):
                if _sha256(self.folder / s["file"]) != s["sha256"]:
                    bad.append(s["file"])
        c = self.config
        return {"folder": str(self.folder), "model": self.model_name, "hooks": self.hooks, "dims": self.dims,
                "dtype": c["dtype"], "ctx_len": self.ctx_len, "tokens": self.n_rows, "source": c["source"],
                "split": c.get("split"), "seed": c["seed"], "shards": len(self.shards),
                "bytes": sum(s["bytes"] for s in self.shards), "mean_norm": self.mean_norm,
                "complete": self.manifest["complete"], **({"corrupt_shards": bad, "verified": not bad} if verify else {})}


# ---------------------------------------------------------------------------------------------------- streaming

@torch.no_grad()
def stream_activations(model, hooks: list[str], tokens: int | None = None, batch_size: int = 4096,
                       ctx_len: int = 128, source: str = "default", split: str = "train", seed: int = 0,
                       drop_bos: bool = True, model_batch: int = 16, ids: torch.Tensor | None = None,
                       dtype: torch.dtype = torch.float32) -> Iterator[dict[str, torch.Tensor]]:
    """The store's batch format straight from the model reading the corpus, nothing on disk: {hook: [batch_size, d]}.

    Rows come in corpus order (contexts already in a seeded document order); the last short batch is dropped.
    `tokens` limits how much of the corpus is read (default: all of the split)."""
    from ..hooks import capture
    _check_hooks(model, hooks)
    if ids is None:
        from .corpus import contexts
        ids = contexts(model, source, ctx_len, split, seed, tokens=tokens)
    elif tokens is not None:
        ids = ids[:-(-tokens // ids.shape[1])]
    buf: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    held = 0
    for b in range(0, len(ids), model_batch):
        _, acts = capture(model, ids[b:b + model_batch].to(model.device), hooks, stop_early=True)
        for h in hooks:
            a = acts[h][:, 1:] if drop_bos else acts[h]
            buf[h].append(a.reshape(-1, a.shape[-1]).to("cpu", dtype))
        held += len(buf[hooks[0]][-1])
        if held >= batch_size:
            cat = {h: torch.cat(p) for h, p in buf.items()}
            n_out = held // batch_size * batch_size
            for s in range(0, n_out, batch_size):
                yield {h: a[s:s + batch_size] for h, a in cat.items()}
            buf = {h: [a[n_out:]] for h, a in cat.items()}
            held -= n_out
