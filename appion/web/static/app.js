// appion session page: polls the JSON feed, updates counters, filters, pager and table rows in place, draws the
// time-series charts (with the curation thresholds in force) and the backlog / lag over time as inline SVG.
// No libraries, no external requests.
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
    for (const [k, v] of Object.entries(extra || {})) if (v !== null && v !== undefined) p.set(k, v);
    const s = p.toString();
    return s ? "?" + s : "";
  }

  function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]); }

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

  function setText(el, text) { if (el && el.textContent !== String(text)) el.textContent = text; }

  function updateDashboard(loop) {
    const dash = document.querySelector('[data-loop="dashboard"]');
    if (!dash) return;
    const link = dash.querySelector("a");
    if (loop.dashboard_url) {
      if (!link || link.getAttribute("href") !== loop.dashboard_url) {
        const a = document.createElement("a");
        a.href = loop.dashboard_url; a.target = "_blank"; a.rel = "noopener"; a.textContent = loop.dashboard_url;
        dash.replaceChildren(a);
      }
      return;
    }
    // the loop ended (or records no address): no link to a dashboard that is gone
    const text = loop.dashboard || loop.dashboard_note || "";
    if (link || dash.textContent !== text) {
      const span = document.createElement("span");
      if (!loop.dashboard) span.className = "muted";
      span.textContent = text;
      dash.replaceChildren(span);
    }
  }

  function updatePager(data) {
    setText(document.getElementById("page-no"), data.page);
    setText(document.getElementById("n-pages"), data.n_pages);
    cfg.page = data.page;
    const pager = document.getElementById("pager");
    if (!pager) return;
    for (const [which, href, label, before] of [["prev", data.prev, "‹ newer", true], ["next", data.next, "older ›", false]]) {
      let a = pager.querySelector('[data-page="' + which + '"]');
      if (!href) { if (a) a.remove(); continue; }
      if (!a) {
        a = document.createElement("a");
        a.dataset.page = which;
        a.textContent = label;
        if (before) pager.prepend(a, " "); else pager.append(" ", a);
      }
      if (a.getAttribute("href") !== href) a.setAttribute("href", href);
    }
  }

  function updateSummary(data) {
    for (const [key, text] of Object.entries(data.summary)) {
      const el = document.querySelector('[data-key="' + key + '"]');
      setText(el, text);
      if (el && key === "n_failed") el.classList.toggle("bad", text !== "0");
    }
    for (const key of ["runname", "steps", "host", "started"]) {
      setText(document.querySelector('[data-loop="' + key + '"]'), data.loop[key]);
    }
    const state = document.querySelector('[data-loop="state"]');
    if (state && state.textContent !== data.loop.state) {
      state.textContent = data.loop.state;
      state.className = "badge loop-" + data.loop.state;
    }
    setText(document.querySelector('[data-loop="heartbeat"]'), data.loop.heartbeat);
    updateDashboard(data.loop);
    for (const [name, count] of Object.entries(data.filters || {})) {
      setText(document.querySelector('[data-filter-count="' + name + '"]'), count);
    }
    updatePager(data);
  }

  async function poll() {
    try {
      const resp = await fetch(base + "rows.json" + query({ page: cfg.page, show: cfg.show === "all" ? null : cfg.show }),
                               { cache: "no-store" });
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

  function fmtLimit(v) { return Math.abs(v) >= 100 ? v.toFixed(0) : String(Number(v.toPrecision(3))); }

  // spec: {title, label, xlabel, x0, x1, points: [[x, y, rejected]], limits: [[xa, xb, y]] | null, step: bool}
  function drawChart(el, spec) {
    const W = Math.max(240, el.clientWidth || 400), H = 190;
    const L = 54, R = 12, T = 22, B = 36;
    const pw = W - L - R, ph = H - T - B;
    const pts = spec.points;
    let s = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="' +
      esc(spec.title) + '">';
    s += '<text class="title" x="' + L + '" y="14">' + esc(spec.title) + "</text>";
    s += '<text class="count" x="' + (W - R) + '" y="14" text-anchor="end">' + esc(spec.count) + "</text>";
    if (!pts.length) {
      s += '<text class="empty" x="' + (L + pw / 2) + '" y="' + (T + ph / 2) + '" text-anchor="middle">no values yet</text>';
      el.innerHTML = s + "</svg>";
      return;
    }
    let lo = Infinity, hi = -Infinity;
    for (const p of pts) { if (p[1] < lo) lo = p[1]; if (p[1] > hi) hi = p[1]; }
    for (const [, , y] of spec.limits || []) { if (y < lo) lo = y; if (y > hi) hi = y; }
    if (spec.zero) lo = Math.min(lo, 0);
    if (hi - lo < 1e-9) { const d = Math.abs(hi) * 0.1 || 1; lo -= d; hi += d; }
    const ystep = Math.max(spec.integerY ? 1 : 0, niceStep(hi - lo, 4));
    lo = Math.floor(lo / ystep) * ystep; hi = Math.ceil(hi / ystep) * ystep;
    const x0 = spec.x0, x1 = spec.x1 > spec.x0 ? spec.x1 : spec.x0 + 1;
    const X = (x) => L + ((x - x0) / (x1 - x0)) * pw;
    const Y = (y) => T + ph - ((y - lo) / (hi - lo)) * ph;
    for (let v = lo; v <= hi + ystep * 1e-6; v += ystep) {
      const y = Y(v).toFixed(1);
      s += '<line class="gridline" x1="' + L + '" x2="' + (L + pw) + '" y1="' + y + '" y2="' + y + '"/>';
      s += '<text x="' + (L - 6) + '" y="' + y + '" dy="3.5" text-anchor="end">' + fmtTick(v, ystep) + "</text>";
    }
    const xstep = Math.max(spec.integerX ? 1 : 1e-9, niceStep(x1 - x0, 5));
    for (let v = Math.ceil(x0 / xstep) * xstep; v <= x1 + xstep * 1e-6; v += xstep) {
      s += '<text x="' + X(v).toFixed(1) + '" y="' + (T + ph + 14) + '" text-anchor="middle">' + fmtTick(v, xstep) + "</text>";
    }
    s += '<line class="axis" x1="' + L + '" x2="' + L + '" y1="' + T + '" y2="' + (T + ph) + '"/>';
    s += '<line class="axis" x1="' + L + '" x2="' + (L + pw) + '" y1="' + (T + ph) + '" y2="' + (T + ph) + '"/>';
    s += '<text x="' + (L + pw / 2) + '" y="' + (H - 4) + '" text-anchor="middle">' + esc(spec.xlabel) + "</text>";
    s += '<text transform="translate(12,' + (T + ph / 2) + ') rotate(-90)" text-anchor="middle">' + esc(spec.label) + "</text>";
    if (spec.step) {
      let d = "M" + X(pts[0][0]).toFixed(1) + " " + Y(pts[0][1]).toFixed(1);
      for (let i = 1; i < pts.length; i++) d += "H" + X(pts[i][0]).toFixed(1) + "V" + Y(pts[i][1]).toFixed(1);
      s += '<path class="line" d="' + d + '"/>';
    } else {
      let kept = "", rejected = "";
      for (const [x, v, rej] of pts) {
        const seg = "M" + X(x).toFixed(1) + " " + Y(v).toFixed(1) + "h0";
        if (rej) rejected += seg; else kept += seg;
      }
      const dot = pts.length > 2000 ? 2 : pts.length > 300 ? 3 : 5;
      if (kept) s += '<path class="dots" stroke-width="' + dot + '" d="' + kept + '"/>';
      if (rejected) s += '<path class="dots rejected" stroke-width="' + dot + '" d="' + rejected + '"/>';
    }
    for (const [xa, xb, y] of spec.limits || []) {
      const ya = Y(y).toFixed(1);
      s += '<path class="limit" data-limit="' + y + '" d="M' + Math.max(L, X(xa)).toFixed(1) + " " + ya + "H" +
        Math.min(L + pw, X(xb)).toFixed(1) + '"><title>limit ' + esc(fmtLimit(y)) + "</title></path>";
    }
    const lims = spec.limits || [];
    if (lims.length) {
      const [, xb, y] = lims[lims.length - 1];
      s += '<text class="limit-label" x="' + (Math.min(L + pw, X(xb)) - 2).toFixed(1) + '" y="' + (Y(y) - 3).toFixed(1) +
        '" text-anchor="end">limit ' + esc(fmtLimit(y)) + "</text>";
    }
    el.innerHTML = s + "</svg>";
  }

  // The limit each exposure was judged under, as horizontal segments over runs of equal limits.
  function limitSegments(limits) {
    const out = [];
    if (!limits) return out;
    for (let i = 0; i < limits.length; i++) {
      const y = limits[i];
      if (y === null || !Number.isFinite(y)) continue;
      const last = out[out.length - 1];
      if (last && last[2] === y && last[1] === i + 0.5) last[1] = i + 1.5;
      else out.push([i + 0.5, i + 1.5, y]);
    }
    return out;
  }

  function chartBox(key) {
    let el = document.getElementById("chart-" + key);
    if (!el) {
      const fig = document.createElement("figure");
      fig.className = "chart";
      el = document.createElement("div");
      el.id = "chart-" + key;
      fig.appendChild(el);
      document.getElementById("charts").appendChild(fig);
    }
    return el;
  }

  let series = null;
  function drawAll() {
    if (!series) return;
    const holder = document.getElementById("charts-empty");
    if (holder) holder.remove();
    const n = series.ids.length;
    const verdict = series.verdict || [];
    for (const c of series.charts) {
      const pts = [];
      for (let i = 0; i < n; i++) {
        const v = c.values[i];
        if (v !== null && Number.isFinite(v)) pts.push([i + 1, v, verdict[i] === "rejected"]);
      }
      const nRejected = pts.filter((p) => p[2]).length;
      drawChart(chartBox(c.key), {
        title: c.title, label: c.label, xlabel: "exposure number (order of acquisition)", x0: 1, x1: Math.max(2, n),
        points: pts, limits: limitSegments(c.limits), integerX: true,
        count: pts.length + " of " + n + (nRejected ? " · " + nRejected + " rejected" : "")});
    }
    const tl = series.timeline;
    if (tl) {
      const end = tl.backlog.length ? tl.backlog[tl.backlog.length - 1][0] : 1;
      const peak = tl.backlog.reduce((m, p) => Math.max(m, p[1]), 0);
      drawChart(chartBox("backlog"), {
        title: "Backlog", label: "registered, not finished", xlabel: "minutes since the run started",
        x0: 0, x1: Math.max(end, 1 / 60), points: tl.backlog, step: true, zero: true, integerY: true,
        count: "now " + (tl.backlog.length ? tl.backlog[tl.backlog.length - 1][1] : 0) + " · peak " + peak});
      const lag = tl.lag;
      const median = lag.length ? lag.map((p) => p[1]).sort((a, b) => a - b)[Math.floor(lag.length / 2)] : null;
      drawChart(chartBox("lag"), {
        title: "Lag, arrival → done", label: "lag (s)", xlabel: "minutes since the run started (when done)",
        x0: 0, x1: Math.max(end, 1 / 60), points: lag.map((p) => [p[0], p[1], false]), zero: true,
        count: lag.length + " done" + (median !== null ? " · median " + median.toFixed(0) + " s" : "")});
    }
    const th = document.getElementById("thresholds-text");
    if (th) th.textContent = series.thresholds_text || "none recorded yet";
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
