"""Export a feature index in Neuronpedia's upload format: the batch files of SAEDashboard's NeuronpediaRunner
(`batch-N.json`: model_id, layer, sae_set, sae_id_suffix, features[] with pos_str/pos_values, neg_str/neg_values,
frac_nonzero, freq_hist_data_bar_*, activations[] with tokens/values/bin_*), which Neuronpedia's converter turns into
its database export, plus explanations.jsonl, one Explanation record per label.

The schema is what Neuronpedia's importer reads, from its source (github.com/hijohnnylin/neuronpedia,
utils/neuronpedia-utils/neuronpedia_utils/convert-saedashboard-to-neuronpedia-export.py: the keys it indexes in a
batch file, a feature and an activation; db_models/{feature,activation,explanation}.py: the records' fields and types).
tests/test_features.py checks every export against a transcription of both."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..io import atomic_path, write_json
from .index import FeatureIndex


def _activation(ex: dict, bin_min: float, bin_max: float, bin_contains: float) -> dict:
    return {"tokens": ex["tokens"], "values": [round(v, 4) for v in ex["acts"]], "bin_min": bin_min,
            "bin_max": bin_max, "bin_contains": bin_contains, "qualifying_token_index": ex["pos"]}


def feature_json(index: FeatureIndex, feature: int) -> dict:
    """One feature as a NeuronpediaRunner feature dict."""
    rec = index.feature(feature)
    edges = index.meta["hist_edges"]
    nz = [i for i, h in enumerate(rec["hist"]) if h]
    hist = rec["hist"][nz[0]:nz[-1] + 1] if nz else []
    centers = [math.sqrt(edges[i] * edges[i + 1]) for i in range(nz[0], nz[-1] + 1)] if nz else []
    acts = [_activation(ex, -1, -1, -1) for ex in rec["top"]]  # top examples carry no bin
    nq = index.meta["n_quantiles"]
    for q in sorted({e["quantile"] for e in rec["quantile"]}):
        group = [e for e in rec["quantile"] if e["quantile"] == q]
        lo, hi = min(e["act"] for e in group), max(e["act"] for e in group)
        acts += [_activation(ex, lo, hi, 1.0 / nq) for ex in group]
    return {
        "feature_index": feature,
        "pos_str": [s for _, s, _ in rec["top_logits"]], "pos_values": [v for _, _, v in rec["top_logits"]],
        "neg_str": [s for _, s, _ in rec["bottom_logits"]], "neg_values": [v for _, _, v in rec["bottom_logits"]],
        "frac_nonzero": rec["freq"],
        "freq_hist_data_bar_heights": hist, "freq_hist_data_bar_values": [round(c, 5) for c in centers],
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [], "decoder_weights_dist": [],
        "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
        "correlated_neurons_indices": [], "correlated_neurons_pearson": [], "correlated_neurons_l1": [],
        # co-firing (share of this feature's firing tokens where the other fires too), not a Pearson correlation
        "correlated_features_indices": [g for g, _, _ in rec["cofiring"]],
        "correlated_features_pearson": [], "correlated_features_l1": [s for _, _, s in rec["cofiring"]],
        "topkCosSimIndices": [g for g, _ in rec["neighbors"]], "topkCosSimValues": [c for _, c in rec["neighbors"]],
        "activations": acts,
    }


def export(index: FeatureIndex, out: str | Path, features: list[int] | None = None, model_id: str | None = None,
           sae_set: str = "glasswork", batch_size: int = 256, author_id: str = "glasswork") -> dict:
    """Write batch-N.json files (and explanations.jsonl) under `out`; returns counts and paths.
    author_id: the Neuronpedia user id an explanation is credited to (its importer requires one)."""
    out = Path(out)
    meta = index.meta
    features = list(range(index.d_sae)) if features is None else [index.check_id(f) for f in features]
    model_id = model_id or Path(str(meta["model"])).name
    layer = meta["hook"].split(".")[1] if meta["hook"].startswith("blocks.") else meta["hook"]
    files = []
    for b, lo in enumerate(range(0, len(features), batch_size)):
        batch = {"model_id": model_id, "layer": int(layer) if str(layer).isdigit() else layer, "sae_set": sae_set,
                 "sae_id_suffix": None, "hook_name": meta["hook"], "d_sae": meta["d_sae"],
                 "features": [feature_json(index, f) for f in features[lo:lo + batch_size]]}
        path = out / f"batch-{b}.json"
        write_json(path, batch)
        files.append(str(path))
    rows = index.db.execute("SELECT feature, explainer, label, detection FROM labels WHERE label IS NOT NULL "
                            "ORDER BY feature").fetchall()
    wanted = set(features)
    with atomic_path(out / "explanations.jsonl") as tmp:
        with open(tmp, "w") as fh:
            for f, explainer, label, det in rows:
                if f in wanted:  # Neuronpedia's Explanation record: no field of its own for a score, so in notes
                    source = f"{layer}-{sae_set}"
                    fh.write(json.dumps({"id": f"glasswork-{model_id}-{source}-{f}-{explainer}", "modelId": model_id,
                                         "layer": source, "index": str(f), "description": label,
                                         "authorId": author_id, "typeName": "glasswork",
                                         "explanationModelName": explainer,
                                         "notes": None if det is None else f"glasswork detection score {det:.3f}"})
                             + "\n")
    return {"out": str(out), "files": files, "n_features": len(features),
            "n_explanations": sum(1 for r in rows if r[0] in wanted)}
