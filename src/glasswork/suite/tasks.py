"""Binary classification tasks for sparse probing, built from text every machine has: the default corpus's sources
and Python's own standard library.

A task is (name, positive passages, negative passages). Documents are cut into passages of about PASSAGE_CHARS
characters (at whitespace); each passage is one example: its first `ctx` tokens after BOS, mean-pooled over the
non-BOS tokens (as SAEBench does), so a probe sees a whole text and not one token. Passages of one long document can
fall on both sides of the train / test split (the Bulgarian source is a single 7,600-character article).

- language: Bulgarian Wikipedia (bgwiki) vs English Wikipedia (enwiki);
- code: Python source (the running interpreter's standard library, 40-line chunks) vs English prose (default corpus);
- news: the Lee news articles vs English Wikipedia;
- fiction: Botchan (a novel, by paragraph) vs English Wikipedia.
"""
from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GlassworkError

TASKS = {"language": ("bgwiki", "enwiki"), "code": ("python-stdlib", "default"), "news": ("lee", "enwiki"),
         "fiction": ("botchan", "enwiki")}
PASSAGE_CHARS = 200  # ~45 English tokens; shorter tails are dropped: they pool too few tokens
MIN_PER_CLASS = 20


@dataclass
class Task:
    name: str
    positive: list[str]  # documents of the positive class (label 1)
    negative: list[str]  # label 0


def python_source_documents(lines_per_doc: int = 40, max_files: int = 400) -> list[str]:
    """Chunks of `lines_per_doc` lines of the standard library's top-level .py files (sorted by name)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.glob("*.py"))[:max_files]:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        docs += ["\n".join(lines[i:i + lines_per_doc]) for i in range(0, len(lines), lines_per_doc)]
    return docs


def passages(doc: str, chars: int = PASSAGE_CHARS) -> list[str]:
    """`doc` cut at whitespace into pieces of at least `chars` characters (a shorter tail is dropped)."""
    out, cur = [], []
    n = 0
    for word in doc.split():
        cur.append(word)
        n += len(word) + 1
        if n >= chars:
            out.append(" ".join(cur))
            cur, n = [], 0
    return out


def source_documents(source: str) -> list[str]:
    if source == "python-stdlib":
        return python_source_documents()
    from ..data.corpus import documents
    return documents(source)


def build_task(name: str, n_per_class: int, seed: int = 0) -> Task:
    """Up to `n_per_class` passages of each class (as many as the smaller class has, at least MIN_PER_CLASS), drawn
    in a seeded order. Code passages keep their line breaks (chunks of source lines, not re-cut)."""
    if name not in TASKS:
        raise GlassworkError(f"unknown probing task '{name}' (expected one of {', '.join(TASKS)})")
    gen = torch.Generator().manual_seed(seed)
    pools = []
    for source in TASKS[name]:
        docs = source_documents(source)
        pool = [d for d in docs if len(d) >= PASSAGE_CHARS] if source == "python-stdlib" else \
            [p for d in docs for p in passages(d)]
        pools.append([pool[i] for i in torch.randperm(len(pool), generator=gen).tolist()])
    n = min(n_per_class, *map(len, pools))
    if n < MIN_PER_CLASS:
        raise GlassworkError(f"task '{name}': sources {TASKS[name]} give {[len(p) for p in pools]} passages of "
                             f"{PASSAGE_CHARS}+ characters; at least {MIN_PER_CLASS} per class are needed")
    return Task(name, pools[0][:n], pools[1][:n])
