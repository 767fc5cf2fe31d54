"""Text to run models on, and fixed-length token contexts cut from it.

Sources (`source=`):
- "default": English text from PyPI archives (REFERENCE.md): the shortened English Wikipedia dump and the Lee news
  articles inside the gensim 4.4.0 wheel, and Botchan (a novel) from the sentencepiece 0.2.0 sdist. Fetched once with
  `pip download`, each member sha256-checked, extracted text cached in $GLASSWORK_HOME/corpus/<name>.jsonl.
- "enwiki", "lee", "botchan", "bgwiki" (Bulgarian, for multilingual checks): one of those alone.
- a .txt file (documents separated by blank lines), a .jsonl file (one object per line, text in `field`), a .parquet
  file (text in column `field`), or "hf:NAME[:CONFIG]" (Hugging Face `datasets`, split "train", text in `field`).

Documents, not contexts, go to the held-out split: a document is held out when the hash of its text falls in the
held-out fraction, so the split does not depend on the seed or the order (train and held-out never share a document).
The seed only orders the documents before they are tokenized and cut into contexts of `ctx_len` tokens, each
starting with BOS (documents joined by BOS as separator)."""
from __future__ import annotations

import bz2
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

import torch

from ..io import GlassworkError, home, load_tensors, save_tensors, write_text
from .wiki import articles

GENSIM = "gensim==4.4.0"
SENTENCEPIECE = "sentencepiece==0.2.0"
_TD = "gensim/test/test_data/"
# name -> (package, member inside its archive, sha256 of the member). Hashes computed once from the PyPI files.
MEMBERS = {
    "enwiki": (GENSIM, _TD + "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
               "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"),
    "lee": (GENSIM, _TD + "lee_background.cor", "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb"),
    "bgwiki": (GENSIM, _TD + "bgwiki-latest-pages-articles-shortened.xml.bz2",
               "8c67571ec18cb8f0f77a91ab2ee4a04c9368684358e40b94d95670f909210355"),
    "botchan": (SENTENCEPIECE, "sentencepiece-0.2.0/test/botchan.txt",
                "464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7"),
}
DEFAULT = ["enwiki", "lee", "botchan"]
HELDOUT = 0.05  # fraction of documents held out


def cache_dir() -> Path:
    return home() / "corpus"


# ---------------------------------------------------------------------------------------------------- fetching

def _archive(package: str) -> Path:
    """The PyPI archive holding `package`'s members, downloaded once into the cache."""
    folder = cache_dir() / "archives"
    name, version = package.split("==")
    found = sorted(folder.glob(f"{name}-{version}*"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        # gensim: any platform's wheel holds the same test data; sentencepiece: the sdist (test/ is not in wheels)
        extra = ["--only-binary=:all:"] if name == "gensim" else ["--no-binary=:all:"]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *extra, package, "-d", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True)
        files = list(Path(tmp).iterdir())
        if res.returncode != 0 or not files:
            raise GlassworkError(f"could not download {package} from PyPI for the default corpus ({' '.join(cmd)}): "
                                 f"{res.stderr.strip()[-300:]}. Without network, use your own text: --source FILE.txt")
        files[0].rename(folder / files[0].name)  # same file system: atomic
    return sorted(folder.glob(f"{name}-{version}*"))[0]


def _member(name: str) -> bytes:
    package, member, sha = MEMBERS[name]
    path = _archive(package)
    try:
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as z:
                data = z.read(member)
        else:
            with tarfile.open(path) as t:
                data = t.extractfile(member).read()
    except (KeyError, zipfile.BadZipFile, tarfile.TarError, OSError) as e:
        raise GlassworkError(f"{path}: cannot read {member} ({e}); delete the file to download it again") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        raise GlassworkError(f"{path}: member {member} has sha256 {got}, expected {sha}; delete the file to "
                             f"download it again")
    return data


def _extract(name: str) -> list[str]:
    """Documents of one built-in source, from its archive member."""
    data = _member(name)
    if name in ("enwiki", "bgwiki"):
        return list(articles(io.BytesIO(bz2.decompress(data)), min_chars=200 if name == "enwiki" else 20))
    text = data.decode("utf-8")
    if name == "lee":  # one news article per line
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    return _paragraph_docs(text, per_doc=20)  # botchan: a novel, cut into runs of 20 paragraphs


def _paragraph_docs(text: str, per_doc: int = 1) -> list[str]:
    paras = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    if per_doc == 1:
        return paras
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] if len(paras) < 2 else paras
    return ["\n".join(lines[i:i + per_doc]) for i in range(0, len(lines), per_doc)]


