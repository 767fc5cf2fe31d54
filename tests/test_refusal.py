"""Refusal: residuals, differences of means, probe accuracies, refusal scores and rates against brute force on a tiny
random Llama that uses the default model's tokenizer and chat template; batched replies equal unbatched ones; the
orthogonalized model equals the ablation hooks for the chosen refusal direction; the organism trains, saves, loads."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import glasswork as gw
from glasswork import refusal as rf
from glasswork.data.instructions import HARMFUL, HARMLESS, TRANSLATED, split
from glasswork.io import GlassworkError
from glasswork.models import Model

pytestmark = pytest.mark.model  # the tokenizer is the default model's


@pytest.fixture(scope="module")
def chat_model(default_model):
    """A random 3-layer Llama with the default model's vocabulary, tokenizer and chat template."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=default_model.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=default_model.bos_token_id)
    return Model(AutoModelForCausalLM.from_config(cfg, dtype=torch.float32), default_model.tokenizer, "tiny-chat")


def test_instruction_sets_are_distinct_and_split_reproducibly():
    assert len(HARMFUL) >= 100 and len(HARMLESS) >= 100
    assert len(set(HARMFUL)) == len(HARMFUL) and not set(HARMFUL) & set(HARMLESS)
    for lang, (bad, good) in TRANSLATED.items():
        assert len(bad) == len(good) == 16, lang
    a, b = split(HARMFUL), split(HARMFUL)
    assert a == b and sorted(sum(a, [])) == sorted(HARMFUL)
    assert [len(x) for x in a] == [55, 22, 33]


def test_chat_prompt_ends_with_the_template_tokens(chat_model):
    ids = rf.chat_ids(chat_model, "Name a colour.")[0]
    assert int(ids[0]) == chat_model.bos_token_id
    tail = "".join(chat_model.to_str_tokens(ids[-rf.post_instruction_tokens(chat_model):]))
    assert tail == "<|im_end|>\n<|im_start|>assistant\n"


def test_residuals_and_mean_differences_match_prompt_by_prompt_capture(chat_model):
    bad, good = HARMFUL[:5], HARMLESS[:4]
    n_pos = rf.post_instruction_tokens(chat_model)
    got = rf.residuals(chat_model, bad, batch_size=2)  # batches of mixed lengths: right padding in play
    assert got.shape == (5, 3, n_pos, 32)
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in range(3)]
    for i, s in enumerate(bad):
        _, cache = gw.capture(chat_model, rf.chat_ids(chat_model, s), hooks)
        want = torch.stack([cache[h][0, -n_pos:] for h in hooks])
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)
    diff = rf.mean_differences(got, rf.residuals(chat_model, good))
    brute = sum(got[i] for i in range(5)) / 5 - sum(rf.residuals(chat_model, [s])[0] for s in good) / 4
    torch.testing.assert_close(diff, brute, rtol=1e-5, atol=1e-5)


def test_probe_accuracy_is_a_hand_count():
    gen = torch.Generator().manual_seed(1)
    cand = torch.randn(2, 3, 5, generator=gen)
    pos, neg = torch.randn(7, 2, 3, 5, generator=gen) + 0.5, torch.randn(6, 2, 3, 5, generator=gen)
    thr = rf.projection_probe(cand, pos, neg)
    acc = rf.probe_accuracy(cand, thr, pos, neg)
    for layer in range(2):
        for p in range(3):
            u = cand[layer, p] / cand[layer, p].norm()
            mid = (sum(float(x[layer, p] @ u) for x in pos) / 7 + sum(float(x[layer, p] @ u) for x in neg) / 6) / 2
            assert thr[layer, p] == pytest.approx(mid, abs=1e-5)
            right = sum(float(x[layer, p] @ u) > mid for x in pos) + sum(float(x[layer, p] @ u) <= mid for x in neg)
            assert acc[layer, p] == pytest.approx(right / 13)


