// The attribution-graph viewer: asks the server for pruned views (at most `budget` features and errors, the most
// influential), draws nodes (SVG, labelled when few) by layer (rows) and token position (columns) over edges (canvas)
// coloured by sign and sized by |weight|; click, pin, group, name, search, save; suggested supernodes; a subgraph
// pane of pinned nodes and supernodes; interventions on the real model beside the graph.
import { api, el, fmt, nav, param, showError, visible } from "./common.js";
import { renderFeature } from "./feature.js";

nav("/graph");
const NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const S = { name: null, view: null, pos: new Map(), clicked: null, pinned: new Set(), supernodes: [], names: {},
            tx: 0, ty: 0, k: 1, w: 0, h: 0, hits: new Set(), hitAt: -1, suggestions: [] };
const ROW = 64, PAD = 40, NODE_GAP = 13, LABEL_GAP = 76, LOGIT_GAP = 92, MIN_COL = 70, LABEL_MAX_NODES = 160;
const isFeature = (n) => !["embedding", "logit", "mlp reconstruction error"].includes(n.feature_type);

// ---------------------------------------------------------------- data
async function loadList(select) {
  const { graphs } = await api("/api/graphs");
  $("graph-select").replaceChildren(...graphs.map((g) => el("option", { value: g.name }, g.name)));
  const want = select || param("name") || (graphs[0] && graphs[0].name);
  if (want) { $("graph-select").value = want; await loadView(want); }
  else $("message").replaceChildren(el("div", { class: "card muted" }, "No graphs yet: trace a prompt above or open a JSON file."));
}

async function loadView(name) {
  const nt = $("node-threshold").value, et = $("edge-threshold").value, budget = Math.max(0, Number($("budget").value) || 0);
  const ticket = (S.ticket = (S.ticket || 0) + 1);
  $("counts").textContent = "loading view…";
  try {
    const v = await api(`/api/graphs/${encodeURIComponent(name)}/view?node_threshold=${nt}&edge_threshold=${et}&budget=${budget}`);
    if (ticket !== S.ticket) return;  // a later slider position already asked: drop this answer
    if (name !== S.name) { S.clicked = null; S.tx = S.ty = 0; S.k = 1; S.suggestions = []; }
    if (name !== S.name || !S.qk) S.qk = await api(`/api/graphs/${encodeURIComponent(name)}/extras`).catch(() => null);
    if (ticket !== S.ticket) return;
    S.name = name; S.view = v;
    S.pinned = new Set(v.qParams.pinnedIds || []);
    S.supernodes = (v.qParams.supernodes || []).map((s) => [...s]);
    S.names = v.names || {};
    history.replaceState(null, "", `/graph?name=${encodeURIComponent(name)}`);
    $("message").replaceChildren();
    layout(); draw(); search();
    const info = v.metadata.info || {};
    const nf = v.nodes.filter(isFeature).length, ne = v.nodes.filter((n) => n.feature_type === "mlp reconstruction error").length;
    $("counts").textContent = `${nf} features, ${ne} errors, ${v.links.length} links shown` +
      (info.n_nodes_total ? ` of ${info.n_nodes_total} nodes` : "") +
      (info.influence_kept != null ? ` · the view keeps ${(100 * info.influence_kept).toFixed(0)}% of the influence on the targets` : "") +
      (info.links_before_cap > v.links.length ? ` (links capped from ${info.links_before_cap})` : "");
    if (!$("subgraph").hidden) drawSubgraph();
    if (S.clicked && S.pos.has(S.clicked)) select(S.clicked); else if (!S.clicked) sideSummary();
  } catch (e) { showError($("message"), e); }
}

async function saveState() {
  const body = { pinnedIds: [...S.pinned], supernodes: S.supernodes, names: S.names, clickedId: S.clicked || "" };
  try {
    await api(`/api/graphs/${encodeURIComponent(S.name)}/state`, { method: "PUT", body }); flash("saved");
    if (!$("subgraph").hidden) drawSubgraph();
  }
  catch (e) { showError($("message"), e); }
}

function flash(text) {
  let m = $("saved-flash");
  if (!m) { m = el("span", { class: "muted small", id: "saved-flash" }); $("counts").after(m); }
  m.textContent = ` · ${text}`;
  clearTimeout(flash.timer); flash.timer = setTimeout(() => { m.textContent = ""; }, 1500);
}

// ---------------------------------------------------------------- layout: rows = layers, columns = positions
function rowOf(n) {
  if (n.feature_type === "embedding" || n.layer === "E") return -1;
  return Number(n.layer);
}

function visibleNodes() {
  const v = S.view;
  if (!$("pinned-only").checked || !S.pinned.size) return v.nodes;
  return v.nodes.filter((n) => S.pinned.has(n.node_id));
}

function gapOf(n, labelled) {
  if (n.feature_type === "logit") return LOGIT_GAP;  // logit labels are horizontal: one label's width apart
  return labelled ? LABEL_GAP : NODE_GAP;
}

