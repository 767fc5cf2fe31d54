"""The trainer: one loop for SAEs, transcoders and CLTs, several dictionaries from one pass over the data.

Adam with linear warmup and a linear decay to zero over the last part of training; fp32 master weights with bf16
autocast where it is faster here; per-dictionary gradient clipping; inputs and targets scaled to unit mean squared
norm (the scale is folded into the weights at save, so saved dictionaries read raw activations); b_dec from the
geometric median of the first batch; AuxK on dead latents; dead/dense tracking; atomic checkpoints holding weights,
optimizer, RNG and the data position, so a resumed run equals an uninterrupted one."""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..version import __version__
from ..allocator import keep_freed_memory
from ..dictionaries.activations import batch_topk, topk
from ..dictionaries.coder import DictionaryConfig
from ..dictionaries.saving import build, is_set, save, save_set
from ..io import GlassworkError
from ..precision import autocast, resolve
from ..progress import progress
from . import distributed as dist
from . import kl_finetune
from .init import fit_code_scale, fit_linear, geometric_median, reseed_latents, seed_latents_on_tokens
from .config import TrainConfig
from .checkpoint import load_checkpoint, restore_rng, rng_tensors, save_checkpoint
from .optim import Adam
from .losses import clt_loss, coder_loss, matryoshka_prefixes
from ..hooks import mlp_hooks

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class Unit:
    """One dictionary being trained, with where its inputs and targets come from."""
    name: str
    dictionary: torch.nn.Module
    x_hooks: list[str]
    y_hooks: list[str]

    @property
    def layered(self) -> bool:
        """A CLT's inputs are [batch, L, d] even with one layer."""
        return self.dictionary.cfg.kind == "clt"


def make_units(tc: TrainConfig, dims: dict[str, int]) -> list[Unit]:
    def dcfg(**kw) -> DictionaryConfig:
        d_in = kw["d_in"]
        return DictionaryConfig(activation=tc.arch, k=tc.k, d_sae=tc.d_sae or tc.expansion * d_in, model=tc.model,
                                glasswork_version=__version__, **kw)

    units = []
    if tc.kind == "sae":
        for h in tc.hooks:
            cfg = dcfg(kind="sae", d_in=dims[h], hook_in=h, hook_out=h, layer=_layer_of(h))
            units.append(Unit(h, build(cfg), [h], [h]))
    elif tc.kind == "transcoder":
        for l in tc.layers:
            xh, yh = mlp_hooks(l)
            cfg = dcfg(kind="transcoder", d_in=dims[xh], d_out=dims[yh], skip=tc.skip, b_dec_in=False,
                       hook_in=xh, hook_out=yh, layer=l)
            units.append(Unit(f"layer_{l:02d}", build(cfg), [xh], [yh]))
    else:
        xs, ys = [mlp_hooks(l)[0] for l in tc.layers], [mlp_hooks(l)[1] for l in tc.layers]
        cfg = dcfg(kind="clt", d_in=dims[xs[0]], d_out=dims[ys[0]], n_layers=len(tc.layers), window=tc.window,
                   skip=tc.skip, b_dec_in=False, hook_in=xs, hook_out=ys)
        units.append(Unit("clt", build(cfg), xs, ys))
    for u in units:
        matryoshka_prefixes(tc.matryoshka, u.dictionary.cfg.d_sae)
        if tc.k_start > u.dictionary.cfg.d_sae:
            raise GlassworkError(f"train config: k_start={tc.k_start} exceeds d_sae={u.dictionary.cfg.d_sae} of "
                                 f"'{u.name}' (at most d_sae latents can be active)")
    for i, u in enumerate(units):
        u.dictionary.reset_parameters(seed=tc.seed * 1000 + i)
    return units


def _layer_of(hook: str) -> int | None:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else None


def _stack(batch: dict[str, torch.Tensor], hooks: list[str], scale: dict[str, float],
           layered: bool = False) -> torch.Tensor:
    """[batch, d] for one hook, [batch, L, d] for several (or for a CLT, even of one layer), each scaled to unit mean
    squared norm."""
    xs = [batch[h] * scale[h] for h in hooks]
    return xs[0] if len(xs) == 1 and not layered else torch.stack(xs, 1)


