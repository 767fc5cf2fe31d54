"""Where training batches come from. A source yields global batches {hook_name: [batch, d]} from any batch index
(`batches(start, rank, world)`), so a resumed run continues with exactly the batch it would have seen, and each rank
takes its own slice of the same global batch.

- TensorSource: activations in memory (tests, benchmarks), reshuffled each epoch with a seeded generator.
- ModelSource: straight from the model while it reads a corpus (nothing written to disk); one model forward per batch
  captures every hook the dictionaries need (e.g. the 60 hooks of 30 transcoders).
- StoreSource: an activation store on disk (glasswork.data.store)."""
from __future__ import annotations

import itertools
from typing import Iterator

import torch

from ..data.corpus import token_rows
from ..io import GlassworkError
from ..precision import autocast, resolve


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


class ModelSource:
    """Activations captured from the model on the fly. Each batch = `seqs` sequences of `ctx` tokens; the BOS position
    is dropped (its activations are outliers no dictionary should spend latents on), so a batch has seqs*(ctx-1)
    rows. `texts` must be re-iterable (a list, or a callable returning a fresh iterator) for resuming.

    mix > 1: the sequences of `mix` batches run through the model as one block and the block's tokens are shuffled
    (seeded by the block's index) across those batches, so a batch holds tokens of many documents instead of a few
    consecutive runs of one (the same tokens in all; a resumed run recomputes its block and gets the same batches).
    With several ranks each rank runs and shuffles its own share of every block's sequences.

    shuffle: sequences are read from the whole corpus in a seeded random order instead of front to back. The demo's
    short run reads ~100 documents front to back; shuffled, the same number of tokens spans the corpus, and at one
    layer the same budget's held-out FVU and dead latents fall (benchmarks/RESULTS.md, "Reading order").

    repeat > 1: each block is trained on `repeat` times, reshuffled each time (seeded by block and pass): more optimizer
    steps per model forward, on fewer distinct tokens. It helps a single layer at a fixed step count, but for the
    demo's 30 transcoders at a fixed wall-clock budget it did not (benchmarks/RESULTS.md, "The replacement model at
    fixed CPU budgets", 2026-12-03): off by default. repeat = 1 gives exactly the batches it gave before the option
    existed.

    precision: the model's forward runs under bf16 autocast when it resolves to bf16 (`glasswork.precision`: the
    hardware has fast bf16), as the dictionaries' training does. On an AMX CPU that forward is ~2.4x faster than fp32
    and it was ~35% of each step. A bf16 MLP output differs from fp32's by 0.4-1.8% in norm at 27 of the default
    model's 30 layers, 4-10% at layers 11, 28 and 29 (an FVU of at most 0.01); at equal wall-clock the transcoders
    still came out better on every score (benchmarks/RESULTS.md, "The training step: eed4a43 ... against f274e0e",
    2026-12-05). Captured values are fp32 tensors."""

    def __init__(self, model, texts, hooks: list[str], batch_size: int, ctx: int = 128, device: str = "cpu",
                 mix: int = 1, seed: int = 0, repeat: int = 1, shuffle: bool = False, precision: str = "fp32"):
        if mix < 1:
            raise GlassworkError(f"model source: mix must be at least 1 batch per block (got {mix})")
        if repeat < 1:
            raise GlassworkError(f"model source: repeat must be at least 1 pass per block (got {repeat})")
        self.model, self.texts, self.hooks, self.ctx, self.device = model, texts, list(hooks), ctx, device
        self.mix, self.seed, self.repeat, self.shuffle = mix, seed, repeat, shuffle
        self.precision = resolve(precision, device)  # "fp32" | "bf16"
        self._shuffled: torch.Tensor | None = None  # [n, ctx]: every sequence of the texts (sequences(); made once)
        self.seqs = max(1, round(batch_size / (ctx - 1)))
        self.batch_size = self.seqs * (ctx - 1)
        self.dims = {h: self.model.d_model for h in self.hooks}  # every hook point is in the residual's width

    @classmethod
    def from_config(cls, model, texts, tc, device: str | None = None, **extra) -> "ModelSource":
        """The source a TrainConfig describes (its hooks, batch, ctx, mix, repeat, seed and precision); `extra`: a
        subclass's own arguments."""
        return cls(model, texts, tc.input_hooks(), tc.batch_size, ctx=tc.ctx, device=device or tc.device, mix=tc.mix,
                   seed=tc.seed, repeat=tc.repeat, shuffle=tc.shuffle, precision=tc.precision, **extra)

    def _texts(self):
        return self.texts() if callable(self.texts) else iter(self.texts)

    def _sequences(self) -> Iterator[torch.Tensor]:
        """Sequences [ctx] in the order training reads them: front to back, or with shuffle every sequence of the
        corpus in a seeded random order, epoch after epoch (tokenized once and held: a short run then spans the whole
        corpus, not the few documents at its start)."""
        if not self.shuffle:
            yield from token_rows(self.model, self._texts(), self.ctx)
            return
        every = self.sequences()
        for epoch in itertools.count():
            seed = (self.seed * 1_000_003 + epoch) * 7_919 + 1
            yield from every[torch.randperm(len(every), generator=torch.Generator().manual_seed(seed))]

    def sequences(self) -> torch.Tensor:
        """Every sequence of the texts, [n, ctx] token ids (tokenized on first use, then held)."""
        if self._shuffled is None:
            rows = list(token_rows(self.model, self._texts(), self.ctx))
            if not rows:
                raise GlassworkError(f"model source: the texts hold no sequence of {self.ctx} tokens")
            self._shuffled = torch.stack(rows)
        return self._shuffled

    def _block(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """{hook: [n_seqs * (ctx - 1), d]} for sequences ids [n_seqs, ctx], run `seqs` at a time (bounded memory)."""
        from ..hooks import capture
        parts: dict[str, list] = {h: [] for h in self.hooks}
        for i in range(0, ids.shape[0], max(self.seqs, 8)):
            with autocast(self.device, self.precision):
                _, acts = capture(self.model, ids[i:i + max(self.seqs, 8)].to(self.device), self.hooks)
            for h, a in acts.items():
                parts[h].append(a[:, 1:].reshape(-1, a.shape[-1]).float())
        return {h: p[0] if len(p) == 1 else torch.cat(p) for h, p in parts.items()}

    @torch.no_grad()
    def batches(self, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        chunks = self._sequences()
        block, offset = divmod(start, self.mix * self.repeat)  # offset: batches already trained on in this block
        for _ in range(block * self.mix * self.seqs):  # skip by tokenizing only: no forward for blocks already trained on
            if next(chunks, None) is None:
                raise GlassworkError(f"corpus ran out while skipping to batch {start} (resume)")
        per_rank = self.batch_size // world if self.mix > 1 else None
        while True:
            rows = [next(chunks, None) for _ in range(self.mix * self.seqs)]
            if rows[-1] is None:
                raise GlassworkError(f"corpus ran out of text: it holds fewer tokens than asked for "
                                     f"(needed {self.mix * self.seqs} more sequences of {self.ctx} tokens)")
            acts = self._block(torch.stack(rows)[rank::world])
            if self.mix == 1:
                for _ in range(offset, self.repeat):
                    yield acts
                block, offset = block + 1, 0
                continue
            n = next(iter(acts.values())).shape[0]
            if n < self.mix * per_rank:
                raise GlassworkError(f"model source: {self.mix} x {self.seqs} sequences per block do not split evenly "
                                     f"over {world} ranks; choose mix so that mix * {self.seqs} divides by {world}")
            for rep in range(offset // self.mix, self.repeat):
                seed = self.seed * 1_000_003 + block if rep == 0 else (self.seed * 1_000_003 + block) * 7_919 + rep
                order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
                for j in range(offset % self.mix if rep == offset // self.mix else 0, self.mix):
                    pick = order[j * per_rank:(j + 1) * per_rank]
                    yield {h: a[pick] for h, a in acts.items()}
            block, offset = block + 1, 0


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
