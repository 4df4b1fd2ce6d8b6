// appion session page: polls the JSON feed, updates counters and table rows in place, draws the
// time-series charts as inline SVG.  No libraries, no external requests.
"use strict";
(function () {
  const cfgEl = document.getElementById("config");
  if (!cfgEl) return;
  const cfg = JSON.parse(cfgEl.textContent);
  const base = "/session/" + cfg.session + "/";
  const tbody = document.getElementById("rows");
  const live = document.getElementById("live");
  const rowHtml = new Map();
  let lastCounts = "";
  let lastSeries = 0;
  let polls = 0;

  function query(extra) {
    const p = new URLSearchParams();
    if (cfg.run !== null && cfg.run !== undefined) p.set("run", cfg.run);
    for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
    const s = p.toString();
    return s ? "?" + s : "";
  }

  // ---------------------------------------------------------------- table rows
  function updateRows(rows) {
    const wanted = new Set(rows.map((r) => String(r.id)));
    for (const tr of Array.from(tbody.children)) {
      if (!wanted.has(tr.dataset.id)) { rowHtml.delete(tr.dataset.id); tr.remove(); }
    }
    let prev = null;
    for (const r of rows) {
      const id = String(r.id);
      let tr = document.getElementById("row-" + id);
      const isNew = !tr;
      if (isNew || rowHtml.get(id) !== r.html) {
        const holder = document.createElement("tbody");
        holder.innerHTML = r.html;
        const fresh = holder.firstElementChild;
        if (tr) tr.replaceWith(fresh);
        tr = fresh;
        rowHtml.set(id, r.html);
        if (isNew && polls > 0) tr.classList.add("flash");
      }
      const expected = prev ? prev.nextElementSibling : tbody.firstElementChild;
      if (expected !== tr) tbody.insertBefore(tr, expected);
      prev = tr;
    }
    const empty = document.getElementById("empty");
    if (empty) empty.style.display = rows.length ? "none" : "";
  }

  function updateSummary(data) {
    for (const [key, text] of Object.entries(data.summary)) {
      const el = document.querySelector('[data-key="' + key + '"]');
      if (el && el.textContent !== text) el.textContent = text;
      if (el && key === "n_failed") el.classList.toggle("bad", text !== "0");
    }
    for (const key of ["runname", "steps", "host", "started"]) {
      const el = document.querySelector('[data-loop="' + key + '"]');
      if (el && el.textContent !== data.loop[key]) el.textContent = data.loop[key];
    }
    const state = document.querySelector('[data-loop="state"]');
    if (state && state.textContent !== data.loop.state) {
      state.textContent = data.loop.state;
      state.className = "badge loop-" + data.loop.state;
    }
    const beat = document.querySelector('[data-loop="heartbeat"]');
    if (beat) beat.textContent = data.loop.heartbeat;
    const dash = document.querySelector('[data-loop="dashboard"]');
    if (dash && data.loop.dashboard_url && !dash.querySelector("a")) {
      const a = document.createElement("a");
      a.href = data.loop.dashboard_url; a.target = "_blank"; a.rel = "noopener"; a.textContent = data.loop.dashboard_url;
      dash.replaceChildren(a);
    }
    const pages = document.getElementById("n-pages");
    if (pages) pages.textContent = data.n_pages;
  }

  async function poll() {
    try {
      const resp = await fetch(base + "rows.json" + query({ page: cfg.page }), { cache: "no-store" });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const data = await resp.json();
      updateSummary(data);
      updateRows(data.rows);
      polls += 1;
      // Charts follow the counts; big sessions reload them at most every 10 s (the whole series is sent).
      const counts = JSON.stringify(data.counts);
      const minGap = data.counts.n_exposures > 500 ? 10000 : 0;
      const since = Date.now() - lastSeries;
      if ((counts !== lastCounts && since >= minGap) || since > 60000) {
        lastCounts = counts;
        loadSeries();
      }
      live.textContent = "live · updated " + new Date().toLocaleTimeString();
      live.classList.remove("stale");
    } catch (err) {
      live.textContent = "not updating: " + err.message;
      live.classList.add("stale");
    } finally {
      setTimeout(poll, cfg.interval_ms);
    }
  }

  // ---------------------------------------------------------------- charts
  function niceStep(range, n) {
    const raw = range / Math.max(1, n);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
  }

  function fmtTick(v, step) {
    const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    return v.toFixed(Math.min(digits, 4));
  }

  function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]); }

  function drawChart(el, values) {
    const W = Math.max(240, el.clientWidth || 400), H = 190;
    const L = 54, R = 12, T = 22, B = 36;
    const pw = W - L - R, ph = H - T - B;
    const n = values.length;
    const pts = [];
    for (let i = 0; i < n; i++) if (values[i] !== null && Number.isFinite(values[i])) pts.push([i + 1, values[i]]);
    let s = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="' +
      esc(el.dataset.title) + '">';
    s += '<text class="title" x="' + L + '" y="14">' + esc(el.dataset.title) + "</text>";
    s += '<text class="count" x="' + (W - R) + '" y="14" text-anchor="end">' + pts.length + " of " + n + "</text>";
    if (!pts.length) {
      s += '<text class="empty" x="' + (L + pw / 2) + '" y="' + (T + ph / 2) + '" text-anchor="middle">no values yet</text>';
      el.innerHTML = s + "</svg>";
      return;
    }
    let lo = Infinity, hi = -Infinity;
    for (const [, v] of pts) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (hi - lo < 1e-9) { const d = Math.abs(hi) * 0.1 || 1; lo -= d; hi += d; }
    const ystep = niceStep(hi - lo, 4);
    lo = Math.floor(lo / ystep) * ystep; hi = Math.ceil(hi / ystep) * ystep;
    const x0 = 1, x1 = Math.max(2, n);
    const X = (x) => L + ((x - x0) / (x1 - x0)) * pw;
    const Y = (y) => T + ph - ((y - lo) / (hi - lo)) * ph;
    for (let v = lo; v <= hi + ystep * 1e-6; v += ystep) {
      const y = Y(v).toFixed(1);
      s += '<line class="gridline" x1="' + L + '" x2="' + (L + pw) + '" y1="' + y + '" y2="' + y + '"/>';
      s += '<text x="' + (L - 6) + '" y="' + y + '" dy="3.5" text-anchor="end">' + fmtTick(v, ystep) + "</text>";
    }
    const xstep = Math.max(1, niceStep(x1 - x0, 5));
    for (let v = Math.ceil(x0 / xstep) * xstep; v <= x1; v += xstep) {
      s += '<text x="' + X(v).toFixed(1) + '" y="' + (T + ph + 14) + '" text-anchor="middle">' + v + "</text>";
    }
    s += '<line class="axis" x1="' + L + '" x2="' + L + '" y1="' + T + '" y2="' + (T + ph) + '"/>';
    s += '<line class="axis" x1="' + L + '" x2="' + (L + pw) + '" y1="' + (T + ph) + '" y2="' + (T + ph) + '"/>';
    s += '<text x="' + (L + pw / 2) + '" y="' + (H - 4) + '" text-anchor="middle">exposure number (order of acquisition)</text>';
    s += '<text transform="translate(12,' + (T + ph / 2) + ') rotate(-90)" text-anchor="middle">' + esc(el.dataset.label) + "</text>";
    let d = "";
    for (const [x, v] of pts) d += "M" + X(x).toFixed(1) + " " + Y(v).toFixed(1) + "h0";
    const dot = pts.length > 2000 ? 2 : pts.length > 300 ? 3 : 5;
    s += '<path class="dots" stroke-width="' + dot + '" d="' + d + '"/>';
    el.innerHTML = s + "</svg>";
  }

  let series = null;
  function drawAll() {
    if (!series) return;
    drawChart(document.getElementById("chart-defocus"), series.defocus_um);
    drawChart(document.getElementById("chart-resolution"), series.resolution_A);
    drawChart(document.getElementById("chart-drift"), series.drift_A);
  }

  async function loadSeries() {
    lastSeries = Date.now();
    try {
      const resp = await fetch(base + "series.json" + query(), { cache: "no-store" });
      if (!resp.ok) return;
      series = await resp.json();
      drawAll();
    } catch (err) { /* the next poll retries */ }
  }

  // A thumbnail that cannot be made (sum not readable) becomes the grey placeholder, not a broken icon.
  function placeholder(img) {
    const span = document.createElement("span");
    span.className = "nothumb";
    span.title = "no thumbnail";
    img.replaceWith(span);
  }
  tbody.addEventListener("error", (e) => { if (e.target.tagName === "IMG") placeholder(e.target); }, true);
  for (const img of Array.from(tbody.querySelectorAll("img"))) {
    if (img.complete && img.naturalWidth === 0 && img.getAttribute("src")) placeholder(img);
  }
  for (const tr of Array.from(tbody.children)) rowHtml.set(tr.dataset.id, tr.outerHTML);
  window.addEventListener("resize", drawAll);
  poll();
})();
