"""Safety-relevant features of the demo's dictionaries: for each built-in concept (violence, weapons, danger,
deception, crime, spam, hacking) the features that fire most on its words in sentences written for the project,
against everywhere else (`features.concepts.contrast`), labelled; then the SAE's best violence feature steered.

  .venv/bin/python benchmarks/safety_features.py [--demo ~/.cache/glasswork/demo] [--layers 8,15,22] [--no-record]"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

from _machine import cpu_name, record


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, default=Path.home() / ".cache" / "glasswork" / "demo")
    ap.add_argument("--layers", default="8,15,22", help="transcoder layers to search beside the SAE")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    import glasswork as gw
    from glasswork import steering
    from glasswork.demo import word_hits
    from glasswork.features.concepts import SAFETY_CONCEPTS, SAFETY_SENTENCES, contrast
    from glasswork.features.scoring import ensure_labels
    model = gw.load_model()
    dicts = {"SAE L15": args.demo / "sae-l15"}
    dicts.update({f"transcoder L{l}": args.demo / "transcoders" / f"layer_{int(l):02d}" for l in args.layers.split(",")})
    rows, best_violence = [], None
    t0 = time.perf_counter()
    for name, folder in dicts.items():
        d = gw.load_dictionary(folder).requires_grad_(False)
        index = gw.FeatureIndex(folder)
        for concept, words in SAFETY_CONCEPTS.items():
            found = contrast(model, d, SAFETY_SENTENCES[concept], words, top=1)[0]
            label = ensure_labels(index, [found["feature"]]).get(found["feature"], "")
            rows.append((concept, name, found, label))
            if name == "SAE L15" and concept == "violence":
                best_violence = found["feature"]
        index.close()
    seconds = time.perf_counter() - t0
    sae = gw.load_dictionary(dicts["SAE L15"])
    prompt = "My favourite thing to do on a weekend is"
    clamp = steering.clamp_feature(model, sae, best_violence, "4x", dictionary_folder=dicts["SAE L15"])
    out = steering.compare(model, prompt, [clamp], max_new_tokens=30, seed=0, temperature=0.7, n=4)
    words = SAFETY_CONCEPTS["violence"] + ["death", "dead", "died", "die", "war"]
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [f"## Safety-relevant features of the demo's dictionaries ({now:%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores. Command: `.venv/bin/python benchmarks/safety_features.py "
             f"{' '.join(sys.argv[1:])}`. Per concept and dictionary, the feature that fires most more often on the "
             f"concept's words (8 sentences per concept, `features/concepts.py`) than on every other token (the "
             f"sentences' other tokens and 16 held-out contexts of 64 tokens): its firing rate on the words (*on*) and "
             f"elsewhere (*off*), and its built-in label (made from the index's contexts, which never saw the "
             f"sentences). {seconds:.0f} s for all.", "",
             "| concept | dictionary | feature | on | off | label |", "|---|---|---|---|---|---|"]
    lines += [f"| {c} | {n} | {r['feature']} | {r['on']:.2f} | {r['off']:.3f} | {label[:90].replace('|', '/')} |"
              for c, n, r, label in rows]
    lines += ["", f"Steered: SAE feature {best_violence} (violence) clamped to 4x its max on {prompt!r}, seed 0, 4 "
              f"samples of 30 tokens: violence or death words in {word_hits(out['steered'], words)} of 4 steered "
              f"completions, {word_hits(out['baseline'], words)} of 4 baseline. First steered: "
              f"{out['steered'][0][:160]!r}; first baseline: {out['baseline'][0][:120]!r}."]
    record("\n".join(lines) + "\n", args.no_record)


if __name__ == "__main__":
    main()
