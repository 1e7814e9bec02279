// The experiment editor: rows that can be added, removed and cloned (Django formsets), fields that show
// only when they apply (batching fields for a batching mode, pattern parameters for a pattern), and the
// modelled platform delay presets that fill in their number.
// The server validates everything again; this only keeps the page tidy.
(function () {
  "use strict";

  const form = document.getElementById("editor-form");
  if (!form) return;

  // ---- show / hide ---------------------------------------------------------------------------------
  function controlValue(scope, name) {
    const el = scope.querySelector('[name$="-' + name + '"]') || scope.querySelector('[name="' + name + '"]');
    if (!el) return null;
    if (el.type === "checkbox") return el.checked ? "on" : "";
    return el.value;
  }

  function applyVisibility(root) {
    (root || form).querySelectorAll("[data-show-field]").forEach(function (el) {
      const scope = el.parentElement.closest("[data-scope]") || form;
      const value = controlValue(scope, el.dataset.showField);
      if (value === null) return; // no controlling field on the page: leave it visible
      const show = el.dataset.showValues.split(" ").indexOf(value) !== -1;
      el.hidden = !show;
    });
  }

  form.addEventListener("change", function (ev) {
    if (ev.target.name && /(pattern|sharing|batching_mode|keep_alive_policy|replace_workloads)$/.test(ev.target.name)) {
      applyVisibility();
    }
    if (ev.target.matches("[data-model-select]")) showDefaultShape(ev.target);
    if (ev.target.matches("[data-delay-preset]")) fillPlatformDelay(ev.target);
  });

  // ---- modelled platform delay presets --------------------------------------------------------------
  // The preset select's values are delays in ms ("" = custom): picking one fills in the number, and typing
  // a number shows the preset it matches, or custom.
  function fillPlatformDelay(select) {
    const row = select.closest("[data-row]");
    const input = row && row.querySelector('[name$="-platform_delay_ms"]');
    if (input && select.value !== "") input.value = select.value;
  }

  form.addEventListener("input", function (ev) {
    if (!ev.target.name || !/-platform_delay_ms$/.test(ev.target.name)) return;
    const row = ev.target.closest("[data-row]");
    const select = row && row.querySelector("[data-delay-preset]");
    if (!select) return;
    const typed = ev.target.value.trim() === "" ? NaN : Number(ev.target.value);
    const match = Array.from(select.options).find(function (o) { return o.value !== "" && Number(o.value) === typed; });
    select.value = match ? match.value : "";
  });

  // ---- model default input shapes ---------------------------------------------------------------------
  const shapesEl = document.getElementById("model-shapes");
  const shapes = shapesEl ? JSON.parse(shapesEl.textContent) : {};

  function showDefaultShape(select) {
    const row = select.closest("[data-row]");
    const input = row && row.querySelector('[name$="-input_shape"]');
    const shape = shapes[select.value];
    if (input) input.placeholder = shape ? "default " + shape.join("×") : "required for this model";
  }

  // ---- formset rows ------------------------------------------------------------------------------------
  function rowsOf(set) {
    return Array.from(set.querySelector("[data-rows]").children).filter(function (el) {
      return el.hasAttribute("data-row");
    });
  }

  // Django formsets need contiguous indexes (prefix-0-, prefix-1-, ...): rewrite every row after a change.
  function renumber(set) {
    const prefix = set.dataset.formset;
    const pattern = new RegExp("^" + prefix + "-(\\d+|__prefix__)-");
    const idPattern = new RegExp("^id_" + prefix + "-(\\d+|__prefix__)-");
    const rows = rowsOf(set);
    rows.forEach(function (row, i) {
      row.querySelectorAll("[name],[id],[for]").forEach(function (el) {
        if (el.name && pattern.test(el.name)) el.name = el.name.replace(pattern, prefix + "-" + i + "-");
        if (el.id && idPattern.test(el.id)) el.id = el.id.replace(idPattern, "id_" + prefix + "-" + i + "-");
        const forAttr = el.getAttribute("for");
        if (forAttr && idPattern.test(forAttr)) el.setAttribute("for", forAttr.replace(idPattern, "id_" + prefix + "-" + i + "-"));
      });
      const number = row.querySelector("[data-row-number]");
      if (number) number.textContent = String(i + 1);
    });
    set.querySelector('[name="' + prefix + '-TOTAL_FORMS"]').value = String(rows.length);
    const min = parseInt(set.dataset.minRows || "0", 10);
    rows.forEach(function (row) {
      const remove = row.querySelector("[data-remove-row]");
      if (remove) remove.disabled = rows.length <= min;
    });
  }

  function uniqueName(set, base) {
    const taken = new Set(rowsOf(set).map(function (row) {
      const input = row.querySelector('[name$="-name"]');
      return input ? input.value : "";
    }));
    if (!taken.has(base)) return base;
    for (let n = 2; ; n++) {
      if (!taken.has(base + "-" + n)) return base + "-" + n;
    }
  }

  function newRow(set) {
    const template = set.querySelector("template[data-empty-row]");
    return template.content.firstElementChild.cloneNode(true);
  }

  function addRow(set, after) {
    const row = newRow(set);
    const container = set.querySelector("[data-rows]");
    if (after) after.after(row); else container.appendChild(row);
    const name = row.querySelector('[name$="-name"]');
    if (name && !name.value) {
      const base = set.dataset.formset === "variants" ? "variant" : "function";
      name.value = uniqueName(set, base + "-" + (rowsOf(set).length));
    }
    renumber(set);
    applyVisibility(row);
    row.querySelectorAll("[data-model-select]").forEach(showDefaultShape);
    return row;
  }

  function cloneRow(set, source) {
    const row = source.cloneNode(true);
    // cloneNode copies attributes, not what the user typed or picked: copy the live values across.
    const from = source.querySelectorAll("input, select, textarea");
    const to = row.querySelectorAll("input, select, textarea");
    from.forEach(function (el, i) {
      if (el.type === "checkbox" || el.type === "radio") to[i].checked = el.checked;
      else to[i].value = el.value;
    });
    row.querySelectorAll(".field-error, .row-errors").forEach(function (el) { el.remove(); });
    row.querySelectorAll(".has-error").forEach(function (el) { el.classList.remove("has-error"); });
    source.after(row);
    const name = row.querySelector('[name$="-name"]');
    if (name) name.value = uniqueName(set, (name.value || "variant") + "-copy");
    renumber(set);
    applyVisibility(row);
    return row;
  }

  form.addEventListener("click", function (ev) {
    const button = ev.target.closest("[data-add-row], [data-remove-row], [data-clone-row]");
    if (!button) return;
    const set = button.closest("[data-formset]");
    if (!set) return;
    ev.preventDefault();
    if (button.hasAttribute("data-add-row")) {
      const row = addRow(set, null);
      const first = row.querySelector("input:not([type=hidden]), select");
      if (first) first.focus();
    } else if (button.hasAttribute("data-clone-row")) {
      cloneRow(set, button.closest("[data-row]"));
    } else {
      button.closest("[data-row]").remove();
      renumber(set);
    }
    form.dispatchEvent(new CustomEvent("editor:rows-changed", { detail: { formset: set.dataset.formset } }));
  });

  document.querySelectorAll("[data-formset]").forEach(renumber);
  document.querySelectorAll("[data-model-select]").forEach(showDefaultShape);
  applyVisibility();
})();
