"""Pages for setting experiments up: list, editor, detail, import/export, clone, run and cancel.

Thin views: each validates input, calls one service or selector, and renders. Every page is the
owner's only: `selectors.experiment_get_for` answers 404 for anyone else's experiment.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from controlplane.registry import selectors as registry_selectors
from workers import spec as S

from . import selectors, services, spec_io
from .forms import ExperimentEditor
from .models import Experiment, SLOTarget, Trial

ACTIVE = (Trial.Status.QUEUED, Trial.Status.RUNNING)


# ---- list -------------------------------------------------------------------------------------------
def percentile_key(percentile: float) -> str:
    """The latency_ms key of an SLO percentile: 99 -> "p99", 99.9 -> "p999"."""
    return "p" + f"{percentile:g}".replace(".", "")


def at_a_glance(rows: list[dict], slo) -> dict | None:
    """The one result the list shows: the cheapest variant that met the SLO, else the fastest one, with
    `chosen_by` saying which rule picked it ("cheapest variant that met the SLO", "lowest p99: none met").

    Met means the three-way verdict is met (the percentile's interval lies within the target), not
    inconclusive; a percentile beyond the run (None: its rank fell among unfinished requests) is never the
    fastest. `repeats` and `repeats_met` count the chosen variant's finished repeats in the run, so a
    verdict resting on one repeat can say so."""
    key = percentile_key(slo.percentile) if slo else "p99"
    done = [r for r in rows if r.get("status") == Trial.Status.SUCCEEDED and (r.get("latency_ms") or {}).get(key)]
    if not done:
        return None

    def cost(r: dict) -> float:
        c = r.get("cost") or {}
        values = [v for v in (c.get("serverless_per_1k_usd"), c.get("provisioned_per_1k_usd")) if v is not None]
        return min(values) if values else math.inf

    def verdict(r: dict) -> str | None:
        return (r.get("slo_verdict") or {}).get("verdict")

    met = [r for r in done if verdict(r) == "met"]
    inconclusive = {r["variant"] for r in done if verdict(r) == "inconclusive"} - {r["variant"] for r in met}
    if met:
        best = min(met, key=lambda r: (cost(r), r["latency_ms"][key]))
        chosen_by = ("cheapest variant that met the SLO" if cost(best) != math.inf
                     else f"lowest {key} among the variants that met the SLO (no cost figures)")
    else:
        best = min(done, key=lambda r: r["latency_ms"][key])
        chosen_by = f"lowest {key}: none met" + (f", {len(inconclusive)} inconclusive" if inconclusive else "")
    repeats = [r for r in done if r["variant"] == best["variant"]]
    return {"variant": best["variant"], "percentile": key, "latency_ms": best["latency_ms"][key],
            "slo_ms": slo.latency_ms if slo else None, "met": verdict(best) == "met", "verdict": verdict(best),
            "reasons": list((best.get("slo_verdict") or {}).get("reasons") or []),
            "cost_per_1k_usd": None if cost(best) == math.inf else cost(best), "chosen_by": chosen_by,
            "repeats": len(repeats), "repeats_met": sum(1 for r in repeats if verdict(r) == "met"),
            "met_count": len({r["variant"] for r in met}), "inconclusive_count": len(inconclusive),
            "variant_count": len({r["variant"] for r in rows})}


@login_required
@require_GET
def experiment_list(request: HttpRequest) -> HttpResponse:
    experiments = selectors.experiment_list_for(user=request.user).select_related("slo").prefetch_related(
        "functions", "variants")
    items = []
    for e in experiments:
        slo = getattr(e, "slo", None)
        rows = selectors.experiment_results(experiment=e) if e.latest_run else []
        items.append({"experiment": e, "glance": at_a_glance(rows, slo)})
    return render(request, "experiments/list.html", {"items": items})


# ---- editor -----------------------------------------------------------------------------------------
def _editor_context(experiment: Experiment | None) -> dict:
    """Initial values and the parts of a saved experiment the editor keeps as they are."""
    if experiment is None:
        return {"initial": None, "kept_workloads": None, "stored_trace": None}
    data = spec_io.experiment_to_dict(experiment)
    kept = data.get("workloads")  # per-function workloads: read-only in the editor, kept on save
    stored = None
    w = data.get("workload") or {}
    if w.get("pattern") == "trace":
        stored = {"content": w.get("trace_content", ""), "filename": w.get("trace_filename", ""),
                  "format": w.get("trace_format", "")}
    return {"initial": data, "kept_workloads": kept, "stored_trace": stored}


def _editor(request: HttpRequest, experiment: Experiment | None) -> HttpResponse:
    ctx = _editor_context(experiment)
    prices = list(selectors.price_list())
    ctx["worker_devices"] = selectors.worker_devices()
    ctx["uploaded_models"] = registry_selectors.catalogue_for(request.user)
    if request.method == "POST":
        editor = ExperimentEditor(data=request.POST, files=request.FILES, price_entries=prices, **ctx)
        spec = editor.validate()
        if spec is not None:
            try:
                if experiment is None:
                    experiment = services.experiment_create(owner=request.user, spec=spec)
                    messages.success(request, f"Created “{experiment.name}”.")
                else:
                    services.experiment_update(experiment=experiment, spec=spec)
                    messages.success(request, "Saved.")
            except S.SpecError as exc:
                editor.add_spec_errors(exc)
            else:
                return redirect(experiment)
        status = 400
    else:
        editor = ExperimentEditor(price_entries=prices, **ctx)
        status = 200
    plan = None
    if experiment is not None and request.method != "POST":
        plan = selectors.experiment_plan(spec=spec_io.experiment_to_spec(experiment),
                                         workers=selectors.pool_workers(experiment.device, ctx["worker_devices"]))
    context = {"editor": editor, "experiment": experiment, "model_shapes": editor.model_shapes,
               "kept_workloads": ctx["kept_workloads"], "stored_trace": ctx["stored_trace"], "plan": plan}
    return render(request, "experiments/editor.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def experiment_create(request: HttpRequest) -> HttpResponse:
    return _editor(request, None)


@login_required
@require_http_methods(["GET", "POST"])
def experiment_edit(request: HttpRequest, code) -> HttpResponse:
    return _editor(request, selectors.experiment_get_for(user=request.user, code=code))


@login_required
@require_POST
def workload_preview(request: HttpRequest) -> JsonResponse:
    """The arrival rate over time of the editor's workload, or its field errors (field name -> messages)."""
    from workers.workload import TraceError, WorkloadError, rate_curve

    stored = None
    code = request.POST.get("code")
    if code:
        stored = _editor_context(selectors.experiment_get_for(user=request.user, code=code))["stored_trace"]
    editor = ExperimentEditor(data=request.POST, files=request.FILES, stored_trace=stored)
    editor.workload.is_valid()
    for form in editor.steps.forms:
        form.is_valid()
    data = editor.workload_dict()
    errors: dict[str, list[str]] = {k: list(v) for k, v in editor.workload.errors.items()}
    try:
        workload = S.parse_workload(data, "workload")
    except S.SpecError as exc:
        for e in exc.errors:
            field = re.sub(r"^workload\.?", "", e.path)
            field = {"trace_content": "trace_file", "trace_filename": "trace_file"}.get(field, field)
            if field.startswith("steps["):
                field = "steps"
            if field in editor.workload.errors:
                continue  # "Enter a number." already says it; "is required" would only repeat it
            errors.setdefault(field or "__all__", []).append(e.message)
        return JsonResponse({"ok": False, "errors": errors}, status=400)
    try:
        curve = rate_curve(workload, points=200)
    except (TraceError, WorkloadError) as exc:
        return JsonResponse({"ok": False, "errors": {"__all__": [str(exc)]}}, status=400)
    t, r = curve["t_s"], curve["rate_rps"]
    # Left sums over the curve's own segments: exact for constant rates and staircases.
    widths = [b - a for a, b in zip(t, [*t[1:], workload.duration_s], strict=True)]
    expected = sum(rate * w for rate, w in zip(r, widths, strict=True))
    # The whole editor as it stands: how many variants (a sweep's included) and how long a run takes.
    spec = editor.validate()
    plan = selectors.experiment_plan(spec=spec) if spec is not None else None
    return JsonResponse({
        "plan": plan, "plan_errors": [f"{e.label}: {e.message}" for e in editor.summary][:5],
        "ok": True, "t_s": t, "rate_rps": r, "expected_requests": round(expected),
        "duration_s": workload.duration_s, "run_s": workload.run_s, "time_compression": workload.time_compression,
        "peak_rate_rps": max(r, default=0.0), "mean_rate_rps": expected / workload.duration_s,
    })


# ---- detail -----------------------------------------------------------------------------------------
def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _runs(experiment: Experiment, slo) -> list[dict]:
    """Trials grouped by run, newest run first, each trial with its figures from the one result selector."""
    key = percentile_key(slo.percentile) if slo else "p99"
    out = []
    for run_number in selectors.experiment_runs(experiment=experiment):
        rows = selectors.experiment_results(experiment=experiment, run_number=run_number)
        repeats: dict[str, int] = {}
        for r in rows:
            repeats[r["variant"]] = repeats.get(r["variant"], 0) + 1
        for r in rows:
            r["slo_latency_ms"] = (r.get("latency_ms") or {}).get(key)
            r["variant_repeats"] = repeats[r["variant"]]  # 1: a verdict resting on one repeat says so
            r["started"], r["finished"] = _when(r.get("started_at")), _when(r.get("finished_at"))
        out.append({"number": run_number, "rows": rows, "active": any(r["status"] in ACTIVE for r in rows)})
    return out


def _slo(experiment: Experiment) -> S.SLOSpec:
    # Not experiment_to_spec: the trials poll calls this every 2 s and needs no trace files read.
    try:
        return experiment.slo.to_spec()
    except SLOTarget.DoesNotExist:
        return S.SLOSpec()


def _detail_context(experiment: Experiment, user=None) -> dict:
    slo = _slo(experiment)
    runs = _runs(experiment, slo)
    pinned = selectors.pinned_trial_codes(user=user) if user is not None else set()
    for run in runs:
        for r in run["rows"]:
            r["pinned"] = r["trial"] in pinned  # the row's pin / unpin button
    return {"experiment": experiment, "runs": runs, "active": any(r["active"] for r in runs), "slo": slo,
            "slo_key": percentile_key(slo.percentile), "violation_pct": slo.max_violation_rate * 100,
            "status": selectors.experiment_status(experiment)}


def _curve_or_none(workload: S.WorkloadSpec) -> dict | None:
    from workers.workload import TraceError, WorkloadError, rate_curve

    try:
        return rate_curve(workload, points=120)
    except (TraceError, WorkloadError):
        return None  # a stored trace the current parser refuses: the page still shows the rest


@login_required
@require_GET
def experiment_detail(request: HttpRequest, code) -> HttpResponse:
    experiment = selectors.experiment_get_for(user=request.user, code=code)
    spec = spec_io.experiment_to_spec(experiment)
    workloads = []
    for i, w in enumerate(spec.workloads):
        params = {k: v for k, v in S.workload_to_dict(w).items()
                  if k not in ("pattern", "duration_s", "time_compression", "seed", "function", "trace_content")}
        workloads.append({"spec": w, "params": params, "curve": _curve_or_none(w), "chart_id": f"workload-chart-{i}",
                          "peak_rate_rps": S.peak_rate_rps(w)})
    context = _detail_context(experiment, request.user) | {
        "plan": selectors.experiment_plan(spec=spec, workers=selectors.pool_workers(experiment.device)),
        "sweep_grid": [(path, ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values))
                       for path, values in spec.sweep.grid] if spec.sweep else None,
        "spec": spec, "functions": _with_profiles(experiment, request.user), "variants": experiment.variants.all(),
        "workloads": workloads, "max_repeats": S.MAX_REPEATS,
        "curves": {w["chart_id"]: w["curve"] for w in workloads if w["curve"]},
    }
    return render(request, "experiments/detail.html", context)


