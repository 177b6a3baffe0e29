// The live view's pages: fetch the JSON API, then follow /api/stream (server-sent events).
"use strict";
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const fmt = (v) => typeof v === "number" ? (Math.abs(v) >= 1000 ? v.toFixed(0) : Number(v.toPrecision(5)).toString()) : esc(v);
const time = (iso) => iso ? new Date(iso).toLocaleString() : "never";
async function api(path) { const r = await fetch(path); if (!r.ok) throw new Error(path + ": " + r.status); return r.json(); }

async function deploymentPage() {
  const data = await api("/api/sites");
  $("#sim").hidden = !data.sites.some((s) => s.simulated);
  $("#sites").innerHTML = data.sites.map((s) => `
    <a class="card" href="/sites/${esc(s.site)}" style="text-decoration:none;color:inherit">
      <h3>${esc(s.name)}</h3><div class="muted">${esc(s.country)} · ${esc(s.methodology)}</div>
      <div>gateway <span class="state ${esc(s.gateway_state)}">${esc(s.gateway_state)}</span></div>
      <div>${Object.entries(s.devices).map(([k, n]) => `<span class="state ${k}">${n} ${k}</span>`).join(" ")}</div>
      <div class="${s.active_alarms ? "alarm-active" : "muted"}">${s.active_alarms} active alarm(s)</div></a>`).join("");
  const alarms = await api("/api/alarms?active=true");
  $("#alarms tbody").innerHTML = alarms.map((a) => `<tr><td>${esc(a.site)}</td><td>${esc(a.subject)}</td>
    <td class="alarm-active">${esc(a.kind)}</td><td>${time(a.started)}</td><td>${esc(a.detail)}</td></tr>`).join("");
  setTimeout(deploymentPage, 5000);
}

function valuesText(values, quality) {
  return Object.entries(values || {}).map(([k, v]) => {
    const q = quality && quality[k] ? ` <span class="alarm-active">[${esc(quality[k])}]</span>` : "";
    return `<span data-channel="${esc(k)}">${esc(k)}=<span class="value">${fmt(v)}</span>${q}</span>`;
  }).join(" &nbsp; ");
}

function renderDevices(devices) {
  $("#devices tbody").innerHTML = devices.map((d) => `<tr id="dev-${esc(d.id)}">
    <td>${esc(d.id)}</td><td>${esc(d.kind)}</td><td><span class="state ${esc(d.state)}">${esc(d.state)}</span></td>
    <td class="seen">${time(d.last_seen)}</td><td class="values">${valuesText(d.values, d.quality)}</td></tr>`).join("");
}

function renderAlarms(alarms) {
  $("#alarms tbody").innerHTML = alarms.map((a) => `<tr class="${a.ended ? "" : "alarm-active"}" data-kind="${esc(a.kind)}">
    <td>${esc(a.subject)}</td><td>${esc(a.kind)}</td><td>${time(a.started)}</td><td>${a.ended ? time(a.ended) : "active"}</td>
    <td>${esc(a.detail)}</td></tr>`).join("");
}

function chart(id, s) {
  const W = 420, H = 150, P = 30;
  if (!s.v.length) return `<div class="card"><h3>${esc(id)}</h3><div class="muted">no data in the window</div></div>`;
  const ts = s.t.map((t) => Date.parse(t)), t0 = Math.min(...ts), t1 = Math.max(...ts) || t0 + 1;
  const lo = Math.min(...s.v), hi = Math.max(...s.v), span = (hi - lo) || 1;
  const pts = ts.map((t, i) => `${P + (W - 2 * P) * (t - t0) / ((t1 - t0) || 1)},${H - P + -(H - 2 * P) * (s.v[i] - lo) / span}`);
  return `<div class="card"><h3>${esc(id)} · ${esc(s.channel)} [${esc(s.unit)}]</h3>
    <svg class="chart" width="${W}" height="${H}"><polyline fill="none" stroke="#1f6fb2" stroke-width="1.5" points="${pts.join(" ")}"/>
    <text x="2" y="${P - 8}" font-size="10">${fmt(hi)}</text><text x="2" y="${H - P + 12}" font-size="10">${fmt(lo)}</text></svg></div>`;
}

async function loadSite(site) {
  const d = await api(`/api/sites/${site}`);
  document.title = `JCM · ${d.name}`;
  $("#title").textContent = d.name;
  $("#meta").textContent = `${d.country} · ${d.methodology} · ${d.timezone}`;
  $("#gw").innerHTML = `gateway ${esc(d.gateway)} <span class="state ${esc(d.gateway_state)}">${esc(d.gateway_state)}</span>`;
  $("#sim").hidden = !d.simulated;
  renderDevices(d.devices);
  renderAlarms(d.alarms.recent);
  $("#today").innerHTML = Object.entries(d.energy_today).map(([k, v]) => `<div>${esc(k)}: <span class="figure">${fmt(v.value)}</span> ${esc(v.unit)}</div>`).join("") || '<span class="muted">no counters today</span>';
  if (d.month_to_date && d.month_to_date.ER !== undefined) {
    $("#mtd").innerHTML = `<span class="figure">${fmt(d.month_to_date.ER_unrounded)}</span> tCO2 through ${esc(d.month_to_date.last)}<div class="muted">provisional</div>`;
  }
  if (d.last_verified) {
    $("#verified").innerHTML = `<span class="figure">${fmt(d.last_verified.ER)}</span> tCO2 in ${esc(d.last_verified.month)} (revision ${d.last_verified.revision})`;
  }
  $("#months tbody").innerHTML = d.months.map((m) => `<tr><td>${esc(m.month)}</td><td>${m.revision}</td><td>${esc(m.status)}</td>
    <td>${fmt(m.ER)}</td><td>${m.signed_off ? "yes" : "no"}</td></tr>`).join("");
}

async function loadCharts(site) {
  try {
    const h = await api(`/api/sites/${site}/history?hours=6`);
    $("#charts").innerHTML = Object.entries(h.series).map(([id, s]) => chart(id, s)).join("");
  } catch (e) { $("#charts").innerHTML = `<div class="muted">charts unavailable: ${esc(e.message)}</div>`; }
}

function sitePage(site) {
  loadSite(site); loadCharts(site);
  setInterval(() => loadSite(site), 15000);
  setInterval(() => loadCharts(site), 60000);
  const es = new EventSource(`/api/stream?site=${encodeURIComponent(site)}`);
  es.addEventListener("reading", (ev) => {
    const r = JSON.parse(ev.data), row = document.getElementById(`dev-${r.device}`);
    if (!row) return;
    row.querySelector(".values").innerHTML = valuesText(r.values, r.quality);
    row.querySelector(".seen").textContent = time(r.ts);
    const st = row.querySelector(".state");
    const state = r.status === "ok" ? (Object.values(r.quality).includes("out_of_range") ? "faulted" : "online") : (r.status === "offline" ? "offline" : "faulted");
    st.className = `state ${state}`; st.textContent = state;
    row.classList.remove("flash"); void row.offsetWidth; row.classList.add("flash");
  });
  es.addEventListener("alarm", () => api(`/api/sites/${site}`).then((d) => renderAlarms(d.alarms.recent)));
  es.addEventListener("gateway", () => loadSite(site));
}
