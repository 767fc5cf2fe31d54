"""Do labels mean something? Two tests, each against a random-label baseline (labels of other features):

detection: given the label, pick out which of a mix of activating and non-activating contexts are activating
           (score: balanced accuracy, 0.5 = chance);
fuzzing:   given the label, say whether the highlighted tokens of an activating context are the ones the feature
           fires on, or random ones (score: accuracy, 0.5 = chance).

Scorers: `KeywordScorer` (deterministic: the label's quoted tokens or words must appear in the context or the
highlight), `SurprisalScorer` (a local language model: does the label make the context, or its highlighted tokens,
less surprising? as delphi's surprisal scorer) and `LMScorer` (asks a chat client)."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Protocol

import torch

from ..io import GlassworkError
from ..models import padded
from .explain import ChatClient, Explainer, label_keywords, marked_text, window


class Scorer(Protocol):
    name: str

    def detect(self, label: str, examples: list[dict]) -> list[bool]: ...  # examples: {"tokens"}

    def fuzz(self, label: str, examples: list[dict]) -> list[bool]: ...  # examples: {"tokens", "marks"}


@dataclass
class KeywordScorer:
    name: str = "keyword"

    def detect(self, label: str, examples: list[dict]) -> list[bool]:
        keys = set(label_keywords(label))
        return [any(t.strip().casefold() in keys for t in ex["tokens"]) for ex in examples]

    def fuzz(self, label: str, examples: list[dict]) -> list[bool]:
        keys = set(label_keywords(label))
        return [any(ex["tokens"][i].strip().casefold() in keys for i in ex["marks"]) for ex in examples]


@dataclass
class SurprisalScorer:
    """A label is good when, read first, it makes the feature's contexts less surprising to a language model. Per
    example, drop = the largest fall in one token's loss (after `neutral` minus after `template` with the label),
    over every token (detection) or the highlighted ones (fuzzing): a label helps where the feature fires, not the
    whole text; the examples whose drop is above the set's median are
    called positive (detection and fuzzing sets are about half positive). `model`: a glasswork Model (the default
    model works)."""
    model: object
    name: str = "surprisal"
    template: str = "A text about {label}:\n"
    neutral: str = "A text about something:\n"  # the same form: only the label differs
    batch_size: int = 32

    @torch.no_grad()
    def token_losses(self, prefix: str, examples: list[dict]) -> list[torch.Tensor]:
        """Per example, the loss [len(tokens)] of each of its tokens (re-encoded one by one) after BOS + prefix."""
        m = self.model
        head = [m.bos_token_id] + m.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        rows = []
        for ex in examples:
            pieces = [m.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ex["tokens"]]
            rows.append((head + [i for p in pieces for i in p], [len(p) for p in pieces]))
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            ids, mask = padded([torch.tensor(seq) for seq, _ in chunk], m.bos_token_id)
            logp = m.hf(input_ids=ids.to(m.device), attention_mask=mask.to(m.device),
                        use_cache=False).logits.float().log_softmax(-1).cpu()
            for r, (seq, sizes) in enumerate(chunk):
                nll = -logp[r, torch.arange(len(head) - 1, len(seq) - 1), ids[r, len(head):len(seq)]]  # [text ids]
                per_token, at = [], 0
                for size in sizes:  # a displayed token that re-encodes to several ids: their summed loss
                    per_token.append(nll[at:at + size].sum() if size else torch.tensor(0.0))
                    at += size
                out.append(torch.stack(per_token) if per_token else torch.zeros(0))
        return out

    def _drops(self, label: str, examples: list[dict], marked: bool) -> torch.Tensor:
        """Per example, the largest drop in one token's loss [n] (over its marked tokens when `marked`)."""
        plain = self.token_losses(self.neutral, examples)
        told = self.token_losses(self.template.format(label=label), examples)
        drops = []
        for a, b, ex in zip(plain, told, examples):
            d = (a - b)[ex["marks"]] if marked else a - b
            drops.append(d.max() if len(d) else torch.tensor(float("-inf")))
        return torch.stack(drops) if drops else torch.zeros(0)

    @staticmethod
    def _above_median(drops: torch.Tensor) -> list[bool]:
        return (drops > drops.median()).tolist() if len(drops) else []

    def detect(self, label: str, examples: list[dict]) -> list[bool]:
        return self._above_median(self._drops(label, examples, marked=False))

    def fuzz(self, label: str, examples: list[dict]) -> list[bool]:
        return self._above_median(self._drops(label, examples, marked=True))


@dataclass
class LMScorer:
    client: ChatClient

    @property
    def name(self) -> str:
        return self.client.name

    def _ask(self, question: str, texts: list[str]) -> list[bool]:
        listing = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts))
        msg = [{"role": "system", "content": "You check labels of language-model features. Answer with one line per "
                                             "snippet: its number, a colon, and 1 (yes) or 0 (no)."},
               {"role": "user", "content": f"{question}\n\n{listing}"}]
        answer = self.client.chat(msg, max_tokens=8 * len(texts))
        found = {int(i): v == "1" for i, v in re.findall(r"(\d+)\s*[:=.)-]\s*([01])\b", answer)}
        if not all(i + 1 in found for i in range(len(texts))):
            raise GlassworkError(f"{self.client.name}: garbage answer when scoring (expected 'N: 0/1' for "
                                 f"{len(texts)} snippets, got {answer[:80]!r})")
        return [found[i + 1] for i in range(len(texts))]

    def detect(self, label: str, examples: list[dict]) -> list[bool]:
        return self._ask(f'Feature label: "{label}". Is the feature active somewhere in each snippet?',
                         ["".join(ex["tokens"]).replace("\n", "\\n") for ex in examples])

    def fuzz(self, label: str, examples: list[dict]) -> list[bool]:
        return self._ask(f'Feature label: "{label}". Are the tokens marked <<like this>> in each snippet the ones '
                         f"the label describes?", [marked_text(ex["tokens"], set(ex["marks"])) for ex in examples])


