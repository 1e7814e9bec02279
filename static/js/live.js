// The trial page's charts. A finished trial draws its stored windows; a running one also listens on
// ws/trials/<code>/ and adds a point per second. Windows are keyed by their index, so one that arrives
// both in the connect snapshot and as a live event is drawn once.
(function () {
  "use strict";

  const dataEl = document.getElementById("trial-data");
  if (!dataEl || typeof Chart === "undefined") {
    return;
  }
  const cfg = JSON.parse(dataEl.textContent);
  const windows = new Map(); // index -> window dict
  const FINISHED = ["succeeded", "failed", "cancelled"];
  let status = cfg.status;

  const palette = {
    p50: "#2f7ed8", p95: "#f28f43", p99: "#c0392b", slo: "#555555",
    offered: "#8e8e8e", completed: "#2e8b57", queue: "#6a5acd",
    starting: "#f4b942", idle: "#9ecae1", busy: "#3182bd",
    cpu: "#2f7ed8", gpu: "#8e44ad", cost: "#2e8b57",
  };

  function series(label, color, extra) {
    return Object.assign({
      label: label, data: [], borderColor: color, backgroundColor: color + "33",
      pointRadius: 0, borderWidth: 2, tension: 0.15, spanGaps: false,
    }, extra || {});
  }

  function makeChart(id, datasets, yTitle, options) {
    const canvas = document.getElementById(id);
    if (!canvas) {
      return null;
    }
    const opts = options || {};
    return new Chart(canvas, {
      type: "line",
      data: { datasets: datasets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
        scales: {
          x: { type: "linear", title: { display: true, text: "time (s)" }, min: 0 },
          y: Object.assign({ beginAtZero: true, title: { display: true, text: yTitle } },
            opts.stacked ? { stacked: true } : {}),
        },
      },
    });
  }

  const slo = cfg.slo || {};
  const charts = {
    latency: makeChart("chart-latency", [
      series("p50", palette.p50), series("p95", palette.p95), series("p99", palette.p99),
      series("SLO " + (slo.latency_ms || "") + " ms", palette.slo, { borderDash: [6, 4], borderWidth: 1.5 }),
    ], "ms"),
    throughput: makeChart("chart-throughput", [
      series("offered", palette.offered, { borderDash: [4, 3] }), series("completed", palette.completed),
    ], "req/s"),
    queue: makeChart("chart-queue", [series("queue depth", palette.queue, { fill: true })], "requests"),
    // Stacked areas: each band fills down to the one below it, so the top line is the total.
    instances: makeChart("chart-instances", [
      series("busy", palette.busy, { fill: "origin", stepped: true, tension: 0, backgroundColor: palette.busy + "99" }),
      series("idle", palette.idle, { fill: "-1", stepped: true, tension: 0, backgroundColor: palette.idle + "99" }),
      series("starting", palette.starting, { fill: "-1", stepped: true, tension: 0,
        backgroundColor: palette.starting + "99" }),
    ], "instances", { stacked: true }),
    util: makeChart("chart-util", [series("CPU", palette.cpu), series("GPU", palette.gpu)], "%"),
    cost: makeChart("chart-cost", [series("serverless cost so far", palette.cost, { fill: true })], "USD"),
  };

  function point(t, value) {
    return { x: t, y: value === undefined ? null : value };
  }

  function sorted() {
    return Array.from(windows.keys()).sort(function (a, b) { return a - b; })
      .map(function (i) { return windows.get(i); });
  }

  function fmt(value, digits) {
    return value === null || value === undefined || Number.isNaN(value) ? "—" : Number(value).toFixed(digits);
  }

  function render() {
    const ws = sorted();
    const t = ws.map(function (w, i) { return w.t_s === null || w.t_s === undefined ? i + 1 : w.t_s; });
    function fill(chart, keys) {
      if (!chart) { return; }
      keys.forEach(function (key, k) {
        chart.data.datasets[k].data = ws.map(function (w, i) {
          return point(t[i], typeof key === "function" ? key(w, i) : w[key]);
        });
      });
      chart.update("none");
    }
    fill(charts.latency, ["p50_ms", "p95_ms", "p99_ms", function () { return slo.latency_ms; }]);
    fill(charts.throughput, ["offered_rps", "completed_rps"]);
    fill(charts.queue, ["queue_depth"]);
    fill(charts.instances, ["instances_busy", "instances_idle", "instances_starting"]);
    fill(charts.util, ["cpu_util_pct", "gpu_util_pct"]);
    // cost_usd is the serverless cost accrued so far (cumulative), not the cost of that second.
    fill(charts.cost, ["cost_usd"]);
    let cost = null;
    ws.forEach(function (w) { if (typeof w.cost_usd === "number") { cost = w.cost_usd; } });
    renderFigures(ws, cost);
  }

  function renderFigures(ws, cost) {
    let requests = 0;
    let cold = 0;
    let over = 0;
    let measured = 0;
    let late = 0;
    let lateKnown = false;
    const key = "p" + String(slo.percentile || 99).replace(".", "") + "_ms";
    ws.forEach(function (w, i) {
      // Windows are one second long, so a rate is also a count (the last one may be shorter).
      const prev = i > 0 ? ws[i - 1].t_s : 0;
      const dt = typeof w.t_s === "number" && typeof prev === "number" ? Math.max(w.t_s - prev, 0) : 1;
      requests += (w.completed_rps || 0) * dt + (w.dropped || 0) + (w.errors || 0);
      cold += w.cold_starts || 0;
      if (typeof w.late === "number") {
        // Exact when the engine counts requests over the SLO latency per window.
        late += w.late + (w.dropped || 0);
        lateKnown = true;
      }
      const tail = w[key] !== undefined ? w[key] : w.p99_ms;
      if (typeof tail === "number") {
        measured += 1;
        if (tail > slo.latency_ms) { over += 1; }
      }
    });
    const last = ws.length ? ws[ws.length - 1] : null;
    setText("fig-requests", ws.length ? String(Math.round(requests)) : "—");
    setText("fig-p99", last ? fmt(last.p99_ms, 1) + " ms" : "—");
    if (lateKnown) {
      setText("fig-violation-label", "late so far (over the SLO)");
      setText("fig-violation", requests ? fmt(late / requests * 100, 2) + " %" : "—");
    } else {
      // Without per-request counts in the windows: the share of seconds whose SLO percentile was over.
      setText("fig-violation", measured ? fmt(over / measured * 100, 0) + " %" : "—");
    }
    setText("fig-cold", ws.length ? String(cold) : "—");
    // Three significant figures, as the server's figures.format_usd writes dollars under $1.
    setText("fig-cost", cost === null ? "—" : "$" + (cost >= 1 ? cost.toFixed(2) : cost > 0 ? cost.toPrecision(3) : "0"));
  }

  function setText(id, text) {
    const el = document.getElementById(id);
    if (el) { el.textContent = text; }
  }

  let pending = false;
  function scheduleRender() {
    // Several windows can arrive together (the connect snapshot): draw once per frame.
    if (pending) { return; }
    pending = true;
    window.requestAnimationFrame(function () { pending = false; render(); });
  }

  function addWindow(index, w) {
    windows.set(index, w);
    scheduleRender();
    showPhase();
  }

  // Before the first window: say what the worker is doing, with a running clock, so an empty page reads as
  // progress. The engine starts the min instances (a real process start each, a second or two), then emits
  // one window per second of load; the first arrives about 1 s after the load begins.
  let phaseSince = null; // performance.now() at the moment the trial started running (as far as we know)
  let phaseTimer = null;
  function phaseText() {
    if (status === "queued") {
      return "Queued: waiting for a worker that serves this device.";
    }
    const n = (cfg.prestart && cfg.prestart.instances) || 0;
    if (n > 0) {
      return "Starting " + n + " instance" + (n === 1 ? "" : "s") + " before the load (" +
        (cfg.prestart.runtime === "thread" ? "loading the model" : "a real process start each") +
        "); the first one-second window follows 1 s after the load begins.";
    }
    return "Load starting: the first one-second window arrives 1 s after the first request.";
  }
  function showPhase() {
    const el = document.getElementById("live-phase");
    if (!el) { return; }
    const waiting = windows.size === 0 && (status === "queued" || status === "running");
    if (!waiting) {
      el.hidden = true;
      document.body.dataset.livePhase = windows.size ? "windows" : status;
      if (phaseTimer !== null) { window.clearInterval(phaseTimer); phaseTimer = null; }
      return;
    }
    if (status === "running" && phaseSince === null) {
      phaseSince = performance.now() - (typeof cfg.running_for_s === "number" ? cfg.running_for_s * 1000 : 0);
    }
    setText("live-phase-text", phaseText());
    const tick = function () {
      setText("live-phase-elapsed", status === "running" && phaseSince !== null
        ? ((performance.now() - phaseSince) / 1000).toFixed(1) + " s" : "");
    };
    tick();
    if (phaseTimer === null) { phaseTimer = window.setInterval(tick, 100); }
    el.hidden = false;
    document.body.dataset.livePhase = status === "running" ? (cfg.prestart && cfg.prestart.instances ? "starting" : "load") : status;
  }

  function showStatus(s) {
    const badge = document.getElementById("trial-status");
    if (badge && s.status) {
      badge.textContent = s.status;
      badge.dataset.status = s.status;
      badge.className = "live-status live-status-" + s.status;
    }
    if (s.device) { setText("trial-device", s.device); }
    if (s.status && FINISHED.indexOf(s.status) >= 0 && FINISHED.indexOf(status) < 0) {
      // The summary table is rendered by the server: reload once the trial has finished.
      notice("The trial has " + s.status + ". Loading its summary…");
      window.setTimeout(function () { window.location.reload(); }, 800);
    }
    if (s.status) { status = s.status; }
    showPhase();
  }

  function notice(text) {
    const el = document.getElementById("live-notice");
    if (el) { el.textContent = text; el.hidden = false; }
  }

  cfg.windows.forEach(function (item) { windows.set(item.index, item.window); });
  render();
  document.body.dataset.liveReady = "1";

  if (cfg.finished) {
    return;
  }
  showPhase();

  let retryMs = 1000;
  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + cfg.ws_path);
    socket.onopen = function () { retryMs = 1000; document.body.dataset.liveSocket = "open"; };
    socket.onmessage = function (event) {
      const msg = JSON.parse(event.data);
      if (msg.kind === "snapshot") {
        msg.windows.forEach(function (item) { windows.set(item.index, item.window); });
        scheduleRender();
        showStatus(msg.status);
      } else if (msg.kind === "window") {
        addWindow(msg.index, msg.window);
      } else if (msg.kind === "status") {
        showStatus(msg.status);
      }
    };
    socket.onclose = function (event) {
      document.body.dataset.liveSocket = "closed";
      if (event.code === 4401 || event.code === 4404) {
        notice("Live updates are not available: please log in again.");
        return;
      }
      if (FINISHED.indexOf(status) >= 0) { return; }
      // The server restarted or the network blinked: reconnect; the snapshot fills any gap.
      window.setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 15000);
    };
  }
  connect();
})();
