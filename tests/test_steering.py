"""Steering: no-op edits are exact, clamps put their value in, positions stay right under a KV cache, bad input is
a clear error."""
from __future__ import annotations

import pytest
import torch

import glasswork as gw
from glasswork import steering as st
from glasswork.dictionaries import DictionaryConfig, SparseCoder

from conftest import make_tiny

HOOK = "blocks.1.hook_resid_post"


def orthonormal_sae(d_in=32, d_sae=16, hook=HOOK, seed=0) -> SparseCoder:
    """A ReLU SAE whose decoder rows are orthonormal and W_enc = W_dec^T: encode(x + c w_i)_i = f_i + c exactly (for
    f_i + c > 0), so a clamp's value can be read back from the activation itself."""
    sae = SparseCoder(DictionaryConfig(kind="sae", d_in=d_in, d_sae=d_sae, activation="relu", b_dec_in=False,
                                       hook_in=hook, hook_out=hook, layer=1))
    q, _ = torch.linalg.qr(torch.randn(d_in, d_sae, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        sae.W_dec.copy_(q.T)
        sae.W_enc.copy_(q)
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(seed + 1))
    return sae


def ids_for(seed=0, batch=2, seq=9):
    return torch.randint(0, 97, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_noop_interventions_give_exactly_the_original_logits(kind):
    model = make_tiny(kind)
    ids = ids_for()
    clean = model.logits(ids)
    sae = orthonormal_sae()
    with torch.no_grad():
        sae.b_enc[3] = -1e4  # feature 3 never fires: zeroing it changes no code
    noops = [
        st.add_direction(model, HOOK, torch.randn(32), 0.0),
        st.zero_feature(model, sae, 3),
        st.clamp_feature(model, sae, 5, 100.0, positions="generated"),  # a plain forward is all prompt
        st.clamp_feature(model, sae, 5, 100.0, positions=[50]),  # past the end of the sequence
    ]
    for iv in noops:
        with st.steer(model, [iv]):
            assert torch.equal(model.logits(ids), clean), iv.label
    with st.steer(model, noops):
        assert torch.equal(model.logits(ids), clean)
    # ...and the same edit with a real change does change the logits (the hooks are live).
    with st.steer(model, [st.clamp_feature(model, sae, 5, 100.0)]):
        assert (model.logits(ids) - clean).abs().max() > 1e-2


def test_noop_in_generate_gives_the_same_tokens():
    model = make_tiny("llama")
    ids = ids_for(batch=1, seq=5)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    base = model.hf.generate(ids, **kw)
    with st.steer(model, [st.add_direction(model, HOOK, torch.randn(32), 0.0)]):
        assert torch.equal(model.hf.generate(ids, **kw), base)


def test_clamped_feature_reads_its_set_value_in_the_spliced_forward():
    model = make_tiny("llama")
    ids = ids_for()
    sae = orthonormal_sae()
    _, clean = gw.capture(model, ids, [HOOK])
    x = clean[HOOK]
    feature, value = 7, 6.5
    with torch.no_grad():
        sae.b_enc[feature] = 50.0  # pre-activation > 0 everywhere, so this feature's ReLU is the identity
    iv = st.clamp_feature(model, sae, feature, value, positions=[2, 3, 4])
    with st.steer(model, [iv]):
        logits, cache = gw.capture(model, ids, [HOOK], stop_early=False)  # hooked after the clamp: sees its output
    edited = cache[HOOK]
    # The feature now reads the set value at the clamped positions, its old value elsewhere.
    f_clean, f_edited = sae.encode(x)[..., feature], sae.encode(edited)[..., feature]
    assert torch.allclose(f_edited[:, 2:5], torch.full_like(f_edited[:, 2:5], value), atol=1e-4)
    assert torch.equal(f_edited[:, [0, 1, 5, 6, 7, 8]], f_clean[:, [0, 1, 5, 6, 7, 8]])
    assert torch.equal(iv.record["set"][:, 2:5], torch.full_like(iv.record["set"][:, 2:5], value))
    # The error term is kept: edited = x + decode(f') - decode(f), i.e. the SAE's reconstruction error x - sae(x) is
    # the same before and after, and the logits equal a forward with that activation written in by hand.
    codes = sae.encode(x)
    codes_set = codes.clone()
    codes_set[:, 2:5, feature] = value
    expected = x + sae.decode(codes_set) - sae.decode(codes)
    assert torch.allclose(edited, expected, atol=1e-5)
    with gw.intervene(model, {HOOK: gw.replace(expected)}):
        assert torch.allclose(logits, model.logits(ids), atol=1e-5)


def test_clamp_to_a_multiple_of_max_activation():
    model = make_tiny("llama")
    sae = orthonormal_sae()
    ids = ids_for(seq=12)
    iv = st.clamp_feature(model, sae, 2, "3x", max_act=1.5)
    with st.steer(model, [iv]):
        model.logits(ids)
    assert torch.allclose(iv.record["set"], torch.full_like(iv.record["set"], 4.5))
    # Estimated max activation over given contexts: the brute-force max of the codes, BOS position left out.
    est = st.max_activation(model, sae, 2, contexts=ids)
    _, cache = gw.capture(model, ids, [HOOK])
    assert est == pytest.approx(float(sae.encode(cache[HOOK][:, 1:])[..., 2].max().detach()), rel=1e-6)


def test_transcoder_clamp_reads_input_and_edits_output():
    model = make_tiny("llama")
    ids = ids_for()
    tc = SparseCoder(DictionaryConfig(kind="transcoder", d_in=32, d_sae=24, activation="relu",
                                      hook_in="blocks.1.ln2.hook_normalized", hook_out="blocks.1.hook_mlp_out", layer=1))
    tc.reset_parameters(seed=3)
    iv = st.clamp_feature(model, tc, 4, 3.0)
    _, clean = gw.capture(model, ids, ["blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"])
    with st.steer(model, [iv]):
        _, cache = gw.capture(model, ids, ["blocks.1.hook_mlp_out"])
    f = tc.encode(clean["blocks.1.ln2.hook_normalized"])[..., 4]
    expected = clean["blocks.1.hook_mlp_out"] + (3.0 - f)[..., None] * tc.W_dec[4]
    assert torch.allclose(cache["blocks.1.hook_mlp_out"], expected.detach(), atol=1e-5)


def test_positions_track_the_kv_cache_in_generate():
    """Edits at absolute positions give the same logits in cached generate() as in full forwards without a cache."""
    model = make_tiny("llama")
    prompt = ids_for(batch=1, seq=5)
    vec = torch.randn(32) * 3
    for positions in ("prompt", "generated", [1, 6], slice(4, None, 2)):
        iv = st.add_direction(model, HOOK, vec, 1.0, positions=positions)
        with st.steer(model, [iv]):
            out = model.hf.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0, output_logits=True,
                                    return_dict_in_generate=True)
        seq = out.sequences
        with st.steer(model, [iv], prompt_len=prompt.shape[1]):
            full = model.logits(seq)  # one pass, no cache: every position is absolute
        for step, step_logits in enumerate(out.logits):
            assert torch.allclose(step_logits[0], full[0, prompt.shape[1] - 1 + step], atol=1e-4), (positions, step)
        base = model.logits(seq)
        changed = (full - base).abs().amax(-1)[0] > 1e-4  # [seq]: positions whose logits moved
        first = {"prompt": 0, "generated": 5, str([1, 6]): 1, str(slice(4, None, 2)): 4}[str(positions)]
        assert not changed[:first].any() and changed[first], positions


def test_generate_and_compare_use_a_fixed_seed():
    model = make_tiny("llama")
    prompt = ids_for(batch=1, seq=4)
    a = st.generate(model, prompt, max_new_tokens=5, seed=1, temperature=1.0)
    b = st.generate(model, prompt, max_new_tokens=5, seed=1, temperature=1.0)
    assert a == b
    iv = st.add_direction(model, "blocks.2.hook_resid_post", torch.randn(32) * 50, 1.0)
    res = st.compare(model, prompt, [iv], max_new_tokens=5, seed=1, temperature=1.0)
    assert res["baseline"] == a and res["steered"] != a


def test_bad_input_is_a_clear_error():
    model = make_tiny("llama")
    sae = orthonormal_sae()
    with pytest.raises(gw.GlassworkError, match=r"feature 16 is out of range.*d_sae = 16"):
        st.clamp_feature(model, sae, 16, 1.0)
    with pytest.raises(gw.GlassworkError, match="out of range"):
        st.zero_feature(model, sae, -1)
    with pytest.raises(gw.GlassworkError, match=r"shape \[31\].*d_model = 32"):
        st.add_direction(model, HOOK, torch.randn(31), 1.0)
    with pytest.raises(gw.GlassworkError, match=r"layer 7 does not exist.*3 layers"):
        st.add_direction(model, "blocks.7.hook_resid_post", torch.randn(32), 1.0)
    with pytest.raises(gw.GlassworkError, match="unknown hook point"):
        st.project_out(model, "blocks.1.hook_nonsense", torch.randn(32))
    with pytest.raises(gw.GlassworkError, match="clamp value 'ten'"):
        st.clamp_feature(model, sae, 1, "ten")
    with pytest.raises(gw.GlassworkError, match="positions 'middle'"):
        st.add_direction(model, HOOK, torch.randn(32), 1.0, positions="middle")
    wide = SparseCoder(DictionaryConfig(kind="sae", d_in=64, d_sae=8, hook_in=HOOK, hook_out=HOOK, k=4))
    with pytest.raises(gw.GlassworkError, match="not trained on this model"):
        st.clamp_feature(model, wide, 1, 1.0)


@pytest.mark.model
def test_trained_sae_on_the_default_model(default_model, small_sae):
    """With a trained SAE: zeroing a feature that is silent on the prompt leaves the logits exactly as they were (the
    error term is kept, not re-added), and a 10x clamp writes (10 max - f) W_dec at the hook."""
    model, sae = default_model, gw.load_dictionary(small_sae)
    hook = sae.cfg.hook_in
    ids = model.tokenize("The capital of France is Paris, and the capital of Italy is")
    clean_logits, clean = gw.capture(model, ids, [hook], stop_early=False)
    codes = sae.encode(clean[hook]).detach()[0]  # [seq, d_sae]
    silent = int((codes.amax(0) == 0).nonzero()[0])
    with st.steer(model, [st.zero_feature(model, sae, silent)]):
        assert torch.equal(model.logits(ids), clean_logits)
    active = int(codes[1:].amax(0).argmax())
    max_act = st.max_activation(model, sae, active, contexts=ids)
    iv = st.clamp_feature(model, sae, active, "10x", positions="prompt", dictionary_folder=None, max_act=max_act)
    with st.steer(model, [iv]):
        _, cache = gw.capture(model, ids, [hook])
    expected = clean[hook] + (10 * max_act - codes[:, active])[None, :, None] * sae.W_dec[active].detach()
    assert torch.allclose(cache[hook], expected, atol=1e-3)
