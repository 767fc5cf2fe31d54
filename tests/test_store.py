"""Activation store: harvest, resume after a kill (bitwise equal), shuffled loader (each row once per epoch, bounded
buffer, drop_bos, aligned hooks), bf16 storage, streaming, and clear errors that leave written files alone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_tiny
from glasswork.data.store import ActivationStore, harvest, stream_activations
from glasswork.io import GlassworkError, read_json

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out"]
CTX = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is ~30x faster than two on a loaded 2-core machine (no spinning OpenMP workers)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_ids(n: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 97, (n, CTX), generator=g)
    ids[:, 0] = 0  # BOS
    return ids


def make_store(folder: Path, dtype: str = "fp32", n: int = 40, **kw) -> Path:
    return harvest(make_tiny("llama"), HOOKS, folder, tokens=n * CTX, ctx_len=CTX, batch_size=4, shard_contexts=8,
                   ids=tiny_ids(n), dtype=dtype, **kw)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def same_store(a: Path, b: Path) -> None:
    fa, fb = files(a), files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name != "manifest.json":
            assert fa[name] == fb[name], name
    ma, mb = read_json(a / "manifest.json"), read_json(b / "manifest.json")
    ma.pop("created"), mb.pop("created")
    assert ma == mb


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "s")


def all_rows(s: ActivationStore, drop_bos: bool) -> torch.Tensor:
    """Every stored row, hooks side by side: [rows, sum of d]."""
    out = []
    for i in range(len(s.shards)):
        sh = s.read_shard(i)
        keep = torch.arange(len(sh["token_ids"])) % CTX != 0 if drop_bos else slice(None)
        out.append(torch.cat([sh[h][keep].float() for h in HOOKS], dim=1))
    return torch.cat(out)


def sort_rows(x: torch.Tensor) -> torch.Tensor:
    for col in reversed(range(x.shape[1])):  # stable lexicographic sort
        x = x[torch.sort(x[:, col], stable=True).indices]
    return x


def test_harvest_matches_hf_forward(store):
    m = make_tiny("llama")
    ids = tiny_ids()
    hidden = m.hf(input_ids=ids, output_hidden_states=True).hidden_states
    s = ActivationStore(store, model="tiny-llama")
    got = torch.cat([s.read_shard(i)["blocks.1.hook_resid_post"] for i in range(len(s.shards))])
    torch.testing.assert_close(got, hidden[2].reshape(-1, 32), rtol=0, atol=0)
    mlp_in = torch.cat([s.read_shard(i)["blocks.2.ln2.hook_normalized"] for i in range(len(s.shards))])
    mlp_out = torch.cat([s.read_shard(i)["blocks.2.hook_mlp_out"] for i in range(len(s.shards))])
    torch.testing.assert_close(m.mlp(2, mlp_in), mlp_out)
    tok = torch.cat([s.read_shard(i)["token_ids"] for i in range(len(s.shards))])
    assert torch.equal(tok, ids.reshape(-1))
    assert s.n_rows == 40 * CTX and len(s.shards) == 5 and s.dims == {h: 32 for h in HOOKS}
    # mean norm over non-BOS rows, recomputed by brute force
    ref = hidden[2][:, 1:].norm(dim=-1).mean().item()
    assert abs(s.mean_norm["blocks.1.hook_resid_post"] - ref) < 1e-5 * ref


def test_resume_after_failure_equals_uninterrupted(store, tmp_path):
    b = tmp_path / "b"
    with pytest.raises(RuntimeError, match="injected"):
        make_store(b, fail_after_shards=2)
    assert len(read_json(b / "manifest.json")["shards"]) == 2
    with pytest.raises(GlassworkError, match="incomplete"):
        ActivationStore(b)
    make_store(b)
    same_store(store, b)


KILL_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_store import make_store
make_store(__import__("pathlib").Path({out!r}), n=200)
"""


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    out = tmp_path / "k"
    env = {**os.environ, "GLASSWORK_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))],
                            env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (out / "manifest.json").exists() and len(read_json(out / "manifest.json").get("shards", [])) >= 2:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(read_json(out / "manifest.json")["shards"])
    assert 2 <= done < 25, "the kill should land midway"
    make_store(out, n=200)
    assert not list(out.glob(".*.tmp"))  # a killed write leaves no debris after the resume
    make_store(tmp_path / "ref", n=200)
    same_store(tmp_path / "ref", out)


def test_shuffled_loader_yields_every_row_once(store):
    s = ActivationStore(store)
    for drop_bos in (True, False):
        batches = list(s.batches(50, shuffle=True, seed=3, drop_bos=drop_bos, buffer_rows=100))
        got = torch.cat([torch.cat([b[h] for h in HOOKS], dim=1) for b in batches])  # hooks aligned per row
        ref = all_rows(s, drop_bos)
        assert len(got) == len(ref) == s.n_rows - (40 if drop_bos else 0)
        assert torch.equal(sort_rows(got), sort_rows(ref))
        assert not torch.equal(got, ref)  # actually shuffled
    assert all(len(b[HOOKS[0]]) == 50 for b in batches[:-1])
    # deterministic for a seed, different for another
    a = torch.cat([b[HOOKS[0]] for b in s.batches(50, seed=1)])
    assert torch.equal(a, torch.cat([b[HOOKS[0]] for b in s.batches(50, seed=1)]))
    assert not torch.equal(a, torch.cat([b[HOOKS[0]] for b in s.batches(50, seed=2)]))


def test_loop_epochs_and_start(store):
    s = ActivationStore(store)
    per_epoch = (s.n_rows - 40)
    it = s.batches(60, seed=0, loop=True, buffer_rows=64)
    rows = torch.cat([next(it)[HOOKS[0]] for _ in range(2 * per_epoch // 60)])
    for epoch in (rows[:per_epoch], rows[per_epoch:2 * per_epoch]):
        assert torch.equal(sort_rows(epoch), sort_rows(all_rows(s, True)[:, :32]))
    # start=k resumes with batch k
    first = list(zip(range(5), s.batches(60, seed=0, loop=True, buffer_rows=64)))
    resumed = next(s.batches(60, seed=0, loop=True, buffer_rows=64, start=3))
    assert torch.equal(resumed[HOOKS[0]], first[3][1][HOOKS[0]])


def test_buffer_memory_is_bounded(tmp_path):
    folder = make_store(tmp_path / "big", n=160)  # 20 shards of 128 rows
    s = ActivationStore(folder)
    for buffer_rows in (0, 100, 300):
        n = sum(len(b[HOOKS[0]]) for b in s.batches(32, buffer_rows=buffer_rows, drop_bos=False))
        assert n == s.n_rows
        shard_rows = max(sh["rows"] for sh in s.shards)
        assert s.peak_rows < buffer_rows + 32 + shard_rows < s.n_rows  # buffer + batch remainder + one shard


def test_drop_bos_removes_exactly_the_bos_rows(store):
    s = ActivationStore(store)
    bos_row = s.read_shard(0)["blocks.1.hook_resid_post"][0]  # position 0 sees only BOS: the same in every context

    def count(drop):
        rows = torch.cat([b["blocks.1.hook_resid_post"] for b in s.batches(64, drop_bos=drop)])
        return int((rows == bos_row).all(dim=1).sum())
    assert count(False) == 40 and count(True) == 0


def test_bf16_storage(store, tmp_path):
    b = make_store(tmp_path / "bf16", dtype="bf16")
    s16, s32 = ActivationStore(b), ActivationStore(store)
    sh16, sh32 = s16.read_shard(0), s32.read_shard(0)
    for h in HOOKS:
        assert sh16[h].dtype == torch.bfloat16
        assert torch.equal(sh16[h], sh32[h].to(torch.bfloat16))
    assert s16.info()["bytes"] < 0.6 * s32.info()["bytes"]
    batch = next(s16.batches(16))
    assert batch[HOOKS[0]].dtype == torch.float32


def test_stream_matches_store(store):
    m = make_tiny("llama")
    streamed = torch.cat([b[HOOKS[2]] for b in stream_activations(m, HOOKS, batch_size=75, ids=tiny_ids(),
                                                                   model_batch=4)])
    stored = torch.cat([b[HOOKS[2]] for b in ActivationStore(store).batches(75, shuffle=False, buffer_rows=0)])
    n = len(streamed)
    assert n == (40 * (CTX - 1)) // 75 * 75
    torch.testing.assert_close(streamed, stored[:n], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- bad input

def test_unknown_hook_lists_valid_ones(tmp_path):
    with pytest.raises(GlassworkError, match=r"unknown hook point 'blocks.1.hook_nope'.*Valid:.*hook_resid_post"):
        harvest(make_tiny("llama"), ["blocks.1.hook_nope"], tmp_path / "x", tokens=64, ctx_len=CTX, ids=tiny_ids(4))
    assert not (tmp_path / "x").exists()


def test_other_settings_or_model_against_existing_store(store):
    before = files(store)
    with pytest.raises(GlassworkError, match="other settings.*nothing was changed"):
        make_store(store, dtype="bf16")
    with pytest.raises(GlassworkError, match="other settings"):  # another model: its name is in the config
        harvest(make_tiny("qwen2"), HOOKS, store, tokens=40 * CTX, ctx_len=CTX, batch_size=4, shard_contexts=8,
                ids=tiny_ids(40))
    assert files(store) == before
    with pytest.raises(GlassworkError, match="harvested from model 'tiny-llama', not 'smollm2-135m'"):
        ActivationStore(store, model="smollm2-135m")


def test_folder_that_is_not_a_store(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GlassworkError, match="not an activation store"):
        make_store(tmp_path)
    assert files(tmp_path) == {"notes.txt": b"mine"}


def test_corrupt_and_truncated_shards(store, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    shard = bad / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip bits in the activations: same size, wrong content
    shard.write_bytes(bytes(data))
    s = ActivationStore(bad)
    with pytest.raises(GlassworkError, match="shard-00001.safetensors: shard is corrupt"):
        list(s.batches(64, shuffle=False))
    assert s.info(verify=True)["corrupt_shards"] == ["shard-00001.safetensors"]
    shard.write_bytes(bytes(data[:len(data) // 3]))
    with pytest.raises(GlassworkError, match="truncated"):
        ActivationStore(bad)
    before = files(bad)
    with pytest.raises(GlassworkError, match="truncated"):  # resuming refuses too, and overwrites nothing
        make_store(bad)
    assert files(bad) == before
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(GlassworkError, match="manifest.json: activation store manifest is not valid JSON"):
        ActivationStore(bad)


def test_cli_bad_model_name(tmp_path):
    from typer.testing import CliRunner

    from glasswork.cli import app
    res = CliRunner().invoke(app, ["harvest", "--model", "no-such-model", "--hooks", "blocks.0.hook_resid_post",
                                   "--out", str(tmp_path / "s"), "--tokens", "128"])
    assert res.exit_code == 2
    assert "unknown model 'no-such-model'" in res.output
    assert not (tmp_path / "s").exists()


@pytest.mark.model
def test_default_model_harvest_cli(default_model, tmp_path):
    """`glasswork harvest --json` on the default model: rows equal the HF forward; store info reads it back."""
    import json

    from typer.testing import CliRunner

    from glasswork.cli import app
    from glasswork.data import corpus
    out = tmp_path / "s"
    args = ["harvest", "--hooks", "blocks.3.hook_resid_post,blocks.3.hook_mlp_in,blocks.3.hook_mlp_out", "--out",
            str(out), "--tokens", "256", "--context", "64", "--batch-size", "2", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["tokens"] == 256 and summary["model"] == "smollm2-135m" and summary["complete"]
    ids = corpus.contexts(default_model, ctx_len=64, n_contexts=4)
    with torch.no_grad():
        hidden = default_model.hf(input_ids=ids, output_hidden_states=True).hidden_states
    s = ActivationStore(out, model=default_model)
    sh = s.read_shard(0)
    assert torch.equal(sh["token_ids"], ids.reshape(-1))
    torch.testing.assert_close(sh["blocks.3.hook_resid_post"], hidden[4].reshape(-1, 576), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(default_model.mlp(3, sh["blocks.3.hook_mlp_in"]), sh["blocks.3.hook_mlp_out"],
                               rtol=1e-4, atol=1e-4)
    res = CliRunner().invoke(app, ["store", "info", str(out), "--verify", "--json"])
    assert json.loads(res.stdout.strip().splitlines()[-1])["verified"] is True


def test_bad_manifests_are_clear_errors_and_a_failed_harvest_can_be_corrected(store, tmp_path):
    import json
    import shutil
    for name, edit in (("null", lambda m: None), ("no-file", lambda m: {**m, "shards": [{"rows": 1, "bytes": 2}]}),
                       ("path-file", lambda m: {**m, "shards": [{**m["shards"][0], "file": "../x"}]}),
                       ("shards-dict", lambda m: {**m, "shards": {}})):
        bad = tmp_path / name
        shutil.copytree(store, bad)
        (bad / "manifest.json").write_text(json.dumps(edit(read_json(bad / "manifest.json"))))
        with pytest.raises(GlassworkError, match="manifest"):
            ActivationStore(bad)
    # a harvest that failed before its first shard (here: a corpus source that does not exist) leaves a manifest
    # with no shards; the corrected command starts over instead of refusing "other settings"
    out = tmp_path / "retry"
    with pytest.raises(GlassworkError):
        harvest(make_tiny("llama"), HOOKS, out, tokens=8 * CTX, ctx_len=CTX, source="no-such-source")
    assert (out / "manifest.json").exists() and not read_json(out / "manifest.json")["shards"]
    make_store(out, n=8)
    assert ActivationStore(out).n_rows == 8 * CTX
