// The steering playground: a prompt, feature clamps or direction additions, baseline and steered side by side.
import { api, el, nav, param, showError } from "./common.js";

nav("/steer");
const $ = (id) => document.getElementById(id);
let dicts = [], dirs = [];

function featureRow(pre = {}) {
  const dict = el("select", { class: "e-dict" }, dicts.map((d) => el("option", { value: d.key }, `${d.key} (${d.kind})`)));
  if (pre.dictionary) dict.value = pre.dictionary;
  const layer = el("input", { class: "e-layer", type: "number", min: 0, placeholder: "layer", style: "width:70px", value: pre.layer ?? "" });
  const feat = el("input", { class: "e-feature", type: "number", min: 0, placeholder: "feature", style: "width:90px", value: pre.feature ?? "" });
  const value = el("input", { class: "e-value", type: "text", size: 6, value: pre.value ?? "10x", title: "a number, or Nx = N times its max activation" });
  const sync = () => { const d = dicts.find((x) => x.key === dict.value); layer.hidden = !(d && d.kind === "set"); };
  dict.addEventListener("change", sync); sync();
  const row = el("div", { class: "row edit", "data-kind": "feature", style: "margin:4px 0" }, "clamp feature", dict, layer, feat, "to", value,
    el("button", { class: "ghost", onclick: () => row.remove() }, "×"));
  row.read = () => ({ dictionary: dict.value, feature: Number(feat.value), value: /x$/i.test(value.value) ? value.value : Number(value.value),
    ...(layer.hidden || layer.value === "" ? {} : { layer: Number(layer.value) }) });
  return row;
}

function directionRow() {
  const dir = el("select", { class: "e-direction" }, dirs.map((d) => el("option", { value: d.name }, `${d.name} (${d.hook})`)));
  const coeff = el("input", { class: "e-coeff", type: "number", step: "0.5", value: 4, style: "width:80px" });
  const ablate = el("input", { type: "checkbox" });
  const row = el("div", { class: "row edit", "data-kind": "direction", style: "margin:4px 0" }, "add direction", dir, "×", coeff,
    el("label", {}, ablate, " ablate instead"), el("button", { class: "ghost", onclick: () => row.remove() }, "×"));
  row.read = () => ({ direction: dir.value, coeff: Number(coeff.value), ablate: ablate.checked });
  return row;
}

async function run() {
  const edits = [...document.querySelectorAll(".edit")].map((r) => r.read());
  const body = { prompt: $("prompt").value, edits, positions: $("positions").value, max_new_tokens: Number($("max-new").value),
                 temperature: Number($("temperature").value), seed: Number($("seed").value) };
  $("steer-btn").disabled = true; $("steered").textContent = $("baseline").textContent = "generating…";
  try {
    const r = await api("/api/steer", { method: "POST", body });
    const show = (id, text) => $(id).replaceChildren(el("span", { class: "prompt" }, r.prompt), el("span", {}, text));
    show("baseline", r.baseline[0]); show("steered", r.steered[0]);
    $("baseline").classList.remove("muted"); $("steered").classList.remove("muted");
    $("applied").textContent = `${r.interventions.join("; ")} · seed ${r.seed} · ${r.seconds}s`;
    $("message").replaceChildren();
  } catch (e) { showError($("message"), e); $("steered").textContent = $("baseline").textContent = "–"; }
  finally { $("steer-btn").disabled = false; }
}

async function init() {
  [{ dictionaries: dicts }, { directions: dirs }] = await Promise.all([api("/api/dictionaries"), api("/api/directions")]);
  dicts = dicts.filter((d) => !d.error && d.kind !== "clt");
  $("add-feature").addEventListener("click", () => $("edits").append(featureRow()));
  $("add-direction").addEventListener("click", () => dirs.length ? $("edits").append(directionRow()) : showError($("message"), new Error("no directions in this folder (glasswork direction --out DIR/directions/NAME)")));
  $("steer-btn").addEventListener("click", run);
  if (dicts.length) $("edits").append(featureRow({ dictionary: param("dictionary") || undefined, feature: param("feature") ?? undefined, layer: param("layer") ?? undefined }));
}

init().catch((e) => showError($("message"), e));
