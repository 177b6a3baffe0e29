// The live view's pages: fetch the JSON API, then follow /api/stream (server-sent events).
// Every label comes from the message catalogue of the chosen language (/static/messages/<lang>);
// charts are drawn by uPlot 1.6.32 (npm "uplot", MIT licence: uPlot.LICENSE), served from here.
"use strict";
const $ = (sel) => document.querySelector(sel);
// text for HTML: markup escaped, and every character that could reorder or hide what is read (controls,
// bidirectional overrides and isolates, zero-width and format characters, as contract/text.py) shown as an
// escape; tabs and line breaks are white space in HTML, and surrogates pair up (a lone one shows as such)
const UNSAFE = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;
const visible = (c) => {
  const n = c.charCodeAt(0);
  return n < 0x100 ? "\\x" + n.toString(16).padStart(2, "0") : "\\u" + n.toString(16).padStart(4, "0");
};
const esc = (s) => String(s ?? "").replace(UNSAFE, visible)
  .replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const LANGUAGES = ["en", "ja"];
let LANG = "en", MSG = {};

async function api(path) { const r = await fetch(path); if (!r.ok) throw new Error(path + ": " + r.status); return r.json(); }
// a page that could not update says so, and keeps trying: what it shows must not look live when it is not
async function updating(load) {
  try {
    await load();
    $("#error").hidden = true;
  } catch (e) {
    $("#error").textContent = t("update_failed", {error: e.message});
    $("#error").hidden = false;
  }
}

// -- language ------------------------------------------------------------------------
function chosenLanguage() {
  const saved = localStorage.getItem("jcm_lang");
  if (LANGUAGES.includes(saved)) return saved;
  return (navigator.language || "en").toLowerCase().startsWith("ja") ? "ja" : "en";
}

async function loadMessages() {
  LANG = chosenLanguage();
  MSG = await api(`/static/messages/${LANG}`);
  document.documentElement.lang = LANG;
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  const sw = $("#lang");
  if (sw) {
    sw.value = LANG;
    sw.onchange = () => { localStorage.setItem("jcm_lang", sw.value); location.reload(); };
  }
}

// t("key", {name: value}): the catalogue's text with {name} filled in; an unknown key shows itself
function t(key, params) {
  const text = MSG[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (m, k) => (params && k in params ? params[k] : m));
}
// a key with a variable tail (a state, an alarm kind) falls back to the tail itself
const label = (prefix, name) => (MSG[`${prefix}.${name}`] ?? name);

// -- numbers and times ------------------------------------------------------------------
function num(v, digits = 1) {
  if (typeof v !== "number" || !isFinite(v)) return esc(v ?? "–");
  return new Intl.NumberFormat(LANG, {maximumFractionDigits: digits, minimumFractionDigits: 0}).format(v);
}
function liveValue(v) {
  if (typeof v !== "number") return esc(v);
  return num(v, Math.abs(v) >= 100 ? 0 : 2);
}

// the site's local wall time and its UTC offset, e.g. 2026-11-29 14:05 +08 (one format per language);
// with seconds where a value is live (last seen)
function zoned(iso, tz, seconds = false) {
  if (!iso) return t("never");
  const d = new Date(iso);
  if (isNaN(d)) return esc(iso);
  const parts = Object.fromEntries(new Intl.DateTimeFormat("en-GB", {
    timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    second: "2-digit", hourCycle: "h23"}).formatToParts(d).map((p) => [p.type, p.value]));
  const wall = Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second);
  return t(seconds ? "datetime_s" : "datetime", {y: parts.year, m: parts.month, d: parts.day, H: parts.hour,
                                                M: parts.minute, S: parts.second, off: offsetText((wall - Math.floor(d.getTime() / 1000) * 1000) / 60000)});
}
function offsetText(minutes) {
  const a = Math.abs(Math.round(minutes)), sign = minutes < 0 ? "-" : "+";
  return sign + String(Math.floor(a / 60)).padStart(2, "0") + (a % 60 ? ":" + String(a % 60).padStart(2, "0") : "");
}
function zoneName(tz) { return `${tz} (${zoned(new Date().toISOString(), tz).split(" ").pop()})`; }

const stateBadge = (state, reason) =>
  `<span class="state ${esc(state)}" data-state="${esc(state)}" title="${esc(reason || "")}">${esc(label("state", state))}</span>`;