function layout() {
  const nodes = visibleNodes();
  S.labelled = nodes.length <= LABEL_MAX_NODES;
  const rows = [...new Set(nodes.map(rowOf))].sort((a, b) => a - b);
  const rowIndex = new Map(rows.map((r, i) => [r, i]));
  const cells = new Map();
  for (const n of nodes) {
    const key = `${rowOf(n)}|${n.ctx_idx}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(n);
  }
  const nPos = Math.max(1, ...nodes.map((n) => n.ctx_idx + 1), (S.view.metadata.prompt_tokens || []).length);
  const need = new Array(nPos).fill(0);
  for (const [key, list] of cells) {
    const p = Number(key.split("|")[1]);
    const gap = gapOf(list[0], S.labelled);
    need[p] = Math.max(need[p], Math.min(list.length, gap > NODE_GAP ? 6 : 24) * gap + 16);
    list.sort((a, b) => (a.influence ?? 1) - (b.influence ?? 1));
  }
  const box = $("canvas").getBoundingClientRect();
  let colW = need.map((w) => Math.max(MIN_COL, w));
  const spare = (box.width - 2 * PAD) / colW.reduce((a, b) => a + b, 0);
  colW = colW.map((w) => w * spare);  // the graph fits the width: wide cells squeeze their slots (labels cut shorter)
  const squeeze = Math.min(1, spare);
  S.rowH = Math.max(12, Math.min(ROW, (box.height - 2 * PAD - 70) / Math.max(1, rows.length)));
  const colX = []; let x = PAD;
  for (const w of colW) { colX.push(x); x += w; }
  S.colX = colX; S.colW = colW; S.rows = rows;
  S.w = x + PAD; S.h = rows.length * S.rowH + 2 * PAD + 70;
  S.pos = new Map();
  for (const [key, list] of cells) {
    const [r, p] = key.split("|").map(Number);
    const y = S.h - PAD - 20 - rowIndex.get(r) * S.rowH - S.rowH / 2;  // logits on top, embeddings at the bottom
    const gap = Math.max(NODE_GAP, gapOf(list[0], S.labelled) * squeeze);
    const perLine = Math.max(1, Math.floor((colW[p] - 16) / gap));
    const lineH = Math.min(9, S.rowH / 3);
    list.forEach((n, i) => {
      const line = Math.floor(i / perLine), j = i % perLine;
      const inLine = Math.min(perLine, list.length - line * perLine);
      let cx = colX[p] + colW[p] / 2 + (j - (inLine - 1) / 2 + (line % 2) / 2) * gap;  // odd lines half a slot over
      if (S.labelled && isFeature(n)) cx -= gap / 2 - 8;  // the label is drawn to the node's right, in its slot
      // logits stack upwards a label's height apart (their labels never meet); others alternate below and above
      const dy = n.feature_type === "logit" ? -line * 18 : ((line + 1) >> 1) * lineH * (line % 2 ? 1 : -1);
      S.pos.set(n.node_id, { x: cx, y: y + dy, n, gap });
    });
  }
  fit();
}

function fit() {
  const box = $("canvas").getBoundingClientRect();
  const k = Math.min(box.width / S.w, box.height / S.h, 2.5);
  S.k = k; S.tx = (box.width - S.w * k) / 2; S.ty = (box.height - S.h * k) / 2;
}

// ---------------------------------------------------------------- drawing
function nodeColor(n) {
  if (n.feature_type === "embedding") return "#8a94a6";
  if (n.feature_type === "logit") return "#2b8a3e";
  if (n.feature_type === "mlp reconstruction error") return "#c5cad3";
  return "#5b7fd6";
}

function superOf(id) { return S.supernodes.findIndex((s) => s.slice(1).includes(id)); }
const SUPER_COLORS = ["#e8590c", "#9c36b5", "#0b7285", "#c2255c", "#5c940d", "#1864ab"];

function draw() {
  const svg = $("nodes"), canvas = $("edges");
  const box = $("canvas").getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  canvas.width = box.width * dpr; canvas.height = box.height * dpr;
  canvas.style.width = `${box.width}px`; canvas.style.height = `${box.height}px`;
  svg.setAttribute("width", box.width); svg.setAttribute("height", box.height);
  svg.style.position = canvas.style.position = "absolute"; svg.style.left = canvas.style.left = "0";
  svg.style.top = canvas.style.top = "0";
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr * S.k, 0, 0, dpr * S.k, dpr * S.tx, dpr * S.ty);
  ctx.clearRect(-S.tx / S.k, -S.ty / S.k, box.width / S.k, box.height / S.k);
  // row guides and labels, token labels
  const g = document.createElementNS(NS, "g");
  g.setAttribute("transform", `translate(${S.tx},${S.ty}) scale(${S.k})`);
  svg.replaceChildren(g);  // in the page from the start: labels are measured as they are placed
  const rowY = (i) => S.h - PAD - 20 - i * S.rowH - S.rowH / 2;
  S.rows.forEach((r, i) => {
    ctx.strokeStyle = "#eef0f3"; ctx.lineWidth = 1 / S.k;
    ctx.beginPath(); ctx.moveTo(PAD, rowY(i)); ctx.lineTo(S.w - PAD, rowY(i)); ctx.stroke();
    const label = r < 0 ? "Emb" : (S.view.nodes.some((n) => rowOf(n) === r && n.feature_type === "logit") ? "Logit" : `L${r}`);
    g.insertAdjacentHTML("beforeend", `<text x="${PAD - 8}" y="${rowY(i) + 4}" font-size="11" fill="#68707a" text-anchor="end">${label}</text>`);
  });
  (S.view.metadata.prompt_tokens || []).forEach((t, p) => {
    if (p >= S.colX.length) return;
    const tx = document.createElementNS(NS, "text");
    tx.setAttribute("x", S.colX[p] + S.colW[p] / 2); tx.setAttribute("y", S.h - PAD + 6);
    tx.setAttribute("font-size", "12"); tx.setAttribute("text-anchor", "middle"); tx.setAttribute("fill", "#1d232b");
    tx.textContent = visible(t).slice(0, 14);
    g.append(tx);
  });
  for (const [, { x, y, n, gap }] of S.pos) {  // logit labels: horizontal, cut to their slot: they never overlap
    if (n.feature_type !== "logit") continue;
    const m = /"([\s\S]*)"/.exec(n.clerp || "");  // a token may be a newline
    const tx = document.createElementNS(NS, "text");
    tx.setAttribute("x", x); tx.setAttribute("y", y - 11); tx.setAttribute("class", "logit-label");
    tx.setAttribute("font-size", "10.5"); tx.setAttribute("fill", "#2b8a3e"); tx.setAttribute("text-anchor", "middle");
    g.append(tx);
    fitText(tx, visible(m ? m[1] : n.node_id), gap - 8);
  }
  // edges: sign -> colour, |weight| -> width and opacity; the clicked node's edges drawn on top
  const links = S.view.links.filter((l) => S.pos.has(l.source) && S.pos.has(l.target));
  const maxW = Math.max(1e-12, ...links.map((l) => Math.abs(l.weight)));
  const focus = S.clicked;
  const drawLink = (l, strong) => {
    const a = S.pos.get(l.source), b = S.pos.get(l.target);
    const m = Math.abs(l.weight) / maxW;
    ctx.strokeStyle = l.weight >= 0 ? "#2f6fde" : "#d9480f";
    ctx.globalAlpha = strong ? Math.min(1, 0.35 + m) : (focus ? 0.04 : Math.min(0.7, 0.06 + 0.8 * m));
    ctx.lineWidth = (strong ? 1.2 : 0.6) + 4 * m;
    ctx.beginPath(); ctx.moveTo(a.x, a.y);
    ctx.bezierCurveTo(a.x, (a.y + b.y) / 2, b.x, (a.y + b.y) / 2, b.x, b.y); ctx.stroke();
  };
  for (const l of links) if (!focus || (l.source !== focus && l.target !== focus)) drawLink(l, false);
  if (focus) for (const l of links) if (l.source === focus || l.target === focus) drawLink(l, true);
  ctx.globalAlpha = 1;
  // nodes
  for (const [id, { x, y, n }] of S.pos) {
    const pinned = S.pinned.has(id), sup = superOf(id);
    let shape;
    if (n.feature_type === "mlp reconstruction error") {
      shape = document.createElementNS(NS, "rect");
      shape.setAttribute("x", x - 4.5); shape.setAttribute("y", y - 4.5); shape.setAttribute("width", 9); shape.setAttribute("height", 9);
    } else {
      shape = document.createElementNS(NS, "circle");
      shape.setAttribute("cx", x); shape.setAttribute("cy", y);
      shape.setAttribute("r", n.feature_type === "logit" || n.feature_type === "embedding" ? 6.5 : 5);
    }
    shape.setAttribute("fill", nodeColor(n));
    shape.setAttribute("class", "node");
    shape.setAttribute("data-id", id);
    if (sup >= 0) { shape.setAttribute("stroke", SUPER_COLORS[sup % SUPER_COLORS.length]); shape.setAttribute("stroke-width", 3); }
    if (pinned) { shape.setAttribute("stroke", "#f0a202"); shape.setAttribute("stroke-width", 3); }
    if (id === focus) { shape.setAttribute("stroke", "#111"); shape.setAttribute("stroke-width", 3); }
    shape.addEventListener("click", (e) => { e.stopPropagation(); select(id); });
    shape.addEventListener("mouseenter", () => tip(n, x, y));
    shape.addEventListener("mouseleave", () => { $("tip").style.display = "none"; });
    if (S.hits.size) shape.classList.add(S.hits.has(id) ? "hit" : "dim");
    g.append(shape);
  }
  if (S.labelled) {  // features drawn with their labels (after the SVG is in the page, so text can be measured)
    for (const [id, { x, y, n, gap }] of S.pos) {
      if (!isFeature(n)) continue;
      const tx = document.createElementNS(NS, "text");
      tx.setAttribute("x", x + 7); tx.setAttribute("y", y + 3.5); tx.setAttribute("class", "node-label");
      tx.setAttribute("font-size", "9.5"); tx.setAttribute("fill", "#3b4a63");
      tx.setAttribute("data-for", id);
      g.append(tx);
      fitText(tx, shortLabel(label(n)), gap - 12);
    }
  }
}

// 'fires on " Paris", " France" (after ...); promotes ...' -> 'Paris, France': what a node label can hold
function shortLabel(text) {
  const m = /^fires on (.*?)(?: \(after|;|$)/.exec(text || "");
  if (!m) return text || "";
  const toks = [...m[1].matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((x) => x[1].trim()).filter(Boolean);
  return toks.length ? [...new Set(toks)].slice(0, 2).join(", ") : text;
}

function fitText(node, text, width) {
  node.textContent = text;
  if (node.getComputedTextLength() <= width) return;
  let lo = 0, hi = text.length;
  while (lo < hi) {  // the longest prefix (with an ellipsis) that fits
    const mid = Math.ceil((lo + hi) / 2);
    node.textContent = text.slice(0, mid) + "…";
    if (node.getComputedTextLength() <= width) lo = mid; else hi = mid - 1;
  }
  node.textContent = lo ? text.slice(0, lo) + "…" : "";
}

function label(n) {
  return S.names[n.node_id] || n.clerp || (n.feature_type === "mlp reconstruction error" ? `error L${n.layer} @${n.ctx_idx}` : `feature ${n.node_id}`);
}

function tip(n, x, y) {
  const t = $("tip");
  t.textContent = `${label(n)} · ${n.node_id}` + (n.activation != null ? ` · act ${fmt(n.activation)}` : "") +
    (n.influence != null ? ` · cum. influence ${fmt(n.influence, 2)}` : "");
  t.style.display = "block";
  t.style.left = `${x * S.k + S.tx + 10}px`; t.style.top = `${y * S.k + S.ty - 30}px`;
}

// ---------------------------------------------------------------- side panel
function sideSummary() {
  const m = S.view.metadata, sc = m.scores || {};
  $("side").replaceChildren(el("h2", {}, m.prompt ? `“${m.prompt}”` : S.name),
    el("div", { class: "muted small" }, `${m.scan || ""}` + (sc.replacement != null ? ` · replacement ${fmt(sc.replacement)} · completeness ${fmt(sc.completeness)}` : "")),
    faithfulnessLine((m.info || {}).faithfulness),
    el("div", { id: "intervention" }), qkPanel(), inactivePanel(), supernodePanel());
}

// ---------------------------------------------------------------- what the graph does not show
function inactivePanel() {
  const x = S.qk || {};
  if (!x.inactive && !x.inhibitory) return "";
  const name = (id) => x.labels[id] || id;
  const chip = (id) => el("span", { class: "chip", title: `${id}: ${name(id)}`, onclick: () => S.pos.has(id) ? select(id) : flash("not in this pruned view") },
    shortLabel(name(id)), /^\d+_\d+_\d+$/.test(id) ? el("span", { class: "muted small" }, ` ${id}`) : "");
  const box = el("div", { id: "inactive" });
  if (x.inactive) {
    box.append(el("h3", {}, "Off, but would move the target"),
      el("div", { class: "muted small" }, `features that did not fire, set to their typical activation (${x.inactive.typical}): predicted change of “${visible(x.inactive.target)}”` +
        (x.inactive.features.some((f) => f.real != null) ? "; the first checked on the real model" : "")),
      el("table", { class: "list" }, x.inactive.features.map((f) => el("tr", {}, el("td", {}, chip(f.node)),
        el("td", { class: f.predicted >= 0 ? "w-pos" : "w-neg", style: "text-align:right" }, fmt(f.predicted)),
        el("td", { class: "muted small", style: "text-align:right" }, f.real != null ? `real ${fmt(f.real)}` : "")))));
  }
  for (const t of (x.inhibitory || []).slice(0, 3)) {
    box.append(el("h3", {}, `Inhibits “${visible(t.target)}”`),
      el("div", { class: "muted small" }, `negative total effect ${fmt(t.negative_total)} (positive ${fmt(t.positive_total)}); features ${Math.round(100 * t.shares.features)}%, errors ${Math.round(100 * t.shares.errors)}%, tokens ${Math.round(100 * t.shares.tokens)}%`),
      el("div", {}, t.nodes.slice(0, 6).flatMap((n) => [chip(n.node), el("span", { class: "w-neg small" }, ` ${fmt(n.effect, 2)} `)])));
  }
  return box;
}

// Does the graph predict the real model? Its top features ablated there vs. their total effect in the graph.
function faithfulnessLine(f) {
  if (!f || f.spearman == null) return "";
  return el("div", { id: "faithfulness", class: "small", title: "each of the most influential features set to 0 in the real model (everything downstream free) vs. minus its total effect in the graph" },
    `faithfulness (${f.n_features} features ablated in the real model): rank correlation ${fmt(f.spearman, 2)} · same sign ${Math.round(100 * f.same_sign)}% · real / graph: mean ratio ${fmt(f.mean_ratio, 2)}, slope ${fmt(f.slope, 2)}`);
}

// ---------------------------------------------------------------- attention (QK): which nodes made a head look where
function qkPanel() {
  const q = S.qk && S.qk.qk;
  if (!q) return el("div", { id: "qk", class: "muted small" }, "No attention (QK) split in this graph (glasswork attribute --qk 4).");
  const tok = (p) => `“${visible((S.qk.tokens || [])[p] ?? p)}”`;
  const box = el("div", { id: "qk" }, el("h3", {}, "Attention (QK)"),
    el("div", { class: "muted small" }, `heads by effect on “${visible(q.target)}” at ${tok(q.query_pos)}; click one to see which query × key nodes made its scores`));
  box.append(...q.heads.map((h, i) => el("div", { class: "qk-head link", "data-i": i, onclick: () => qkHead(h) },
    el("b", {}, `L${h.layer} H${h.head}`), ` effect ${fmt(h.effect)} · attends to `,
    h.keys.map((k) => `${tok(k.key_pos)} ${fmt(k.pattern, 2)}`).join(", "))));
  return box;
}

function qkHead(h) {
  const box = $("qk");
  if (!box) return;
  const name = (id) => S.qk.labels[id] || id;
  const chip = (id) => el("span", { class: "chip", title: `${id}: ${name(id)}`, onclick: () => S.pos.has(id) ? select(id) : flash("not in this pruned view") },
    shortLabel(name(id)), /^\d+_\d+_\d+$/.test(id) ? el("span", { class: "muted small" }, ` ${id}`) : "");
  const tok = (p) => `“${visible((S.qk.tokens || [])[p] ?? p)}”`;
  box.replaceChildren(el("h3", {}, `Attention (QK): layer ${h.layer} head ${h.head}`, " ",
    el("button", { class: "ghost small", onclick: () => box.replaceWith(qkPanel()) }, "back")),
    el("div", { class: "muted small" }, `query ${tok(S.qk.qk.query_pos)} (kv head ${h.kv_head}); each score is the sum of its (query node × key node) terms`),
    ...h.keys.map((k) => el("div", { class: "qk-key" },
      el("div", {}, el("b", {}, `→ ${tok(k.key_pos)}`), ` weight ${fmt(k.pattern, 2)} · score ${fmt(k.score)}` + (k.softcap ? ` (before the soft-cap ${k.softcap})` : "")),
      el("table", { class: "list qk-pairs" }, k.pairs.map((x) => el("tr", {}, el("td", {}, chip(x.query)), el("td", {}, "×"), el("td", {}, chip(x.key)),
        el("td", { class: x.score >= 0 ? "w-pos" : "w-neg", style: "text-align:right" }, fmt(x.score))))),
      el("div", { class: "muted small" }, "query side: ", k.query_nodes.slice(0, 5).flatMap((x) => [chip(x.node), ` ${fmt(x.score, 2)} `])),
      el("div", { class: "muted small" }, "key side: ", k.key_nodes.slice(0, 5).flatMap((x) => [chip(x.node), ` ${fmt(x.score, 2)} `])))));
}

function supernodePanel() {
  const box = el("div", { id: "supernodes" });
  box.append(el("h3", {}, `Pinned (${S.pinned.size})`),
    el("div", {}, [...S.pinned].map((id) => el("span", { class: "chip", onclick: () => select(id) }, S.names[id] || id))));
  const nameIn = el("input", { id: "supernode-name", type: "text", placeholder: "supernode name", size: 16 });
  box.append(el("div", { class: "row" }, nameIn, el("button", { id: "make-supernode", onclick: () => {
    if (!S.pinned.size) return flash("pin nodes first");
    const name = nameIn.value.trim() || `group ${S.supernodes.length + 1}`;
    S.supernodes.push([name, ...S.pinned]); saveState(); draw(); refreshSide();
  } }, "Group pinned"), S.pinned.size ? el("button", { class: "ghost", id: "intervene-pinned", onclick: () =>
    intervenePanel([...S.pinned].filter((id) => isFeature(nodeOf(id) || {})), `${S.pinned.size} pinned`) }, "Intervene…") : ""));
  box.append(el("h3", {}, `Supernodes (${S.supernodes.length})`), ...S.supernodes.map((s, i) =>
    el("div", { class: "supernode" }, el("b", { style: `color:${SUPER_COLORS[i % SUPER_COLORS.length]}` }, s[0]), " ",
      s.slice(1).map((id) => el("span", { class: "chip", onclick: () => select(id) }, S.names[id] || id)),
      el("button", { class: "ghost small", onclick: () => intervenePanel(s.slice(1), s[0]) }, "intervene"),
      el("button", { class: "ghost small", onclick: () => { S.supernodes.splice(i, 1); saveState(); draw(); refreshSide(); } }, "ungroup"))));
  if (S.suggestions.length) {
    box.append(el("h3", {}, `Suggested (${S.suggestions.length})`), ...S.suggestions.map((sg, i) => {
      const input = el("input", { type: "text", value: sg.name, class: "sugg-name" });
      return el("div", { class: "suggestion", "data-i": i }, input,
        el("button", { class: "small accept", onclick: () => {
          S.supernodes.push([input.value.trim() || sg.name, ...sg.node_ids]); S.suggestions.splice(i, 1);
          saveState(); draw(); refreshSide();
        } }, "accept"),
        el("button", { class: "ghost small reject", onclick: () => { S.suggestions.splice(i, 1); refreshSide(); } }, "reject"),
        el("div", { class: "muted small" }, `${sg.node_ids.length} features at “${visible((S.view.metadata.prompt_tokens || [])[sg.position] ?? sg.position)}”, ` +
          `effects alike (cos ${fmt(sg.similarity, 2)}): `, sg.node_ids.map((id) => el("span", { class: "chip", onclick: () => select(id) }, label(nodeOf(id) || { node_id: id })))));
    }));
  }
  return box;
}

function nodeOf(id) { return S.pos.get(id)?.n || (S.view && S.view.nodes.find((n) => n.node_id === id)); }

// ---------------------------------------------------------------- interventions on the real model
function intervenePanel(ids, what) {
  const box = $("intervention");
  if (!box) return;
  if (!ids.length) { box.replaceChildren(el("div", { class: "muted small" }, "only feature nodes can be set or ablated")); return; }
  const value = el("input", { id: "iv-value", type: "number", step: "any", value: "0", style: "width:80px" });
  const mode = el("select", { id: "iv-mode" }, el("option", { value: "frozen" }, "frozen (the graph's direct effects)"),
    el("option", { value: "free" }, "free (the real model responds)"));
  const gen = el("input", { id: "iv-generate", type: "number", min: "0", max: "60", value: "12", style: "width:60px" });
  const out = el("div", { id: "iv-result", class: "iv" });
  box.replaceChildren(el("h3", {}, `Intervene on ${what}`),
    el("div", { class: "row" }, el("label", {}, "set to ", value), mode, el("label", {}, "generate ", gen),
      el("button", { id: "iv-run", onclick: async () => {
        out.replaceChildren(el("div", { class: "muted" }, "running the model…"));
        try {
          const r = await api(`/api/graphs/${encodeURIComponent(S.name)}/intervene`, { method: "POST",
            body: { node_ids: ids, value: Number(value.value), mode: mode.value, generate: Number(gen.value) || 0 } });
          out.replaceChildren(
            el("div", { class: "muted small" }, `${ids.length} features set to ${value.value} (${r.mode}) in ${r.seconds} s`),
            el("table", { class: "list", id: "iv-table" }, el("tr", {}, el("td", {}, "token"), el("td", {}, "p before → after"), el("td", {}, "logit Δ")),
              r.token_strings.map((t, i) => el("tr", {}, el("td", {}, el("code", { class: "tok" }, visible(t))),
                el("td", {}, `${fmt(r.prob_before[i])} → ${fmt(r.prob_after[i])}`),
                el("td", { class: r.change[i] >= 0 ? "w-pos" : "w-neg", "data-change": r.change[i] }, r.change[i].toFixed(3))))),
            r.generated != null ? el("div", { class: "gen", id: "iv-gen" }, el("div", {}, el("b", {}, "plain: "), r.prompt, el("span", { class: "prompt" }, r.plain)),
              el("div", {}, el("b", {}, "edited: "), r.prompt, el("span", { class: "prompt" }, r.generated))) : "");
        } catch (e) { showError(out, e); }
      } }, "Run")), out);
  box.scrollIntoView({ block: "nearest" });
}

// ---------------------------------------------------------------- search and highlight
function search() {
  const q = ($("search").value || "").trim().toLowerCase();
  S.hits = new Set(); S.hitAt = -1;
  if (q && S.view) {
    const tokens = S.view.metadata.prompt_tokens || [];
    const layer = /^l(\d+)$/.exec(q);
    for (const n of S.view.nodes) {
      const hit = layer ? String(n.layer) === layer[1] && n.feature_type !== "embedding"
        : n.node_id.toLowerCase().startsWith(q) || label(n).toLowerCase().includes(q) ||
          String(tokens[n.ctx_idx] ?? "").trim().toLowerCase() === q;
      if (hit) S.hits.add(n.node_id);
    }
  }
  $("search-count").textContent = q ? `${S.hits.size} found` : "";
  if (S.view) draw();
}

// ---------------------------------------------------------------- the subgraph pane: pinned nodes and supernodes
async function drawSubgraph() {
  const svg = $("subgraph-svg");
  const grouped = new Set(S.supernodes.flatMap((s) => s.slice(1)));
  const loose = [...S.pinned].filter((id) => !grouped.has(id));
  if (!loose.length && !S.supernodes.length) {
    $("subgraph-info").textContent = " · pin nodes or accept a supernode to see them here";
    svg.replaceChildren(); svg.setAttribute("width", 10); svg.setAttribute("height", 10); return;
  }
  const logits = S.view.nodes.filter((n) => n.feature_type === "logit");
  const top = logits.length ? logits.reduce((a, b) => ((b.token_prob || 0) > (a.token_prob || 0) ? b : a)) : null;
  if (top && !loose.includes(top.node_id) && !grouped.has(top.node_id)) loose.push(top.node_id);  // the target anchors it
  let d;
  try { d = await api(`/api/graphs/${encodeURIComponent(S.name)}/subgraph`, { method: "POST", body: { nodes: loose, supernodes: S.supernodes } }); }
  catch (e) { return showError($("subgraph-info"), e); }
  const rec = new Map(d.nodes.map((n) => [n.node_id, n]));
  const items = [...loose.map((id) => ({ id, n: rec.get(id), name: label(rec.get(id) || { node_id: id }) })),
    ...Object.entries(d.members).map(([id, ms]) => {
      const ns = ms.map((m) => rec.get(m)).filter(Boolean);
      const layers = ns.map((n) => (n.feature_type === "embedding" ? -1 : Number(n.layer)));
      return { id, members: ms, name: id.slice(6), layer: layers.reduce((a, b) => a + b, 0) / Math.max(1, layers.length),
               ctx: Math.min(...ns.map((n) => n.ctx_idx)) };
    })];
  for (const it of items) if (it.n) { it.layer = it.n.feature_type === "embedding" ? -1 : Number(it.n.layer); it.ctx = it.n.ctx_idx; }
  const layers = [...new Set(items.map((it) => Math.round(it.layer)))].sort((a, b) => b - a);
  const ctxs = [...new Set(items.map((it) => it.ctx))].sort((a, b) => a - b);
  const BW = 150, BH = 34, GX = 30, GY = 34;
  const slots = new Map();
  const at = new Map();
  for (const it of items) {
    const key = `${Math.round(it.layer)}|${it.ctx}`;
    const k = slots.get(key) || 0; slots.set(key, k + 1);
    it.k = k;
  }
  const perCol = new Map();
  for (const it of items) perCol.set(it.ctx, Math.max(perCol.get(it.ctx) || 0, it.k + 1));
  let x0 = 10; const colX = new Map();
  for (const c of ctxs) { colX.set(c, x0); x0 += perCol.get(c) * (BW + 10) + GX; }
  for (const it of items) {
    at.set(it.id, { x: colX.get(it.ctx) + it.k * (BW + 10), y: 10 + layers.indexOf(Math.round(it.layer)) * (BH + GY), it });
  }
  const W = x0, H = 10 + layers.length * (BH + GY);
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  const maxW = Math.max(1e-12, ...d.links.map((l) => Math.abs(l.weight)));
  const parts = [];
  for (const l of d.links) {
    const a = at.get(l.source), b = at.get(l.target);
    if (!a || !b) continue;
    const m = Math.abs(l.weight) / maxW;
    parts.push(`<path class="sg-link" d="M${a.x + BW / 2},${a.y} C${a.x + BW / 2},${(a.y + b.y + BH) / 2} ${b.x + BW / 2},${(a.y + b.y + BH) / 2} ${b.x + BW / 2},${b.y + BH}" ` +
      `stroke="${l.weight >= 0 ? "#2f6fde" : "#d9480f"}" stroke-width="${(0.8 + 5 * m).toFixed(2)}" fill="none" opacity="${(0.35 + 0.6 * m).toFixed(2)}"><title>${l.source} → ${l.target}: ${l.weight.toFixed(4)}</title></path>`);
  }
  const esc = (t) => String(t).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  for (const [id, { x, y, it }] of at) {
    const sup = it.members != null;
    const color = sup ? SUPER_COLORS[S.supernodes.findIndex((s) => `super:${s[0]}` === id) % SUPER_COLORS.length] : "#5b7fd6";
    parts.push(`<g class="sg-node" data-id="${esc(id)}"><rect x="${x}" y="${y}" width="${BW}" height="${BH}" rx="${sup ? 3 : 10}" fill="${sup ? "#fff7ed" : "#eef2fb"}" stroke="${color}" stroke-width="${sup ? 2.5 : 1.2}"/>` +
      `<text x="${x + 6}" y="${y + 14}" font-size="11" fill="#1d232b">${esc(it.name.slice(0, 24))}</text>` +
      `<text x="${x + 6}" y="${y + 27}" font-size="9.5" fill="#68707a">${esc(sup ? `${it.members.length} features` : id)}</text></g>`);
  }
  svg.innerHTML = parts.join("");
  $("subgraph-info").textContent = ` · ${items.length} boxes, ${d.links.length} direct edges (a supernode's edges are its members' summed)`;
}

