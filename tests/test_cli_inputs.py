"""Bad CLI input, table-driven: each case exits 2 with a short message and no traceback, and writes nothing."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

import glasswork as gw
from glasswork.cli import app

from server_fixtures import shared_workdir


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base, _ = shared_workdir()
    root = tmp_path_factory.mktemp("inputs")
    shutil.copytree(base / "sae", root / "sae")  # a small indexed SAE
    for name, change in (("wrong-type", {"d_sae": "48"}), ("float-k", {"k": 3.5}), ("null-kind", {"kind": None}),
                         ("list-model", {"model": ["x"]})):
        shutil.copytree(base / "sae", root / name, ignore=shutil.ignore_patterns("features.sqlite*"))
        cfg = json.loads((root / name / "config.json").read_text())
        (root / name / "config.json").write_text(json.dumps({**cfg, **change}))
    nan = gw.load_dictionary(base / "sae")
    with torch.no_grad():
        nan.W_dec[3, 1] = float("nan")
    gw.save_dictionary(nan, root / "nan-weights")
    from glasswork.dictionaries.formats import export_saelens
    topk = gw.SparseCoder(gw.DictionaryConfig(kind="sae", d_in=8, d_sae=16, activation="topk", k=4, hook_in="h"))
    topk.reset_parameters(seed=0)
    export_saelens(topk, root / "sl-ok")
    for name, change in (("sl-no-k", {"k": None}), ("sl-k0", {"k": 0})):
        shutil.copytree(root / "sl-ok", root / name)
        cfg = json.loads((root / name / "cfg.json").read_text())
        cfg.update(change)
        (root / name / "cfg.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    shutil.copytree(root / "sl-ok", root / "sl-nan")
    from safetensors.torch import load_file, save_file
    w = load_file(str(root / "sl-nan" / "sae_weights.safetensors"))
    w["W_dec"][0, 0] = float("nan")
    save_file(w, str(root / "sl-nan" / "sae_weights.safetensors"))
    (root / "bad-json-model").mkdir()
    (root / "bad-json-model" / "config.json").write_text("{not json")
    (root / "odd-model").mkdir()
    (root / "odd-model" / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    (root / "empty.txt").write_text("\n  \n")
    (root / "a-file").write_text("x")
    return root


CASES = [
    ("train --tokens 0", ["train", "--hooks", "blocks.1.hook_resid_post", "--tokens", "0", "--out", "{t}/o"]),
    ("train --tokens -5", ["train", "--hooks", "blocks.1.hook_resid_post", "--tokens", "-5", "--out", "{t}/o"]),
    ("train --batch-size 0", ["train", "--hooks", "h", "--batch-size", "0", "--out", "{t}/o"]),
    ("train --device cuda", ["train", "--hooks", "h", "--device", "cuda", "--out", "{t}/o"]),
    ("train --seed huge", ["train", "--hooks", "h", "--seed", "99999999999999999999", "--out", "{t}/o"]),
    ("harvest --ctx-len 1", ["harvest", "--hooks", "blocks.1.hook_resid_post", "--ctx-len", "1", "--out", "{t}/s"]),
    ("harvest --ctx-len 0", ["harvest", "--hooks", "blocks.1.hook_resid_post", "--ctx-len", "0", "--out", "{t}/s"]),
    ("features build --contexts -5", ["features", "build", "{t}/sae", "--contexts", "-5"]),
    ("features build --contexts 0", ["features", "build", "{t}/sae", "--contexts", "0"]),
    ("features build empty text file", ["features", "build", "{t}/sae", "--text-file", "{t}/empty.txt"]),
    ("features label --features abc", ["features", "label", "{t}/sae", "--features", "abc"]),
    ("features export --features abc", ["features", "export", "{t}/sae", "--features", "abc", "--out", "{t}/np"]),
    ("steer empty prompt", ["steer", "--prompt", " ", "--direction", "x"]),
    ("steer --max-new-tokens -3", ["steer", "--prompt", "hi", "--max-new-tokens", "-3"]),
    ("steer --seed huge", ["steer", "--prompt", "hi", "--seed", "99999999999999999999"]),
    ("serve --port 99999", ["serve", "--dir", "{t}/w", "--port", "99999"]),
    ("serve --dir a file", ["serve", "--dir", "{t}/a-file"]),
    ("export SAE --format circuit-tracer", ["export", "{t}/sae", "--format", "circuit-tracer", "--out", "{t}/ct"]),
    ("config field a string", ["export", "{t}/wrong-type", "--format", "saelens", "--out", "{t}/x"]),
    ("config field a float", ["export", "{t}/float-k", "--format", "saelens", "--out", "{t}/x"]),
    ("config field null", ["export", "{t}/null-kind", "--format", "saelens", "--out", "{t}/x"]),
    ("config field a list", ["export", "{t}/list-model", "--format", "saelens", "--out", "{t}/x"]),
    ("NaN weights", ["export", "{t}/nan-weights", "--format", "saelens", "--out", "{t}/x"]),
    ("import SAELens with NaN weights", ["import", "{t}/sl-nan", "--out", "{t}/imported"]),
    ("import SAELens TopK without k", ["import", "{t}/sl-no-k", "--out", "{t}/imported"]),
    ("import SAELens TopK with k 0", ["import", "{t}/sl-k0", "--out", "{t}/imported"]),
    ("info on bad JSON", ["info", "--model", "{t}/bad-json-model"]),
    ("info on an unknown model_type", ["info", "--model", "{t}/odd-model"]),
]
# --out of the wrong kind, for every verb that writes: a folder that is a file (or lies under one), a file that is a
# folder; refused before any work
CASES += [
    ("train --out a file", ["train", "--hooks", "blocks.1.hook_resid_post", "--tokens", "64", "--out", "{t}/a-file"]),
    ("train --out under a file", ["train", "--hooks", "blocks.1.hook_resid_post", "--out", "{t}/a-file/sae"]),
    ("harvest --out a file", ["harvest", "--hooks", "blocks.1.hook_resid_post", "--out", "{t}/a-file"]),
    ("export --out a file", ["export", "{t}/sae", "--format", "saelens", "--out", "{t}/a-file"]),
    ("import --out a file", ["import", "{t}/sl-ok", "--out", "{t}/a-file"]),
    ("features build --out a folder", ["features", "build", "{t}/sae", "--out", "{t}/sl-ok"]),
    ("features export --out a file", ["features", "export", "{t}/sae", "--out", "{t}/a-file"]),
    ("attribute --out a folder", ["attribute", "--prompt", "hi", "--dictionary", "{t}/sae", "--out", "{t}/sl-ok"]),
    ("attribute --qk -1", ["attribute", "--prompt", "hi", "--dictionary", "{t}/sae", "--qk", "-1"]),
    ("attribute --faithfulness -2", ["attribute", "--prompt", "hi", "--dictionary", "{t}/sae", "--faithfulness", "-2"]),
    ("attribute --viewer-json a folder", ["attribute", "--prompt", "hi", "--dictionary", "{t}/sae", "--out",
                                          "{t}/g.safetensors", "--viewer-json", "{t}/sl-ok"]),
    ("direction --out under a file", ["direction", "--out", "{t}/a-file/d", "--feature", "0/1", "--dictionary", "{t}/sae"]),
    ("global empty prompt file", ["global", "--dictionary", "{t}/sae", "--prompts", "{t}/empty.txt"]),
    ("global missing prompt file", ["global", "--dictionary", "{t}/sae", "--prompts", "{t}/nope.txt"]),
    ("global --n 0", ["global", "--dictionary", "{t}/sae", "--n", "0"]),
    ("features concepts unknown concept", ["features", "concepts", "{t}/sae", "--concept", "nope"]),
    ("features concepts --contrast --words without sentences", ["features", "concepts", "{t}/sae", "--contrast",
                                                               "--words", "a,b"]),
    ("eval --suite unknown part", ["eval", "{t}/sae", "--suite", "--parts", "probing,speed"]),
    ("toy --out a file", ["toy", "--quick", "--out", "{t}/a-file"]),
    ("demo --out a file", ["demo", "--quick", "--no-serve", "--out", "{t}/a-file"]),
]


@pytest.mark.parametrize("args", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_clear_message(folders, args):
    before = sorted(p.relative_to(folders) for p in folders.rglob("*") if "features.sqlite" not in p.name)
    r = CliRunner().invoke(app, [a.replace("{t}", str(folders)) for a in args])
    out = r.output
    assert r.exit_code == 2, (r.exit_code, out[-800:], r.exception)
    assert "Traceback" not in out and not isinstance(r.exception, (TypeError, ValueError, KeyError, AttributeError))
    message = [line for line in out.splitlines() if line.strip(" │╭╮╰╯─")]
    assert 1 <= len(message) <= 6, out  # one line of ours, or typer's short usage box
    after = sorted(p.relative_to(folders) for p in folders.rglob("*") if "features.sqlite" not in p.name)
    assert after == before  # nothing written, nothing half-made


def test_a_corrected_retry_succeeds(folders):
    r = CliRunner().invoke(app, ["import", str(folders / "sl-ok"), "--out", str(folders / "fixed")])
    assert r.exit_code == 0, r.output
    assert gw.load_dictionary(folders / "fixed").cfg.k == 4


FULL_DISK = [  # (name, args): each writes more than the limit; {o} is its output, {t} the fixture folder
    ("export", ["export", "{t}/big-sae", "--format", "saelens", "--out", "{o}"]),
    ("import", ["import", "{t}/big-sl", "--out", "{o}"]),
    ("features export", ["features", "export", "{t}/sae", "--out", "{o}"]),
    ("train", ["train", "--hooks", "blocks.1.hook_resid_post", "--tokens", "600", "--d-sae", "128", "--k", "4",
               "--batch-size", "120", "--out", "{o}"]),
    ("harvest", ["harvest", "--hooks", "blocks.1.hook_resid_post", "--tokens", "2048", "--ctx-len", "16",
                 "--out", "{o}"]),
]


@pytest.mark.model
@pytest.mark.parametrize("args", [c[1] for c in FULL_DISK], ids=[c[0] for c in FULL_DISK])
def test_a_full_disk_is_one_line_leaves_nothing_and_the_retry_succeeds(folders, tmp_path, args):
    """Writes fail part-way (the file-size limit RLIMIT_FSIZE: what a full disk does to a write, without root): exit 2,
    one line naming what failed, no output folder or temp file left behind; with room again the same command works."""
    import os
    import resource
    import subprocess
    import sys
    from pathlib import Path
    if not (folders / "big-sae").exists():
        big = gw.SparseCoder(gw.DictionaryConfig(kind="sae", d_in=64, d_sae=512, activation="topk", k=4, hook_in="h",
                                                 hook_out="h"))
        big.reset_parameters(seed=0)
        gw.save_dictionary(big, folders / "big-sae")
        from glasswork.dictionaries.formats import export_saelens
        export_saelens(big, folders / "big-sl")
    limit = 48 * 1024  # bytes per file: under each verb's largest file, above everything Python itself writes
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).parent / "glasswork"), *[a.replace("{t}", str(folders)).replace("{o}", str(out))
                                                           for a in args]]
    env = {**os.environ, "GLASSWORK_PROGRESS": "0", "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "400"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert r.returncode == 2, r.stderr[-1500:]
    text = r.stderr.strip()
    assert "Traceback" not in text and text.startswith("error:") and len(text.splitlines()) == 1, r.stderr
    assert "too large" in text.lower() or "no space" in text.lower() or "i/o error" in text.lower(), text
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and out.is_dir() and any(out.iterdir()), r.stderr[-1500:]


def test_json_output_never_holds_nan(capsys):
    from glasswork.cli import emit
    emit({"fvu": float("nan"), "scores": [1.5, float("inf"), {"kl": float("-inf")}], "n": 3}, True)
    text = capsys.readouterr().out
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))
    assert parsed == {"fvu": None, "scores": [1.5, None, {"kl": None}], "n": 3}


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only file system (a tmpfs mounted ro: root ignores file modes, so chmod would test nothing)."""
    import subprocess
    where = tmp_path / "ro"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({r.stderr.strip() or 'mount failed'})")
    yield where
    subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize("args", [["export", "{t}/sae", "--format", "saelens", "--out", "{o}/x"],
                                  ["import", "{t}/sl-ok", "--out", "{o}/x"],
                                  ["features", "export", "{t}/sae", "--out", "{o}/x"]],
                         ids=["export", "import", "features export"])
def test_a_read_only_output_is_one_line_and_writes_nothing(folders, read_only_folder, args):
    r = CliRunner().invoke(app, [a.replace("{t}", str(folders)).replace("{o}", str(read_only_folder)) for a in args])
    assert r.exit_code == 2, (r.output[-800:], r.exception)
    text = " ".join(r.output.split())
    assert text.startswith("error:") and "Traceback" not in r.output and "read-only" in text.lower(), text
    assert list(read_only_folder.iterdir()) == []
