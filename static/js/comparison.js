// The comparison page. The table is written by the server (the comparison selector's figures, formatted in
// Python); this script draws the charts from the same selector dict, swaps the table in place when the baseline
// or the price changes, and follows running trials: every message on a running trial's socket
// (ws/trials/<code>/) asks the page's data view for the comparison again (at once, then at most every 0.75 s),
// and redraws.
// Finished trials are final; once none is queued or running, the sockets close.
(function () {
  "use strict";

  const dataEl = document.getElementById("comparison-data");
  const body = document.getElementById("cmp-body");
  if (!dataEl || !body || typeof Chart === "undefined") {
    return;
  }
  let data = JSON.parse(dataEl.textContent);
  const FINISHED = ["succeeded", "failed", "cancelled"];
  const PALETTE = ["#3558c8", "#e07b16", "#1d7a46", "#c4312b", "#7b4bc4", "#0f8aa3", "#b8479b", "#6b7d12",
    "#8a5a2b", "#4a5568"];
  const VERDICT_COLORS = { met: "#1d7a46", not_met: "#c4312b", inconclusive: "#d08a00" };
  const BREAKDOWN_COLORS = { dispatch_lag: "#9aa4b5", cold_start: "#e07b16", platform_delay_modelled: "#f4c48a",
    batch_wait: "#7b4bc4", queue_wait: "#c4312b", compute: "#3558c8" };
  const expanded = new Set(); // row keys whose repeats are open, kept across re-renders
  const charts = {};
  // Paint timing, for the browser test and anyone curious: each redraw caused by live windows records
  // which windows it waited for (when their messages arrived) and when the redraw was painted.
  const perf = { renders: [], pendingWindows: [] };
  window.slsbenchComparison = perf;

  // ---- helpers -------------------------------------------------------------------------------------------
  function color(key) {
    const i = data.rows.findIndex(function (r) { return r.key === key; });
    return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
  }
  function xy(points) {
    return points.map(function (p) { return { x: p[0], y: p[1] }; });
  }
  function msText(v) {
    if (v === null || v === undefined) { return "beyond the run"; }
    return (Math.abs(v) >= 100 ? Math.round(v).toLocaleString("en-US") : Number(v.toPrecision(3))) + " ms";
  }
  function usdText(v) {
    if (v === null || v === undefined) { return "—"; }
    return "$" + (Math.abs(v) >= 1 ? v.toFixed(2) : Number(v.toPrecision(3)).toString());
  }
  function baseOptions(extra) {
    return Object.assign({
      animation: false, responsive: true, maintainAspectRatio: false, parsing: false, normalized: true,
      interaction: { mode: "nearest", intersect: false },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12, font: { size: 11 } } } },
    }, extra || {});
  }
  function sloLine(label, points) {
    return { label: label, data: points, borderColor: "#555", borderDash: [6, 4], borderWidth: 1.5, pointRadius: 0,
      showLine: true, fill: false, type: "line" };
  }

  // ---- chart configurations, from the selector's dict ----------------------------------------------------
  function cdfConfig() {
    const c = data.charts.cdf;
    const slo = data.slo;
    const datasets = c.series.map(function (s) {
      const short = s.reaches !== null && s.reaches < 1 ? " (reaches " + (s.reaches * 100).toPrecision(3) + " %)" : "";
      return { label: s.label + short, data: xy(s.points.filter(function (p) { return p[0] > 0; })),
        borderColor: color(s.key), backgroundColor: color(s.key), pointRadius: 0, borderWidth: 1.8, stepped: "after" };
    });
    let xmax = slo.latency_ms;
    let xmin = slo.latency_ms;
    c.series.forEach(function (s) {
      s.points.forEach(function (p) { if (p[0] > 0) { xmax = Math.max(xmax, p[0]); xmin = Math.min(xmin, p[0]); } });
    });
    datasets.push(sloLine("SLO " + msText(slo.latency_ms), [{ x: slo.latency_ms, y: 0 }, { x: slo.latency_ms, y: 1 }]));
    datasets.push(Object.assign(sloLine(slo.label + " (" + slo.percentile + " %)",
      [{ x: xmin, y: slo.percentile / 100 }, { x: xmax, y: slo.percentile / 100 }]), { borderColor: "#aaa", borderDash: [2, 3] }));
    return { type: "line", data: { datasets: datasets }, options: baseOptions({
      scales: { x: { type: "logarithmic", title: { display: true, text: "latency (ms, log scale)" } },
        y: { min: 0, max: 1, title: { display: true, text: "share of all requests done" } } },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12, font: { size: 11 } } },
        tooltip: { callbacks: { label: function (ctx) {
          return ctx.dataset.label + ": " + msText(ctx.parsed.x) + " → " + (ctx.parsed.y * 100).toPrecision(4) + " %";
        } } } } }) };
  }

  function paretoConfig() {
    const p = data.pareto;
    const scale = data.display.cost_scale;
    const f = scale.factor;
    const points = p.points.map(function (pt) {
      return { x: pt.x * f, y: pt.y, key: pt.key, label: pt.label, verdict: pt.verdict, front: pt.on_front };
    });
    const datasets = [{
      label: "variants (colour: SLO verdict)", type: "scatter", data: points,
      pointBackgroundColor: points.map(function (pt) { return VERDICT_COLORS[pt.verdict] || "#9aa4b5"; }),
      pointBorderColor: points.map(function (pt) { return color(pt.key); }),
      pointBorderWidth: 2, pointRadius: points.map(function (pt) { return pt.front ? 7 : 5; }),
      pointStyle: points.map(function (pt) { return pt.front ? "rectRot" : "circle"; }),
    }];
    const front = p.front.map(function (k) { return points.find(function (pt) { return pt.key === k; }); })
      .filter(Boolean).sort(function (a, b) { return a.x - b.x; });
    datasets.push({ label: "Pareto front", type: "line", data: front, borderColor: "#1d2330", borderWidth: 2,
      pointRadius: 0, fill: false });
    let xmin = 0;
    let xmax = 0;
    points.forEach(function (pt) { xmax = Math.max(xmax, pt.x); });
    xmax = xmax > 0 ? xmax * 1.1 : 1;
    datasets.push(sloLine("SLO " + msText(p.slo_ms), [{ x: xmin, y: p.slo_ms }, { x: xmax, y: p.slo_ms }]));
    return { type: "scatter", data: { datasets: datasets }, options: baseOptions({
      scales: { x: { type: "linear", min: 0, title: { display: true, text: "serverless cost " + scale.label + " ($)" } },
        y: { beginAtZero: true, title: { display: true, text: data.slo.label + " (ms)" } } },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12, font: { size: 11 } } },
        tooltip: { callbacks: { label: function (ctx) {
          const r = ctx.raw;
          if (r.label === undefined) { return ctx.dataset.label; }
          return r.label + ": " + data.slo.label + " " + msText(r.y) + ", " + usdText(r.x) + " " + scale.label +
            (r.front ? " (on the front)" : "") + (r.verdict ? ", " + r.verdict.replace("_", " ") : "");
        } } } } }) };
  }

  function breakdownConfig() {
    const b = data.charts.breakdown;
    const labels = b.series.map(function (s) { return s.label; });
    const datasets = b.components.map(function (k) {
      const modelled = b.modelled.indexOf(k) >= 0;
      return { label: b.labels[k] + (modelled ? " (MODELLED)" : ""), backgroundColor: BREAKDOWN_COLORS[k] || "#888",
        data: b.series.map(function (s, i) { return { x: i, y: s.values[k] === null ? 0 : s.values[k] }; }),
        borderWidth: 0 };
    });
    return { type: "bar", data: { labels: labels, datasets: datasets }, options: baseOptions({
      parsing: true, interaction: { mode: "index", intersect: false },
      scales: { x: { stacked: true, type: "category", labels: labels },
        y: { stacked: true, beginAtZero: true, title: { display: true, text: "ms per request (median of repeats)" } } } }) };
  }

  function p99Config() {
    const c = data.charts.p99_over_time;
    let tmax = 0;
    const datasets = c.series.map(function (s) {
      s.points.forEach(function (p) { tmax = Math.max(tmax, p[0]); });
      return { label: s.label + (s.repeat !== null ? " (repeat " + s.repeat + ")" : ""), data: xy(s.points),
        borderColor: color(s.key), backgroundColor: color(s.key), pointRadius: 0, borderWidth: 1.6, spanGaps: false };
    });
    datasets.push(sloLine("SLO " + msText(c.slo_ms), [{ x: 0, y: c.slo_ms }, { x: Math.max(tmax, 1), y: c.slo_ms }]));
    return { type: "line", data: { datasets: datasets }, options: baseOptions({
      scales: { x: { type: "linear", min: 0, title: { display: true, text: "time into the run (s)" } },
        y: { beginAtZero: true, title: { display: true, text: "p99 of each second (ms)" } } } }) };
  }

  function instancesConfig() {
    const c = data.charts.instances;
    const datasets = [];
    c.series.forEach(function (s) {
      const total = {};
      const line = s.points.map(function (p) {
        const n = p[1] + p[2] + p[3];
        total[p[0]] = n;
        return { x: p[0], y: n };
      });
      datasets.push({ label: s.label, data: line, borderColor: color(s.key), backgroundColor: color(s.key),
        pointRadius: 0, borderWidth: 1.6, stepped: "before" });
      if (s.cold_starts.length) {
        datasets.push({ label: s.label + ": cold starts", type: "scatter", showLine: false,
          data: s.cold_starts.map(function (p) { return { x: p[0], y: total[p[0]] !== undefined ? total[p[0]] : 0, n: p[1] }; }),
          pointStyle: "triangle", pointRadius: 6, borderColor: color(s.key), backgroundColor: color(s.key) });
      }
    });
    return { type: "line", data: { datasets: datasets }, options: baseOptions({
      scales: { x: { type: "linear", min: 0, title: { display: true, text: "time into the run (s)" } },
        y: { beginAtZero: true, title: { display: true, text: "instances (starting + idle + busy)" } } },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12, font: { size: 11 } } },
        tooltip: { callbacks: { label: function (ctx) {
          const r = ctx.raw;
          return ctx.dataset.label + ": " + (r.n !== undefined ? r.n + " at " + r.x + " s" : r.y + " at " + r.x + " s");
        } } } } }) };
  }

  const CHARTS = { "chart-cdf": cdfConfig, "chart-pareto": paretoConfig, "chart-breakdown": breakdownConfig,
    "chart-p99-time": p99Config, "chart-instances": instancesConfig,
    "chart-knee": function () { return window.slsbenchKneeConfig(data.charts.knee); } };

  function drawCharts() {
    if (!data.charts) { return; }
    Object.keys(CHARTS).forEach(function (id) {
      const canvas = document.getElementById(id);
      if (!canvas) { return; }
      const cfg = CHARTS[id]();
      if (charts[id]) {
        charts[id].data = cfg.data;
        charts[id].options = cfg.options;
        charts[id].update("none");
      } else {
        charts[id] = new Chart(canvas, cfg);
      }
    });
    const unit = document.getElementById("chart-pareto-unit");
    if (unit) { unit.textContent = data.display.cost_scale.label; }
    const knee = document.getElementById("cmp-knee");
    if (knee) {
      knee.hidden = !data.charts.knee.series.length;
      knee.dataset.points = String(data.charts.knee.series.reduce(function (n, s) { return n + s.points.length; }, 0));
    }
  }

  // ---- the table: repeats open on a click ------------------------------------------------------------------
  function setOpen(row, open) {
    const detail = document.getElementById(row.getAttribute("aria-controls"));
    row.setAttribute("aria-expanded", open ? "true" : "false");
    if (detail) { detail.hidden = !open; }
    if (open) { expanded.add(row.dataset.key); } else { expanded.delete(row.dataset.key); }
  }
  function restoreOpen() {
    body.querySelectorAll("tr.cmp-row").forEach(function (row) {
      if (expanded.has(row.dataset.key)) { setOpen(row, true); }
    });
  }
  body.addEventListener("click", function (event) {
    if (event.target.closest("a, button, form, input, select")) { return; }
    const row = event.target.closest("tr.cmp-row");
    if (row) { setOpen(row, row.getAttribute("aria-expanded") !== "true"); }
  });
  body.addEventListener("keydown", function (event) {
    const row = event.target.closest && event.target.closest("tr.cmp-row");
    if (row && event.target === row && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      setOpen(row, row.getAttribute("aria-expanded") !== "true");
    }
  });

  // ---- re-fetching the comparison ----------------------------------------------------------------------------
  const pickers = document.getElementById("cmp-pickers");
  function query() {
    const params = new URLSearchParams();
    const run = document.getElementById("pick-run");
    const baseline = document.getElementById("pick-baseline");
    const price = document.getElementById("pick-price");
    if (run && run.value) { params.set("run", run.value); }
    if (baseline && baseline.value) { params.set("baseline", baseline.value); }
    if (price && price.value) { params.set("price", price.value); }
    return params.toString();
  }

  let seq = 0; // the latest request; an older answer arriving after it is dropped
  let applied = 0;
  let inFlight = false;
  let again = false;
  let timer = null;
  let lastStart = -Infinity;
  let notBefore = 0; // after a failed refresh: not before this (performance.now() ms)

  function refresh(cause) {
    const mine = ++seq;
    const windows = perf.pendingWindows;
    perf.pendingWindows = [];
    inFlight = true;
    lastStart = performance.now();
    const asked = Date.now();
    const qs = query();
    return fetch(body.dataset.url + (qs ? "?" + qs : ""), { credentials: "same-origin",
      headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status)); })
      .then(function (answer) {
        if (mine < applied) { return; }
        applied = mine;
        data = answer.comparison;
        body.innerHTML = answer.html;
        restoreOpen();
        drawCharts();
        updateLive();
        const baseline = document.getElementById("pick-baseline");
        if (baseline && data.baseline && baseline.value !== data.baseline) { baseline.value = data.baseline; }
        document.body.dataset.cmpRenders = String(Number(document.body.dataset.cmpRenders || "0") + 1);
        // The frame after this one is painted with the new table and charts.
        window.requestAnimationFrame(function () {
          window.setTimeout(function () {
            perf.renders.push({ cause: cause, windows: windows, asked: asked, painted: Date.now(),
              server_ms: answer.server_ms, live: data.live });
            document.body.dataset.cmpPainted = String(perf.renders.length);
          }, 0);
        });
      })
      .catch(function (err) {
        perf.pendingWindows = windows.concat(perf.pendingWindows);
        setState("Could not refresh (" + err.message + "); retrying in a few seconds.");
        notBefore = performance.now() + 3000;
        again = true;
      })
      .finally(function () {
        inFlight = false;
        if (again) { again = false; schedule("live"); }
      });
  }

  // Live updates: the first refresh at once, then at most one every MIN_GAP_MS. Not a full second: windows come
  // once a second, and a 1 s gap against a 1 s arrival rate is a queue at full load, where a refresh that once
  // starts late keeps every later one late (measured: publish -> paint grew from 0.3 s to 0.9 s).
  const MIN_GAP_MS = 750;
  function schedule(cause) {
    if (timer !== null) { return; }
    if (inFlight) { again = true; return; }
    const now = performance.now();
    const wait = Math.max(0, lastStart + MIN_GAP_MS - now, notBefore - now);
    timer = window.setTimeout(function () { timer = null; refresh(cause || "live"); }, wait);
  }

  if (pickers) {
    pickers.addEventListener("change", function (event) {
      if (event.target.id === "pick-run") {
        pickers.submit(); // another run: other trials, other sockets; load its page
        return;
      }
      const qs = query();
      window.history.replaceState(null, "", body.dataset.pageUrl + (qs ? "?" + qs : ""));
      setState("Updating…");
      refresh(event.target.id === "pick-price" ? "price" : "baseline").then(function () { setState(liveText()); });
    });
  }

  function setState(text) {
    const el = document.getElementById("cmp-live-state");
    if (el) { el.textContent = text; }
  }
  function liveText() {
    return data.live ? data.live_trials.length + " trial" + (data.live_trials.length === 1 ? "" : "s") +
      " still queued or running: updating live" : "";
  }

  // ---- sockets of the trials still queued or running -----------------------------------------------------------
  const sockets = new Map(); // trial code -> WebSocket
  function connect(code) {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + "/ws/trials/" + code + "/");
    sockets.set(code, socket);
    socket.onopen = function () { document.body.dataset.cmpSockets = String(openSockets()); };
    socket.onmessage = function (event) {
      const msg = JSON.parse(event.data);
      if (msg.kind === "window") {
        perf.pendingWindows.push({ trial: code, index: msg.index, received: Date.now() });
        schedule("window");
      } else if (msg.kind === "status" || (msg.kind === "snapshot" && msg.status &&
                 (msg.status.status !== "queued" || msg.windows.length))) {
        schedule(msg.kind);
      }
      if (msg.status && FINISHED.indexOf(msg.status.status) >= 0) {
        socket.close();
      }
    };
    socket.onclose = function (event) {
      if (sockets.get(code) === socket) { sockets.delete(code); }
      document.body.dataset.cmpSockets = String(openSockets());
      if (event.code === 4401 || event.code === 4404) { return; }
      // Still live according to the last answer: reconnect (the snapshot fills the gap).
      if (data.live_trials.indexOf(code) >= 0) {
        window.setTimeout(function () { if (!sockets.has(code) && data.live_trials.indexOf(code) >= 0) { connect(code); } }, 1000);
      }
    };
  }
  function openSockets() {
    let n = 0;
    sockets.forEach(function (s) { if (s.readyState === WebSocket.OPEN) { n += 1; } });
    return n;
  }
  function updateLive() {
    (data.live_trials || []).forEach(function (code) { if (!sockets.has(code)) { connect(code); } });
    sockets.forEach(function (socket, code) {
      if (data.live_trials.indexOf(code) < 0) { socket.close(); }
    });
    document.body.dataset.cmpLive = data.live ? "1" : "0";
    setState(liveText());
  }

  drawCharts();
  updateLive();
  document.body.dataset.cmpReady = "1";
})();
