"""The KL fine-tune (TrainConfig.kl_steps): transcoders trained on reconstruction, then trained for a few steps on what
the model does with them. Every layer's transcoder is spliced into the model at once (dictionaries.splice) and the
loss is KL(model || spliced model) of the next-token distributions at every position after BOS, plus kl_mse x the
layers' mean FVU on the spliced model's own MLP outputs. Reconstruction spends capacity evenly on every direction of
an MLP's output; this spends it where the output distribution notices (Karvonen 2025 reports 20-50% of the CE-loss
gap closed by a fine-tune of the last few % of training; measured here: benchmarks/RESULTS.md, "KL fine-tune").

It runs on the saved set, whose weights read raw activations, so each parameter's learning rate is relative to its
RMS at the start (the layers' scales differ 30x), decaying linearly to 0; Adam starts with fresh moments (the
reconstruction phase's second moments would set the step size for hundreds of steps). The model's own weights get
no gradient (torch.autograd.grad on the dictionaries' parameters only).

Resumable: a checkpoint (weights, Adam's moments, the relative scales, the step) about every 120 s in the set's
folder; the set is overwritten only once the last step's checkpoint is on disk, and set.json's "kl_steps_done" then
marks it finished, so a kill at any point resumes to the weights of an uninterrupted run."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..dictionaries.saving import SET_INDEX, is_set, load_set, save_set
from ..dictionaries.splice import Splice
from ..hooks import intervene
from ..io import GlassworkError, read_json
from ..precision import autocast
from ..progress import progress
from . import distributed as dist
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .losses import fvu
from .optim import Adam

CHECKPOINT = "kl_checkpoint.safetensors"
SETTINGS = ("kl_steps", "kl_seqs", "kl_lr", "kl_mse", "seed", "ctx")


def pending(out: str | Path, tc: TrainConfig) -> bool:
    """Whether `out` holds a set trained on reconstruction whose KL fine-tune has not finished."""
    out = Path(out)
    if not (tc.kl_steps and is_set(out)):
        return False
    done = read_json(out / SET_INDEX, "dictionary set index").get("kl_steps_done")
    return done is not None and done < tc.kl_steps


def step_sequences(every: torch.Tensor, step: int, n: int, seed: int) -> torch.Tensor:
    """The n sequences [n, ctx] fine-tune step `step` reads: consecutive slices of one seeded permutation of every
    sequence (a function of the step alone, so a resumed run reads the same)."""
    order = torch.randperm(len(every), generator=torch.Generator().manual_seed(seed * 1_000_003 + 9_973))
    return every[order[(step * n + torch.arange(n)) % len(every)]]


def kl_loss(model, splice: Splice, ids: torch.Tensor, precision: str, mse_coeff: float) -> tuple[torch.Tensor, dict]:
    """KL(clean || spliced) per token at positions 1.. of ids [seqs, ctx], plus mse_coeff x the mean FVU of the
    spliced layers; (loss, {"kl", "fvu"} as floats)."""
    device = ids.device
    with torch.no_grad(), autocast(device, precision):
        clean = model.hf(ids).logits[:, 1:].float().log_softmax(-1)  # [seqs, ctx - 1, vocab]
    with intervene(model, splice.edits()), autocast(device, precision):
        spliced = model.hf(ids).logits[:, 1:].float().log_softmax(-1)
    kl = (clean.exp() * (clean - spliced)).sum(-1).mean()
    fvus = []
    for recs in splice.records.values():
        target, recon, _ = recs[0]
        fvus.append(fvu(target.detach(), recon))  # each layer fits the MLP output it is given, not the reverse
        recs.clear()
    mean_fvu = torch.stack(fvus).mean()
    return kl + mse_coeff * mean_fvu, {"kl": float(kl.detach()), "fvu": float(mean_fvu.detach())}


def finetune(tc: TrainConfig, source, out: str | Path, result: dict | None) -> dict:
    """Fine-tune the set in `out` (trained on reconstruction; `result`: that run's summary, None when a resume finds
    it already saved) for tc.kl_steps steps on sequences from `source` (a ModelSource); overwrite the set. Returns
    the run's summary with the fine-tune's seconds added."""
    out = Path(out)
    model = source.model
    dicts = load_set(out, tc.device)
    names = [f"{n}.{p}" for n, d in dicts.items() for p, _ in d.named_parameters()]
    params = [p for d in dicts.values() for p in d.parameters()]
    opt = Adam([list(d.parameters()) for d in dicts.values()], betas=tc.betas)
    first = next(iter(dicts.values())).cfg.training
    precision = first.get("precision_used", "fp32")
    step, seconds_before, history = 0, 0.0, []
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        tensors, meta = load_checkpoint(ckpt)
        for key in SETTINGS:
            if meta["settings"].get(key) != getattr(tc, key):
                raise GlassworkError(f"{ckpt}: the KL fine-tune was started with {key}={meta['settings'].get(key)!r}, "
                                     f"this run asks for {key}={getattr(tc, key)!r}; resume with the same settings")
        with torch.no_grad():
            for n, p in zip(names, params):
                p.copy_(tensors[f"w.{n}"])
        opt.load_state_tensors(names, tensors)
        scales = tensors["kl.scales"].tolist()
        step, seconds_before, history = meta["step"], meta["seconds"], meta["history"]
    else:  # relative step sizes from the reconstruction's weights
        scales = [float(p.detach().float().pow(2).mean().sqrt().clamp_min(1e-8)) for p in params]
    opt.lr_scales = scales

    def checkpoint() -> None:
        if not dist.is_main():
            return
        tensors = {f"w.{n}": p.detach() for n, p in zip(names, params)}
        tensors.update(opt.state_tensors(names))
        tensors["kl.scales"] = torch.tensor(scales, dtype=torch.float64)
        save_checkpoint(ckpt, tensors, {"step": step, "seconds": seconds_before + time.time() - t0, "history": history,
                                        "settings": {key: getattr(tc, key) for key in SETTINGS}})

    every = source.sequences()
    rank, world = dist.rank(), dist.world()  # kl_seqs divides over the ranks: checked by train() up front
    splice = Splice(dicts)
    splice.record = True
    t0, last_ckpt = time.time(), time.time()
    per_step = tc.kl_seqs * (tc.ctx - 1)
    with progress("KL fine-tune", total=tc.kl_steps * per_step, completed=step * per_step) as bar:
        while step < tc.kl_steps:
            ids = step_sequences(every, step, tc.kl_seqs, tc.seed)[rank::world].to(tc.device)
            loss, stats = kl_loss(model, splice, ids, precision, tc.kl_mse)
            grads = torch.autograd.grad(loss, params, allow_unused=True)  # the model's weights get none
            for p, g in zip(params, grads):
                p.grad = g
            dist.average_gradients(params)
            opt.lr = tc.kl_lr * (1 - step / tc.kl_steps)
            opt.step(0.0)
            opt.zero_grad()
            history.append([stats["kl"], stats["fvu"]])
            step += 1
            bar.advance(per_step)
            due = (step % tc.checkpoint_every == 0) if tc.checkpoint_every else time.time() - last_ckpt > 120
            if due or step == tc.kl_steps:  # the last one too: the set is overwritten only after it
                checkpoint()
                last_ckpt = time.time()
    for name, d in dicts.items():
        if not all(torch.isfinite(p).all() for p in d.parameters()):
            raise GlassworkError(f"dictionary '{name}' has non-finite weights after the KL fine-tune (lower --kl-lr?); "
                                 f"the reconstruction-trained set in {out} is unchanged")
    seconds = seconds_before + time.time() - t0
    first_kl = [h[0] for h in history[:10]]
    last_kl = [h[0] for h in history[-10:]]
    summary = {"steps": tc.kl_steps, "tokens": tc.kl_steps * per_step, "seconds": round(seconds, 1),
               "train_kl_first10": sum(first_kl) / len(first_kl), "train_kl_last10": sum(last_kl) / len(last_kl)}
    for d in dicts.values():
        d.cfg.metrics = {**(d.cfg.metrics or {}), "kl_finetune": summary}
        d.cfg.training = {**d.cfg.training, "seconds": round(d.cfg.training.get("seconds", 0.0) + seconds, 1)}
    dicts = {n: d.cpu() for n, d in dicts.items()}
    if dist.is_main():
        save_set(dicts, out, kind=tc.kind, kl_steps_done=tc.kl_steps)
        ckpt.unlink(missing_ok=True)
    dist.barrier()
    base = result or {"out": str(out), "steps": tc.steps, "tokens": tc.steps * tc.batch_size, "skipped_batches": 0,
                      "seconds": first.get("seconds", 0.0), "dictionaries": {n: d.cfg.metrics for n, d in dicts.items()}}
    return {**base, "seconds": round(base["seconds"] + seconds, 1), "kl_finetune": summary, "dicts": dicts}
