"""A feature page in the terminal (rich): statistics, label, logits, neighbours, and contexts with the firing tokens
highlighted (background brightness = activation / the feature's max)."""
from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .explain import window


def highlighted(ex: dict, peak: float, left: int = 16, right: int = 6) -> Text:
    toks, acts = window(ex, left, right)
    text = Text()
    for tok, a in zip(toks, acts):
        tok = tok.replace("\n", "⏎")
        if a > 0:
            level = int(40 + 215 * min(a / (peak or 1.0), 1.0))
            text.append(tok, style=f"bold black on rgb({level},{int(level * 0.75)},0)")
        else:
            text.append(tok)
    return text


def spark(hist: list[int]) -> str:
    bars = " ▁▂▃▄▅▆▇█"
    top = max(hist) or 1
    nz = [i for i, h in enumerate(hist) if h]
    if not nz:
        return "(never fires)"
    return "".join(bars[min(8, round(8 * h / top))] for h in hist[nz[0]:nz[-1] + 1])


def page(rec: dict, meta: dict, n_top: int = 8, per_quantile: int = 2) -> Group:
    f = rec["feature"]
    head = Text.assemble((f"feature {f}", "bold"), f"   {meta['model']} · {meta['hook']} · {meta['kind']} "
                         f"d_sae {meta['d_sae']}")
    stats = Text(f"fires on {rec['freq']:.3%} of tokens ({rec['n_fired']:,} of {meta['n_tokens']:,}) · max "
                 f"{rec['max_act']:.3g} · mean when firing {rec['mean_act']:.3g}\nactivation histogram (log bins): "
                 f"{spark(rec['hist'])}")
    parts = [head, stats]
    for lab in rec.get("labels", []):
        line = Text.assemble(("label ", "bold"), (f"[{lab['explainer']}] ", "dim"),
                             lab["label"] or f"(failed: {lab['error']})")
        num = lambda key: "n/a" if lab.get(key) is None else f"{lab[key]:.2f}"  # noqa: E731 (NaN is stored as NULL)
        if lab.get("detection") is not None:
            line.append(f"   detection {num('detection')} vs random {num('detection_baseline')}, fuzzing "
                        f"{num('fuzzing')} vs {num('fuzzing_baseline')}", style="dim")
        parts.append(line)
    side = Table.grid(padding=(0, 3))
    for _ in range(4):
        side.add_column()
    rows = max(len(rec["top_logits"]), len(rec["neighbors"]), len(rec["cofiring"]), len(rec["top_tokens"]), 0)
    side.add_row(Text("promotes", "bold green"), Text("suppresses", "bold red"), Text("fires on tokens", "bold"),
                 Text("similar · co-firing", "bold"))
    for i in range(min(rows, 8)):
        cell = lambda xs, fmt: fmt(xs[i]) if i < len(xs) else ""  # noqa: E731
        side.add_row(cell(rec["top_logits"], lambda x: f"{x[1]!r} {x[2]:+.2f}"),
                     cell(rec["bottom_logits"], lambda x: f"{x[1]!r} {x[2]:+.2f}"),
                     cell(rec["top_tokens"], lambda x: f"{x[1]!r} ×{x[2]}"),
                     (cell(rec["neighbors"], lambda x: f"#{x[0]} cos {x[1]:.2f}") + "  " +
                      cell(rec["cofiring"], lambda x: f"#{x[0]} {x[2]:.0%}")))
    parts.append(side)
    peak = rec["max_act"]
    tops = Table(show_header=True, header_style="bold", box=None, expand=True)
    tops.add_column("act", justify="right", width=8)
    tops.add_column("top contexts")
    for ex in rec.get("top", [])[:n_top]:
        tops.add_row(f"{ex['act']:.3g}", highlighted(ex, peak))
    parts.append(tops)
    quant = rec.get("quantile", [])
    if quant:
        qt = Table(show_header=True, header_style="bold", box=None, expand=True)
        qt.add_column("interval", width=8)
        qt.add_column("act", justify="right", width=8)
        qt.add_column("sampled contexts")
        for q in sorted({e["quantile"] for e in quant}, reverse=True):
            for ex in [e for e in quant if e["quantile"] == q][:per_quantile]:
                qt.add_row(f"q{q + 1}/{meta['n_quantiles']}", f"{ex['act']:.3g}", highlighted(ex, peak))
        parts.append(qt)
    return Group(*parts)


def show(rec: dict, meta: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(Panel(page(rec, meta), expand=True))


def fires_table(rows: list[dict]) -> Table:
    t = Table(show_header=True, header_style="bold", box=None)
    t.add_column("pos", justify="right")
    t.add_column("token")
    t.add_column("top features (activation: label)")
    for r in rows:
        feats = "  ".join(f"#{x['feature']} {x['act']:.2f}" + (f": {x['label']}" if x["label"] else "")
                          for x in r["features"])
        t.add_row(str(r["pos"]), repr(r["token"]), feats)
    return t