function refreshSide() { if (S.clicked) select(S.clicked); else sideSummary(); }

async function select(id) {
  S.clicked = id; draw();
  const n = S.pos.get(id)?.n;
  const side = $("side");
  side.replaceChildren(el("div", { class: "muted" }, "loading…"));
  let d;
  try { d = await api(`/api/graphs/${encodeURIComponent(S.name)}/node/${encodeURIComponent(id)}`); }
  catch (e) { return showError(side, e); }
  if (S.clicked !== id) return;
  const node = d.node;
  const pinBtn = el("button", { id: "pin-btn", onclick: () => {
    S.pinned.has(id) ? S.pinned.delete(id) : S.pinned.add(id); saveState(); draw(); select(id);
  } }, S.pinned.has(id) ? "Unpin" : "Pin");
  const nameIn = el("input", { id: "node-name", type: "text", value: S.names[id] || "", placeholder: "name this node", size: 18 });
  const nameBtn = el("button", { class: "ghost", id: "name-btn", onclick: () => {
    const v = nameIn.value.trim(); if (v) S.names[id] = v; else delete S.names[id];
    saveState(); draw(); select(id);
  } }, "Name");
  const rows = (list) => el("table", { class: "list" }, list.map((x) =>
    el("tr", { class: "link", onclick: () => S.pos.has(x.node_id) ? select(x.node_id) : flash("not in this pruned view") },
      el("td", {}, x.clerp || x.node_id, el("div", { class: "muted small" }, x.node_id)),
      el("td", { class: x.weight >= 0 ? "w-pos" : "w-neg", style: "text-align:right" }, x.weight.toFixed(3)))));
  side.replaceChildren(
    el("h2", {}, S.names[id] || node.clerp || id, S.pinned.has(id) ? el("span", { class: "chip" }, "pinned") : ""),
    el("div", { class: "muted small" }, `${node.feature_type || "node"} · ${id} · layer ${node.layer} · on ` +
      `“${visible((S.view.metadata.prompt_tokens || [])[node.ctx_idx] ?? node.ctx_idx)}” (position ${node.ctx_idx})` +
      (node.activation != null ? ` · activation ${fmt(node.activation)}` : "") + (n && n.influence != null ? ` · cum. influence ${fmt(n.influence, 2)}` : "")),
    el("div", { class: "row", style: "margin:8px 0" }, pinBtn, nameIn, nameBtn),
    isFeature(node) ? el("div", { class: "row" }, el("button", { class: "ghost", id: "ablate-btn", onclick: () => intervenePanel([id], id) }, "Intervene…"),
      d.feature_index && d.feature_index.key ? el("a", { id: "feature-link", target: "_blank",
        href: `/features?index=${encodeURIComponent(d.feature_index.key)}&feature=${id.split("_")[1]}` +
          (d.feature_index.layer != null ? `&layer=${d.feature_index.layer}` : "") }, "full feature page ↗") : "") : "",
    el("div", { id: "intervention" }),
    d.feature ? el("div", { id: "node-feature", style: "margin-top:10px;border-top:1px solid #dcdfe3;padding-top:8px" },
      renderFeature(d.feature, { compact: true })) :
      el("div", { class: "muted small", style: "margin-top:8px" }, isFeature(node) ? "no feature index for this layer (glasswork features build)" : ""),
    el("h3", {}, "Strongest inputs"), d.inputs.length ? rows(d.inputs) : el("div", { class: "muted small" }, "none (a source node)"),
    el("h3", {}, "Strongest outputs"), d.outputs.length ? rows(d.outputs) : el("div", { class: "muted small" }, "none"),
    supernodePanel());
}

