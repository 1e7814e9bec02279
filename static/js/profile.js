// The profile page's two charts: service time and device throughput against batch size, one line per
// sharing level. The series come from the page (json_script "profile-series"), computed by the server.
(function () {
  "use strict";
  const source = document.getElementById("profile-series");
  if (!source || typeof Chart === "undefined") return;
  const series = JSON.parse(source.textContent);
  const colors = ["#3558c8", "#d9730d", "#2f9e44", "#c2255c", "#7048e8"];
  const axisX = { type: "logarithmic", title: { display: true, text: "batch size" },
                  ticks: { callback: function (v) { return Number.isInteger(Math.log2(v)) ? v : ""; } } };
  function points(s, key) {
    return s.batch_sizes.map(function (k, i) { return { x: k, y: s[key][i] }; });
  }
  const latency = [];
  series.forEach(function (s, i) {
    const c = colors[i % colors.length];
    latency.push({ label: "level " + s.level + " p50", data: points(s, "p50_ms"), borderColor: c, backgroundColor: c });
    latency.push({ label: "level " + s.level + " p99", data: points(s, "p99_ms"), borderColor: c, backgroundColor: c,
                   borderDash: [6, 4] });
  });
  const common = { animation: false, parsing: false, maintainAspectRatio: false,
                   plugins: { legend: { position: "bottom" } } };
  window.profileCharts = [
    new Chart(document.getElementById("chart-latency"), {
      type: "line", data: { datasets: latency },
      options: Object.assign({}, common, { scales: { x: axisX, y: { beginAtZero: true, title: { display: true, text: "ms per batch" } } } }),
    }),
    new Chart(document.getElementById("chart-throughput"), {
      type: "line",
      data: { datasets: series.map(function (s, i) {
        const c = colors[i % colors.length];
        return { label: "level " + s.level, data: points(s, "throughput_rps"), borderColor: c, backgroundColor: c };
      }) },
      options: Object.assign({}, common, { scales: { x: axisX, y: { beginAtZero: true, title: { display: true, text: "requests/s" } } } }),
    }),
  ];
})();
