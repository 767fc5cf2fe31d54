"""TrainConfig: every setting of a training run, one docstring per field. The single source of truth: `glasswork train`
derives its options from these fields (name, type, default, help: cli/training.py), and all validation is here.
Imports no torch at module level (the CLI's --help reads it)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import GlassworkError


@dataclass
class TrainConfig:
    kind: str = "sae"
    """sae | transcoder | clt"""
    arch: str = "topk"
    """relu | topk | batchtopk | jumprelu"""
    hooks: list[str] = field(default_factory=list)
    """SAE hook points, comma-separated (one SAE each)."""
    layers: list[int] = field(default_factory=list)
    """Transcoder/CLT layers, e.g. 0-29."""
    k: int = 32
    """Active latents per token (topk, batchtopk)."""
    k_start: int = 0
    """topk / batchtopk: active latents per token at step 0, falling linearly to --k over the first --k-anneal of
    training (0: --k throughout). More latents get gradient while the dictionary is young (at the demo's budget it
    did not help: benchmarks/RESULTS.md, "k annealing")."""
    k_anneal: float = 0.5
    """With --k-start: the fraction of training over which k falls to --k."""
    expansion: int = 8
    """d_sae = expansion * d_in (unless --d-sae is given)."""
    d_sae: int = 0
    """Latents (overrides --expansion)."""
    skip: bool = False
    """Transcoders and CLTs: learn a linear skip connection (MLP input -> output, one per layer)."""
    window: int = 0
    """CLT: later layers each feature writes to (0: all)."""
    tokens: int = 1_000_000
    """Training tokens."""
    batch_size: int = 4096
    """Tokens per step (global, over all ranks)."""
    lr: float = 0.0
    """Peak learning rate (0: 2e-4 / sqrt(d_sae / 16384), the TopK scaling law's rule)."""
    warmup_steps: int = 50
    """Steps of linear learning-rate warmup."""
    decay_start: float = 0.8
    """Fraction of training after which the learning rate decays linearly to 0."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's betas, e.g. 0.9,0.999."""
    grad_clip: float = 1.0
    """Per-dictionary gradient norm clip (0: off)."""
    l1_coeff: float = 0.05
    """relu: coefficient of the decoder-norm-weighted L1 penalty."""
    l0_coeff: float = 1e-3
    """jumprelu: coefficient of the L0 penalty."""
    bandwidth: float = 1e-3
    """jumprelu: width of the straight-through kernel."""
    aux_k: int = 0
    """Dead latents AuxK trains per token (0: d_in // 2)."""
    aux_coeff: float = 1 / 32
    """Weight of the AuxK loss."""
    matryoshka: list[int] = field(default_factory=list)
    """Matryoshka prefix sizes, e.g. 256,1024: the first 256, the first 1024 and all latents each learn to reconstruct
    alone (SAEs, transcoders)."""
    dead_tokens: int = 0
    """A latent is dead after this many tokens without firing (0: min(10M, tokens / 5))."""
    resample_every: int = 0
    """Steps between re-seedings of dead latents (0: never): each latent dead by --dead-tokens starts again on a token
    of the current batch, drawn by squared reconstruction error (TopK / BatchTopK SAEs and transcoders)."""
    resample_until: float = 0.8
    """Fraction of training after which latents are no longer re-seeded (they need steps to settle)."""
    revive_rate: float = 0.0
    """TopK / BatchTopK: after each step, every latent silent for --revive-tokens tokens has its encoder bias raised
    by this fraction of the batch's entry bar (the median over tokens of the smallest value kept in a token's top k),
    until it fires (0: off). It reaches the top k on the inputs it matches best, and from there the gradient decides:
    a load-balancing bias for the silent ones only."""
    revive_tokens: int = 0
    """With --revive-rate: tokens without firing after which a latent's bias starts to rise (0: 8 batches)."""
    dense_fraction: float = 0.1
    """A latent is dense when it fires on more than this fraction of tokens."""
    normalize: bool = True
    """Scale inputs and targets to unit mean squared norm while training (folded into the saved weights)."""
    b_dec_init: str = "median"
    """Where b_dec starts: median | mean | zero (of the first batch)."""
    skip_fit: bool = False
    """Transcoders and CLTs with --skip: start the skip at the least-squares fit of MLP output on input (over
    --init-tokens; a CLT: one fit per layer), the sparse part learns the rest."""
    skip_ridge: float = 0.1
    """With --skip-fit: ridge damping of the skip's least-squares fit, relative to the mean diagonal of the centred
    Gram matrix (0: plain least squares). Near 0 the skip grows 10-40x in norm and the sparse code cancels it."""
    freeze_skip: bool = False
    """With --skip-fit: keep the fitted skip fixed."""
    init: str = "random"
    """random | data: seed each latent on a token of the init sample (a CLT: on its own layer's output)."""
    init_pick: str = "random"
    """With --init data, which tokens of the init sample seed the latents: random (drawn uniformly) | spread (drawn
    k-means++-style, each in proportion to its input direction's squared distance from the seeds drawn before, so
    seeds cover the directions the inputs take instead of piling up where most tokens sit)."""
    init_tokens: int = 0
    """Tokens read before training for scales, b_dec, the skip fit and data init (0: one batch; 8192 when fitting)."""
    init_outlier: float = 10.0
    """Tokens whose norm is over this many times the init sample's median (massive activations, ~700x at layer 11)
    are left out of the scales, b_dec, the skip fit and the seeds (0: keep every token); training still sees them.
    Not higher: with the 20-80x tokens of layers 2 and 28 in it, the skip fit blows up and the sparse code cancels it."""
    init_scale: str = "auto"
    """With --init data: fit the seeded code's scale by least squares (on | off | auto: on unless --skip-fit)."""
    seed: int = 0
    """Seed for init and data order."""
    checkpoint_every: int = 0
    """Steps between checkpoints (0: about every 120 s)."""
    device: str = "cpu"
    """cpu | cuda"""
    precision: str = "auto"
    """auto | fp32 | bf16 (auto: bf16 only where the hardware has fast bf16: AMX / AVX512-BF16 CPUs, bf16 GPUs;
    recorded, and kept on --resume)."""
    model: str = ""
    """The model's name (recorded in the artifacts; set from the model trained on)."""
    ctx: int = 128
    """Tokens per sequence when reading from the model."""
    mix: int = 1
    """Reading from the model: shuffle the tokens of this many batches together."""
    shuffle: bool = False
    """Reading from the model: take the corpus's sequences in a seeded random order (tokenized once, up front, held
    in memory) instead of front to back, so a short run spans many documents."""
    repeat: int = 1
    """Reading from the model: train on each block of --mix batches this many times (reshuffled): more steps per
    model forward, on the same tokens."""
    kl_steps: int = 0
    """Transcoders read from the model: after the --tokens of reconstruction, this many steps fine-tune every layer's
    transcoder at once, all spliced into the model, on KL(model || spliced model) of the next-token distributions
    plus --kl-mse x the layers' mean FVU: the errors that change the output cost most (a short end-to-end fine-tune,
    Karvonen 2025). A step costs a model forward and backward (~6x a reconstruction step's time a token)."""
    kl_seqs: int = 4
    """With --kl-steps: sequences of --ctx tokens a fine-tune step reads (global, over all ranks)."""
    kl_lr: float = 3e-3
    """With --kl-steps: the fine-tune's peak learning rate, relative to each parameter's RMS (decays linearly to 0)."""
    kl_mse: float = 1.0
    """With --kl-steps: weight of the layers' mean FVU (on the spliced model's own MLP outputs) beside the KL."""

    def __post_init__(self):
        import torch

        from ..dictionaries.activations import ACTIVATIONS
        from ..dictionaries.coder import KINDS
        from ..precision import PRECISIONS
        from .losses import matryoshka_prefixes
        if self.kind not in KINDS:
            raise GlassworkError(f"train config: unknown kind '{self.kind}' (expected one of {', '.join(KINDS)})")
        if self.arch not in ACTIVATIONS:
            raise GlassworkError(f"train config: unknown arch '{self.arch}' (expected one of {', '.join(ACTIVATIONS)})")
        if self.tokens < 1 or self.batch_size < 1:
            raise GlassworkError(f"train config: tokens and batch_size must be at least 1 (got {self.tokens}, "
                                 f"{self.batch_size})")
        for name, low in (("k", 1), ("expansion", 1), ("d_sae", 0), ("window", 0), ("warmup_steps", 0), ("aux_k", 0),
                          ("dead_tokens", 0), ("resample_every", 0), ("revive_tokens", 0), ("checkpoint_every", 0),
                          ("ctx", 8), ("mix", 1), ("repeat", 1)):
            if getattr(self, name) < low:
                raise GlassworkError(f"train config: {name} must be at least {low} (got {getattr(self, name)})")
        if not 0 <= self.seed < 2**32:
            raise GlassworkError(f"train config: seed must be in 0..{2**32 - 1} (got {self.seed})")
        if self.k_start and (self.k_start < self.k or self.arch not in ("topk", "batchtopk")):
            raise GlassworkError(f"train config: k_start must be 0 or at least k={self.k}, and needs arch topk or "
                                 f"batchtopk (got k_start={self.k_start}, arch '{self.arch}')")
        if not 0 <= self.k_anneal <= 1:
            raise GlassworkError(f"train config: k_anneal must be in [0, 1] (got {self.k_anneal})")
        for name in ("lr", "decay_start", "resample_until", "revive_rate", "init_outlier", "skip_ridge", "grad_clip",
                     "l1_coeff", "l0_coeff", "bandwidth", "aux_coeff", "dense_fraction"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise GlassworkError(f"train config: {name} must be a finite number >= 0 (got {value})")
        try:
            dev = torch.device(self.device)
        except RuntimeError:
            raise GlassworkError(f"train config: device '{self.device}' is not a device (cpu, cuda, cuda:1)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise GlassworkError(f"train config: device '{self.device}', but this torch build sees no CUDA device "
                                 f"(torch {torch.__version__}): use --device cpu")
        if self.precision not in PRECISIONS:
            raise GlassworkError(f"train config: precision must be one of {', '.join(PRECISIONS)} (got "
                                 f"'{self.precision}')")
        if self.init_scale not in ("auto", "on", "off"):
            raise GlassworkError(f"train config: init_scale must be auto, on or off (got '{self.init_scale}')")
        if self.init not in ("random", "data"):
            raise GlassworkError(f"train config: init must be random or data (got '{self.init}')")
        if self.init_pick not in ("random", "spread"):
            raise GlassworkError(f"train config: init_pick must be random or spread (got '{self.init_pick}')")
        if (self.skip_fit or self.freeze_skip) and not self.skip:
            raise GlassworkError("train config: skip_fit / freeze_skip need skip=True (a transcoder or CLT with a skip)")
        if self.skip and self.kind == "sae":
            raise GlassworkError("train config: skip is for transcoders and CLTs (an SAE reconstructs its own input)")
        if self.freeze_skip and not self.skip_fit:
            raise GlassworkError("train config: freeze_skip needs skip_fit (a skip kept at zero would do nothing)")
        if self.init_tokens < 0:
            raise GlassworkError(f"train config: init_tokens must be >= 0 (got {self.init_tokens})")
        if self.b_dec_init not in ("median", "mean", "zero"):
            raise GlassworkError(f"train config: b_dec_init must be median, mean or zero (got '{self.b_dec_init}')")
        if self.kind == "sae" and not self.hooks:
            raise GlassworkError("train config: an SAE needs hooks (e.g. blocks.6.hook_resid_post)")
        if self.kind != "sae" and not self.layers:
            raise GlassworkError(f"train config: kind '{self.kind}' needs layers (e.g. 0-29)")
        if self.matryoshka and self.kind == "clt":
            raise GlassworkError(f"train config: matryoshka={list(self.matryoshka)} is for SAEs and transcoders, "
                                 f"not kind 'clt'")
        if self.resample_every and (self.kind == "clt" or self.arch not in ("topk", "batchtopk")):
            raise GlassworkError(f"train config: resample_every is for TopK / BatchTopK SAEs and transcoders (kind "
                                 f"'{self.kind}', arch '{self.arch}')")
        if self.revive_rate and self.arch not in ("topk", "batchtopk"):
            raise GlassworkError(f"train config: revive_rate is for TopK / BatchTopK dictionaries (arch '{self.arch}' "
                                 f"has no competition for the top k to lose)")
        if self.kl_steps < 0 or self.kl_seqs < 1:
            raise GlassworkError(f"train config: kl_steps must be >= 0 and kl_seqs >= 1 (got {self.kl_steps}, "
                                 f"{self.kl_seqs})")
        if self.kl_steps and self.kind != "transcoder":
            raise GlassworkError(f"train config: kl_steps fine-tunes transcoders spliced into the model, not kind "
                                 f"'{self.kind}'")
        for name in ("kl_lr", "kl_mse"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise GlassworkError(f"train config: {name} must be a finite number >= 0 (got {getattr(self, name)})")
        self.matryoshka = list(self.matryoshka)
        matryoshka_prefixes(self.matryoshka, self.d_sae or None)  # against each dictionary's d_sae in make_units
        self.betas = tuple(self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise GlassworkError(f"train config: betas must be two numbers in [0, 1) (got {list(self.betas)})")

    @property
    def dead_window(self) -> int:
        """Tokens without firing after which a latent counts as dead (and AuxK trains it)."""
        return self.dead_tokens or min(10_000_000, self.tokens // 5)

    @property
    def revive_window(self) -> int:
        """Tokens without firing after which --revive-rate raises a latent's encoder bias."""
        return self.revive_tokens or 8 * self.batch_size

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.tokens / self.batch_size))

    @property
    def n_init_tokens(self) -> int:
        """Tokens read before the first step (whole batches of them are reused as the first training batches)."""
        return self.init_tokens or (min(8192, self.tokens) if self.skip_fit or self.init == "data" else 1)

    def k_at(self, step: int) -> int:
        """Active latents per token at this step (--k-start falling linearly to --k)."""
        if not self.k_start:
            return self.k
        span = max(1, round(self.k_anneal * self.steps))
        return self.k + round((self.k_start - self.k) * max(0.0, 1 - step / span))

    def lr_at(self, step: int, d_sae: int) -> float:
        base = self.lr or 2e-4 / math.sqrt(d_sae / 16384)
        warm = min(1.0, (step + 1) / max(1, self.warmup_steps))
        start = int(self.decay_start * self.steps)
        decay = 1.0 if step < start else max(0.0, (self.steps - step) / max(1, self.steps - start))
        return base * warm * decay

    def input_hooks(self) -> list[str]:
        """Every hook the data must provide."""
        if self.kind == "sae":
            return list(self.hooks)
        from ..hooks import mlp_hooks
        return [h for l in self.layers for h in mlp_hooks(l)]
