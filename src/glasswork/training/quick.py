"""Small dictionaries trained in well under a minute on a CPU, cached on disk: test fixtures and demos.
Cached under $GLASSWORK_HOME/fixtures/<name>-<hash of settings and glasswork version>; built in a temp folder and
renamed into place, so concurrent test runs never see half a folder."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from ..version import __version__
from ..dictionaries.saving import is_set
from ..io import home
from .sources import ModelSource
from .trainer import TrainConfig, train


def fixture_texts():
    """Text to train on: the project's default corpus when present, else the news articles in a cached gensim wheel."""
    try:
        from ..data import corpus
        return corpus.default_texts
    except (ImportError, AttributeError):
        pass
    import zipfile
    wheels = sorted(home().rglob("gensim-*.whl"))
    if not wheels:
        from ..io import GlassworkError
        raise GlassworkError("quick dictionaries need text: glasswork.data.corpus, or a gensim wheel under "
                             f"{home()} (pip download --no-deps gensim==4.4.0)")
    with zipfile.ZipFile(wheels[0]) as z:
        lines = z.read("gensim/test/test_data/lee_background.cor").decode("utf-8", "replace").splitlines()
    return lambda: iter(lines)


def cached(name: str, tc: TrainConfig, texts=None, model=None) -> Path:
    """Train (once) the dictionaries tc describes on the default model; return their folder."""
    key = hashlib.sha256(json.dumps({**asdict(tc), "v": __version__}, sort_keys=True).encode()).hexdigest()[:12]
    folder = home() / "fixtures" / f"{name}-{key}"
    if (folder / "config.json").exists() or is_set(folder):
        return folder
    from ..models import load_model
    model = model or load_model()
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    source = ModelSource.from_config(model, texts or fixture_texts(), tc)
    train(tc, source, tmp)
    try:
        os.rename(tmp, folder)
    except OSError:  # another process finished first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def small_sae_config() -> TrainConfig:
    return TrainConfig(kind="sae", arch="topk", hooks=["blocks.6.hook_resid_post"], d_sae=2304, k=16, tokens=16_000,
                       batch_size=1008, ctx=64, lr=4e-3, warmup_steps=2, b_dec_init="mean", model="smollm2-135m")


def small_transcoders_config() -> TrainConfig:
    return TrainConfig(kind="transcoder", arch="topk", layers=list(range(30)), d_sae=1152, k=16, tokens=8_000,
                       batch_size=1008, ctx=64, lr=4e-3, warmup_steps=2, b_dec_init="mean", model="smollm2-135m")
