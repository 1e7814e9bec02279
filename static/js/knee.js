// The knee chart: p99 against offered rate per variant, from a capacity search's probes, with the SLO line.
// One drawing for the capacity search page (drawn here from #knee-data) and the comparison page (comparison.js calls
// window.slsbenchKneeConfig(knee)), where knee is
// {slo_ms, series: [{key, label, simulated, capacity_rps, conservative_capacity_rps, points: [[rate, p99 | null,
// verdict]]}]} (the comparison's charts.knee). A probe whose p99 lies beyond the run is drawn at the top edge.
(function () {
  "use strict";
  const PALETTE = ["#3558c8", "#e07b16", "#1d7a46", "#c4312b", "#7b4bc4", "#0f8aa3", "#b8479b", "#6b7d12"];
  const VERDICT_COLORS = { met: "#1d7a46", not_met: "#c4312b", inconclusive: "#d08a00" };

  function config(knee) {
    let xmax = 0;
    let ymax = knee.slo_ms * 1.5;
    knee.series.forEach(function (s) {
      s.points.forEach(function (p) { xmax = Math.max(xmax, p[0]); if (p[1] !== null) { ymax = Math.max(ymax, p[1]); } });
    });
    ymax = Math.min(ymax, knee.slo_ms * 10);
    const datasets = knee.series.map(function (s, i) {
      const c = PALETTE[i % PALETTE.length];
      const pts = s.points.map(function (p) {
        return { x: p[0], y: p[1] === null ? ymax : Math.min(p[1], ymax), verdict: p[2], beyond: p[1] === null };
      });
      return { label: s.label + (s.simulated ? " (simulated)" : ""), data: pts, type: "line", showLine: true,
        borderColor: c, backgroundColor: c, borderWidth: 1.5,
        pointBackgroundColor: pts.map(function (p) { return VERDICT_COLORS[p.verdict] || "#9aa4b5"; }),
        pointBorderColor: c, pointRadius: 5, pointStyle: pts.map(function (p) { return p.beyond ? "triangle" : "circle"; }) };
    });
    datasets.push({ label: "SLO " + knee.slo_ms + " ms", type: "line", data: [{ x: 0, y: knee.slo_ms }, { x: xmax * 1.05 || 1, y: knee.slo_ms }],
      borderColor: "#555", borderDash: [6, 4], borderWidth: 1.5, pointRadius: 0, fill: false });
    return { type: "line", data: { datasets: datasets }, options: {
      animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
      scales: { x: { type: "linear", min: 0, title: { display: true, text: "offered rate (req/s)" } },
        y: { type: "linear", min: 0, max: ymax, title: { display: true, text: "p99 latency (ms)" } } },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12, font: { size: 11 } } },
        tooltip: { callbacks: { label: function (ctx) {
          const p = ctx.raw;
          if (p.verdict === undefined) { return ctx.dataset.label; }
          return ctx.dataset.label + ": " + p.x.toPrecision(3) + " req/s → " + (p.beyond ? "beyond the run" : p.y.toPrecision(3) + " ms") + ", " + p.verdict.replace("_", " ");
        } } } } } };
  }

  window.slsbenchKneeConfig = config;

  const own = document.getElementById("knee-data");
  const canvas = document.getElementById("chart-knee");
  if (own && canvas && typeof Chart !== "undefined") { new Chart(canvas, config(JSON.parse(own.textContent))); }
})();
