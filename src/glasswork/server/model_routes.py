"""The routes that run the model: steering (/api/steer: baseline and steered generations, same seed) and attribution
of a new prompt as a background job (/api/attribute, polled at /api/jobs/{id}; the graph lands in graphs/)."""
from __future__ import annotations

import re
import time
from typing import Literal, Optional, Union

from fastapi import APIRouter, Depends, HTTPException
from pydantic import Field

from ..io import relative_path
from .security import check_name
from .site import Body, Site, site_of

router = APIRouter(prefix="/api")
MAX_PROMPT = 2000  # characters: a prompt past this is a mistake or an attack, and attribution cost grows with it
MAX_NEW_TOKENS = 200


class FeatureEdit(Body):
    dictionary: str = Field(..., max_length=1000)
    feature: int = Field(..., ge=0)
    layer: Optional[int] = Field(None, ge=0)
    value: Union[float, str] = "10x"  # a number, or 'Nx' = N times the feature's max activation


class DirectionEdit(Body):
    direction: str = Field(..., max_length=128)
    coeff: float = Field(..., ge=-1e4, le=1e4)
    hook: Optional[str] = Field(None, max_length=200)
    ablate: bool = False


class Steer(Body):
    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT)
    edits: list[Union[FeatureEdit, DirectionEdit]] = Field(..., min_length=1, max_length=16)
    positions: Literal["all", "prompt", "generated"] = "all"
    max_new_tokens: int = Field(30, ge=1, le=MAX_NEW_TOKENS)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    temperature: float = Field(0.7, ge=0, le=5)


class Attribute(Body):
    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT)
    dictionary: str = Field(..., max_length=1000)
    name: Optional[str] = Field(None, max_length=128)
    max_features: Optional[int] = Field(None, ge=1, le=1_000_000)
    batch_size: int = Field(64, ge=1, le=4096)


@router.post("/steer")
def steer(body: Steer, site: Site = Depends(site_of)):
    from .. import steering as st
    from ..directions import directional_ablation, load_direction
    res = site.res
    with site.model_time():
        t0 = time.time()
        ivs, model = [], None
        for e in body.edits:
            if isinstance(e, FeatureEdit):
                d, member = res.dictionary(site.folder_or_404(e.dictionary), e.layer)
                model = model or res.model(d.cfg.model or None)
                ivs.append(st.clamp_feature(model, d, e.feature, e.value, body.positions, dictionary_folder=member))
            else:
                paths = res.directions()
                if e.direction not in paths:
                    raise HTTPException(404, f"no direction '{e.direction}' in {site.root / 'directions'}")
                vec = load_direction(paths[e.direction])
                model = model or res.model(vec.model or None)
                if e.ablate:
                    ivs += directional_ablation(model, vec.vector, positions=body.positions)
                else:
                    ivs.append(st.add_direction(model, e.hook or vec.hook, vec.vector, e.coeff, body.positions))
        out = st.compare(model, body.prompt, ivs, body.max_new_tokens, body.seed, body.temperature)
        return {**out, "interventions": [iv.label for iv in ivs], "seconds": round(time.time() - t0, 3)}


@router.post("/attribute")
def start_attribution(body: Attribute, site: Site = Depends(site_of)):
    folder = site.folder_or_404(body.dictionary)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", body.prompt).strip("-")[:40] or "graph"
    name = check_name(body.name or f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}")
    res, store = site.res, site.store

    def work():
        from ..circuits import attribute
        from ..circuits.faithfulness import add_faithfulness
        from ..circuits.inactive import add_inactive
        from ..features.index import typical_activations
        coders = res.coders(folder)
        some = coders if not isinstance(coders, dict) else next(iter(coders.values()))
        with res.compute:  # a background job waits its turn for the model
            model = res.model(some.cfg.model or None)
            graph = attribute(model, coders, body.prompt, max_features=body.max_features,
                              batch_size=body.batch_size, dictionary=relative_path(folder, store.folder))
            if graph.logit_token(0) >= 0:  # as the CLI does: the top features checked on the real model, and
                add_faithfulness(graph, model, coders)  # what the graph does not show
                layers = sorted(coders) if isinstance(coders, dict) else range(model.n_layers)
                add_inactive(graph, model, coders, typical_activations(folder, layers) or None)
        graph.save(store.folder / f"{name}.safetensors")
        store.forget(name)
        return {"graph": name, "nodes": graph.n_nodes, "features": graph.n_features,
                "scores": graph.meta.get("scores", {})}
    job = site.jobs.start("attribute", work)
    return {"job": job.id, "graph": name}


@router.get("/jobs/{job_id}")
def job(job_id: str, site: Site = Depends(site_of)):
    j = site.jobs.get(job_id) if re.match(r"^[0-9a-f]{1,32}$", job_id) else None
    if j is None:
        raise HTTPException(404, f"no job '{job_id[:40]}'")
    return j.public()
