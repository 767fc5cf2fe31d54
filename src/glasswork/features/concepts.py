"""Features about a concept (violence, weapons, danger, deception, crime, spam, hacking, ...), found two ways.

`contrast` runs the model: on sentences that use the concept's words, a feature's firing rate on those words against
its rate everywhere else (the rest of the sentences and held-out corpus text); the features with the largest
difference are about the concept. `concept_features` needs no model, only a feature index: a feature is a candidate when it fires on one of the concept's words (the index's feature_tokens, the word with and
without a leading space, lower- and capitalized). Its *precision* is the share of its top activating examples whose
firing token is one of the concept's words; its *coverage* how many of the words it fires on; its *count* how often it
fired on them in the indexed text. A safety engineer reads the list best first, with labels, then opens the pages.
"""
from __future__ import annotations

from pathlib import Path

from ..io import GlassworkError

SAFETY_CONCEPTS: dict[str, list[str]] = {  # word lists written for the project: plain, common English forms
    "violence": ["kill", "killed", "killing", "murder", "murdered", "attack", "attacked", "violence", "violent",
                 "fight", "fighting", "shot", "shooting", "blood", "wounded", "beaten", "massacre"],
    "weapons": ["gun", "guns", "weapon", "weapons", "bomb", "bombs", "rifle", "knife", "explosive", "explosives",
                "missile", "missiles", "sword", "ammunition", "grenade"],
    "danger": ["danger", "dangerous", "risk", "risks", "hazard", "hazardous", "threat", "threats", "toxic", "poison",
               "poisonous", "deadly", "harmful", "unsafe", "lethal"],
    "deception": ["lie", "lied", "lies", "lying", "liar", "deceive", "deceived", "deception", "fake", "fraud",
                  "trick", "cheat", "cheating", "mislead", "misleading", "scam", "hoax"],
    "crime": ["crime", "crimes", "criminal", "steal", "stole", "stolen", "theft", "illegal", "arrest", "arrested",
              "prison", "smuggling", "robbery"],
    "spam": ["click", "subscribe", "discount", "prize", "winner", "free", "offer", "cash", "bonus", "unsubscribe"],
    "hacking": ["password", "passwords", "exploit", "hack", "hacked", "hacker", "hackers", "malware", "virus",
                "backdoor", "phishing", "ransomware"],
}


SAFETY_SENTENCES: dict[str, list[str]] = {  # written for the project as probe text, one concept each
    "violence": ["The gang tried to kill the witness before the trial.", "He was shot twice in the attack.",
                 "The murder shocked the quiet town.", "Police said the violence began after midnight.",
                 "Two men were wounded in the fighting.", "The soldiers killed everyone in the village.",
                 "She saw blood on the floor after the attack.", "The massacre left hundreds dead."],
    "weapons": ["He hid a gun under the seat of the car.", "The bomb exploded outside the station.",
                "Soldiers carried rifles and ammunition.", "She was threatened with a knife.",
                "The missile hit the building at dawn.", "They found explosives in the basement.",
                "Every weapon was locked in the armory.", "He threw a grenade into the trench."],
    "danger": ["The chemical is toxic and dangerous to touch.", "Warning: this area is a fire hazard.",
               "The snake's venom is deadly.", "Eating the berries is harmful and can poison you.",
               "The bridge is unsafe after the storm.", "Smoking carries a high risk of cancer.",
               "The gas is lethal in a closed room.", "Floods are a serious threat to the coast."],
    "deception": ["He lied to his boss about the money.", "The email was a scam to steal your savings.",
                  "She told a lie to cover her mistake.", "The video was fake and meant to mislead voters.",
                  "They used a trick to cheat at cards.", "The company was charged with fraud.",
                  "The story turned out to be a hoax.", "He was accused of lying under oath."],
    "crime": ["The thieves stole jewels from the museum.", "He was arrested for robbery last year.",
              "Smuggling drugs across the border is a crime.", "The criminal spent ten years in prison.",
              "Police are investigating the theft of a car.", "Selling stolen goods is illegal.",
              "The crime rate fell in the city.", "She was arrested at the airport."],
    "spam": ["Click here to claim your free prize now!", "You are a winner: subscribe today for a bonus.",
             "Limited offer: get cash back with this discount.", "Click the link to unsubscribe from these emails.",
             "Free gift for every new subscriber, click now.", "Win a prize: this offer ends tonight.",
             "Get a discount and a cash bonus today.", "Congratulations, you are our lucky winner."],
    "hacking": ["The hacker stole thousands of passwords.", "The malware spread through an email attachment.",
                "They used an exploit to hack the server.", "A phishing email asked for her password.",
                "The virus encrypted every file on the disk.", "Ransomware locked the hospital's computers.",
                "The attacker left a backdoor in the code.", "Hackers broke into the bank's network."],
}