def _typical_rows(y: torch.Tensor, factor: float) -> torch.Tensor:
    """[n] bool: rows whose norm is at most `factor` x the median row norm, in every layer of a [n, L, d] stack
    (factor 0: all rows). Massive activations, a few tokens whose MLP output is ~1,000x the typical norm, would
    otherwise decide a least-squares fit, the seeds and the scale (benchmarks/RESULTS.md, "Reading order")."""
    if not factor:
        return torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
    norms = y.norm(dim=-1)  # [n] or [n, L]
    ok = norms <= factor * norms.median(0).values
    return ok if ok.dim() == 1 else ok.all(1)


def _typical(y: torch.Tensor, factor: float) -> torch.Tensor:
    return y[_typical_rows(y, factor)]


def _training_codes(d, pre: torch.Tensor, k: int, layer: int | None = None) -> torch.Tensor:
    """Codes as a training step with k active latents a token makes them from pre-activations [n, F] (batchtopk:
    over the batch, not the inference threshold; k matters while --k-start anneals it)."""
    if d.cfg.activation == "batchtopk":
        return batch_topk(pre, k)
    if d.cfg.activation == "topk":  # k per token (a CLT's: per layer and token)
        values, indices = topk(pre, k)
        return torch.zeros_like(pre).scatter(-1, indices, values)
    return d.activate(pre) if layer is None else d.activate(pre, layer)


