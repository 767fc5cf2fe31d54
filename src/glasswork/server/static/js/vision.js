// The vision page: a unit's or a dictionary feature's statistics, its top patches (the receptive field of its best
// position outlined in yellow), each patch in its source image (the crop in red), and its visualization.
import { api, el, nav, param, showError } from "./common.js";

nav("/vision");
const $ = (id) => document.getElementById(id);
const ZOOM = 3;

async function init() {
  const { indexes } = await api("/api/vision");
  $("index-select").replaceChildren(...(indexes.length ? indexes.map((x) => el("option", { value: x.name }, `${x.name} (${x.model}, ${x.hook})`))
    : [el("option", { value: "" }, "no vision index here: run glasswork vision")]));
  if (param("index")) $("index-select").value = param("index");
  if (param("kind")) $("kind").value = param("kind");
  for (const id of ["index-select", "kind", "order"]) $(id).addEventListener("change", () => list(true));
  await list(!param("id"));
  if (param("id")) await show($("kind").value, Number(param("id")));
}


async function list(showFirst) {
  const name = $("index-select").value;
  if (!name) return;
  try {
    const { units } = await api(`/api/vision/${encodeURIComponent(name)}/units?kind=${$("kind").value}&order=${$("order").value}&limit=300`);
    $("hits").replaceChildren(...units.map((u) => el("li", { "data-id": u.id, onclick: () => show($("kind").value, u.id) },
      el("b", {}, `${$("kind").value} ${u.id}`), " ", u.top_source,
      el("div", { class: "muted small" }, `${u.entropy.toFixed(2)} bits (top patches), ${u.weighted_entropy.toFixed(2)} weighted; fires on ${(100 * u.frequency).toFixed(1)}% of patches`))));
    $("meta").textContent = `${units.length} listed`;
    if (units.length && showFirst) await show($("kind").value, units[0].id);
  } catch (e) { showError($("message"), e); }
}

function histogram(h) {
  if (!h.counts || !h.counts.length) return el("div", { class: "muted" }, "never fires on the held-out patches");
  const top = Math.max(...h.counts);
  return el("div", {}, el("div", { class: "hist", title: "activations where it fires" },
    ...h.counts.map((c, i) => el("div", { style: `height:${Math.max(1, 60 * c / top)}px`, title: `${h.edges[i].toFixed(2)}–${h.edges[i + 1].toFixed(2)}: ${c}` }))),
    el("div", { class: "muted small" }, `activation ${h.edges[0].toFixed(1)} … ${h.edges[h.edges.length - 1].toFixed(1)}`));
}

function box(cls, top, left, h, w) {
  return el("div", { class: cls, style: `top:${top}px;left:${left}px;height:${h}px;width:${w}px` });
}

function patchTile(name, e) {
  const img = el("img", { src: `/api/vision/${name}/image/patch/${e.patch}`, width: 32 * ZOOM, height: 32 * ZOOM, alt: `patch ${e.patch}` });
  const rf = box("rf", e.rf_top * ZOOM, e.rf_left * ZOOM, (e.rf_bottom - e.rf_top + 1) * ZOOM, (e.rf_right - e.rf_left + 1) * ZOOM);
  return el("div", { class: "tile patch" }, el("div", { class: "frame" }, img, rf), `${e.activation.toFixed(1)} · ${e.source}`);
}

function sourceTile(name, e) {
  const img = el("img", { src: `/api/vision/${name}/image/source/${e.source}`, alt: e.source, style: "max-width:160px" });
  const s = e.scale, mosaic = e.source === "faces" || e.source === "digits";
  return el("div", { class: "tile context" }, el("div", { class: "frame" }, img,
    mosaic ? "" : box("crop", e.top * s, e.left * s, e.side * s, e.side * s)), mosaic ? `${e.source} (whole image)` : e.source);
}

async function show(kind, id) {
  const name = $("index-select").value;
  for (const li of $("hits").children) li.classList.toggle("selected", Number(li.dataset.id) === id);
  try {
    const p = await api(`/api/vision/${encodeURIComponent(name)}/units/${kind}/${id}`);
    const vis = p.has_vis ? el("div", { class: "vis" }, el("h3", {}, "Visualization (activation maximization)"),
      el("img", { src: `/api/vision/${name}/image/vis/${kind}.${id}`, width: 32 * 4, height: 32 * 4, alt: "visualization" })) : "";
    $("page").replaceChildren(
      el("h2", { id: "unit-title" }, `${kind} ${id}`),
      el("div", {}, `fires on ${(100 * p.frequency).toFixed(1)}% of held-out patches · max ${p.max_act.toFixed(2)} · `,
        `source entropy of the top patches ${p.entropy.toFixed(2)} bits (activation-weighted ${p.weighted_entropy.toFixed(2)}) · mostly ${p.top_source}`),
      histogram(p.histogram), vis,
      el("h3", {}, "Top patches (yellow: the receptive field of the best position)"),
      el("div", { class: "tiles", id: "patches" }, ...p.examples.map((e) => patchTile(name, e))),
      el("h3", {}, "Where they come from (red: the crop)"),
      el("div", { class: "tiles", id: "contexts" }, ...p.examples.slice(0, 8).map((e) => sourceTile(name, e))));
    history.replaceState(null, "", `/vision?index=${encodeURIComponent(name)}&kind=${kind}&id=${id}`);
  } catch (e) { showError($("message"), e); }
}

init().catch((e) => showError($("message"), e));
