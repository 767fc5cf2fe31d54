"""Shared fixtures: tiny random models of each architecture (built from configs) and the real default model."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GLASSWORK_PROGRESS", "0")

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)


def tiny_config(kind: str):
    import transformers as t
    if kind == "llama":
        return t.LlamaConfig(**TINY, tie_word_embeddings=True)
    if kind == "qwen2":
        return t.Qwen2Config(**TINY)
    if kind == "qwen3":
        return t.Qwen3Config(**TINY, head_dim=8)
    if kind == "mistral":
        return t.MistralConfig(**TINY, sliding_window=4)
    if kind == "gemma2":
        return t.Gemma2Config(**TINY, head_dim=8, query_pre_attn_scalar=8, sliding_window=16)
    if kind == "gpt2":
        return t.GPT2Config(vocab_size=97, n_embd=32, n_layer=3, n_head=4, n_positions=128, n_inner=64)
    if kind == "gpt_neox":
        return t.GPTNeoXConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                               num_attention_heads=4, max_position_embeddings=128, use_parallel_residual=True)
    if kind == "gpt_neox_seq":
        return t.GPTNeoXConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                               num_attention_heads=4, max_position_embeddings=128, use_parallel_residual=False)
    raise ValueError(kind)


TINY_KINDS = ["llama", "qwen2", "qwen3", "gemma2", "gpt2", "gpt_neox", "gpt_neox_seq"]


def make_tiny(kind: str = "llama", seed: int = 0):
    """A glasswork Model around a random tiny HF model (no tokenizer: tests pass token ids)."""
    from transformers import AutoModelForCausalLM

    from glasswork.models import Model
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(tiny_config(kind), dtype=torch.float32)
    return Model(hf, None, f"tiny-{kind}")


@pytest.fixture(params=TINY_KINDS)
def tiny_model(request):
    return make_tiny(request.param)


@pytest.fixture(scope="session")
def default_model():
    import glasswork as gw
    return gw.load_model()


# Trained dictionaries on the default model (issue 3). Each returns the FOLDER (load with gw.load_dictionary /
# gw.load_transcoders); built once and cached under $GLASSWORK_HOME/fixtures keyed by settings + glasswork version.
@pytest.fixture(scope="session")
def small_sae(default_model):
    """TopK SAE (d_sae 2304, k 16) on blocks.6.hook_resid_post: folder path."""
    from glasswork.training import quick
    return quick.cached("small_sae", quick.small_sae_config(), model=default_model)


@pytest.fixture(scope="session")
def small_transcoders(default_model):
    """TopK transcoders (d_sae 1152, k 16) for all 30 layers: set folder path (gw.load_transcoders(path))."""
    from glasswork.training import quick
    return quick.cached("small_transcoders", quick.small_transcoders_config(), model=default_model)
