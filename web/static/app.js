// IFP platform: live updates for the server-rendered pages. Every page works without this
// script; with it, the jobs list and the job page refresh themselves, the new-job form's
// preview follows its fields, and charts become interactive (uPlot, vendored in
// web/static/vendor). The server renders every fragment and every chart's data.
"use strict";

const FINAL = ["succeeded", "failed", "cancelled"];

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

async function fetchText(url) {
  const r = await fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } });
  if (r.redirected && new URL(r.url).pathname === "/signin") { location.href = r.url; return null; }
  if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
  return r.text();
}

// The jobs list: re-fetch the table body every few seconds while the tab is visible.
function liveJobList(tbody) {
  let last = tbody.innerHTML;
  const tick = async () => {
    if (document.visibilityState === "visible") {
      try {
        const html = await fetchText(tbody.dataset.live);
        if (html !== null && html !== last) {
          // Keep the rows ticked for "Compare selected" across the refresh.
          const ticked = new Set([...tbody.querySelectorAll("input[name=ids]:checked")].map((c) => c.value));
          tbody.innerHTML = html; last = html;
          tbody.querySelectorAll("input[name=ids]").forEach((c) => { c.checked = ticked.has(c.value); });
        }
      } catch (e) { /* the next tick retries */ }
    }
    const active = tbody.querySelector('tr[data-status="running"], tr[data-status="queued"]');
    setTimeout(tick, active ? 2000 : 8000);
  };
  setTimeout(tick, 2000);
}

// The job page: the job's event stream says when something changed; the page then re-fetches
// its live fragment (charts, samples, checkpoints, attempts) from the server.
function liveJobPage(box) {
  let url = box.dataset.live;
  let busy = false, again = false, source = null;
  const statusNow = () => (box.querySelector("#job-status") || {}).textContent || "";
  const refresh = async () => {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const html = await fetchText(url);
      if (html !== null) { box.innerHTML = html; mountCharts(box); }
    } catch (e) { /* keep the old content */ }
    busy = false;
    if (again) { again = false; refresh(); }
    if (FINAL.includes(statusNow().trim()) && source) { source.close(); source = null; }
  };
  const soon = debounce(refresh, 300);
  box.addEventListener("click", (ev) => {
    const a = ev.target.closest("a.toggle");
    if (!a) return;
    ev.preventDefault();
    url = box.dataset.live.split("?")[0] + (a.dataset.scale === "log" ? "?scale=log" : "");
    history.replaceState(null, "", a.getAttribute("href"));
    refresh();
  });
  if (box.dataset.active !== "true") return;
  if (window.EventSource) {
    source = new EventSource(box.dataset.events);
    for (const kind of ["progress", "checkpoint", "status"]) source.addEventListener(kind, soon);
    source.onerror = () => { if (FINAL.includes(statusNow().trim()) && source) { source.close(); source = null; } };
  } else {
    const poll = async () => { await refresh(); if (!FINAL.includes(statusNow().trim())) setTimeout(poll, 3000); };
    setTimeout(poll, 3000);
  }
}

// Interactive charts. Every server-drawn chart carries its data (`data-chart` on its box);
// with uPlot loaded, it is redrawn as a canvas chart with the values under the cursor, zoom
// (drag across; double-click resets), legend entries that hide and show their line, and an
// exponential-moving-average smoothing slider. The SVG stays for readers without JavaScript.
// What the reader set (zoom, hidden lines, smoothing) survives the live page's refreshes,
// keyed by the chart's title.
const chartState = new Map();

function smooth(ys, weight) {
  if (!weight) return ys;
  // TensorBoard's debiased EMA: early points are not pulled towards zero.
  let last = 0, n = 0;
  return ys.map((y) => {
    if (y === null || !Number.isFinite(y)) return y;
    last = last * weight + (1 - weight) * y; n += 1;
    return last / (1 - Math.pow(weight, n));
  });
}

function seriesNames(box, count) {
  const caption = box.closest("figure")?.querySelector("figcaption");
  return Array.from({ length: count }, (_, i) => caption?.querySelector(`span.s${i}`)?.textContent.trim() || null);
}

// A number with at most `decimals` decimals, trailing zeros dropped.
function trimmed(v, decimals) {
  const s = v.toFixed(Math.min(decimals, 20));
  return s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s;
}

