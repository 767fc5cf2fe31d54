"""What fires here: for each token of a text, the dictionary's most active features, with their labels."""
from __future__ import annotations

import torch

from .index import FeatureIndex, check_match


@torch.no_grad()
def fires(model, dictionary, text: str, top: int = 5, index: FeatureIndex | None = None, bos: bool = True) -> list[dict]:
    """[{pos, token, features: [{feature, act, label}]}] for each token of `text` (BOS excluded)."""
    from ..hooks import capture
    check_match(model, dictionary)
    ids = model.tokenize(text, bos=bos)
    hook = dictionary.cfg.hook_in
    _, cache = capture(model, ids, [hook])
    acts = dictionary.encode(cache[hook].to(dictionary.W_enc.dtype))[0]  # [seq, F]
    values, feats = acts.topk(min(top, acts.shape[-1]), dim=-1)  # [seq, top]
    labels = index.labels() if index is not None else {}
    tokens = model.to_str_tokens(ids)
    out = []
    for pos in range(1 if bos else 0, ids.shape[1]):
        out.append({"pos": pos, "token": tokens[pos], "features": [
            {"feature": int(f), "act": round(float(v), 4), "label": labels.get(int(f))}
            for v, f in zip(values[pos].tolist(), feats[pos].tolist()) if v > 0]})
    return out