def _with_profiles(experiment: Experiment, user) -> list:
    """The experiment's functions, each with `.profile`: the profile it reuses (or None)."""
    from .profiles.selectors import experiment_function_profiles

    profiles = experiment_function_profiles(experiment=experiment, user=user)
    functions = list(experiment.functions.all())
    for f in functions:
        f.profile = profiles.get(f.id)
    return functions


@login_required
@require_GET
def experiment_trials(request: HttpRequest, code) -> HttpResponse:
    """The trials table alone, which the detail page re-fetches every 2 s while a trial is active."""
    experiment = selectors.experiment_get_for(user=request.user, code=code)
    return render(request, "experiments/_trials.html", _detail_context(experiment, request.user))


@login_required
@require_POST
def experiment_run(request: HttpRequest, code) -> HttpResponse:
    experiment = selectors.experiment_get_for(user=request.user, code=code)
    raw = (request.POST.get("repeats") or "").strip()
    repeats: int | None = None
    if raw:
        try:
            repeats = int(raw)
        except ValueError:
            messages.error(request, f"Repeats: must be a whole number between 1 and {S.MAX_REPEATS}.")
            return redirect(experiment)
    simulate = None
    if request.POST.get("simulate"):
        raw_devices = (request.POST.get("devices") or "1").strip()
        simulate = {"devices": int(raw_devices) if raw_devices.isdigit() else raw_devices,
                    "placement": request.POST.get("placement") or "first_fit"}
    try:
        # `variant` (repeatable): only these variants, e.g. the sweep page's "confirm the pick" run.
        trials = services.experiment_run(experiment=experiment, user=request.user, repeats=repeats,
                                         variant_names=request.POST.getlist("variant") or None, simulate=simulate)
    except S.SpecError as exc:
        for e in exc.errors:
            messages.error(request, f"Cannot {'simulate' if simulate else 'run'}: {e}")
        return redirect(experiment)
    run = trials[0].run_number if trials else "?"
    what = "simulated trial" if simulate else "trial"
    messages.success(request, f"Run {run} queued: {len(trials)} {what}{'s' if len(trials) != 1 else ''}.")
    unsent = services.trials_unsent(trials)
    if unsent:
        messages.warning(request, f"{unsent} trial{'s' if unsent != 1 else ''} {services.BROKER_UNAVAILABLE}.")
    return redirect(experiment)


