"""Where training batches come from. A source yields global batches {hook_name: [batch, d]} from any batch index
(`batches(start, rank, world)`), so a resumed run continues with exactly the batch it would have seen, and each rank
takes its own slice of the same global batch.

- TensorSource: activations in memory (tests, benchmarks), reshuffled each epoch with a seeded generator.
- ModelSource: straight from the model while it reads a corpus (nothing written to disk); one model forward per batch
  captures every hook the dictionaries need (e.g. the 60 hooks of 30 transcoders).
- StoreSource: an activation store on disk (glasswork.data.store)."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from ..io import GlassworkError


class TensorSource:
    def __init__(self, acts: dict[str, torch.Tensor], batch_size: int, seed: int = 0, model: str = ""):
        sizes = {h: a.shape[0] for h, a in acts.items()}
        if len(set(sizes.values())) != 1:
            raise GlassworkError(f"in-memory activations: every hook needs the same number of rows (got {sizes})")
        self.acts, self.batch_size, self.seed, self.model = acts, batch_size, seed, model
        self.n = next(iter(sizes.values()))
        if self.n < batch_size:
            raise GlassworkError(f"in-memory activations: {self.n} rows is fewer than one batch ({batch_size})")
        self.dims = {h: a.shape[-1] for h, a in acts.items()}

    def batches(self, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        per_epoch = self.n // self.batch_size
        step = start
        while True:
            epoch, i = divmod(step, per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            rows = perm[i * self.batch_size:(i + 1) * self.batch_size][rank::world]
            yield {h: a[rows] for h, a in self.acts.items()}
            step += 1


def token_chunks(model, texts: Iterable[str], ctx: int) -> Iterator[torch.Tensor]:
    """Concatenate tokenized texts and cut them into rows of ctx tokens, each starting with BOS: [ctx]."""
    buf: list[int] = []
    bos = [model.bos_token_id] if model.bos_token_id is not None else []
    for text in texts:
        buf.extend(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        while len(buf) >= ctx - len(bos):
            yield torch.tensor(bos + buf[:ctx - len(bos)])
            buf = buf[ctx - len(bos):]


class ModelSource:
    """Activations captured from the model on the fly. Each batch = `seqs` sequences of `ctx` tokens; the BOS position
    is dropped (its activations are outliers no dictionary should spend latents on), so a batch has seqs*(ctx-1)
    rows. `texts` must be re-iterable (a list, or a callable returning a fresh iterator) for resuming."""

    def __init__(self, model, texts, hooks: list[str], batch_size: int, ctx: int = 128, device: str = "cpu"):
        self.model, self.texts, self.hooks, self.ctx, self.device = model, texts, list(hooks), ctx, device
        self.seqs = max(1, round(batch_size / (ctx - 1)))
        self.batch_size = self.seqs * (ctx - 1)
        self.dims = {h: self._dim(h) for h in self.hooks}

    def _dim(self, hook: str) -> int:
        return self.model.d_mlp if hook.endswith("mlp.hook_post") else self.model.d_model

    def _texts(self):
        return self.texts() if callable(self.texts) else iter(self.texts)

    @torch.no_grad()
    def batches(self, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        from ..hooks import capture
        chunks = token_chunks(self.model, self._texts(), self.ctx)
        for _ in range(start * self.seqs):  # skip by tokenizing only: no model forward for batches already trained on
            if next(chunks, None) is None:
                raise GlassworkError(f"corpus ran out while skipping to batch {start} (resume)")
        while True:
            rows = [next(chunks, None) for _ in range(self.seqs)]
            if rows[-1] is None:
                raise GlassworkError(f"corpus ran out of text: it holds fewer tokens than asked for "
                                     f"(needed {self.seqs} more sequences of {self.ctx} tokens)")
            ids = torch.stack(rows)[rank::world].to(self.device)
            _, acts = capture(self.model, ids, self.hooks)
            yield {h: a[:, 1:].reshape(-1, a.shape[-1]).float() for h, a in acts.items()}


class StoreSource:
    """Batches from an activation store on disk (glasswork.data.store.ActivationStore)."""

    def __init__(self, store, hooks: list[str], batch_size: int, seed: int = 0):
        self.store, self.hooks, self.batch_size, self.seed = store, list(hooks), batch_size, seed
        self.model = getattr(store, "model_name", "") or getattr(store, "model", "")
        missing = [h for h in self.hooks if h not in store.hooks]
        if missing:
            raise GlassworkError(f"{store.folder}: activation store has no hook(s) {missing} (it holds {list(store.hooks)})")
        self.dims = {h: store.dims[h] for h in self.hooks}

    def batches(self, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.store.batches(self.batch_size, hooks=self.hooks, seed=self.seed, start=start, loop=True):
            yield {h: a[rank::world].float() for h, a in batch.items()}