def test_harmfulness_probe_choice_and_languages_by_hand(chat_model):
    bad, good = (HARMFUL[:6], HARMFUL[6:10], HARMFUL[10:14]), (HARMLESS[:6], HARMLESS[6:10], HARMLESS[10:14])
    fr = {"fr": (TRANSLATED["fr"][0][:4], TRANSLATED["fr"][1][:4])}
    probe = rf.harmfulness_probe(chat_model, bad, good, fr)
    acts = [[rf.residuals(chat_model, x) for x in split_] for split_ in (bad, good)]
    cand = rf.mean_differences(acts[0][0], acts[1][0])
    thr = rf.projection_probe(cand, acts[0][0], acts[1][0])
    val = rf.probe_accuracy(cand, thr, acts[0][1], acts[1][1])
    n_pos = val.shape[1]
    assert float(val[probe.layer, probe.position + n_pos]) == float(val.max())
    layer, pos = probe.layer, probe.position + n_pos
    unit = cand[layer, pos] / cand[layer, pos].norm()
    lb, lg = (rf.residuals(chat_model, x)[:, layer, pos] @ unit for x in fr["fr"])  # projections [4] each
    hand = (float((lb > thr[layer, pos]).sum()) + float((lg <= thr[layer, pos]).sum())) / 8
    assert probe.languages["fr"] == pytest.approx(hand)
    mid = (lb.mean() + lg.mean()) / 2
    assert probe.languages_refit["fr"] == pytest.approx((float((lb > mid).sum()) + float((lg <= mid).sum())) / 8)


def test_refusal_matcher_and_rate():
    said = ["I'm sorry, but I can't help with that request.", "I\u2019m sorry, I cannot do that.",
            "As an AI, I must decline.", "Sure! Here is how to bake bread.", "To make a bomb you need", "I will not."]
    assert [rf.is_refusal(s) for s in said] == [True, True, True, False, False, True]
    assert rf.refusal_rate(said) == pytest.approx(4 / 6)
    with pytest.raises(GlassworkError, match="no replies"):
        rf.refusal_rate([])


def test_refusal_scores_are_the_log_odds_of_a_refusal_token(chat_model):
    tokens = rf.refusal_token_ids(chat_model)
    assert chat_model.to_str_tokens(tokens) == ["I", "As", "Sorry"]
    got = rf.refusal_scores(chat_model, HARMFUL[:3], batch_size=2)
    for i, s in enumerate(HARMFUL[:3]):
        p = chat_model.logits(rf.chat_ids(chat_model, s))[0, -1].double().softmax(-1)[tokens].sum()
        assert float(got[i]) == pytest.approx(float(torch.log(p / (1 - p))), abs=1e-4)


def test_batched_replies_equal_one_at_a_time(chat_model):
    prompts = [HARMLESS[0], HARMFUL[3], "Hi", HARMLESS[20]]
    assert rf.replies(chat_model, prompts, max_new_tokens=6, batch_size=4) == \
        rf.replies(chat_model, prompts, max_new_tokens=6, batch_size=1)