// ---------------------------------------------------------------- controls
function wire() {
  let timer;
  for (const id of ["node-threshold", "edge-threshold"]) {
    $(id).addEventListener("input", () => {
      $(`${id}-value`).textContent = Number($(id).value).toFixed(2);
      clearTimeout(timer); timer = setTimeout(() => S.name && loadView(S.name), 250);  // ask once the slider rests
    });
  }
  $("budget").addEventListener("change", () => S.name && loadView(S.name));
  $("graph-select").addEventListener("change", () => loadView($("graph-select").value));
  $("search").addEventListener("input", search);
  $("search").addEventListener("keydown", (e) => {  // Enter: the next hit
    if (e.key !== "Enter" || !S.hits.size) return;
    const hits = [...S.hits].filter((id) => S.pos.has(id));
    if (!hits.length) return;
    S.hitAt = (S.hitAt + 1) % hits.length; select(hits[S.hitAt]);
  });
  $("suggest-btn").addEventListener("click", async () => {
    if (!S.name) return;
    const nt = $("node-threshold").value, et = $("edge-threshold").value, budget = Math.max(0, Number($("budget").value) || 0);
    try {
      const r = await api(`/api/graphs/${encodeURIComponent(S.name)}/suggestions?node_threshold=${nt}&edge_threshold=${et}&budget=${budget}`);
      const taken = new Set(S.supernodes.flatMap((s) => s.slice(1)));
      S.suggestions = r.suggestions.filter((sg) => !sg.node_ids.every((id) => taken.has(id)));
      flash(`${S.suggestions.length} suggestions`); S.clicked = null; draw(); sideSummary();
    } catch (e) { showError($("message"), e); }
  });
  $("subgraph-btn").addEventListener("click", () => { $("subgraph").hidden = false; if (S.view) { layout(); draw(); } drawSubgraph(); });
  $("subgraph-close").addEventListener("click", () => { $("subgraph").hidden = true; if (S.view) { layout(); draw(); } });
  $("pinned-only").addEventListener("change", () => { layout(); draw(); });
  $("upload").addEventListener("change", async () => {
    const f = $("upload").files[0]; if (!f) return;
    try {
      const graph = JSON.parse(await f.text());
      const name = f.name.replace(/\.json$/, "").replace(/[^A-Za-z0-9._-]/g, "-").slice(0, 100) || "graph";
      const r = await api("/api/graphs/upload", { method: "POST", body: { name, graph } });
      await loadList(r.name);
    } catch (e) { showError($("message"), e); }
  });
  $("open-path-btn").addEventListener("click", async () => {
    try { const r = await api("/api/graphs/open", { method: "POST", body: { path: $("open-path").value } }); await loadList(r.name); }
    catch (e) { showError($("message"), e); }
  });
  $("attribute-btn").addEventListener("click", trace);
  const c = $("canvas");
  let drag = null;
  c.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, tx: S.tx, ty: S.ty }; });
  window.addEventListener("mouseup", () => { drag = null; });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    S.tx = drag.tx + e.clientX - drag.x; S.ty = drag.ty + e.clientY - drag.y; draw();
  });
  c.addEventListener("wheel", (e) => {
    e.preventDefault();
    const box = c.getBoundingClientRect(), mx = e.clientX - box.left, my = e.clientY - box.top;
    const f = Math.exp(-e.deltaY * 0.0015);
    S.tx = mx - (mx - S.tx) * f; S.ty = my - (my - S.ty) * f; S.k *= f; draw();
  }, { passive: false });
  c.addEventListener("click", (e) => { if (e.target.tagName !== "circle" && e.target.tagName !== "rect" && S.view) { S.clicked = null; draw(); sideSummary(); } });
  window.addEventListener("resize", () => { if (S.view) { layout(); draw(); } });
}

