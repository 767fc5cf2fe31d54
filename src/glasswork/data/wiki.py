"""MediaWiki XML dump -> plain-text articles: markup (templates, tables, links, refs, HTML, emphasis) stripped."""
from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from typing import BinaryIO, Iterator

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_BLOCK_TAGS = re.compile(r"<(math|gallery|timeline|syntaxhighlight|source|score|imagemap)[^>]*>.*?</\1>", re.S | re.I)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")  # innermost first; repeated until none are left
_TABLE = re.compile(r"\{\|[^{}]*?\|\}", re.S)
_NS = r"(?:(?i:File|Image|Category|Файл|Категория|Картинка)|[a-z]{2,3}(?:-[a-z]+)?):"  # media, categories, languages
_FILE_LINK = re.compile(r"\[\[" + _NS + r"[^\[\]]*\]\]")
_LINK = re.compile(r"\[\[(?!" + _NS + r")(?:[^\[\]|]*\|)?([^\[\]|]*)\]\]")  # captions may hold these: first
_EXT_LINK = re.compile(r"\[(?:https?|ftp)://[^\s\]]+\s*([^\]]*)\]")
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_HEADING = re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M)
_EMPHASIS = re.compile(r"'{2,}")
_LIST = re.compile(r"^[*#:;]+\s*", re.M)
_SPACES = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n{3,}")


def _repeat(pattern: re.Pattern, repl: str, text: str) -> str:
    """Apply until nothing changes: templates and file links nest."""
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return text
        text = new


def strip_markup(text: str) -> str:
    """Wikitext -> plain paragraphs."""
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _BLOCK_TAGS.sub("", text)
    text = _repeat(_TEMPLATE, "", text)
    text = _repeat(_TABLE, "", text)
    text = _LINK.sub(r"\1", text)
    text = _repeat(_FILE_LINK, "", text)
    text = _EXT_LINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = html.unescape(text)
    text = _HEADING.sub(r"\1", text)
    text = _EMPHASIS.sub("", text)
    text = _LIST.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    # Leftover lines of stray markup (unclosed tables, template debris) carry no prose.
    lines = [ln for ln in lines if not ln.startswith(("{", "|", "}", "!"))]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def articles(stream: BinaryIO, min_chars: int = 200) -> Iterator[str]:
    """Plain text of each main-namespace, non-redirect article in an XML dump stream (title first)."""
    title = ns = None
    redirect = False
    for _, el in ET.iterparse(stream, events=("end",)):
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "title":
            title = el.text or ""
        elif tag == "ns":
            ns = el.text
        elif tag == "redirect":
            redirect = True
        elif tag == "text":
            if ns == "0" and not redirect:
                body = strip_markup(el.text or "")
                if len(body) >= min_chars:
                    yield f"{title}\n\n{body}"
        elif tag == "page":
            title, ns, redirect = None, None, False
            el.clear()