// Axis tick labels with as many digits as the spacing to the nearest neighbouring tick needs,
// so neighbouring labels always differ (as the server's SVG charts label their ticks), plus
// one or two where the spacing needs them to be exact (a spacing of 0.25 shows 0.25, 0.5, 0.75).
function axisLabels(vals) {
  return vals.map((v, i) => {
    if (v === null || v === undefined) return "";
    const gaps = [vals[i - 1], vals[i + 1]].filter((n) => n !== null && n !== undefined && n !== v).map((n) => Math.abs(n - v));
    const step = Math.max(gaps.length ? Math.min(...gaps) : Math.abs(v) || 1, Number.MIN_VALUE);
    // The nudge keeps a spacing of 1e-5 computed as 9.99...e-6 at 1e-5's digits.
    const e = Math.floor(Math.log10(step) + 1e-9);
    const whole = (k) => { const x = step * 10 ** (k - e); return Math.abs(x - Math.round(x)) < 1e-6 * x; };
    const extra = [0, 1].find(whole) ?? 2;
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e4) return `${trimmed(v / 1e3, Math.max(0, 3 - e + extra))}k`;
    if (a < 1e-2) return v.toExponential(Math.min(Math.max(0, Math.floor(Math.log10(a)) - e + extra), 20));
    return trimmed(v, Math.max(0, -e + extra));
  });
}

function mountChart(box) {
  if (!window.uPlot || box.dataset.mounted) return;
  let data;
  try { data = JSON.parse(box.dataset.chart); } catch (e) { return; }
  const svg = box.querySelector("svg");
  const key = svg?.getAttribute("aria-label") || "";
  const state = chartState.get(key) || { smoothing: 0, hidden: new Set(), x: null };
  chartState.set(key, state);
  const names = seriesNames(box, 8);
  const looks = data.series.map((s) => {
    const line = svg?.querySelector(`polyline.line.s${s.style}`);
    const cs = line ? getComputedStyle(line) : null;
    const dash = cs && cs.strokeDasharray !== "none" ? cs.strokeDasharray.split(/[ ,]+/).map(parseFloat).filter(Number.isFinite) : [];
    return { stroke: cs ? cs.stroke : "#1d4ed8", dash };
  });
  const raw = uPlot.join(data.series.map((s) => [s.points.map((p) => p[0]), s.points.map((p) => p[1])]));
  const shown = () => [raw[0], ...raw.slice(1).map((ys) => smooth(ys, state.smoothing))];
  const fmt = (v) => (v === null || v === undefined ? "—" : Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(1) : +v.toPrecision(4));
  const plot = document.createElement("div");
  plot.className = "uplot-box";
  const controls = document.createElement("div");
  controls.className = "chart-controls";
  controls.innerHTML = '<label>Smoothing <input type="range" min="0" max="0.99" step="0.01"></label> <output></output> <span class="hint">drag to zoom, double-click to reset, click a legend entry to hide its line</span>';
  const slider = controls.querySelector("input"), out = controls.querySelector("output");
  slider.value = state.smoothing; out.textContent = state.smoothing.toFixed(2);
  box.append(controls, plot);
  const opts = {
    width: Math.max(plot.clientWidth || box.clientWidth || 600, 200),
    height: 220,
    // Amounts (CPU use, memory) are drawn from zero, as on the server's SVG.
    scales: { x: { time: false }, y: data.log ? { distr: 3 } : data.zero ? { range: (u, min, max) => uPlot.rangeNum(Math.min(0, min), max, 0.1, true) } : {} },
    axes: [
      { label: data.x, stroke: getComputedStyle(box).color },
      { label: data.y, stroke: getComputedStyle(box).color, size: 64, values: (u, vals) => axisLabels(vals) },
    ],
    legend: { live: true },
    cursor: { drag: { x: true, y: false } },
    series: [
      { label: data.x, value: (u, v) => (v === null ? "—" : +v.toPrecision(6)) },
      ...data.series.map((s, i) => ({
        label: names[s.style] || (data.series.length === 1 ? data.y : `series ${i + 1}`),
        stroke: looks[i].stroke, dash: looks[i].dash, width: 2, spanGaps: true,
        points: { show: false }, show: !state.hidden.has(i), value: (u, v) => fmt(v),
      })),
    ],
    hooks: {
      setSeries: [(u, i, o) => { if (i) (o.show ? state.hidden.delete(i - 1) : state.hidden.add(i - 1)); }],
      setScale: [(u, k) => {
        if (k !== "x") return;
        const full = u.data[0].length && u.scales.x.min <= u.data[0][0] && u.scales.x.max >= u.data[0][u.data[0].length - 1];
        state.x = full ? null : [u.scales.x.min, u.scales.x.max];
      }],
    },
  };
  const u = new uPlot(opts, shown(), plot);
  if (state.x) u.setScale("x", { min: state.x[0], max: state.x[1] });
  slider.addEventListener("input", () => {
    state.smoothing = +slider.value; out.textContent = state.smoothing.toFixed(2);
    u.setData(shown(), false); u.redraw();
  });
  new ResizeObserver(() => { const w = box.clientWidth; if (w > 0 && Math.abs(w - u.width) > 2) u.setSize({ width: w, height: 220 }); }).observe(box);
  box.dataset.mounted = "1";
  box.classList.add("interactive");
}