# ---------------------------------------------------------------------------------------------------- test sets

def detection_set(record: dict, n: int = 10, seed: int = 0) -> list[dict]:
    """Up to n activating windows (half top, half quantile samples) and up to n non-activating contexts, shuffled."""
    rng = random.Random(seed)
    pos = record.get("top", [])[: n // 2] + record.get("quantile", [])[: n - n // 2]
    neg = record.get("zero", [])[:n]
    items = [{"tokens": window(ex)[0], "active": True} for ex in pos]
    # a silent context has no peak: show a window of the same size from a random place
    for ex in neg:
        start = rng.randrange(max(1, len(ex["tokens"]) - 21))
        items.append({"tokens": ex["tokens"][start:start + 21], "active": False})
    rng.shuffle(items)
    return items


def fuzzing_set(record: dict, n: int = 10, seed: int = 0) -> list[dict]:
    """Activating windows, half with the firing tokens marked (correct), half with as many random silent tokens."""
    rng = random.Random(seed)
    items = []
    for i, ex in enumerate((record.get("top", [])[: n // 2] + record.get("quantile", []))[:n]):
        toks, acts = window(ex)
        peak = max(acts) or 1.0
        firing = [j for j, a in enumerate(acts) if a >= 0.5 * peak and a > 0]
        silent = [j for j, a in enumerate(acts) if a <= 0]
        correct = i % 2 == 0 or len(silent) < len(firing)
        marks = firing if correct else rng.sample(silent, len(firing))
        items.append({"tokens": toks, "marks": marks, "correct": correct})
    rng.shuffle(items)
    return items


def balanced_accuracy(pred: list[bool], truth: list[bool]) -> float:
    pos = [p for p, t in zip(pred, truth) if t]
    neg = [not p for p, t in zip(pred, truth) if not t]
    parts = [sum(x) / len(x) for x in (pos, neg) if x]
    return sum(parts) / len(parts) if parts else float("nan")


def score_label(scorer: Scorer, label: str, record: dict, others: list[str], seed: int = 0) -> dict:
    """Detection and fuzzing scores of `label` on the feature's contexts, and the mean of the same scores for the
    `others` labels (random baseline)."""
    det, fuz = detection_set(record, seed=seed), fuzzing_set(record, seed=seed)

    def scores(lab):
        d = balanced_accuracy(scorer.detect(lab, det), [x["active"] for x in det]) if det else float("nan")
        f = balanced_accuracy(scorer.fuzz(lab, fuz), [x["correct"] for x in fuz]) if fuz else float("nan")
        return d, f

    d, f = scores(label)
    base = [scores(o) for o in others]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"detection": d, "fuzzing": f, "detection_baseline": mean([b[0] for b in base]),
            "fuzzing_baseline": mean([b[1] for b in base])}


# ---------------------------------------------------------------------------------------------------- label a set

def label_features(index, explainer: Explainer, scorer: Scorer | None = None, features: list[int] | None = None,
                   n_baseline: int = 3, seed: int = 0, on_progress=None) -> dict:
    """Label `features` (default: every live feature), score each label against `n_baseline` labels of other
    features, store labels and scores in the index. A feature whose explainer or scorer fails gets its error
    recorded; the others keep their labels. Returns counts and the per-feature results."""
    scorer = scorer if scorer is not None else KeywordScorer()
    features = index.live_features() if features is None else [index.check_id(f) for f in features]
    labels, errors, records = {}, {}, {}
    for f in features:
        records[f] = index.feature(f)
        try:
            labels[f] = explainer.explain(records[f])
        except GlassworkError as e:
            errors[f] = str(e)
            index.set_label(f, explainer.name, None, error=str(e))
        if on_progress:
            on_progress()
    pool = {**index.labels(explainer.name), **labels}
    rng = random.Random(seed)
    results = {}
    for f, label in labels.items():
        others = [pool[g] for g in rng.sample(sorted(set(pool) - {f}), min(n_baseline, len(pool) - 1))]
        try:
            s = score_label(scorer, label, records[f], others, seed=seed + f)
        except GlassworkError as e:
            s = {}
            errors[f] = f"scoring: {e}"
        index.set_label(f, explainer.name, label, error=errors.get(f), scores=s)
        results[f] = {"label": label, **s}
    beats = sum(1 for r in results.values() if r.get("detection", 0) > r.get("detection_baseline", 1))
    return {"explainer": explainer.name, "scorer": scorer.name, "n_features": len(features), "n_labeled": len(labels),
            "n_errors": len(errors), "n_detection_beats_baseline": beats, "errors": errors, "results": results}


def ensure_labels(index, features: list[int], explainer: Explainer | None = None,
                  limit: int | None = None) -> dict[int, str]:
    """{feature: label} for `features`: the best stored label, and for features with none yet a label made now by
    `explainer` (default: built-in) and stored with its scores, so a graph's nodes are all labelled on first sight.
    `limit`: make at most this many now (a request stays short; the rest come on later calls)."""
    from .explain import BuiltinExplainer
    tried = {f for (f,) in index.db.execute("SELECT DISTINCT feature FROM labels")}  # failures count: not retried
    missing = sorted({f for f in features if f not in tried and 0 <= f < index.d_sae})[:limit]
    if missing:
        label_features(index, explainer or BuiltinExplainer(), features=missing)
    labels = index.labels()
    return {f: labels.get(f, "") for f in features}