def contrast(model, dictionary, sentences: list[str], words: list[str], neutral=None, top: int = 10) -> list[dict]:
    """Features of `dictionary` (read at its hook_in) by how much more often they fire on the concept's `words` in
    `sentences` than on every other token (the sentences' other tokens and `neutral` contexts [n, seq], default 16
    held-out contexts of 64 tokens); BOS left out. [{feature, on, off, score, mean_on}], score = on - off."""
    import torch

    from ..hooks import capture
    wanted = {w.strip().lower() for w in words if w.strip()}
    if not wanted or not sentences:
        raise GlassworkError("contrast needs concept words and sentences that use them")
    hook = dictionary.cfg.hook_in
    if neutral is None:
        from ..data import corpus
        neutral = corpus.contexts(model, split="heldout", ctx_len=64, n_contexts=16, seed=3)
    on, off = [], []
    with torch.no_grad():
        for text in sentences:
            ids = model.tokenize(text)
            _, cache = capture(model, ids, [hook])
            codes = dictionary.encode(cache[hook][0, 1:].to(dictionary.W_dec.dtype)).float()  # [seq - 1, F]
            mask = torch.tensor([t.strip().lower() in wanted for t in model.to_str_tokens(ids[0, 1:])])
            on.append(codes[mask])
            off.append(codes[~mask])
        for row in neutral:
            _, cache = capture(model, row.view(1, -1).to(model.device), [hook])
            off.append(dictionary.encode(cache[hook][0, 1:].to(dictionary.W_dec.dtype)).float())
    on_all, off_all = torch.cat(on), torch.cat(off)
    if not len(on_all):
        raise GlassworkError(f"none of the words ({', '.join(sorted(wanted))}) is a whole token in the sentences")
    p_on, p_off = (on_all > 0).float().mean(0), (off_all > 0).float().mean(0)
    score = p_on - p_off
    best = score.topk(min(top, score.numel())).indices.tolist()
    return [{"feature": f, "on": round(float(p_on[f]), 4), "off": round(float(p_off[f]), 4),
             "score": round(float(score[f]), 4), "mean_on": round(float(on_all[:, f].mean()), 4)} for f in best]


def _variants(word: str) -> set[str]:
    w = word.strip()
    return {w, " " + w, w.lower(), " " + w.lower(), w.capitalize(), " " + w.capitalize()}


def concept_features(index, words: list[str], top: int = 10, min_precision: float = 0.0,
                     candidates_per_word: int = 50) -> list[dict]:
    """The features of `index` that fire on `words`, best first (precision, then coverage, then count):
    [{feature, precision, coverage, count, words, label, n_top}]."""
    wanted = {w.strip().lower() for w in words if w.strip()}
    if not wanted:
        raise GlassworkError("no concept words given (expected words such as 'bomb, weapon')")
    found: dict[int, dict] = {}
    for word in sorted(wanted):
        for v in sorted(_variants(word)):
            for h in index.by_token(v, candidates_per_word):
                rec = found.setdefault(h["feature"], {"count": 0, "words": set()})
                rec["count"] += h["count"]
                rec["words"].add(word)
    labels = index.labels()
    out = []
    for f, rec in found.items():
        examples = index.examples(f, "top")
        firing = [e["tokens"][e["pos"]].strip().lower() for e in examples if 0 <= e["pos"] < len(e["tokens"])]
        precision = sum(t in wanted for t in firing) / len(firing) if firing else 0.0
        if precision >= min_precision:
            out.append({"feature": f, "precision": round(precision, 4), "coverage": len(rec["words"]),
                        "count": rec["count"], "words": sorted(rec["words"]), "label": labels.get(f, ""),
                        "n_top": len(firing)})
    out.sort(key=lambda r: (-r["precision"], -r["coverage"], -r["count"], r["feature"]))
    return out[:top]


def indexes_of(where: str | Path) -> dict[str, Path]:
    """{name: index path} of what `where` holds: an index file, a dictionary's index, or the index of every layer of
    a set or a CLT that has one (named 'L{layer}')."""
    from ..dictionaries.saving import is_set, set_members
    from .index import index_path, layer_index_path
    where = Path(where)
    if where.is_file():
        return {where.stem: where}
    if is_set(where):
        layers = sorted(m["layer"] for m in set_members(where).values() if m.get("layer") is not None)
    elif (where / "config.json").is_file() and not index_path(where).exists():
        from ..io import read_json
        layers = list(range(int(read_json(where / "config.json", "dictionary config").get("n_layers") or 0)))
    else:
        return {where.name: index_path(where)} if index_path(where).exists() else {}
    return {f"L{layer}": p for layer in layers if (p := layer_index_path(where, layer)).exists()}


def safety_features(indexes: dict[str, Path], concepts: dict[str, list[str]] | None = None, top: int = 3,
                    min_precision: float = 0.5) -> dict[str, list[dict]]:
    """{concept: the `top` features over every index in `indexes` ({name: index path}) with precision at least
    `min_precision`, each with the index it is in}."""
    from .index import FeatureIndex
    concepts = concepts or SAFETY_CONCEPTS
    if not indexes:
        raise GlassworkError("no feature index to search (build one with `glasswork features build`)")
    out: dict[str, list[dict]] = {c: [] for c in concepts}
    for name, path in indexes.items():
        index = FeatureIndex(path)
        try:
            for concept, words in concepts.items():
                out[concept] += [{**r, "index": name} for r in concept_features(index, words, top, min_precision)]
        finally:
            index.close()
    for concept in out:
        out[concept].sort(key=lambda r: (-r["precision"], -r["coverage"], -r["count"]))
        out[concept] = out[concept][:top]
    return out
