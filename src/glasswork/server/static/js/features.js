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
  $("index-select").addEventListener("change", overview);
  $("query").addEventListener("keydown", (e) => { if (e.key === "Enter") search(); });
  if (param("q")) { $("query").value = param("q"); await search(); }
  if (param("feature")) await show(Number(param("feature")));
  else if (!param("q") && $("index-select").value) await overview();
}

async function overview() {  // an empty page is no start: the most frequent labelled features of the chosen index
  const index = $("index-select").value;
  try {
    const { features } = await api(`/api/features/top?index=${encodeURIComponent(index)}&limit=30`);
    $("hits").replaceChildren(...features.map((h) => el("li", { "data-feature": h.feature, onclick: () => show(h.feature) },
      el("b", {}, `#${h.feature}`), " ", h.label || el("span", { class: "muted" }, "unlabelled"),
      el("div", { class: "muted small" }, `fires on ${(100 * h.freq).toFixed(2)}% of tokens`))));
    if (features.length) await show(features[0].feature);
  } catch (e) { showError($("message"), e); }
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
    const layer = param("layer") != null ? `&layer=${Number(param("layer"))}` : "";
    const rec = await api(`/api/features/${f}?index=${encodeURIComponent(index)}${layer}`);
    $("page").replaceChildren(renderFeature(rec, { onFeature: show }));
    history.replaceState(null, "", `/features?index=${encodeURIComponent(index)}&feature=${f}${layer}`);
  } catch (e) { showError($("page"), e); }
}

init().catch((e) => showError($("message"), e));
