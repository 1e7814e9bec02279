"""The trial page (live while it runs, a report once finished), its Cancel action and artifact download."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from workers.spec import DEFAULTS

from . import selectors, services
from .models import Trial

BREAKDOWN_LABELS = (("dispatch_lag", "dispatch lag"), ("cold_start", "waiting for a cold start"),
                    ("platform_delay_modelled", "modelled platform delay (not measured)"),
                    ("batch_wait", "waiting for the batch to fill"), ("queue_wait", "queued for an instance"),
                    ("compute", "compute"))
PHASE_LABELS = (("platform_delay_modelled", "platform delay (modelled, not measured)"),
                ("process_start", "process start"), ("import", "import the runtime (torch or onnxruntime)"),
                ("device_context", "device context"), ("build", "build the module"),
                ("load", "read the weights from disk"), ("session", "create the ONNX Runtime session"),
                ("to_device", "move to the device"),
                ("warmup", "warm-up pass"), ("total", "total"))


def _frozen(trial: Trial) -> dict:
    """The parts of the trial's frozen spec this page needs (not the whole spec: it may hold a trace)."""
    return selectors.run_spec_parts([trial.run_spec_id], ("slo", "variants", "functions")).get(trial.run_spec_id, {})


def _slo(spec: dict) -> dict:
    slo = spec.get("slo") or {}
    rate = float(slo.get("max_violation_rate", DEFAULTS["slo.max_violation_rate"]))
    return {"percentile": float(slo.get("percentile", DEFAULTS["slo.percentile"])),
            "latency_ms": float(slo.get("latency_ms", DEFAULTS["slo.latency_ms"])),
            "max_violation_rate": rate, "max_violation_pct": rate * 100,
            "min_throughput_rps": slo.get("min_throughput_rps")}


def _prestart(trial: Trial, spec: dict) -> dict:
    """What the worker starts before the load begins, from the trial's frozen spec: the live page says so
    while it waits for the first window (each instance is a real process start, a second or two)."""
    variant = next((v for v in spec.get("variants") or [] if v.get("name") == trial.variant_name), {})
    per_function = int(variant.get("min_instances", DEFAULTS["variant.min_instances"]) or 0)
    functions = max(1, len(spec.get("functions") or []))
    sharing = variant.get("sharing", DEFAULTS["variant.sharing"])
    instances = min(per_function, 1) if sharing == "exclusive" else per_function * functions
    return {"instances": instances, "runtime": variant.get("runtime", DEFAULTS["variant.runtime"])}


def _price_name(summary: dict) -> str | None:
    price = (summary.get("cost") or {}).get("price")
    if isinstance(price, dict):
        return price.get("name")
    return str(price) if price else None


def _breakdown(summary: dict) -> list[dict]:
    """Mean latency components, in the order a request meets them, with their share of the total."""
    parts = summary.get("breakdown_ms") or {}
    total = sum(v for v in parts.values() if isinstance(v, (int, float))) or None
    rows = []
    for key, label in BREAKDOWN_LABELS:
        value = parts.get(key)
        share = value / total * 100 if total and isinstance(value, (int, float)) else None
        rows.append({"key": key, "label": label, "ms": value, "share_pct": share})
    return rows


@login_required
@require_GET
def trial_detail(request, code):
    trial = selectors.trial_get_for(user=request.user, code=code)
    summary = trial.summary or {}
    frozen = _frozen(trial)
    slo = _slo(frozen)
    row = selectors.trial_result_row(trial)
    page_data = {
        "trial": str(trial.code),
        "status": trial.status,
        "finished": trial.is_finished,
        "slo": slo,
        "windows": [{"index": w.pop("index"), "window": w} for w in selectors.trial_windows(trial)],
        "ws_path": f"/ws/trials/{trial.code}/",
        "prestart": _prestart(trial, frozen),
        # How long it has been running when the page was rendered (server clock; the page counts on from it).
        "running_for_s": (timezone.now() - trial.started_at).total_seconds()
        if trial.status == Trial.Status.RUNNING and trial.started_at else None,
    }
    pinned = selectors.pinned_trial_codes(user=request.user)
    return render(request, "experiments/trial_detail.html", {
        "trial": trial,
        "experiment": trial.experiment,
        "row": row,
        "violation_pct": row["violation_rate"] * 100 if isinstance(row.get("violation_rate"), (int, float)) else None,
        "price_name": _price_name(summary),
        "summary": summary,
        "slo": slo,
        "hardware": summary.get("hardware") or {},
        "breakdown": _breakdown(summary),
        "phases": [{"key": k, "label": label, "ms": (row.get("cold_start_phases_ms") or {}).get(k)}
                   for k, label in PHASE_LABELS] if row.get("cold_start_phases_ms") else [],
        "per_function": sorted((summary.get("per_function") or {}).items()),
        "page_data": page_data,
        "pinned": str(trial.code) in pinned,
        "pin_count": len(pinned),
        "can_cancel": trial.status in (Trial.Status.QUEUED, Trial.Status.RUNNING) and not trial.cancel_requested,
    })


@login_required
@require_POST
def trial_cancel(request, code):
    trial = selectors.trial_get_for(user=request.user, code=code)
    was = trial.status
    trial = services.trial_cancel(trial=trial)
    if was == Trial.Status.RUNNING and trial.status == Trial.Status.RUNNING:
        messages.info(request, "Cancel requested: the worker stops the trial within two seconds and keeps what it "
                               "measured so far.")
    elif trial.status == Trial.Status.CANCELLED and was != Trial.Status.CANCELLED:
        messages.info(request, "Trial cancelled.")
    else:
        messages.warning(request, f"The trial had already {trial.status}; nothing to cancel.")
    return redirect(reverse("trial-detail", kwargs={"code": trial.code}))


@login_required
@require_GET
def trial_artifact(request, code):
    """The raw per-request columns of a finished trial (Parquet), for export and re-analysis."""
    trial = selectors.trial_get_for(user=request.user, code=code)
    if not trial.artifact:
        raise Http404("This trial has no artifact.")
    try:
        handle = trial.artifact.open("rb")
    except FileNotFoundError:
        raise Http404("The artifact file is missing from storage.") from None
    filename = f"{trial.experiment.name}-{trial.variant_name}-r{trial.repeat}-{trial.code}.parquet"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in filename)
    return FileResponse(handle, as_attachment=True, filename=safe, content_type="application/vnd.apache.parquet")