// -- the fleet overview -----------------------------------------------------------------
function powerCell(s) {
  if (s.power_kw === null || s.power_kw === undefined) return `<span class="muted">${esc(t("no_live_power"))}</span>`;
  if (!s.capacity_kw) return `${num(s.power_kw, 0)} kW`;
  const share = Math.max(0, Math.min(1, s.power_kw / s.capacity_kw));
  return `<div>${esc(t("power_of_capacity", {power: num(s.power_kw, 0), capacity: num(s.capacity_kw, 0),
    share: num(100 * share, 0)}))}</div><div class="bar"><span style="width:${(100 * share).toFixed(1)}%"></span></div>`;
}

function reductionText(r) {
  if (!r) return `<span class="muted">${esc(t("not_computed"))}</span>`;
  const main = `<span class="figure-s">${num(r.ER, 0)} t</span> <span class="muted">${esc(t("provisional_through", {last: r.last}))}</span>`;
  return main + (r.rounded_to_zero ? `<div class="muted">${esc(t("rounds_to_zero", {value: num(r.ER_unrounded, 3)}))}</div>` : "");
}

function verifiedText(v) {
  return v ? `${esc(v.month)}: <b>${num(v.ER, 0)} t</b>` : `<span class="muted">${esc(t("none_yet"))}</span>`;
}

function energyMain(s) {
  if (s.energy_error) return `<span class="muted">${esc(t("store_unavailable"))}</span>`;
  if (!s.energy_main) return `<span class="muted">–</span>`;
  return `${esc(s.energy_main_key)}: <b>${num(s.energy_main.today, 1)} ${esc(s.energy_main.unit)}</b>`;
}

async function deploymentPage() {
  await updating(loadFleet);
  setTimeout(deploymentPage, 5000);
}

async function loadFleet() {
  const data = await api("/api/sites");
  $("#sim").hidden = !data.sites.some((s) => s.simulated);
  $("#broker").hidden = data.broker_connected;
  $("#fleet tbody").innerHTML = data.sites.map((s) => `<tr data-site="${esc(s.site)}" class="attention-${esc(s.attention)}">
    <td><a href="/sites/${encodeURIComponent(s.site)}">${esc(s.name)}</a><div class="muted">${esc(s.country)} · ${esc(s.methodology)}</div></td>
    <td><span class="attention ${esc(s.attention)}">${esc(label("attention", s.attention))}</span></td>
    <td>${stateBadge(s.gateway_state)}</td>
    <td>${powerCell(s)}</td><td>${energyMain(s)}</td><td>${reductionText(s.month_to_date)}</td><td>${verifiedText(s.last_verified)}</td>
    <td class="counts">${Object.entries(s.devices).filter(([, n]) => n).map(([k, n]) => `${stateBadge(k)} ${n}`).join(" ")}</td>
    <td class="${s.active_alarms ? "alarm-active" : "muted"}">${s.active_alarms}</td></tr>`).join("");
  const zones = Object.fromEntries(data.sites.map((s) => [s.site, s.timezone]));
  const alarms = await api("/api/alarms?active=true");
  $("#alarms tbody").innerHTML = alarms.map((a) => `<tr><td>${esc(a.site)}</td><td>${esc(a.subject)}</td>
    <td class="alarm-active">${esc(label("alarm", a.kind))}</td><td>${zoned(a.started, zones[a.site] || "UTC")}</td><td>${esc(a.detail)}</td></tr>`).join("");
}

// -- a site -----------------------------------------------------------------------------
let ZONE = "UTC";

function valuesText(values, quality) {
  return Object.entries(values || {}).map(([k, v]) => {
    const q = quality && quality[k] ? ` <span class="alarm-active">[${esc(quality[k])}]</span>` : "";
    return `<span data-channel="${esc(k)}">${esc(k)}=<span class="value">${liveValue(v)}</span>${q}</span>`;
  }).join(" &nbsp; ");
}

function renderDevices(devices) {
  $("#devices tbody").innerHTML = devices.map((d) => `<tr id="dev-${esc(d.id)}">
    <td>${esc(d.id)}</td><td>${esc(d.kind)}</td><td class="state-cell">${stateBadge(d.state, d.state_reason)}</td>
    <td class="seen">${zoned(d.last_seen, ZONE, true)}</td><td class="values">${valuesText(d.values, d.quality)}</td></tr>`).join("");
}

