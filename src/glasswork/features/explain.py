"""Automatic labels. An explainer reads a feature record (FeatureIndex.feature(f)) and writes a short label.

Three kinds: `BuiltinExplainer` (no language model: the tokens it fires on, what precedes them, what it promotes),
`LMExplainer` over a chat client: `OpenAIChat` (any OpenAI-compatible endpoint: vLLM, Ollama, a hosted API) or
`HFChat` (a local causal LM loaded with gw.load_model). A failure for one feature raises a GlassworkError that
`label_features` (scoring.py) records for that feature while keeping the other labels."""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from ..io import GlassworkError


class Explainer(Protocol):
    name: str

    def explain(self, record: dict) -> str: ...


# ---------------------------------------------------------------------------------------------------- record views

def firing_tokens(record: dict, frac: float = 0.5) -> Counter:
    """Token strings where the feature reaches `frac` of the example's max, weighted by activation, over the top and
    quantile examples."""
    counts: Counter = Counter()
    for ex in record.get("top", []) + record.get("quantile", []):
        peak = max(ex["acts"]) or 1.0
        for tok, a in zip(ex["tokens"], ex["acts"]):
            if a >= frac * peak and a > 0:
                counts[tok] += a / peak
    return counts


def window(ex: dict, left: int = 16, right: int = 4) -> tuple[list[str], list[float]]:
    lo, hi = max(0, ex["pos"] - left), ex["pos"] + right + 1
    return ex["tokens"][lo:hi], ex["acts"][lo:hi]


def marked_text(tokens: list[str], marks: set[int] | list[bool]) -> str:
    """'the <<Paris>> office': marked tokens between << >>."""
    marks = {i for i, m in enumerate(marks) if m} if isinstance(marks, list) else marks
    return "".join(f"<<{t}>>" if i in marks else t for i, t in enumerate(tokens)).replace("\n", "\\n")


def quoted(tokens) -> str:
    return ", ".join(json.dumps(t) for t in tokens)


# ---------------------------------------------------------------------------------------------------- builtin

@dataclass
class BuiltinExplainer:
    """'fires on " Paris", " France" (after " in", " of"); promotes " city"': from the index alone, no LM."""
    name: str = "builtin"
    n_tokens: int = 3
    n_before: int = 2
    n_logits: int = 3

    def explain(self, record: dict) -> str:
        fired = firing_tokens(record)
        if not fired:
            raise GlassworkError(f"feature {record.get('feature')}: never fires in the index, nothing to explain")
        top = [t for t, _ in fired.most_common(self.n_tokens)]
        before: Counter = Counter()
        for ex in record.get("top", []):
            if ex["pos"] > 0:
                before[ex["tokens"][ex["pos"] - 1]] += 1
        label = f"fires on {quoted(top)}"
        common = [t for t, c in before.most_common(self.n_before) if c > 1 and t not in top]
        if common:
            label += f" (after {quoted(common)})"
        logits = [t for _, t, _ in record.get("top_logits", [])[: self.n_logits]]
        if logits:
            label += f"; promotes {quoted(logits)}"
        return label


def label_keywords(label: str) -> list[str]:
    """The quoted tokens a builtin-style label says the feature fires on (before '; promotes'), casefolded."""
    head = label.split("; promotes")[0]
    head = head.split("(after")[0]
    words = re.findall(r'"((?:[^"\\]|\\.)*)"', head)
    if not words:  # a free-text label: its content words
        words = re.findall(r"[A-Za-z][A-Za-z'-]{2,}", head)
    return [w.strip().casefold() for w in words if w.strip()]


# ---------------------------------------------------------------------------------------------------- LM clients

class ChatClient(Protocol):
    name: str

    def chat(self, messages: list[dict], max_tokens: int = 64) -> str: ...


