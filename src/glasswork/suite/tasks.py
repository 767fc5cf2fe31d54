"""Binary classification tasks for sparse probing, built from text every machine has: the default corpus's sources
and Python's own standard library.

A task is (name, positive documents, negative documents). Each document is one example: its first `ctx` tokens after
BOS, mean-pooled over the non-BOS tokens (as SAEBench does), so a probe sees the whole text and not one token.

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
MIN_CHARS = 200  # shorter documents are dropped: they pool too few tokens


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


def source_documents(source: str) -> list[str]:
    if source == "python-stdlib":
        return python_source_documents()
    from ..data.corpus import documents
    return documents(source)


def build_task(name: str, n_per_class: int, seed: int = 0) -> Task:
    """`n_per_class` documents of each class (at least MIN_CHARS long), drawn in a seeded order."""
    if name not in TASKS:
        raise GlassworkError(f"unknown probing task '{name}' (expected one of {', '.join(TASKS)})")
    gen = torch.Generator().manual_seed(seed)
    classes = []
    for source in TASKS[name]:
        docs = [d for d in source_documents(source) if len(d) >= MIN_CHARS]
        if len(docs) < n_per_class:
            raise GlassworkError(f"task '{name}': source '{source}' has {len(docs)} documents of {MIN_CHARS}+ "
                                 f"characters, fewer than the {n_per_class} asked for")
        classes.append([docs[i] for i in torch.randperm(len(docs), generator=gen)[:n_per_class].tolist()])
    return Task(name, *classes)
