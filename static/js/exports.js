// The comparison page's Export menu: start the export, show its progress, then a download link.
// Without script the form posts and the browser lands on the export's own page, which refreshes itself.
(function () {
  "use strict";
  const form = document.getElementById("export-form");
  const out = document.getElementById("export-progress");
  if (!form || !out || !window.fetch) return;
  // The page's pickers change run, baseline and price in place: export what is shown now.
  function syncPickers() {
    for (const name of ["run", "baseline", "price"]) {
      const pick = document.getElementById("pick-" + name);
      if (pick && form.elements[name]) form.elements[name].value = pick.value;
    }
  }
  function show(text, href, name) {
    out.textContent = text;
    if (href) {
      const a = document.createElement("a");
      a.href = href;
      a.textContent = name;
      a.id = "export-download";
      out.append(" ", a);
    }
  }
  async function poll(url, delay) {
    let status;
    try {
      const r = await fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin"});
      status = await r.json();
    } catch (e) {
      show("Lost contact; retrying…");
      return setTimeout(() => poll(url, Math.min(delay * 2, 5000)), delay);
    }
    report(status, delay);
  }
  function report(status, delay) {
    if (status.status === "succeeded") return show("Ready:", status.download_url, status.filename);
    if (status.status === "failed") return show("Export failed: " + status.error);
    const pct = Math.round((status.progress || 0) * 100);
    show((status.stage || "waiting for the reports worker") + "… " + pct + " %");
    setTimeout(() => poll(status.status_url, delay), delay);
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    syncPickers();
    show("Starting the export…");
    try {
      const r = await fetch(form.action, {method: "POST", body: new FormData(form), credentials: "same-origin",
                                          headers: {Accept: "application/json"}});
      const status = await r.json();
      if (!r.ok) return show("Cannot export: " + (status.detail || r.status));
      report(status, 500);
    } catch (e) {
      form.submit();
    }
  });
})();