@dataclass
class OpenAIChat:
    """An OpenAI-compatible /chat/completions endpoint (stdlib urllib): timeouts, retries with backoff."""
    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 30.0
    retries: int = 2
    backoff: float = 0.5

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def chat(self, messages: list[dict], max_tokens: int = 64) -> str:
        url = self.base_url.rstrip("/") + "/chat/completions"
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": max_tokens,
                           "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code < 500 and e.code != 429:
                    break  # a client error does not get better by retrying
                continue
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
                continue
            try:
                return json.loads(raw)["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                raise GlassworkError(f"{url}: answer is not an OpenAI chat completion "
                                     f"(expected choices[0].message.content; got {raw[:120]!r})") from None
        raise GlassworkError(f"{url}: no answer after {self.retries + 1} tries ({last}; timeout {self.timeout}s)")


class HFChat:
    """A local causal LM (gw.load_model) as a chat client; greedy decoding."""

    def __init__(self, model=None):
        from ..models import Model, load_model
        self.model = model if isinstance(model, Model) else load_model(model)
        self.name = f"hf:{self.model.name}"

    def chat(self, messages: list[dict], max_tokens: int = 64) -> str:
        import torch
        tok = self.model.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            ids = ids["input_ids"]
        else:
            ids = self.model.tokenize("\n\n".join(m["content"] for m in messages) + "\n\nAnswer:")
        ids = ids.to(self.model.device)
        with torch.no_grad():
            out = self.model.hf.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                                         pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------------- LM explainer

EXPLAIN_SYSTEM = ("You label features of a language model. You see text snippets where one feature is active; the "
                  "tokens where it is most active are marked <<like this>>. Answer with one short phrase (at most 12 "
                  "words) saying what the feature responds to. No preamble.")


def clean_label(text: str, source: str) -> str:
    """First non-empty line, without 'Label:' prefixes or quotes; raise on empty or garbled answers."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    label = re.sub(r"^(label|answer|explanation)\s*[:\-]\s*", "", lines[0], flags=re.I).strip(" \"'`*") if lines else ""
    letters = sum(ch.isalpha() for ch in label)
    if not label or letters < 3 or letters < 0.4 * len(label) or len(label) > 300:
        raise GlassworkError(f"{source}: garbage answer for a label (expected a short phrase, got {text[:80]!r})")
    return label


@dataclass
class LMExplainer:
    client: ChatClient
    n_examples: int = 8

    @property
    def name(self) -> str:
        return self.client.name

    def prompt(self, record: dict) -> list[dict]:
        lines = []
        for i, ex in enumerate(record.get("top", [])[: self.n_examples]):
            toks, acts = window(ex)
            peak = max(acts) or 1.0
            lines.append(f"{i + 1}. {marked_text(toks, [a >= 0.5 * peak and a > 0 for a in acts])}")
        logits = [t for _, t, _ in record.get("top_logits", [])[:8]]
        user = "Snippets:\n" + "\n".join(lines)
        if logits:
            user += f"\nTokens the feature makes more likely next: {quoted(logits)}"
        return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user + "\nLabel:"}]

    def explain(self, record: dict) -> str:
        if not record.get("top"):
            raise GlassworkError(f"feature {record.get('feature')}: never fires in the index, nothing to explain")
        return clean_label(self.client.chat(self.prompt(record), max_tokens=40), self.client.name)


def make_explainer(kind: str = "builtin", base_url: str | None = None, model: str | None = None,
                   api_key: str | None = None, timeout: float = 30.0) -> Explainer:
    """'builtin' | 'openai' (base_url + model) | 'hf' (model name or folder; default: the default model)."""
    if kind == "builtin":
        return BuiltinExplainer()
    if kind == "openai":
        if not base_url or not model:
            raise GlassworkError("explainer 'openai' needs --base-url (e.g. http://localhost:8000/v1) and --model")
        return LMExplainer(OpenAIChat(base_url, model, api_key, timeout))
    if kind == "hf":
        return LMExplainer(HFChat(model))
    raise GlassworkError(f"unknown explainer '{kind}' (expected builtin, openai or hf)")
