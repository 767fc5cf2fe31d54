// A feature page from /api/features/{id}: label and score, statistics, histogram, logits, neighbours, contexts.
import { el, fmt, visible } from "./common.js";

export function renderFeature(rec, { onFeature, compact = false } = {}) {
  const peak = rec.max_act || 1;
  const labels = rec.labels || [];
  const head = el("div", {},
    el("h2", {}, `Feature ${rec.feature}`),
    labels.length ? labels.map((l) => el("div", {}, el("b", {}, l.label || `(explainer failed: ${l.error})`),
      el("span", { class: "muted small" }, ` · ${l.explainer}` +
        (l.detection != null ? ` · detection ${fmt(l.detection, 2)} (random ${fmt(l.detection_baseline, 2)})` : "") +
        (l.fuzzing != null ? ` · fuzzing ${fmt(l.fuzzing, 2)} (random ${fmt(l.fuzzing_baseline, 2)})` : ""))))
      : el("div", { class: "muted" }, "no label yet (glasswork features label)"),
    el("div", { class: "muted small" },
      `fires on ${(100 * rec.freq).toFixed(3)}% of tokens (${rec.n_fired}) · max ${fmt(rec.max_act)} · ` +
      `mean when firing ${fmt(rec.mean_act)}` + (rec.meta ? ` · ${rec.meta.hook || ""}` : "")));
  const logits = (xs, cls) => el("table", { class: "list" }, xs.slice(0, 8).map(([, s, v]) =>
    el("tr", {}, el("td", {}, el("code", { class: "tok" }, s.replace(/\n/g, "⏎"))), el("td", { class: cls, style: "text-align:right" }, v.toFixed(2)))));
  const neighbours = el("table", { class: "list" }, (rec.neighbors || []).slice(0, 8).map(([f, c]) =>
    el("tr", { class: "link", onclick: () => onFeature && onFeature(f) }, el("td", {}, `#${f}`),
      el("td", { style: "text-align:right" }, `cos ${c.toFixed(2)}`))));
  const side = el("div", { class: compact ? "" : "grid3" },
    el("div", {}, el("h3", {}, "Activation histogram"), histogram(rec.hist || [], rec.meta && rec.meta.hist_edges)),
    el("div", {}, el("h3", {}, "Promotes"), logits(rec.top_logits || [], "w-pos"),
      el("h3", {}, "Suppresses"), logits(rec.bottom_logits || [], "w-neg")),
    el("div", {}, el("h3", {}, "Nearest features (decoder)"), neighbours,
      el("h3", {}, "Fires on tokens"), el("div", {}, (rec.top_tokens || []).slice(0, 10).map(([, s, n]) =>
        el("span", { class: "chip" }, `${visible(s)} ×${n}`)))));
  if (compact) {  // a graph node's panel: the label, a few top contexts, what it promotes and suppresses
    const chips = (xs, cls) => xs.slice(0, 6).map(([, s, v]) => el("span", { class: `chip ${cls}`, title: v.toFixed(3) }, visible(s)));
    const few = (rec.top || []).slice(0, 4);
    return el("div", { class: "feature-page compact" }, head,
      el("h3", {}, "Top activating contexts"),
      few.length ? few.map((ex) => context(ex, peak, 16, 6)) : el("div", { class: "muted" }, "never fired on the indexed text"),
      el("div", { class: "small" }, el("b", {}, "Promotes "), chips(rec.top_logits || [], "w-pos")),
      el("div", { class: "small" }, el("b", {}, "Suppresses "), chips(rec.bottom_logits || [], "w-neg")));
  }
  const top = (rec.top || []).slice(0, 12);
  const contexts = el("div", {}, el("h3", {}, "Top activating contexts"),
    top.length ? top.map((ex) => context(ex, peak)) : el("div", { class: "muted" }, "never fired on the indexed text"));
  const parts = [head, side, globalNeighbours(rec.global), contexts];
  const quant = rec.quantile || [];
  if (!compact && quant.length) {
    parts.push(el("h3", {}, "Samples across activation levels"), quant.slice(0, 8).map((ex) => context(ex, peak)));
  }
  return el("div", { class: "feature-page" }, ...parts);
}

// Its top upstream and downstream features over a whole prompt set (`glasswork global`).
function globalNeighbours(g) {
  if (!g) return "";
  const rows = (xs) => el("table", { class: "list" }, xs.map((x) => el("tr", {},
    el("td", {}, `L${x.layer} #${x.feature}`, el("div", { class: "muted small" }, x.label || "")),
    el("td", { class: x.mean >= 0 ? "w-pos" : "w-neg", style: "text-align:right" }, fmt(x.mean)),
    el("td", { class: "muted small", style: "text-align:right" }, `×${x.n}`))));
  return el("div", { id: "global", class: "grid3" },
    el("div", {}, el("h3", {}, `Strongest inputs across ${g.n_prompts} prompts`), g.upstream.length ? rows(g.upstream) : el("div", { class: "muted small" }, "none")),
    el("div", {}, el("h3", {}, `Strongest outputs across ${g.n_prompts} prompts`), g.downstream.length ? rows(g.downstream) : el("div", { class: "muted small" }, "none")),
    el("div", { class: "muted small" }, "mean edge when both fire on a prompt (×: how often), from glasswork global"));
}

export function context(ex, peak, left = 24, right = 8) {
  const lo = Math.max(0, ex.pos - left), hi = Math.min(ex.tokens.length, ex.pos + right + 1);
  const spans = [];
  for (let i = lo; i < hi; i++) {
    const a = ex.acts[i] || 0;
    const s = el("span", { class: "t", title: `${JSON.stringify(ex.tokens[i])}: ${a.toFixed(3)}` }, visible(ex.tokens[i]));
    if (a > 0) {
      const level = Math.min(1, a / peak);
      s.style.background = `rgba(240, 140, 0, ${0.15 + 0.75 * level})`;
      if (i === ex.pos) s.style.outline = "1px solid #b35c00";
    }
    spans.push(s);
  }
  return el("div", { class: "ctx" }, el("span", { class: "act" }, fmt(ex.act)), ...spans);
}

export function histogram(counts, edges, w = 300, h = 90) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h + 16);
  const nz = counts.map((c, i) => (c ? i : -1)).filter((i) => i >= 0);
  if (!nz.length) { svg.innerHTML = `<text x="4" y="20" fill="#68707a">never fires</text>`; return svg; }
  const lo = nz[0], hi = nz[nz.length - 1], n = hi - lo + 1, top = Math.max(...counts);
  const bw = w / n;
  for (let i = lo; i <= hi; i++) {
    const bh = (h - 2) * Math.sqrt(counts[i] / top);  // sqrt: rare high activations stay visible
    const r = document.createElementNS(NS, "rect");
    r.setAttribute("x", (i - lo) * bw + 0.5); r.setAttribute("y", h - bh); r.setAttribute("width", Math.max(1, bw - 1));
    r.setAttribute("height", bh); r.setAttribute("fill", "#f08c00");
    const t = document.createElementNS(NS, "title");
    t.textContent = edges ? `${fmt(edges[i])}–${fmt(edges[i + 1])}: ${counts[i]}` : `${counts[i]}`;
    r.append(t); svg.append(r);
  }
  if (edges) {
    svg.insertAdjacentHTML("beforeend", `<text x="0" y="${h + 13}" font-size="11" fill="#68707a">${fmt(edges[lo], 2)}</text>` +
      `<text x="${w}" y="${h + 13}" font-size="11" fill="#68707a" text-anchor="end">${fmt(edges[hi + 1], 2)}</text>`);
  }
  return svg;
}
