// The feature browser: search an index by label, text or token; show a feature's page.
import { api, el, fmt, nav, param, showError, visible } from "./common.js";
import { renderFeature } from "./feature.js";

nav("/features");
const $ = (id) => document.getElementById(id);

async function init() {
  const { dictionaries } = await api("/api/dictionaries");
  const indexed = dictionaries.filter((d) => d.has_index);
  $("index-select").replaceChildren(...(indexed.length ? indexed.map((d) => el("option", { value: d.key }, `${d.key} (${d.kind}${d.layer != null ? " L" + d.layer : ""})`))
    : [el("option", { value: "" }, "no feature index here")]));
  if (param("index")) $("index-select").value = param("index");
  $("search-btn").addEventListener("click", search);
  $("query").addEventListener("keydown", (e) => { if (e.key === "Enter") search(); });
  if (param("q")) { $("query").value = param("q"); await search(); }
  if (param("feature")) await show(Number(param("feature")));
}

async function search() {
  const index = $("index-select").value, q = $("query").value, mode = $("mode").value;
  if (!index || !q.trim()) return;
  try {
    const { hits } = await api(`/api/features/search?index=${encodeURIComponent(index)}&q=${encodeURIComponent(q)}&mode=${mode}`);
    $("hits").replaceChildren(...(hits.length ? hits.map((h) => el("li", { "data-feature": h.feature, onclick: () => show(h.feature) },
      el("b", {}, `#${h.feature}`), " ", h.label || el("span", { class: "muted" }, "unlabelled"),
      el("div", { class: "muted small" }, h.where === "label" ? "label match" : h.token_id != null ? `fires ${h.count}× on this token (mean ${fmt(h.mean_act)})`
        : h.where === "id" ? "by id" : `context: ${visible(h.text || "").slice(0, 70)}…`)))
      : [el("li", { class: "muted" }, "no match")]));
    $("message").replaceChildren();
  } catch (e) { showError($("message"), e); }
}

async function show(f) {
  const index = $("index-select").value;
  try {
    const rec = await api(`/api/features/${f}?index=${encodeURIComponent(index)}`);
    $("page").replaceChildren(renderFeature(rec, { onFeature: show }));
    history.replaceState(null, "", `/features?index=${encodeURIComponent(index)}&feature=${f}`);
  } catch (e) { showError($("page"), e); }
}

init().catch((e) => showError($("message"), e));