@login_required
@require_POST
def experiment_cancel(request: HttpRequest, code) -> HttpResponse:
    experiment = selectors.experiment_get_for(user=request.user, code=code)
    n = services.experiment_cancel(experiment=experiment)
    if n:
        messages.success(request, f"Cancelling {n} trial{'s' if n != 1 else ''}.")
    else:
        messages.info(request, "Nothing was running.")
    return redirect(experiment)


@login_required
@require_http_methods(["GET", "POST"])
def experiment_delete(request: HttpRequest, code) -> HttpResponse:
    experiment = selectors.experiment_get_for(user=request.user, code=code)
    if request.method == "POST":
        name = experiment.name
        services.experiment_delete(experiment=experiment)
        messages.success(request, f"Deleted “{name}”.")
        return redirect("experiment-list")
    return render(request, "experiments/confirm_delete.html", {"experiment": experiment})


@login_required
@require_POST
def experiment_clone(request: HttpRequest, code) -> HttpResponse:
    experiment = selectors.experiment_get_for(user=request.user, code=code)
    clone = services.experiment_clone(experiment=experiment, owner=request.user)
    messages.success(request, f"Cloned into “{clone.name}”. Trials are not copied.")
    return redirect(clone)


@login_required
@require_POST
def variant_clone(request: HttpRequest, code, variant_id: int) -> HttpResponse:
    experiment = selectors.experiment_get_for(user=request.user, code=code)
    variant = get_object_or_404(experiment.variants, pk=variant_id)
    try:
        copy = services.variant_clone(variant=variant)
    except S.SpecError as exc:
        messages.error(request, f"Cannot clone: {exc}")
    else:
        messages.success(request, f"Added variant “{copy.name}”, a copy of “{variant.name}”.")
    return redirect(experiment)