function renderAlarms(alarms) {
  $("#alarms tbody").innerHTML = alarms.map((a) => `<tr class="${a.ended ? "" : "alarm-active"}" data-kind="${esc(a.kind)}">
    <td>${esc(a.subject)}</td><td>${esc(label("alarm", a.kind))}</td><td>${zoned(a.started, ZONE)}</td>
    <td>${a.ended ? zoned(a.ended, ZONE) : esc(t("active"))}</td><td>${esc(a.detail)}</td></tr>`).join("");
}

function renderEnergy(energy) {
  if (energy.error) return `<span class="muted">${esc(t("store_unavailable"))}: ${esc(energy.error)}</span>`;
  const rows = Object.entries(energy).map(([k, v]) => `<tr data-parameter="${esc(k)}"><td>${esc(k)}</td>
    <td class="n today">${num(v.today, 1)}</td><td class="n month">${num(v.month, 1)}</td><td class="unit">${esc(v.unit)}</td></tr>`);
  return rows.length ? `<table class="energy"><thead><tr><th>${esc(t("parameter"))}</th><th>${esc(t("today"))}</th>
    <th>${esc(t("month_to_date"))}</th><th>${esc(t("unit"))}</th></tr></thead><tbody>${rows.join("")}</tbody></table>`
    : `<span class="muted">${esc(t("no_counters"))}</span>`;
}

function monthRow(m) {
  const er = m.ER === null || m.ER === undefined ? "–" : `${num(m.ER, 0)}`;
  const zero = m.rounded_to_zero ? `<div class="muted zero">${esc(t("rounds_to_zero", {value: num(m.ER_unrounded, 3)}))}</div>` : "";
  const why = [...m.reasons.map((r) => `<li>${esc(r)}</li>`),
               ...m.findings.map((f) => `<li><code>${esc(f.source)}</code> ${esc(f.check)}: ${esc(f.detail)}</li>`)];
  const whyCell = why.length ? `<details><summary>${esc(t("findings_n", {n: why.length}))}</summary><ul>${why.join("")}</ul></details>` : "";
  return `<tr data-month="${esc(m.month)}" class="status-${esc(m.status)}"><td>${esc(m.month)}</td><td>${m.revision}</td>
    <td>${esc(label("status", m.status))}</td><td class="n">${er}${zero}</td><td>${esc(t(m.signed_off ? "yes" : "no"))}</td>
    <td class="why">${whyCell}</td></tr>`;
}

async function loadSite(site) {
  const d = await api(`/api/sites/${site}`);
  ZONE = d.timezone;
  document.title = `JCM · ${d.name}`;
  $("#title").textContent = d.name;
  $("#meta").textContent = `${d.country} · ${d.methodology} · ${t("times_in", {zone: zoneName(d.timezone)})}`;
  $("#gw").innerHTML = `${esc(t("gateway"))} ${esc(d.gateway)} ${stateBadge(d.gateway_state)}`;
  $("#sim").hidden = !d.simulated;
  $("#broker").hidden = d.broker_connected;
  renderDevices(d.devices);
  renderAlarms(d.alarms.recent);
  $("#energy").innerHTML = renderEnergy(d.energy);
  $("#mtd").innerHTML = reductionText(d.month_to_date);
  $("#verified").innerHTML = d.last_verified
    ? `${verifiedText(d.last_verified)} <span class="muted">(${esc(t("revision_n", {n: d.last_verified.revision}))})</span>`
    : `<span class="muted">${esc(t("none_yet"))}</span>`;
  $("#months tbody").innerHTML = d.months.map(monthRow).join("");
}

// -- charts (uPlot): one per unit, every device's series on a shared time axis -------------
let RANGE = "day";
const charts = [];

function tzDate(tz) { return (ts) => uPlot.tzDate(new Date(ts * 1e3), tz); }
// uPlot's axis and legend templates are American (11/29/26, 2pm): the page's own date format and 24 h
function dateTemplate(tpl) {
  return tpl.replace(/\{M\}\/\{D\}\/\{YY\}/g, t("chart_date_long")).replace(/\{M\}\/\{D\}/g, t("chart_date"))
    .replace(/\{h\}:\{mm\}\{aa\}/g, "{HH}:{mm}").replace(/\{h\}\{aa\}/g, "{HH}:00").replace(/\{h\}/g, "{HH}")
    .replace(/\{aa\}/g, "");
}

