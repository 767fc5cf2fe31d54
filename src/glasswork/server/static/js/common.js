// Shared by every page: the nav bar, JSON calls with readable errors, small DOM helpers.

export async function api(path, { method = "GET", body } = {}) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let data;
  try { data = JSON.parse(text); } catch { data = { detail: text }; }
  if (!r.ok) {
    const d = data.detail;
    const msg = Array.isArray(d) ? d.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ") : d;
    throw new Error(`${r.status}: ${msg || r.statusText}`);
  }
  return data;
}

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
}

export function nav(here) {
  const pages = [["/graph", "Graphs"], ["/features", "Features"], ["/steer", "Steering"], ["/vision", "Vision"]];
  const h = el("header", {}, el("span", { class: "brand" }, "Glasswork"),
    ...pages.map(([href, name]) => el("a", { href, class: href === here ? "here" : "" }, name)));
  document.body.prepend(h);
}

export function showError(where, err) {
  where.replaceChildren(el("div", { class: "error" }, String(err.message || err)));
}

export const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toPrecision(d));
export const visible = (s) => String(s).replace(/\n/g, "⏎").replace(/ /g, "\u00a0");
export const param = (k) => new URLSearchParams(location.search).get(k);
