// Live preview of the editor's workload: posts the form to the preview endpoint (debounced) and plots
// the intended arrival rate over workload time with Chart.js, plus expected requests and run time.
(function () {
  "use strict";

  const form = document.getElementById("editor-form");
  const canvas = document.getElementById("preview-chart");
  if (!form || !canvas || typeof Chart === "undefined") return;

  const section = document.getElementById("section-workload");
  const state = document.getElementById("preview-state");
  const errorsEl = document.getElementById("preview-errors");
  const csrf = form.querySelector('[name="csrfmiddlewaretoken"]').value;
  let timer = null;
  let inFlight = null;

  const chart = new Chart(canvas, {
    type: "line",
    data: { datasets: [{ label: "arrival rate (req/s)", data: [], borderColor: "#3558c8", borderWidth: 2,
                         backgroundColor: "rgba(53, 88, 200, 0.12)", fill: "origin", pointRadius: 0, tension: 0 }] },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, parsing: false, normalized: true,
      interaction: { mode: "nearest", axis: "x", intersect: false },
      plugins: { legend: { display: false },
                 tooltip: { callbacks: { label: function (c) { return c.parsed.y.toFixed(1) + " req/s"; },
                                         title: function (items) { return "t = " + items[0].parsed.x.toFixed(1) + " s"; } } } },
      scales: {
        x: { type: "linear", min: 0, title: { display: true, text: "workload time (s)" }, grid: { color: "#eef0f4" } },
        y: { beginAtZero: true, title: { display: true, text: "req/s" }, grid: { color: "#eef0f4" } },
      },
    },
  });

  function formatSeconds(s) {
    if (s < 90) return (Math.round(s * 10) / 10) + " s";
    if (s < 5400) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return (s / 3600).toFixed(1) + " h";
  }

  function formatCount(n) {
    return Math.round(n).toLocaleString("en-US");
  }

  function setText(id, text) { document.getElementById(id).textContent = text; }

  function showErrors(errors) {
    errorsEl.replaceChildren();
    Object.keys(errors || {}).forEach(function (field) {
      (errors[field] || []).forEach(function (message) {
        const li = document.createElement("li");
        const label = form.querySelector('label[for="id_workload-' + field + '"]');
        li.textContent = (field === "__all__" ? "" : (label ? label.textContent : field) + ": ") + message;
        errorsEl.appendChild(li);
      });
    });
  }

  function refresh() {
    if (inFlight) inFlight.abort();
    inFlight = new AbortController();
    const body = new FormData(form);
    if (form.dataset.code) body.append("code", form.dataset.code);
    state.textContent = "updating…";
    fetch(form.dataset.previewUrl, { method: "POST", body: body, headers: { "X-CSRFToken": csrf },
                                     credentials: "same-origin", signal: inFlight.signal })
      .then(function (resp) { return resp.json(); })
      .then(function (data) {
        if (!data.ok) {
          state.textContent = "fix the workload to see it";
          canvas.closest(".preview").classList.add("preview-stale");
          showErrors(data.errors);
          return;
        }
        showErrors({});
        canvas.closest(".preview").classList.remove("preview-stale");
        chart.data.datasets[0].data = data.t_s.map(function (t, i) { return { x: t, y: data.rate_rps[i] }; });
        chart.options.scales.x.max = data.duration_s;
        chart.update();
        setText("preview-requests", "≈ " + formatCount(data.expected_requests));
        let run = formatSeconds(data.run_s);
        if (data.time_compression > 1) run += " (" + formatSeconds(data.duration_s) + " of workload at " + data.time_compression + "×)";
        setText("preview-run", run);
        setText("preview-peak", (Math.round(data.peak_rate_rps * 10) / 10).toLocaleString("en-US") + " req/s");
        state.textContent = "";
        canvas.dataset.points = String(data.t_s.length);
        const plan = document.getElementById("sweep-plan");
        if (plan) {
          plan.textContent = data.plan ? data.plan.text + " (workload time; cold starts come on top)"
            : "Fix the form to see how many variants and how long a run takes" +
              (data.plan_errors && data.plan_errors.length ? ": " + data.plan_errors.join("; ") : ".");
        }
      })
      .catch(function (err) {
        if (err.name !== "AbortError") state.textContent = "preview unavailable";
      });
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 350);
  }

  section.addEventListener("input", schedule);
  section.addEventListener("change", schedule);
  // The run plan (variants, trials, run time) follows the variants and the sweep too.
  ["section-variants", "section-sweep"].forEach(function (id) {
    const other = document.getElementById(id);
    if (other) { other.addEventListener("change", schedule); other.addEventListener("input", schedule); }
  });
  form.addEventListener("editor:rows-changed", function (ev) {
    if (ev.detail.formset === "steps" || ev.detail.formset === "functions" || ev.detail.formset === "variants") schedule();
  });
  refresh();
})();