async function loadCharts(site) {
  const box = $("#charts");
  try {
    const h = await api(`/api/sites/${site}/history?range=${RANGE}`);
    charts.splice(0).forEach((c) => c.destroy());
    box.innerHTML = "";
    const byUnit = {};
    for (const [id, s] of Object.entries(h.series)) {
      if (!s.t.length) continue;
      (byUnit[s.unit] ||= []).push([id, s]);
    }
    if (!Object.keys(byUnit).length) { box.innerHTML = `<div class="muted">${esc(t("no_data"))}</div>`; return; }
    for (const [unit, list] of Object.entries(byUnit)) {
      const card = document.createElement("div");
      card.className = "card chart";
      card.dataset.unit = unit;
      box.appendChild(card);
      const data = uPlot.join(list.map(([, s]) => [s.t.map((x) => Date.parse(x) / 1000), s.v]));
      const opts = {
        width: 640, height: 240, tzDate: tzDate(h.timezone), fmtDate: (tpl) => uPlot.fmtDate(dateTemplate(tpl)),
        title: t("chart_title", {unit}),
        series: [{label: t("time")}, ...list.map(([id, s], i) => ({
          label: `${id}.${s.channel}`, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: false,
          value: (u, v) => (v === null || v === undefined ? "–" : `${num(v, 1)} ${unit}`)}))],
        axes: [{label: t("time_axis", {zone: zoneName(h.timezone)})},
               {label: unit, size: 70, values: (u, vals) => vals.map((v) => num(v, 1))}],
      };
      charts.push(new uPlot(opts, data, card));
      card.insertAdjacentHTML("beforeend", `<div class="muted axis-zone">${esc(t("time_axis", {zone: zoneName(h.timezone)}))}</div>`);
    }
  } catch (e) { box.innerHTML = `<div class="muted">${esc(t("charts_unavailable"))}: ${esc(e.message)}</div>`; }
}
const PALETTE = ["#1f6fb2", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#5c940d", "#0b7285", "#e67700"];

function rangeButtons(site) {
  document.querySelectorAll("#ranges button").forEach((b) => {
    b.classList.toggle("on", b.dataset.range === RANGE);
    b.onclick = () => { RANGE = b.dataset.range; rangeButtons(site); loadCharts(site); };
  });
}

async function sitePage(site) {
  await updating(() => loadSite(site));
  rangeButtons(site);
  loadCharts(site);
  setInterval(() => updating(() => loadSite(site)), 15000);
  setInterval(() => loadCharts(site), 60000);
  follow(site);
}

// the live values of a site's devices, over its stream. A stream the server refuses (too many open, the
// token gone) is closed for good by the browser: the page says so and asks again every 30 s
function follow(site, first = true) {
  const es = new EventSource(`/api/stream?site=${encodeURIComponent(site)}`);
  es.addEventListener("error", () => {
    if (es.readyState !== EventSource.CLOSED) return;  // the browser is opening it again by itself
    $("#stream").hidden = false;
    setTimeout(() => follow(site, false), 30000);
  });
  es.addEventListener("reading", (ev) => {
    const r = JSON.parse(ev.data), row = document.getElementById(`dev-${r.device}`);
    if (!row) return;
    row.querySelector(".values").innerHTML = valuesText(r.values, r.quality);
    row.querySelector(".seen").textContent = zoned(r.ts, ZONE, true);
    row.querySelector(".state-cell").innerHTML = stateBadge(r.state);  // the server's state model, not ours
    row.classList.remove("flash"); void row.offsetWidth; row.classList.add("flash");
  });
  // these events have the page read the whole site again; they can come in floods (a gateway flipping its
  // status): one read a second at most. "missed": the stream dropped events, what is shown may be old
  let reload = null;
  const reloadSoon = () => { reload ??= setTimeout(() => { reload = null; updating(() => loadSite(site)); }, 1000); };
  for (const kind of ["alarm", "gateway", "missed"]) es.addEventListener(kind, reloadSoon);
  // the browser opens the stream again by itself (the live view restarted, the network came back), or
  // the page did after a refusal, but nothing of what came meanwhile is sent again: read the site then
  es.addEventListener("open", () => {
    $("#stream").hidden = true;
    if (!first) reloadSoon();
    first = false;
  });
}

async function start(page) {
  await loadMessages();
  if (page === "site") sitePage(location.pathname.split("/").pop());
  else deploymentPage();
}
// the page says which it is (no inline script: the pages' Content-Security-Policy allows none)
start(document.body.dataset.page);
