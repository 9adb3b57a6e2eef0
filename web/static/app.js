// IFP platform: live updates for the server-rendered pages. Every page works without this
// script; with it, the jobs list and the job page refresh themselves, and the new-job form's
// preview follows its fields. The server renders every fragment, so this file only fetches
// and swaps HTML.
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
      if (html !== null) box.innerHTML = html;
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

document.addEventListener("DOMContentLoaded", () => {
  const rows = document.querySelector("#job-rows[data-live]");
  if (rows) liveJobList(rows);
  const live = document.querySelector("#live[data-live]");
  if (live) liveJobPage(live);
  const form = document.getElementById("new-job");
  if (form) newJobForm(form);
});