class Trainer:
    def __init__(self, tc: TrainConfig, source, out: str | Path, resume: bool = False):
        src_model = getattr(source, "model", "")
        src_model = getattr(src_model, "name", src_model)
        if tc.model and src_model and tc.model != src_model:
            raise GlassworkError(f"activations come from model '{src_model}' but training was asked for '{tc.model}'")
        # the run's own copy (the caller's config is never changed): a model source rounds the batch to whole
        # sequences, and the model's name comes from the source when the config has none
        tc = replace(tc, batch_size=getattr(source, "batch_size", tc.batch_size), model=tc.model or src_model)
        self.tc, self.source, self.out = tc, source, Path(out)
        self.forward_precision = getattr(source, "precision", None)  # a model source's; None: activations given
        keep_freed_memory()
        dist.init(tc.device)
        self.rank, self.world = dist.rank(), dist.world()
        if tc.batch_size % self.world:
            raise GlassworkError(f"batch size {tc.batch_size} must divide evenly over {self.world} ranks")
        missing = [h for h in tc.input_hooks() if h not in source.dims]
        if missing:
            raise GlassworkError(f"the data has no hook(s) {missing[:4]} (it has {sorted(source.dims)[:6]}...)")
        self.units = make_units(tc, source.dims)
        for u in self.units:
            u.dictionary.to(tc.device)  # before Adam, whose moments are made beside each parameter
            if tc.freeze_skip and u.dictionary.W_skip is not None:
                u.dictionary.W_skip.requires_grad_(False)  # no gradient: Adam leaves it as fitted
        self.scale = {h: 1.0 for h in tc.input_hooks()}
        self.step, self.skipped = 0, 0
        self._prefetched: list[dict] = []  # batches read for the init, trained on first
        self.params, self.names = [], []
        for u in self.units:
            for n, p in u.dictionary.named_parameters():
                self.params.append(p)
                self.names.append(f"{u.name}.{n}")
        self.opt = Adam([list(u.dictionary.parameters()) for u in self.units], betas=tc.betas)  # clipped per dictionary
        d_total = [self._n_latents(u) for u in self.units]
        self.since_fired = [torch.zeros(n, dtype=torch.long) for n in d_total]  # tokens since each latent fired
        self.fire_count = [torch.zeros(n, dtype=torch.long) for n in d_total]  # over the metrics window
        self.window_tokens = 0
        self.recent: dict[str, list] = {u.name: [] for u in self.units}
        self.thresholds = {u.name: [] for u in self.units}  # batchtopk: per-batch minimum kept activation
        self.dead_tokens = tc.dead_window
        ckpt = self.out / CHECKPOINT
        if (self.out / "config.json").exists() or is_set(self.out):
            raise GlassworkError(f"{self.out} already holds a trained dictionary; choose another --out")
        self.precision = resolve(tc.precision, tc.device)  # from the hardware; a resume keeps the recorded one
        if resume and ckpt.exists():
            self._restore(ckpt)
        elif ckpt.exists():
            raise GlassworkError(f"{ckpt} exists from an earlier run: pass --resume to continue it, or choose another --out")
        else:
            self._init_from_data()

    @staticmethod
    def _n_latents(u: Unit) -> int:
        cfg = u.dictionary.cfg
        return cfg.d_sae * (cfg.n_layers if cfg.kind == "clt" else 1)

    # --- init and resume -------------------------------------------------------------------------------------
    @torch.no_grad()
    def _init_from_data(self) -> None:
        """Scales, b_dec, the skip fit and data-seeded latents from the first global batches (every rank sees the
        same ones, so all agree). Those batches are then step 0.. of training (model forwards saved)."""
        tc = self.tc
        source = self.source.batches(0, 0, 1)
        batches = [next(source)]
        while sum(next(iter(b.values())).shape[0] for b in batches) < tc.n_init_tokens:
            batches.append(next(source))
        self._prefetched = batches if self.world == 1 else []
        for b in batches:
            self._check_batch(b)
        batch = batches[0]
        if tc.normalize:
            self.scale = {h: float(1 / _typical(batch[h].float(), tc.init_outlier).pow(2).sum(-1).mean().sqrt()
                                   .clamp_min(1e-8)) for h in tc.input_hooks()}
        gen = torch.Generator().manual_seed(tc.seed)
        # without a fitted skip, k seeded latents together overshoot ~k-fold (RESULTS.md: "Seeded latents need...")
        scale_codes = tc.init_scale == "on" or (tc.init_scale == "auto" and not tc.skip_fit)
        for u in self.units:
            d = u.dictionary
            if tc.b_dec_init != "zero":
                y = _stack(batch, u.y_hooks, self.scale, u.layered).float()
                y = y[_typical_rows(y, tc.init_outlier)]
                center = geometric_median if tc.b_dec_init == "median" else (lambda t: t.mean(0))
                b = center(y) if y.dim() == 2 else torch.stack([center(y[:, i]) for i in range(y.shape[1])])
                d.b_dec.copy_(b)
            if not (tc.skip_fit or tc.init == "data"):
                continue
            x = torch.cat([_stack(b, u.x_hooks, self.scale, u.layered).float() for b in batches])
            y = torch.cat([_stack(b, u.y_hooks, self.scale, u.layered).float() for b in batches])
            keep = _typical_rows(y, tc.init_outlier)
            x, y = x[keep], y[keep]
            if tc.skip_fit:  # a CLT: one fit per layer, on that layer's input and output
                fits = zip(d.W_skip, d.b_dec, x.unbind(1), y.unbind(1)) if u.layered else [(d.W_skip, d.b_dec, x, y)]
                for W_skip, b_dec, xs, ys in fits:
                    W, b = fit_linear(xs, ys, ridge=tc.skip_ridge)
                    W_skip.copy_(W)
                    b_dec.copy_(b)
            if tc.init == "data" and u.layered:  # a CLT: each layer's latents seeded on its own layer's output
                for i, w_dec in enumerate(d.W_dec):
                    w_dec[:, 1:].zero_()  # cross-layer writes start at zero and are learned
                    residual = y[:, i] - d.b_dec[i] - (x[:, i] @ d.W_skip[i] if d.W_skip is not None else 0.0)
                    seed_latents_on_tokens(d.W_enc[i], d.b_enc[i], w_dec[:, 0], x[:, i], residual, gen,
                                           spread=tc.init_pick == "spread")
                    if scale_codes:
                        codes = _training_codes(d, x[:, i] @ d.W_enc[i] + d.b_enc[i], tc.k_at(0), i)
                        fit_code_scale(d.W_enc[i], d.b_enc[i], codes @ w_dec[:, 0], residual)
            elif tc.init == "data":
                residual = y - d.skip_term(x) - d.b_dec
                seed_latents_on_tokens(d.W_enc, d.b_enc, d.W_dec, x - d.b_dec if d.cfg.b_dec_in else x, residual, gen,
                                       spread=tc.init_pick == "spread")
                if scale_codes:
                    fit_code_scale(d.W_enc, d.b_enc, _training_codes(d, d.pre_acts(x), tc.k_at(0)) @ d.W_dec, residual)

    def _restore(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        # checkpoints from before these options trained without them
        # (skip_ridge: 1e-6 where a skip was fitted; elsewhere it did nothing, so any value resumes)
        old = meta["train_config"]
        saved = {"matryoshka": [], "skip_fit": False, "freeze_skip": False, "init": "random", "init_pick": "random",
                 "init_tokens": 0, "mix": 1, "repeat": 1, "resample_every": 0, "resample_until": 0.8, "shuffle": False,
                 "k_start": 0, "k_anneal": 0.5, "revive_rate": 0.0, "revive_tokens": 0,
                 "skip_ridge": 1e-6 if old.get("skip_fit") else self.tc.skip_ridge, **old}
        if not saved["k_start"] and not self.tc.k_start:  # k_anneal only says how fast k_start falls
            saved["k_anneal"] = self.tc.k_anneal
        if saved["init"] != "data" and self.tc.init != "data":  # init_pick only says which tokens seed latents
            saved["init_pick"] = self.tc.init_pick
        if not saved["revive_rate"] and not self.tc.revive_rate:  # revive_tokens only says when the rise starts
            saved["revive_tokens"] = self.tc.revive_tokens
        for key in ("kind", "arch", "hooks", "layers", "k", "expansion", "d_sae", "batch_size", "tokens", "seed", "skip",
                    "matryoshka", "skip_fit", "freeze_skip", "init", "init_pick", "init_tokens", "mix", "repeat",
                    "resample_every", "resample_until", "shuffle", "skip_ridge", "decay_start", "aux_coeff", "k_start",
                    "k_anneal", "revive_rate", "revive_tokens"):
            mine = asdict(self.tc)[key]
            if saved.get(key) != (list(mine) if isinstance(mine, tuple) else mine):
                raise GlassworkError(f"{path}: checkpoint was made with {key}={saved.get(key)!r}, this run asks for "
                                     f"{key}={mine!r}; resume with the same settings or choose another --out")
        for u in self.units:
            prefix = f"w.{u.name}."
            state = {n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)}
            for n, t in u.dictionary.state_dict().items():
                if n not in state or state[n].shape != t.shape:
                    got = list(state[n].shape) if n in state else "nothing"
                    raise GlassworkError(f"{path}: '{u.name}.{n}' has shape {got} but the data implies {list(t.shape)} "
                                         f"(d_in={u.dictionary.cfg.d_in}): is this the same hook and model?")
            u.dictionary.load_state_dict(state)
        self.opt.load_state_tensors(self.names, tensors)
        restore_rng(tensors)
        for i, u in enumerate(self.units):
            self.since_fired[i] = tensors[f"track.{u.name}.since_fired"]
            self.fire_count[i] = tensors[f"track.{u.name}.fire_count"]
            self.thresholds[u.name] = tensors[f"track.{u.name}.thresholds"].tolist()
        self.step, self.skipped = meta["step"], meta["skipped"]
        self.window_tokens, self.scale = meta["window_tokens"], meta["scale"]
        self.recent = meta["recent"]
        recorded = meta.get("precision", self.precision)  # older checkpoints did not record it
        if self.tc.precision != "auto" and self.tc.precision != recorded:
            raise GlassworkError(f"{path}: checkpoint trained in {recorded}, this run asks for precision "
                                 f"{self.tc.precision}; resume with the same precision or choose another --out")
        self.precision = recorded
        read_in, forward = meta.get("forward_precision"), self.forward_precision
        if read_in and forward and read_in != forward:  # older checkpoints did not record it: no check
            raise GlassworkError(f"{path}: checkpoint read the model in {read_in}, this run would read it in {forward} "
                                 f"(precision auto follows the hardware); resume with --precision {read_in}")

    def _checkpoint(self) -> None:
        if not dist.is_main():
            return
        tensors = {f"w.{u.name}.{n}": t for u in self.units for n, t in u.dictionary.state_dict().items()}
        tensors.update(self.opt.state_tensors(self.names))
        tensors.update(rng_tensors())
        for i, u in enumerate(self.units):
            tensors[f"track.{u.name}.since_fired"] = self.since_fired[i]
            tensors[f"track.{u.name}.fire_count"] = self.fire_count[i]
            tensors[f"track.{u.name}.thresholds"] = torch.tensor(self.thresholds[u.name], dtype=torch.float64)
        meta = {"step": self.step, "skipped": self.skipped, "window_tokens": self.window_tokens, "scale": self.scale,
                "recent": self.recent, "train_config": asdict(self.tc), "precision": self.precision,
                "forward_precision": self.forward_precision, "glasswork_version": __version__}
        save_checkpoint(self.out / CHECKPOINT, tensors, meta)

    # --- the loop --------------------------------------------------------------------------------------------
    def _check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        for u in self.units:
            cfg = u.dictionary.cfg
            for h in u.x_hooks:
                if batch[h].shape[-1] != cfg.d_in:
                    raise GlassworkError(f"hook {h}: activations have d={batch[h].shape[-1]}, the dictionary "
                                         f"'{u.name}' expects d_in={cfg.d_in}")

    def _finite(self, batch: dict[str, torch.Tensor]) -> bool:
        ok = torch.tensor([float(all(torch.isfinite(batch[h]).all() for h in self.tc.input_hooks()))])
        return bool(dist.all_reduce_(1 - ok, "max").item() == 0)  # every rank skips together

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict:
        tc = self.tc
        lr = tc.lr_at(self.step, self.units[0].dictionary.cfg.d_sae)
        self.opt.lr = lr
        k = tc.k_at(self.step)
        if self.step and k != tc.k_at(self.step - 1):  # batchtopk's threshold is estimated at the final k only
            for th in self.thresholds.values():
                th.clear()
        total = 0.0
        stats = {}
        with autocast(tc.device, self.precision):
            for i, u in enumerate(self.units):
                d = u.dictionary
                x = _stack(batch, u.x_hooks, self.scale, u.layered).to(tc.device)
                y = _stack(batch, u.y_hooks, self.scale, u.layered).to(tc.device)
                if d.cfg.kind == "clt":
                    loss, s = clt_loss(d, x, y, tc, k)
                else:
                    d.dead = self.since_fired[i].to(tc.device) >= self.dead_tokens
                    d.threshold_estimate = self.thresholds[u.name]
                    loss, s = coder_loss(d, x, y, tc, k)
                total = total + loss
                stats[u.name] = s
        total.backward()
        dist.average_gradients(self.params)
        self.opt.step(tc.grad_clip)
        self.opt.zero_grad()
        self._after_step(stats)
        return stats

    @torch.no_grad()
    def _after_step(self, stats: dict) -> None:
        n_tokens = self.tc.batch_size
        for i, u in enumerate(self.units):
            d = u.dictionary
            if d.cfg.activation in ("topk", "batchtopk", "jumprelu"):  # unit-norm decoder rows (relu: norms in the L1)
                for w in ([d.W_dec] if d.cfg.kind != "clt" else list(d.W_dec)):
                    flat = w.view(w.shape[0], -1)
                    flat /= flat.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            fired = dist.all_reduce_(stats[u.name]["fired"].long().cpu(), "max").bool()
            self.since_fired[i] = torch.where(fired, 0, self.since_fired[i] + n_tokens)
            if self.tc.revive_rate:
                bar = dist.all_reduce_(stats[u.name]["bar"].float().cpu().reshape(-1), "sum") / self.world
                self._raise_silent_biases(i, d, bar)
            self.fire_count[i] += fired  # batches in which it fired: a lower bound on its token frequency
            r = self.recent[u.name]
            r.append([float(dist.all_reduce_(stats[u.name]["fvu"].detach().float().cpu().reshape(1), "sum") / self.world),
                      float(dist.all_reduce_(stats[u.name]["l0"].detach().float().cpu().reshape(1), "sum") / self.world)])
            del r[:-20]
            th = self.thresholds[u.name]
            if th and torch.is_tensor(th[-1]):
                th[-1] = float(dist.all_reduce_(th[-1].float().cpu().reshape(1), "sum") / self.world)
            del th[:-100]  # the threshold settles late: estimate it from the last 100 batches
        self.window_tokens += n_tokens

    @torch.no_grad()
    def _raise_silent_biases(self, i: int, d, bar: torch.Tensor) -> None:
        """--revive-rate: latents silent for revive_window tokens get their encoder bias raised by revive_rate x bar,
        the batch's entry bar ([1], or [L] for a CLT: losses._entry_bar), what a latent must beat to fire.
        since_fired and bar are the same on every rank, so all ranks agree."""
        biases = d.b_enc.view(bar.numel(), -1)  # [1, F], or a CLT's [L, F]: one bar per row
        silent = (self.since_fired[i] >= self.tc.revive_window).to(biases.device).view_as(biases)
        if bool(silent.any()):
            biases += self.tc.revive_rate * bar.to(biases.device)[:, None] * silent

    @torch.no_grad()
    def _reseed_dead(self, batch: dict[str, torch.Tensor]) -> None:
        """Dead latents (no firing in the last dead_tokens tokens) start again as seeds on the tokens of this
        batch that the dictionary explains worst (init.reseed_latents), with fresh Adam moments. Rank 0's batch
        decides; the others receive its rows."""
        tc = self.tc
        for i, u in enumerate(self.units):
            d = u.dictionary
            dead = (self.since_fired[i] >= self.dead_tokens).nonzero().flatten()
            if not len(dead):
                continue
            with autocast(tc.device, self.precision):
                x = _stack(batch, u.x_hooks, self.scale).to(tc.device).float()
                y = _stack(batch, u.y_hooks, self.scale).to(tc.device).float()
                recon = _training_codes(d, d.pre_acts(x), tc.k_at(self.step)) @ d.W_dec + d.skip_term(x) + d.b_dec
            gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + self.step)  # no state: a resume draws the same
            alive = self.since_fired[i] < self.dead_tokens
            # encoders as long as a typical live one's: |error| / |input| overshoots where the input is near the mean
            enc_norm = float(d.W_enc.norm(dim=0)[alive.to(tc.device)].median()) if bool(alive.any()) else None
            latents = reseed_latents(d.W_enc, d.b_enc, d.W_dec, dead.to(tc.device), x - d.b_dec if d.cfg.b_dec_in else x,
                                     (y - recon).float(), gen, enc_norm)
            for p in (d.W_enc, d.b_enc, d.W_dec):
                if self.world > 1:
                    p.copy_(dist.all_reduce_(p * float(dist.is_main()), "sum"))
                self.opt.restart(p, latents, dim=1 if p is d.W_enc else 0)
            self.since_fired[i][latents.cpu()] = 0

    def run(self) -> dict:
        tc = self.tc
        t0, start = time.time(), self.step
        last_ckpt = time.time()
        with progress(f"train {tc.kind}/{tc.arch}", total=tc.steps * tc.batch_size, completed=self.step * tc.batch_size) as bar:
            if self.step == 0 and self._prefetched:
                n = len(self._prefetched)
                batches = itertools.chain(self._prefetched, self.source.batches(n, self.rank, self.world))
            else:
                batches = self.source.batches(self.step, self.rank, self.world)
            while self.step < tc.steps:
                batch = next(batches)
                if self.step == 0 or start == self.step:
                    self._check_batch(batch)
                if not self._finite(batch):
                    self.skipped += 1
                    if self.skipped > max(10, tc.steps // 10):
                        raise GlassworkError(f"{self.skipped} batches had NaN or inf activations: stopping; the last "
                                             f"checkpoint in {self.out} is intact")
                else:
                    self.train_step(batch)
                    if tc.resample_every and (self.step + 1) % tc.resample_every == 0 \
                            and self.step + 1 <= tc.resample_until * tc.steps:
                        self._reseed_dead(batch)
                self.step += 1
                bar.advance(tc.batch_size)
                due = (self.step % tc.checkpoint_every == 0) if tc.checkpoint_every else time.time() - last_ckpt > 120
                if due and self.step < tc.steps:
                    self._checkpoint()
                    last_ckpt = time.time()
        for u in self.units:
            if not all(torch.isfinite(p).all() for p in u.dictionary.parameters()):
                raise GlassworkError(f"dictionary '{u.name}' has non-finite weights after training (lower --lr?); "
                                     f"nothing was saved over {self.out}")
        seconds = time.time() - t0
        return self._finish(seconds, (self.step - start) * tc.batch_size)

    # --- the artifact ----------------------------------------------------------------------------------------
    def _finish(self, seconds: float, tokens_run: int) -> dict:
        tc = self.tc
        dicts, summary = {}, {}
        for i, u in enumerate(self.units):
            d = u.dictionary
            recent = torch.tensor(self.recent[u.name]) if self.recent[u.name] else torch.zeros(1, 2)
            freq = self.fire_count[i].float() / max(1, self.step - self.skipped)
            metrics = {"train_fvu": float(recent[:, 0].mean()), "train_l0": float(recent[:, 1].mean()),
                       "dead_fraction": float((self.since_fired[i] >= self.dead_tokens).float().mean()),
                       "never_fired_fraction": float((self.fire_count[i] == 0).float().mean()),
                       "skipped_batches": self.skipped, "tokens": self.step * tc.batch_size,
                       "dense_fraction_upper_bound": float((freq > tc.dense_fraction).float().mean())}
            if d.cfg.activation == "batchtopk":  # inference threshold: mean of the per-batch minimum kept activation
                th = [float(t) for t in self.thresholds[u.name]]
                d.threshold.fill_(sum(th) / len(th) if th else 0.0)
            folded = fold_scale(d, [self.scale[h] for h in u.x_hooks], [self.scale[h] for h in u.y_hooks])
            folded.cfg.metrics = metrics
            folded.cfg.tokens_seen = self.step * tc.batch_size
            folded.cfg.training = {**asdict(tc), "scale_in": [self.scale[h] for h in u.x_hooks],
                                   "scale_out": [self.scale[h] for h in u.y_hooks], "seconds": round(seconds, 1),
                                   "tokens_per_second": round(tokens_run / max(seconds, 1e-9), 1), "world_size": self.world,
                                   "precision_used": self.precision,
                                   "forward_precision": self.forward_precision}
            dicts[u.name] = folded
            summary[u.name] = metrics
        if dist.is_main():
            if len(dicts) == 1 and tc.kind != "transcoder":
                save(next(iter(dicts.values())), self.out)
            else:
                save_set(dicts, self.out, kind=tc.kind, **({"kl_steps_done": 0} if tc.kl_steps else {}))
            (self.out / CHECKPOINT).unlink(missing_ok=True)
        dist.barrier()
        return {"out": str(self.out), "steps": self.step, "tokens": self.step * tc.batch_size, "seconds": round(seconds, 1),
                "tokens_per_second": round(tokens_run / max(seconds, 1e-9), 1), "skipped_batches": self.skipped,
                "dictionaries": summary, "dicts": dicts}


@torch.no_grad()
def fold_scale(d, s_in: list[float], s_out: list[float]):
    """A copy of d that reads raw activations: trained on x*s_in predicting y*s_out, so W_enc*s_in, W_dec/s_out,
    b_dec/s_out, W_skip*s_in/s_out (pre-activations, thresholds and codes are unchanged)."""
    import copy
    f = copy.deepcopy(d).cpu()
    if f.cfg.kind == "clt":
        si = torch.tensor(s_in)[:, None, None]
        so = torch.tensor(s_out)
        f.W_enc.mul_(si)
        for i, w in enumerate(f.W_dec):  # W_dec[i] [F, n_i, d_out] writes to layers i .. i+n_i-1
            w.div_(so[i:i + w.shape[1]][None, :, None])
        f.b_dec.div_(so[:, None])
        if f.W_skip is not None:
            f.W_skip.mul_(si / so[:, None, None])
        return f
    f.W_enc.mul_(s_in[0])
    f.W_dec.div_(s_out[0])
    f.b_dec.div_(s_out[0])
    if f.W_skip is not None:
        f.W_skip.mul_(s_in[0] / s_out[0])
    return f


def finished(out: str | Path, tc: TrainConfig) -> bool:
    """Whether `out` holds the finished result of training tc (a dictionary or a set, its KL fine-tune done); if not,
    train(tc, source, out, resume=True) starts it or continues it from where a kill left it."""
    out = Path(out)
    return ((out / "config.json").exists() or is_set(out)) and not kl_finetune.pending(out, tc)


def train(tc: TrainConfig, source, out: str | Path, resume: bool = False) -> dict:
    """Train the dictionaries tc describes on batches from `source`; write them to `out` (a folder for one
    dictionary, a set folder for several or for transcoders). Returns a summary with metrics and the dictionaries.
    The folder is locked while training writes it: a second run into the same folder is refused."""
    import os
    from contextlib import nullcontext

    from ..io import output_lock
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes
    if tc.kl_steps:  # checked before the reconstruction, not after it
        if not callable(getattr(source, "sequences", None)):
            raise GlassworkError("train config: kl_steps fine-tunes with the model in the loop: it needs activations "
                                 "read from the model (a ModelSource; `glasswork train` without --store)")
        dist.init(tc.device)
        if tc.kl_seqs % dist.world():
            raise GlassworkError(f"kl_seqs {tc.kl_seqs} must divide evenly over {dist.world()} ranks")
    with output_lock(out) if main else nullcontext():
        if resume and kl_finetune.pending(out, tc):  # the reconstruction finished before the kill
            return kl_finetune.finetune(tc, source, out, None)
        result = Trainer(tc, source, out, resume).run()
        return kl_finetune.finetune(tc, source, out, result) if tc.kl_steps else result
