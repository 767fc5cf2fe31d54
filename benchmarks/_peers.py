"""The peers' own code, each in its own venv: where the venvs live, how they are made, and the default model folder as
the peers' transformers reads it. Used by benchmarks/peers.py (which installs them), benchmarks/attribute.py and
tests/test_peers.py (which skip with the reason when a peer is absent).

A peer NAME's python is $GLASSWORK_PEER_<NAME> (upper case, '-' as '_'), else $GLASSWORK_HOME/peer-venvs/NAME/bin/python.
Each venv gets torch==2.13.0 first (the CPU build on this disk; a bare torch requirement would pull a CUDA build),
then the pinned release below."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

# name -> pip requirements after torch (the versions every figure and compatibility test here ran against)
PEERS = {
    "circuit-tracer": ["circuit-tracer==0.5.0", "nnsight>=0.6,<0.7"],  # nnsight 0.8.1 breaks circuit-tracer 0.5.0
    "sae-lens": ["sae-lens==6.54.12"],
    "sparsify": ["eai-sparsify==1.3.3"],
}
TORCH = "torch==2.13.0"


def venv_folder(name: str) -> Path:
    from glasswork.io import home
    return home() / "peer-venvs" / name


def peer_python(name: str) -> Path | None:
    """The peer's python, or None when it is not installed."""
    env = os.environ.get("GLASSWORK_PEER_" + name.upper().replace("-", "_"))
    path = Path(env) if env else venv_folder(name) / "bin" / "python"
    return path if path.exists() else None


def why_absent(name: str) -> str:
    return (f"{name} is not installed in its own venv: `python benchmarks/peers.py --install {name}` (or set "
            f"GLASSWORK_PEER_{name.upper().replace('-', '_')} to its python)")


def install(name: str) -> Path:
    """Make NAME's venv (torch first, then its pinned release); returns its python."""
    if name not in PEERS:
        raise SystemExit(f"unknown peer '{name}'; known: {', '.join(PEERS)}")
    folder = venv_folder(name)
    python = folder / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS[name]], check=True)
    return python


def peer_version(name: str) -> str:
    python = peer_python(name)
    if python is None:
        return "absent"
    dist = {"sparsify": "eai-sparsify"}.get(name, name)
    out = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version('{dist}'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def peer_model_folder() -> Path:
    """The converted default model, readable by transformers 4.57 (circuit-tracer 0.5.0's): rope_theta at the top
    level, a tokenizer class it knows; the weights are symlinks to glasswork's own copy."""
    from glasswork.io import home
    from glasswork.models import default_model_folder
    src, dst = default_model_folder(), home() / "peers" / "smollm2-135m-tf4"
    if not (dst / "config.json").exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dst.parent))
        for f in src.iterdir():
            if f.name not in ("config.json", "tokenizer_config.json"):
                os.symlink(f, tmp / f.name)
        tok = json.loads((src / "tokenizer_config.json").read_text())
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"  # 5.x writes 'TokenizersBackend', unknown to 4.57
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
        cfg = json.loads((src / "config.json").read_text())
        cfg["rope_theta"] = cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        os.replace(tmp, dst)
    return dst
