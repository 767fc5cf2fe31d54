"""Peer: EleutherAI sparsify (PyPI `eai-sparsify`) training MLP transcoders on CPU for a wall-clock budget.

Trains one sparsify transcoder per layer (hookpoint `layers.N.mlp` of the HF LlamaModel, `transcode=True`: it reads
what LlamaMLP.forward receives, i.e. the post-attention RMSNorm output = glasswork `blocks.N.ln2.hook_normalized`,
and predicts the MLP output = glasswork `blocks.N.hook_mlp_out`), for a given number of seconds of training. It
then saves the checkpoint in sparsify's own format (OUT/layers.N.mlp/{cfg.json,sae.safetensors}, plus sparsify's
trainer state). It also writes OUT/peer_run.json (tokens, steps, seconds, tokens/s, last FVUs) and
OUT/log.jsonl (sparsify's per-step metrics: fvu/<hookpoint>, dead_pct/<hookpoint>, k).
Format note: /work/peers/sparsify_format.md.

Do not install PyPI `sparsify`: that name belongs to Neural Magic's end-of-life package, and its wheel build fails on
purpose. EleutherAI's package is `eai-sparsify`. To make the venv (CPU torch first, so that pip keeps it):
    python3 -m venv /work/peers/sparsify
    /work/peers/sparsify/bin/pip install torch==2.13.0
    /work/peers/sparsify/bin/pip install eai-sparsify==1.3.3
Texts: the training split of glasswork's default corpus, dumped once with glasswork's venv:
    /work/main/.venv/bin/python -c "import json; from glasswork.data import corpus; open('/work/peers/glasswork_train.jsonl', 'w').writelines(json.dumps({'text': t}) + '\\n' for t in corpus.default_texts())"
Run (from /work/main):
    /work/peers/sparsify/bin/python benchmarks/peer_sparsify.py --model-dir ~/.cache/glasswork/models/smollm2-135m \
        --texts /work/peers/glasswork_train.jsonl --layers 0-29 --num-latents 2304 --k 16 --seconds 600 \
        --out /work/peers/runs/sparsify_tc [--skip] [--threads 2]

How it runs sparsify. Its CLI (`python -m sparsify`) can't run here: it loads the model with
device_map={"": "cuda:0"} and downloads from the Hub. So this script calls its Python API instead,
`sparsify.Trainer(TrainConfig(...), dataset, model).fit()`, with the model on CPU in fp32. The transcoders are fp32
as well, since sparsify always makes them fp32. The bf16 autocast in sparsify's forward is CUDA-only, and on CPU
torch decodes with embedding_bag because Triton is absent. Nothing in sparsify is patched. Three things are set up
around it:
- Wall-clock budget. sparsify has no time limit: fit() runs over its dataset. So the dataset handed to it is an
  IterableDataset that yields whole batches of token rows until `--seconds` have passed since the first batch was
  requested. The DataLoader asks for batch i+1 only after step i (model forward, transcoder forward and backward,
  optimizer step) has finished. So "seconds" counts only finished steps, and at most one step runs past the budget.
  Model loading, tokenization and the final save are outside the budget, and the script reports each of them
  separately. The rows are reshuffled and reused when the corpus runs out (`--no-cycle` stops instead), and
  peer_run.json gives the number of epochs.
- Data, the same as glasswork's ModelSource. The texts are concatenated, with no separator, into rows of `--ctx-len`
  tokens, each starting with BOS, in file order. BOS positions are left out of training through sparsify's
  `exclude_tokens=[bos]`, as glasswork drops position 0. A batch is `--batch-size` rows. The default, 32 rows of 128,
  is 4064 trained tokens, close to glasswork's 4096-token step and also sparsify's default of 32 sequences.
- Metrics. sparsify reports them only to Weights & Biases. A small stand-in `wandb` module (init/log) in sys.modules
  receives its per-step metrics and writes them to OUT/log.jsonl. The FVU is sparsify's training FVU on each batch:
  sum((y - y_hat)^2) / sum((y - mean_batch(y))^2) over the batch's trained tokens and all dims.
Other sparsify settings are its defaults unless given as flags. By default the optimizer is signum (SignSGD inside
schedulefree's ScheduleFreeWrapper, momentum 0.95, no lr schedule), with lr = 5e-3 / sqrt(num_latents / 2**14). The
saved weights are schedule-free's averaged ("eval") weights. AuxK is off (auxk_alpha 0), and so are multi-topk and
k decay. The first batch sets the encoder bias to -mean(x) @ W_enc^T and b_dec to mean(y). `--skip` adds W_skip
[d, d], initialised to zero. The model is the LlamaModel without lm_head (AutoModel, as sparsify's CLI loads it
for loss_fn=fvu). By default it holds only layers 0..max(--layers), which matches glasswork's
capture(stop_early=True). `--full-model` keeps all 30 layers, which is what sparsify itself does. For --layers 0-29
the two are the same. Periodic saves are off unless `--save-every N` (then sparsify saves every N steps, to OUT/resume0 and OUT/resume1 in
turn), and the one save to OUT comes at the end.
- Resume (`--resume`, a run longer than a session): sparsify's own `Trainer.load_state` on the last periodic save,
  with two things mended so a resumed run equals an uninterrupted one bit for bit (checked on 4 layers, 20 steps,
  killed after step 3): its state.pt is written inside a step before the step is counted, so its resume would train
  that batch twice; and the weights it saves are schedule-free's averaged ones, which its resume loads as the
  training point (the wrapper moves them back with the optimizer's own train()). Seconds, steps and the data order go
  on from where they were; a budget in steps (`--max-steps`, what `quality.py --peer-tokens-per-minute` gives) makes
  the result independent of what else runs beside it.

It measures: trained tokens per second of training wall-clock (BOS excluded) for the whole sparsify loop (model
forward + all transcoders), steps, and each layer's FVU averaged over the last steps. This script must not import
glasswork: it runs in the sparsify venv.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path


def parse_layers(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def read_texts(path: Path) -> list[str]:
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
    return [p.strip() for p in raw.replace("\r\n", "\n").split("\n\n") if p.strip()]  # .txt: blank-line separated


def _lr(trainer) -> float | None:
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True, help="HF folder with config.json (LlamaForCausalLM)")
    ap.add_argument("--texts", required=True, help=".jsonl (one {'text': ...} per line) or .txt (blank-line separated)")
    ap.add_argument("--layers", default="0-29", help="e.g. 0-29 or 3,7")
    ap.add_argument("--num-latents", type=int, default=2304)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=600.0, help="training wall-clock budget")
    ap.add_argument("--out", required=True, help="checkpoint folder (sparsify format), created")
    ap.add_argument("--skip", action="store_true", help="transcoder skip connection W_skip")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    ap.add_argument("--optimizer", default="signum", choices=["signum", "adam", "muon"])
    ap.add_argument("--lr", type=float, default=None, help="default: sparsify's rule for the optimizer")
    ap.add_argument("--auxk-alpha", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0, help="sparsify init_seeds=[seed]; also reshuffles later epochs")
    ap.add_argument("--keep-bos", action="store_true", help="train on BOS positions too (sparsify's own default)")
    ap.add_argument("--no-cycle", action="store_true", help="stop when the corpus runs out instead of reusing it")
    ap.add_argument("--full-model", action="store_true",
                    help="run all model layers (sparsify's own behaviour) even after the last trained layer")
    ap.add_argument("--max-steps", type=int, default=0, help="also stop after this many steps (0: no limit)")
    ap.add_argument("--save-every", type=int, default=0,
                    help="sparsify's own periodic save to OUT every N steps (0: only at the end)")
    ap.add_argument("--resume", action="store_true",
                    help="go on from sparsify's last periodic save in OUT (its Trainer.load_state), if there is one")
    args = ap.parse_args()

    # Threads first: before torch is imported.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TQDM_MININTERVAL", "30")  # sparsify's progress bar: rarely, so logs stay readable

    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    from torch.utils.data import IterableDataset

    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"
    progress_path = out / "peer_progress.json"  # steps and training seconds at sparsify's last periodic save
    resuming = args.resume and progress_path.exists() and not (out / "peer_run.json").exists()
    if not resuming:
        log_path.write_text("")

    # ---- a stand-in for wandb: sparsify logs its metrics (fvu/<hook>, dead_pct/<hook>, k) only there
    clock = {"t0": None, "stop": None}
    last: dict[str, list[float]] = {}
    stub = types.ModuleType("wandb")

    def _init(**_kw):
        return None

    def _log(info: dict, step: int | None = None):
        el = state["train_s_before"] + (time.monotonic() - clock["t0"] if clock["t0"] else 0.0)
        rec = {"step": step, "elapsed_s": round(el, 3), **info}
        with log_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        for key, v in info.items():
            if key.startswith("fvu/"):
                last.setdefault(key[4:], []).append(float(v))
        if step is not None and (step < 3 or step % 25 == 0):
            fv = [v for key, v in info.items() if key.startswith("fvu/")]
            print(f"[peer_sparsify] step {step} t={el:.1f}s mean fvu {sum(fv) / max(len(fv), 1):.4f} "
                  f"(min {min(fv):.4f} max {max(fv):.4f})", flush=True)

    stub.init, stub.log = _init, _log

    t_import = time.monotonic()
    import sparsify
    from sparsify import SparseCoderConfig, TrainConfig, Trainer
    from transformers import AutoModel, AutoTokenizer
    import_s = time.monotonic() - t_import
    # only now: accelerate probes importlib.util.find_spec("wandb") at import, which a spec-less stub breaks;
    # sparsify's Trainer.fit() does `import wandb` itself and gets this module
    sys.modules["wandb"] = stub

    # ---- model (fp32, CPU) and tokens
    t_load = time.monotonic()
    model_dir = str(Path(args.model_dir).expanduser())
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    layers = parse_layers(args.layers)
    n_layers_full = model.config.num_hidden_layers
    if not args.full_model and max(layers) + 1 < n_layers_full:
        # like glasswork's capture(stop_early=True): no forward through layers after the last trained one
        keep = max(layers) + 1
        model.layers = torch.nn.ModuleList(list(model.layers)[:keep])
        model.config.num_hidden_layers = keep
        if isinstance(getattr(model.config, "layer_types", None), list):
            model.config.layer_types = model.config.layer_types[:keep]
    tok = AutoTokenizer.from_pretrained(model_dir)
    load_s = time.monotonic() - t_load

    t_tok = time.monotonic()
    texts = read_texts(Path(args.texts).expanduser())
    bos = tok.bos_token_id if tok.bos_token_id is not None else model.config.bos_token_id
    body = args.ctx_len - 1
    ids = [t for doc in tok(texts, add_special_tokens=False)["input_ids"] for t in doc]
    n_rows = len(ids) // body
    rows = torch.tensor(ids[:n_rows * body], dtype=torch.long).view(n_rows, body)
    rows = torch.cat([torch.full((n_rows, 1), bos, dtype=torch.long), rows], dim=1)
    tok_s = time.monotonic() - t_tok
    rows_per_epoch = n_rows - n_rows % args.batch_size
    if rows_per_epoch == 0:
        sys.exit(f"corpus has {n_rows} rows of {args.ctx_len} tokens: fewer than one batch of {args.batch_size}")
    print(f"[peer_sparsify] sparsify {sparsify.__version__}, torch {torch.__version__}, threads {args.threads}; "
          f"{len(texts)} texts -> {n_rows} rows x {args.ctx_len} tokens ({len(ids):,} tokens)", flush=True)

    state = {"steps": 0, "epochs": 0.0, "train_s_before": 0.0}

    class TimedRows(IterableDataset):
        """Rows of token ids, whole batches at a time, until the wall-clock budget (or the data) runs out.
        `skip_rows`: rows trained before a resume; the order is drawn again and they are passed over."""

        def __init__(self, skip_rows: int = 0):
            self.skip_rows = skip_rows

        def __len__(self):  # sparsify needs a Sized dataset; used for tqdm's total and adam's schedule length
            if args.max_steps:
                return args.max_steps * args.batch_size - self.skip_rows
            if args.no_cycle:
                return rows_per_epoch - self.skip_rows
            return 10 ** 7 * args.batch_size - self.skip_rows

        def select(self, indices):  # sparsify's resume asks for rows global_step * batch_size onwards
            return TimedRows(self.skip_rows + indices[0])

        def __iter__(self):
            epoch, g = 0, torch.Generator().manual_seed(args.seed)
            to_skip = self.skip_rows
            while True:
                order = torch.arange(n_rows) if epoch == 0 else torch.randperm(n_rows, generator=g)
                for start in range(0, rows_per_epoch, args.batch_size):
                    if to_skip > 0:  # trained before the resume
                        to_skip -= args.batch_size
                        continue
                    now = time.monotonic()
                    if clock["t0"] is None:
                        clock["t0"] = now
                    elif state["train_s_before"] + now - clock["t0"] >= args.seconds or (args.max_steps and state["steps"] >= args.max_steps):
                        clock["stop"] = now
                        return
                    state["steps"] += 1
                    state["epochs"] = epoch + (start + args.batch_size) / rows_per_epoch
                    for i in order[start:start + args.batch_size].tolist():
                        yield {"input_ids": rows[i]}
                epoch += 1
                if args.no_cycle:
                    clock["stop"] = time.monotonic()
                    return

    cfg = TrainConfig(
        SparseCoderConfig(num_latents=args.num_latents, k=args.k, transcode=True, skip_connection=args.skip),
        batch_size=args.batch_size,
        loss_fn="fvu",
        optimizer=args.optimizer,
        lr=args.lr,
        auxk_alpha=args.auxk_alpha,
        exclude_tokens=[] if args.keep_bos else [int(bos)],
        hookpoints=[f"layers.{l}.mlp" for l in layers],
        init_seeds=[args.seed],
        save_every=args.save_every or 10 ** 9,
        log_to_wandb=True,  # goes to the stand-in above
        wandb_log_frequency=1,
        save_dir=str(out.parent),
        run_name=out.name,
    )
    trainer = Trainer(cfg, TimedRows(), model)
    if resuming:
        progress = json.loads(progress_path.read_text())
        trainer.load_state(str(out / progress["folder"]))  # sparsify's own resume: weights, optimizer, step, counters
        # two things its own resume gets wrong, mended so a resumed run equals an uninterrupted one: state.pt is
        # written inside a step, before that step is counted (so the step would run twice), and the weights saved
        # are schedule-free's averaged ("eval") ones, loaded where it trains from its "train" point
        trainer.global_step = state["steps"] = progress["steps"]
        state["train_s_before"] = progress["train_s"]
        for optimizer in trainer.optimizers:
            if hasattr(optimizer, "train_mode"):  # schedule-free: move the loaded eval weights to the train point
                optimizer.train_mode = False
                optimizer.train()
    sparsify_save = trainer.save

    def save_with_progress():
        """sparsify's save. A periodic one goes to OUT/resume0 or OUT/resume1 in turn (sparsify writes in place, so a
        kill during a save spoils only the folder being written), then OUT/peer_progress.json names the folder and
        the steps and seconds it holds; the final save goes to OUT itself."""
        if clock["stop"] is not None or not args.save_every:
            sparsify_save()
            return
        folder = f"resume{(state['steps'] // args.save_every) % 2}"
        cfg.save_dir, cfg.run_name = str(out), folder
        try:
            sparsify_save()
        finally:
            cfg.save_dir, cfg.run_name = str(out.parent), out.name
        train_s = state["train_s_before"] + (time.monotonic() - clock["t0"] if clock["t0"] else 0.0)
        tmp = progress_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"folder": folder, "steps": state["steps"], "train_s": train_s}))
        os.replace(tmp, progress_path)

    trainer.save = save_with_progress
    trainer.fit()  # ends with sparsify's own save to OUT
    t_end = time.monotonic()
    if clock["stop"] is None:
        clock["stop"] = t_end
    train_s = state["train_s_before"] + clock["stop"] - clock["t0"]
    save_s = t_end - clock["stop"]

    steps = state["steps"]
    trained_per_step = args.batch_size * (args.ctx_len - (0 if args.keep_bos else 1))
    tokens = steps * trained_per_step
    tail = max(1, min(20, steps // 5))
    fvu_last = {h: sum(v[-tail:]) / len(v[-tail:]) for h, v in last.items()}
    summary = {
        "peer": "sparsify", "sparsify_version": sparsify.__version__, "torch": torch.__version__,
        "threads": args.threads, "device": "cpu", "dtype": "float32",
        "layers": layers, "model_layers_run": model.config.num_hidden_layers, "hookpoints": cfg.hookpoints, "num_latents": args.num_latents, "k": args.k,
        "skip": args.skip, "optimizer": args.optimizer, "lr": _lr(trainer),
        "auxk_alpha": args.auxk_alpha, "ctx_len": args.ctx_len, "batch_size_seqs": args.batch_size,
        "trained_tokens_per_step": trained_per_step, "bos_excluded": not args.keep_bos,
        "budget_s": args.seconds, "train_s": train_s, "steps": steps, "tokens": tokens,
        "tokens_per_s": tokens / train_s if train_s > 0 else 0.0, "epochs": state["epochs"],
        "corpus_rows": n_rows, "import_s": import_s, "load_s": load_s, "tokenize_s": tok_s, "save_s": save_s,
        "fvu_last": fvu_last, "fvu_last_steps": tail,  # per hookpoint: mean training FVU over the last steps
        "fvu_mean_over_layers": sum(fvu_last.values()) / max(len(fvu_last), 1),
        "checkpoint": str(out),
    }
    (out / "peer_run.json").write_text(json.dumps(summary, indent=1))
    print(f"[peer_sparsify] {steps} steps, {tokens:,} tokens in {train_s:.1f}s of training = "
          f"{summary['tokens_per_s']:.0f} tokens/s; mean FVU (last {tail} steps) "
          f"{summary['fvu_mean_over_layers']:.4f}; saved to {out}", flush=True)


if __name__ == "__main__":
    main()
