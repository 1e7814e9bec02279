// The Models page: drag and drop an .onnx file, upload it to the API with a progress bar, delete a model.
(function () {
  "use strict";
  const form = document.getElementById("model-upload");
  if (!form) return;
  const zone = document.getElementById("drop-zone");
  const input = document.getElementById("model-file");
  const fileLabel = document.getElementById("drop-file");
  const progress = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const maxBytes = Number(form.dataset.maxBytes);
  let chosen = null;

  function choose(file) {
    chosen = file || null;
    fileLabel.textContent = chosen ? `${chosen.name} (${(chosen.size / 1e6).toFixed(1)} MB)` : "";
    const name = document.getElementById("model-name");
    if (chosen && !name.value) name.value = chosen.name.replace(/\.onnx$/i, "").replace(/[^A-Za-z0-9_.-]/g, "-").slice(0, 64);
  }
  input.addEventListener("change", () => choose(input.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("drop-active"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("drop-active"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("drop-active");
    choose(e.dataTransfer.files[0]);
  });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!chosen) { status.textContent = "Choose an .onnx file first."; return; }
    if (chosen.size > maxBytes) { status.textContent = `The file is larger than the ${(maxBytes / 2 ** 30).toFixed(1)} GiB limit.`; return; }
    const data = new FormData();
    data.append("name", document.getElementById("model-name").value);
    data.append("file", chosen);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.dataset.url);
    xhr.setRequestHeader("X-CSRFToken", csrf);
    progress.hidden = false;
    progress.value = 0;
    xhr.upload.addEventListener("progress", (ev) => {
      if (ev.lengthComputable) progress.value = Math.round(100 * ev.loaded / ev.total);
    });
    xhr.upload.addEventListener("load", () => { progress.value = 100; });  // every byte sent
    xhr.addEventListener("load", () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = {detail: xhr.statusText}; }
      if (xhr.status === 201) {
        status.textContent = `Stored ${body.name} (SHA-256 ${body.sha256.slice(0, 12)}…).`;
        window.location.reload();
      } else {
        status.textContent = `Refused: ${body.detail || xhr.status}`;
        status.classList.add("error");
      }
    });
    xhr.addEventListener("error", () => { status.textContent = "The upload failed (connection)."; });
    status.textContent = "Uploading…";
    xhr.send(data);
  });

  document.querySelectorAll("[data-delete]").forEach((button) => {
    button.addEventListener("click", () => {
      if (!window.confirm("Delete this model? Experiments naming it can no longer run.")) return;
      fetch(`${form.dataset.url}${button.dataset.delete}/`, {method: "DELETE", headers: {"X-CSRFToken": csrf}})
        .then(() => window.location.reload());
    });
  });
})();