async function loadDictionaries() {
  const { dictionaries } = await api("/api/dictionaries");
  const usable = dictionaries.filter((d) => d.kind === "set" || d.kind === "clt" || (d.kind === "transcoder" && d.layer != null));
  $("dict-select").replaceChildren(...(usable.length ? usable.map((d) => el("option", { value: d.key }, `${d.key} (${d.kind === "set" ? d.member_kind + " set" : d.kind})`))
    : [el("option", { value: "" }, "no transcoders in this folder")]));
}

async function trace() {
  const prompt = $("prompt").value.trim(), dictionary = $("dict-select").value;
  if (!prompt || !dictionary) return showError($("message"), new Error("type a prompt and pick transcoders"));
  $("attribute-btn").disabled = true; $("job-progress").hidden = false; $("job-progress").value = 0;
  try {
    const { job } = await api("/api/attribute", { method: "POST", body: { prompt, dictionary } });
    for (;;) {
      const j = await api(`/api/jobs/${job}`);
      if (j.total) { $("job-progress").max = j.total; $("job-progress").value = j.completed; }
      $("job-status").textContent = `${j.state} ${j.description} ${j.total ? `${j.completed}/${j.total}` : ""} ${j.seconds}s`;
      if (j.state === "done") { await loadList(j.result.graph); break; }
      if (j.state === "failed") throw new Error(j.error);
      await new Promise((r) => setTimeout(r, 400));
    }
  } catch (e) { showError($("message"), e); }
  finally { $("attribute-btn").disabled = false; $("job-progress").hidden = true; }
}

wire();
loadDictionaries().catch((e) => showError($("message"), e));
loadList().catch((e) => showError($("message"), e));
