"""SurprisalScorer: its token losses equal the plain HF forward's; on the default model a label naming a word picks
out the contexts that contain it (detection) and the highlights that mark it (fuzzing)."""
from __future__ import annotations

import pytest
import torch

from glasswork.features import SurprisalScorer

pytestmark = pytest.mark.model


def test_token_losses_equal_the_hf_forward(default_model):
    scorer = SurprisalScorer(default_model, batch_size=2)
    examples = [{"tokens": [" The", " cat", " sat", " down"]}, {"tokens": ["Hello", " world"]},
                {"tokens": [" a", "\n", " b"]}]
    got = scorer.token_losses("A text:\n", examples)
    head = [default_model.bos_token_id] + default_model.tokenizer("A text:\n", add_special_tokens=False)["input_ids"]
    for ex, losses in zip(examples, got):
        text_ids = [i for t in ex["tokens"] for i in default_model.tokenizer(t, add_special_tokens=False)["input_ids"]]
        ids = torch.tensor([head + text_ids])
        logp = default_model.hf(input_ids=ids).logits[0].float().log_softmax(-1)
        nll = -logp[torch.arange(len(head) - 1, ids.shape[1] - 1), ids[0, len(head):]]
        assert len(text_ids) == len(ex["tokens"])  # these tokens re-encode one id each
        torch.testing.assert_close(losses, nll, rtol=1e-4, atol=1e-4)


def test_a_label_naming_a_word_detects_and_fuzzes_it(default_model):
    scorer = SurprisalScorer(default_model)
    tok = default_model.tokenizer

    def tokens(text):
        return [tok.decode([i]) for i in tok(text, add_special_tokens=False)["input_ids"]]
    pos = [" Yesterday I bought a banana from the shop near the station.", " She put the banana in her bag and left.",
           " We talked about the weather and a banana for a while.", " The report said that a banana was found here."]
    neg = [" Yesterday I bought a ticket from the shop near the station.", " She put the book in her bag and left.",
           " We talked about the weather and the news for a while.", " The report said that a letter was found here."]
    examples = [{"tokens": tokens(t)} for t in pos + neg]
    assert scorer.detect('fires on " banana"', examples) == [True] * 4 + [False] * 4
    words = tokens(pos[1])
    banana, bag = words.index(" banana"), words.index(" bag")
    marked = [{"tokens": words, "marks": [banana]}, {"tokens": words, "marks": [bag]}]
    assert scorer.fuzz('fires on " banana"', marked) == [True, False]