# ---- spec files -------------------------------------------------------------------------------------
@login_required
@require_GET
def experiment_export(request: HttpRequest, code) -> HttpResponse:
    experiment = selectors.experiment_get_for(user=request.user, code=code)
    as_yaml = request.GET.get("format") == "yaml"
    text = spec_io.dump_spec(spec_io.experiment_to_dict(experiment), as_yaml=as_yaml)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment.name).strip("-.") or "experiment"
    response = HttpResponse(text, content_type="application/yaml" if as_yaml else "application/json")
    response["Content-Disposition"] = f'attachment; filename="{stem}.{"yaml" if as_yaml else "json"}"'
    return response


@login_required
@require_http_methods(["GET", "POST"])
def experiment_import(request: HttpRequest) -> HttpResponse:
    errors: list[S.FieldError] = []
    pasted = ""
    if request.method == "POST":
        upload = request.FILES.get("spec_file")
        pasted = request.POST.get("spec_text", "")
        try:
            data = _import_document(upload, pasted)
            experiment = services.experiment_import(owner=request.user, data=data)
        except S.SpecError as exc:
            errors = exc.errors
        else:
            messages.success(request, f"Imported “{experiment.name}”.")
            return redirect(experiment)
    return render(request, "experiments/import.html", {"errors": errors, "pasted": pasted},
                  status=400 if errors else 200)


def _import_document(upload, pasted: str) -> dict:
    if upload is not None:
        if upload.size > spec_io.MAX_SPEC_FILE_BYTES:
            raise S.SpecError([S.FieldError("", f"the file is larger than "
                                                f"{spec_io.MAX_SPEC_FILE_BYTES // (1024 * 1024)} MiB")])
        try:
            text = upload.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise S.SpecError([S.FieldError("", f"the file is not UTF-8 text (byte {exc.start})")]) from None
        yaml_first = upload.name.lower().endswith(spec_io.YAML_SUFFIXES)
    elif pasted.strip():
        if len(pasted.encode("utf-8", "surrogatepass")) > spec_io.MAX_SPEC_FILE_BYTES:
            raise S.SpecError([S.FieldError("spec_text", f"the pasted text is larger than "
                                                         f"{spec_io.MAX_SPEC_FILE_BYTES // (1024 * 1024)} MiB")])
        text, yaml_first = pasted, False
    else:
        raise S.SpecError([S.FieldError("", "choose a spec file (JSON or YAML) or paste one")])
    data = spec_io.parse_spec_text(text, yaml_first=yaml_first)
    if not isinstance(data, dict):
        raise S.SpecError([S.FieldError("", "the document must be a JSON object or YAML mapping at the top level")])
    return data