function mountCharts(root) {
  root.querySelectorAll(".chart-box[data-chart]").forEach(mountChart);
}

// The new-job form: picking a preset loads its values; the preview follows the fields.
function newJobForm(form) {
  const loadButton = form.querySelector('button[value="load"]');
  const preset = form.querySelector("select[data-autoload]");
  const yaml = form.querySelector("#f-config_yaml");
  const yamlFile = form.querySelector("#f-config_file");
  const noiseFile = form.querySelector("#f-noise_file");
  const check = (id) => { const r = form.querySelector(id); if (r) r.checked = true; };
  if (preset && loadButton) preset.addEventListener("change", () => { check("#src-preset"); form.requestSubmit(loadButton); });
  if (yaml) yaml.addEventListener("input", () => check("#src-yaml"));
  if (yamlFile) yamlFile.addEventListener("change", () => { check("#src-yaml"); if (yamlFile.files.length) form.requestSubmit(loadButton); });
  if (noiseFile) noiseFile.addEventListener("change", () => check("#noise-up"));

  const box = document.getElementById("preview-box");
  const err = document.getElementById("preview-error");
  let img = document.getElementById("preview");
  let shown = null;
  const update = debounce(async () => {
    const data = new FormData(form);
    data.set("action", "preview");
    try {
      const r = await fetch("/jobs/new/preview", { method: "POST", body: data, credentials: "same-origin" });
      if (!r.ok) { err.textContent = await r.text(); err.hidden = false; return; }
      const blob = await r.blob();
      if (!img) {
        img = document.createElement("img");
        img.id = "preview";
        img.alt = "Preview of one training example";
        const missing = document.getElementById("preview-missing");
        if (missing) missing.remove();
        box.prepend(img);
      }
      if (shown) URL.revokeObjectURL(shown);
      shown = URL.createObjectURL(blob);
      img.src = shown;
      err.hidden = true;
    } catch (e) { err.textContent = "Preview unavailable: " + e.message; err.hidden = false; }
  }, 500);
  form.addEventListener("input", (ev) => { if (ev.target !== yaml) update(); });
  form.addEventListener("change", (ev) => { if (ev.target === noiseFile || ev.target.name === "noise_source") update(); });
}

// The comparison form: a comparison that starts from a finished job uses that job's network and
// weights, so its preset and steps do not apply; they are disabled (and so not sent) meanwhile.
function compareForm(form) {
  const init = form.querySelector("#c-init");
  const moot = ["#c-preset", "#c-steps"].map((id) => form.querySelector(id)).filter(Boolean);
  if (!init) return;
  const sync = () => moot.forEach((field) => { field.disabled = init.value !== ""; });
  init.addEventListener("change", sync);
  sync();
}

document.addEventListener("DOMContentLoaded", () => {
  mountCharts(document);
  const rows = document.querySelector("#job-rows[data-live]");
  if (rows) liveJobList(rows);
  const live = document.querySelector("#live[data-live]");
  if (live) liveJobPage(live);
  const form = document.getElementById("new-job");
  if (form) newJobForm(form);
  const compare = document.getElementById("new-compare");
  if (compare) compareForm(compare);
});