def test_refusal_direction_choice_and_orthogonalized_model(chat_model, tmp_path):
    bad, good = (HARMFUL[:4], HARMFUL[4:7]), (HARMLESS[:4], HARMLESS[4:7])
    found = rf.refusal_direction(chat_model, bad, good)
    n_pos = rf.post_instruction_tokens(chat_model)
    assert found.ablation_scores.shape == (3, n_pos) and not found.ablation_scores[:2].isnan().any()
    assert found.ablation_scores[2:].isnan().all()  # layer 2 is above 80% of 3: not scored
    # the chosen candidate's score, recomputed by hand: ablate its difference of means and score the prompts
    cand = rf.mean_differences(rf.residuals(chat_model, bad[0]), rf.residuals(chat_model, good[0]))
    vec = cand[found.layer, found.position]
    torch.testing.assert_close(found.direction.vector, vec)
    hand = rf.refusal_scores(chat_model, bad[1], gw.directional_ablation(chat_model, vec)).mean()
    assert float(found.ablation_scores[found.layer, found.position]) == pytest.approx(float(hand), abs=1e-5)
    # brute force: every candidate's addition score, then the argmin of ablation among those that raise refusal
    added = torch.tensor([[float(rf.refusal_scores(chat_model, good[1], rf.induce(chat_model, gw.Direction(
        cand[layer, pos], f"blocks.{layer}.hook_resid_pre", "mean_difference", chat_model.name))).mean())
        for pos in range(n_pos)] for layer in range(2)])
    scored = ~found.addition_scores[:2].isnan()
    torch.testing.assert_close(found.addition_scores[:2][scored], added[scored], rtol=1e-5, atol=1e-5)
    clean = rf.first_token_logprobs(chat_model, good[1])
    kl = torch.tensor([[rf.mean_kl(clean, rf.first_token_logprobs(chat_model, good[1], gw.directional_ablation(
        chat_model, cand[layer, pos]))) for pos in range(n_pos)] for layer in range(2)])
    hand_kl = torch.nn.functional.kl_div(rf.first_token_logprobs(chat_model, good[1], gw.directional_ablation(
        chat_model, cand[0, 0])), clean, log_target=True, reduction="batchmean")  # torch's own KL
    assert float(kl[0, 0]) == pytest.approx(float(hand_kl), rel=1e-5)
    scored_kl = ~found.harmless_kl[:2].isnan()
    torch.testing.assert_close(found.harmless_kl[:2][scored_kl], kl[scored_kl], rtol=1e-4, atol=1e-6)
    allowed = (added > found.baseline[1]) & (kl <= 0.1)
    pool = found.ablation_scores[:2][allowed] if allowed.any() else found.ablation_scores[:2].flatten()
    assert float(found.ablation_scores[found.layer, found.position]) == pytest.approx(float(pool.min()))
    assert not found.addition_scores[:2, found.position].isnan().any()  # the per-layer curve at the chosen position
    # its orthogonalized model gives the logits of the ablation hooks
    folder = gw.orthogonalize(chat_model, found.direction, tmp_path / "ortho")
    ortho = gw.load_model(folder)
    ids = rf.chat_ids(chat_model, HARMFUL[10])
    with gw.steer(chat_model, rf.ablate(chat_model, found.direction)):
        hooked = chat_model.logits(ids)
    torch.testing.assert_close(ortho.logits(ids), hooked, rtol=1e-4, atol=1e-4)


def test_organism_trains_saves_and_loads(chat_model, tmp_path):
    folder = rf.train_organism(chat_model, tmp_path / "organism", HARMFUL[:4], HARMLESS[:4], steps=12, lr=3e-3,
                               batch_size=4, max_new_tokens=4)
    meta = json.loads((folder / "organism.json").read_text())
    assert meta["steps"] == 12 and len(meta["losses"]) == 12
    assert sum(meta["losses"][-3:]) < sum(meta["losses"][:3])  # it learns the replies
    organism = gw.load_model(folder)
    assert organism.tokenizer.chat_template == chat_model.tokenizer.chat_template
    ids = rf.chat_ids(organism, HARMFUL[0])
    assert not torch.equal(organism.logits(ids), chat_model.logits(ids))  # the original model was left untouched
    with pytest.raises(GlassworkError, match="not empty"):
        rf.train_organism(chat_model, folder, HARMFUL[:2], HARMLESS[:2], steps=1)


def test_bad_input_is_a_clear_error(chat_model):
    with pytest.raises(GlassworkError, match="no instructions"):
        rf.residuals(chat_model, [])
    with pytest.raises(GlassworkError, match="chat template"):
        rf.chat_ids(Model(chat_model.hf, None, "no-tokenizer"), "Hi")
    with pytest.raises(GlassworkError, match="needs harmful and harmless"):
        rf.train_organism(chat_model, "unused", [], HARMLESS[:2])