def builtin_documents(name: str) -> list[str]:
    """Documents of a built-in source, extracted once and cached as JSON lines (atomically)."""
    path = cache_dir() / f"{name}.jsonl"
    if not path.exists():
        docs = _extract(name)
        write_text(path, "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------------- user sources

def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if not data.strip():
        raise GlassworkError(f"{path}: corpus file is empty (expected text)")
    if b"\x00" in data[:65536]:
        raise GlassworkError(f"{path}: corpus file is binary, not text (found NUL bytes; expected UTF-8 text)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GlassworkError(f"{path}: corpus file is not UTF-8 text ({e})") from None


def prompt_lines(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file: one prompt each (a clear error for a missing, empty or binary file)."""
    path = Path(path)
    if not path.is_file():
        raise GlassworkError(f"{path}: no such prompt file (expected a text file, one prompt per line)")
    lines = [ln.strip() for ln in _read_text_file(path).splitlines() if ln.strip()]
    if not lines:
        raise GlassworkError(f"{path}: no prompts in it (expected one prompt per line)")
    return lines


def _file_documents(path: Path, field: str) -> list[str]:
    if not path.exists():
        raise GlassworkError(f"{path}: corpus file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as e:
            raise GlassworkError(f"{path}: not a readable parquet file ({e})") from None
        if field not in table.column_names:
            raise GlassworkError(f"{path}: parquet file has no column '{field}' (columns: {table.column_names}); "
                                 f"pick one with --field")
        docs = [str(x) for x in table.column(field).to_pylist() if x]
    elif suffix == ".jsonl":
        docs = []
        for i, line in enumerate(_read_text_file(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise GlassworkError(f"{path}: line {i} is not JSON ({e})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                raise GlassworkError(f"{path}: line {i} has no string field '{field}' (pick one with --field)")
            docs.append(obj[field])
    else:
        docs = _paragraph_docs(_read_text_file(path))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise GlassworkError(f"{path}: corpus file holds no text in field/column '{field}'")
    return docs


def _hf_documents(spec: str, field: str) -> list[str]:
    name, _, config = spec[3:].partition(":")
    try:
        import datasets
    except ImportError:
        raise GlassworkError(f"source '{spec}' needs the `datasets` package (pip install datasets)") from None
    try:
        ds = datasets.load_dataset(name, config or None, split="train")
    except Exception as e:
        raise GlassworkError(f"source '{spec}': could not load Hugging Face dataset '{name}' ({type(e).__name__}: "
                             f"{str(e)[:200]}). Offline, save the text to a .txt/.jsonl/.parquet file and pass that") from None
    if field not in ds.column_names:
        raise GlassworkError(f"source '{spec}': dataset has no column '{field}' (columns: {ds.column_names})")
    return [t for t in ds[field] if isinstance(t, str) and t.strip()]


def documents(source: str = "default", field: str = "text") -> list[str]:
    """Every document of a source (both splits), in their stored order."""
    source = str(source)
    if source == "default":
        return [d for name in DEFAULT for d in builtin_documents(name)]
    if source in MEMBERS:
        return builtin_documents(source)
    if source.startswith("hf:"):
        return _hf_documents(source, field)
    path = Path(source).expanduser()
    if not path.exists() and path.suffix.lower() not in (".txt", ".jsonl", ".parquet"):
        raise GlassworkError(f"unknown corpus source '{source}': expected default, {', '.join(MEMBERS)}, a .txt/"
                             f".jsonl/.parquet file, or hf:NAME")
    return _file_documents(path, field)


def is_heldout(text: str, fraction: float = HELDOUT) -> bool:
    """A document's split, from the hash of its text: stable across seeds, orders and machines."""
    h = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    return h % 1_000_000 < fraction * 1_000_000


def split_documents(source: str = "default", split: str = "train", seed: int = 0, field: str = "text",
                    heldout: float = HELDOUT) -> list[str]:
    """The documents of one split ("train", "heldout", or "all"), in a seeded order."""
    if split not in ("train", "heldout", "all"):
        raise GlassworkError(f"split '{split}': expected train, heldout or all")
    docs = documents(source, field)
    if split != "all":
        docs = [d for d in docs if is_heldout(d, heldout) == (split == "heldout")]
    if not docs:
        raise GlassworkError(f"corpus '{source}' has no documents in split '{split}' (held-out fraction {heldout})")
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [docs[i] for i in order]


def default_texts() -> Iterator[str]:
    """Training documents of the default corpus (seed 0): pass the function itself where texts must be re-read."""
    return iter(split_documents("default", "train"))


def heldout_texts() -> Iterator[str]:
    """Held-out documents of the default corpus."""
    return iter(split_documents("default", "heldout"))


# ---------------------------------------------------------------------------------------------------- tokens

def token_rows(model, texts: Iterable[str], ctx: int) -> Iterator[torch.Tensor]:
    """The one way from texts to token contexts: tokenize each text (no specials), concatenate, cut into rows of ctx
    tokens that each start with BOS (when the model has one): [ctx] per row, lazily."""
    buf: list[int] = []
    bos = [model.bos_token_id] if model.bos_token_id is not None else []
    for text in texts:
        buf.extend(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        while len(buf) >= ctx - len(bos):
            yield torch.tensor(bos + buf[:ctx - len(bos)])
            buf = buf[ctx - len(bos):]


def _token_stream(model, docs: list[str], bos: int) -> torch.Tensor:
    """Token ids [n] of the documents with BOS between them (the separator; contexts add their own BOS first)."""
    if model.tokenizer is None:
        raise GlassworkError(f"model {model.name} has no tokenizer: pass token ids instead of text")
    ids = model.tokenizer(docs, add_special_tokens=False)["input_ids"]
    return torch.tensor([t for doc in ids for t in [bos, *doc]][1:], dtype=torch.long)


def contexts(model, source: str = "default", ctx_len: int = 128, split: str = "train", seed: int = 0,
             n_contexts: int | None = None, tokens: int | None = None, field: str = "text",
             heldout: float = HELDOUT) -> torch.Tensor:
    """Token contexts [n, ctx_len] from a corpus, each starting with BOS, the same for the same arguments.

    n is every full context the split holds, or `n_contexts`, or enough contexts for `tokens` tokens (error when
    the split is too small). The tokenized stream is cached per model, source, split, seed."""
    if ctx_len < 2:
        raise GlassworkError(f"ctx_len {ctx_len}: expected at least 2 (BOS plus one token)")
    key = hashlib.sha256(json.dumps(["v1", model.name, model.vocab_size, str(source), split, seed, field, heldout,
                                     _source_stamp(source)]).encode()).hexdigest()[:16]
    path = cache_dir() / "tokens" / f"{key}.safetensors"
    if path.exists():
        stream = load_tensors(path, "cached token stream")["ids"]
    else:
        stream = _token_stream(model, split_documents(source, split, seed, field, heldout), model.bos_token_id)
        save_tensors(path, {"ids": stream})
    body = ctx_len - 1
    available = len(stream) // body
    want = available if n_contexts is None and tokens is None else (n_contexts or -(-tokens // ctx_len))
    if want > available or available == 0:
        raise GlassworkError(f"corpus '{source}' ({split} split) holds {len(stream):,} tokens = {available:,} contexts "
                             f"of {ctx_len}; asked for {want:,}. Use fewer tokens or a larger corpus (--source)")
    rows = stream[:want * body].view(want, body)
    return torch.cat([torch.full((want, 1), model.bos_token_id, dtype=torch.long), rows], dim=1)


def _source_stamp(source: str) -> str:
    """Size and mtime of a user file, so an edited file is tokenized again."""
    path = Path(str(source))
    if str(source) in MEMBERS or source == "default" or str(source).startswith("hf:") or not path.exists():
        return ""
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def info(source: str = "default", field: str = "text", heldout: float = HELDOUT) -> dict:
    """Documents and characters per split."""
    docs = documents(source, field)
    held = [is_heldout(d, heldout) for d in docs]
    return {"source": str(source), "documents": len(docs), "characters": sum(map(len, docs)),
            "train_documents": held.count(False), "heldout_documents": held.count(True),
            "heldout_characters": sum(len(d) for d, h in zip(docs, held) if h),
            "cache": str(cache_dir())}
