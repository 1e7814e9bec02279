"""The self-contained HTML report (and the context the PDF renders from the same template).

Every figure comes from the comparison selector's dict and is written exactly as the comparison page writes
it: the table's cells are the page's own (`comparison_views._table`, which formats with
`comparison.format_ms`, `format_percent`, `format_change`, `cost_scale` and `figures.format_usd`). This
module only chooses what to show and adds the words around it: the run's hardware and the method (read
from the trials' stored records through `selectors.trial_result_row`) and the caveats (from the rows'
verdicts and flags). Charts are inline SVG from `reports.charts`; styles are inline; nothing is loaded from
anywhere, so the file opens offline, and prints (A4 or Letter, page numbers) with its print stylesheet.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from django.template.loader import render_to_string
from django.utils import timezone

from workers import spec as S

from .. import comparison as C
from .. import comparison_views as V
from .. import selectors
from ..figures import format_usd
from ..models import Experiment, Trial
from . import charts as charts_mod

TEMPLATE = "reports/report.html"
PAPERS = {"a4": "A4", "letter": "Letter"}
GROUP_TITLES = {"latency": "Latency, all requests", "cost": "Cost", "load": "Load and cold starts"}
CAVEAT_LABELS = {"none_met": "no variant met", "no_results": "no results", "too_few": "too few samples",
                 "cpu_priced_as_gpu": "CPU priced as GPU", "dispatch_behind": "dispatcher behind",
                 "thread_runtime": "threads", "modelled_delay": "modelled delay", "not_repriced": "not re-priced"}
RUNTIME_TEXT = {
    "process": "process runtime: each instance is its own process, so a cold start is a real process start, "
               "imports, device context, weights and warm-up",
    "thread": "thread runtime: instances are threads of one worker process (no isolation); a cold start is "
              "the model load and warm-up only, without a process start",
}


def paper_size(paper: str | None) -> str:
    """"A4" or "Letter" (case-insensitive); anything else is an error naming the choices."""
    key = (paper or "A4").strip().lower()
    if key not in PAPERS:
        raise ValueError(f"paper must be A4 or Letter, not {paper!r}")
    return PAPERS[key]


def author_name(author) -> str:
    if author is None:
        return ""
    if isinstance(author, str):
        return author
    full = getattr(author, "get_full_name", lambda: "")() or ""
    return full or getattr(author, "username", "") or str(author)


def _distinct(values: Iterable) -> list:
    out = []
    for v in values:
        if v not in (None, "") and v not in out:
            out.append(v)
    return out


def _trial_records(comparison: dict) -> dict[str, dict]:
    """Trial code -> the one result selector's row (hardware, simulated, error, times): one query."""
    codes = [rep["trial"] for r in comparison.get("rows") or [] for rep in r.get("repeats") or []]
    if not codes:
        return {}
    trials = Trial.objects.filter(code__in=codes)
    return {str(t.code): selectors.trial_result_row(t) for t in trials}


def _run_date(records: dict[str, dict]) -> str:
    times = [r.get("finished_at") or r.get("started_at") for r in records.values()]
    times = [t for t in times if t]
    if not times:
        return ""
    return datetime.datetime.fromisoformat(max(times)).strftime("%Y-%m-%d")


def _hardware(row: dict, records: dict[str, dict]) -> dict:
    """What a variant ran on, from its counted repeats' records (all repeats when none counts)."""
    reps = [rep for rep in row["repeats"] if rep["included"]] or row["repeats"]
    hw = [(records.get(rep["trial"]) or {}).get("hardware") or {} for rep in reps]
    parts = []
    device = _distinct(h.get("device_name") for h in hw) or _distinct([row.get("device")])
    if device:
        parts.append("device " + ", ".join(map(str, device)))
    for key, label in (("driver_version", "driver"), ("cuda_version", "CUDA"), ("torch_version", "torch")):
        vals = _distinct(h.get(key) for h in hw)
        if vals:
            parts.append(f"{label} {', '.join(map(str, vals))}")
        elif key == "driver_version" and hw and any(h for h in hw):
            parts.append("driver none (CPU)" if row.get("on_cpu") else "driver not reported")
    mech = _distinct(h.get("sharing_mechanism") for h in hw)
    if mech:
        parts.append("sharing mechanism " + ", ".join(map(str, mech)))
    if row.get("cpu_label"):
        parts.append(row["cpu_label"])
    if row.get("isolation_level"):
        parts.append(f"isolation {row['isolation_level']}" + (f" ({row['isolation']})" if row.get("isolation")
                                                              and row["isolation"] != row["isolation_level"] else ""))
    return {"label": row["label"], "text": " · ".join(parts) or "not recorded (no finished trial)"}


def _table_groups(table: dict) -> list[dict]:
    """The page's table split by column group (latency, cost, load), so it fits a page's width."""
    cols = table["columns"]
    groups = []
    for name in ("latency", "cost", "load"):
        idx = [i for i, c in enumerate(cols) if c["group"] == name]
        groups.append({"name": name, "title": GROUP_TITLES[name], "columns": [cols[i] for i in idx],
                       "rows": [{"row": r, "cells": [r["cells"][i] for i in idx],
                                 "functions": [{"function": f["function"], "cells": [f["cells"][i] for i in idx]}
                                               for f in r["functions"]]}
                                for r in table["rows"]]})
    return groups


def _summary(comparison: dict, table: dict) -> dict:
    """The executive summary: the recommendation's sentence and the recommended (or closest) variant's cells."""
    rec = comparison["recommendation"]
    scale = comparison["display"]["cost_scale"]
    slo_metric = comparison["slo"]["metric"]
    rows = {r["key"]: r for r in table["rows"]}
    key = rec.get("variant") or rec.get("closest")
    row = rows.get(key) if key else None
    out = {"case": rec["case"], "text": rec["text"], "key": key, "row": None, "saving": None,
           "role": "Recommended" if rec.get("variant") else "Closest that fails"}
    if row is not None:
        cells = {c["key"]: c for c in row["cells"]}
        out["row"] = {"label": row["label"], "verdict": row["verdict"], "slo": cells[slo_metric]["text"],
                      "interval": row["interval"], "cost": cells["serverless_per_1k_usd"]["text"],
                      "provisioned": cells["provisioned_per_1k_usd"]["text"], "cost_label": scale["label"],
                      "cpu_priced_as_gpu": row["cpu_priced_as_gpu"]}
    saving = rec.get("saving")
    if saving and rec.get("variant"):
        base = next((r for r in table["rows"] if r["baseline"]), None)
        out["saving"] = {
            "per": format_usd(saving["per_1k_usd"] * scale["factor"]) if saving.get("per_1k_usd") is not None else "—",
            "per_label": scale["label"],
            "relative": C.format_percent(saving["relative"]) if saving.get("relative") is not None else "",
            "monthly": format_usd(saving["monthly_usd"]) if saving.get("monthly_usd") is not None else "",
            "monthly_note": next((r["monthly_note"] for r in comparison["rows"] if r["key"] == key and
                                  r.get("monthly_note")), ""),
            "baseline": base["label"] if base else "",
        }
    return out


def _method(comparison: dict, records: dict[str, dict], workloads: list) -> list[dict]:
    rows = comparison["rows"]
    slo = comparison["slo"]
    items = [
        {"title": "Load", "text": "Open loop: requests are sent on the workload's schedule whatever the answers, "
                                  "so a slow variant builds a backlog instead of slowing the load down."},
        {"title": "Latency", "text": "Measured from each request's intended arrival time (not from when it was "
                                     "sent), so dispatch lag and queueing count."},
        {"title": "Unfinished requests", "text": "Requests dropped, failed or still unfinished at the end of "
                                                 "the drain count as beyond the run (+∞): a percentile whose rank "
                                                 "falls among them reads “> drain”, and a CDF stops below 100 %."},
    ]
    methods: dict[tuple, list[str]] = {}
    for r in rows:
        iv = r.get("slo_interval") or {}
        methods.setdefault((iv.get("method"), iv.get("confidence")), []).append(r["label"])
    parts = []
    for (method, conf), labels in methods.items():
        if method is None:
            what = "no interval (too little data)"
        elif method == "moving-block bootstrap":
            what = f"{C.format_percent(conf)} moving-block bootstrap interval of one repeat's {slo['label']}"
        else:
            what = f"{method} (covers the median run with probability {C.format_percent(conf)})" if conf \
                else str(method)
        parts.append(f"{what}: {', '.join(labels)}")
    items.append({"title": "Interval of the SLO percentile", "text": "; ".join(parts) + ". A verdict is met when "
                  "the whole interval is under the target, not met when it is all above, else inconclusive; "
                  "repeats that disagree make a variant inconclusive."})
    comp = _distinct(r.get("time_compression") for r in rows)
    if not comp or comp == [1] or comp == [1.0]:
        items.append({"title": "Time", "text": "Real time: the workload was replayed at its own pace (no time "
                                               "compression)."})
    else:
        items.append({"title": "Time", "text": "Time compression: the workload was replayed "
                      + ", ".join(f"{c:g}×" for c in comp) + " faster than its own pace; per-month figures are "
                      "left out for compressed replays."})
    for w in workloads:
        text = f"{w.pattern}, {w.duration_s:g} s of workload time"
        rate = w.params.get("rate_rps")
        if rate is not None:
            text += f" at {rate:g} req/s"
        text += f", seed {w.seed}" + (f", function {w.function}" if w.function else "")
        items.append({"title": "Workload", "text": text + "."})
    runtimes = _distinct(r.get("runtime") for r in rows)
    for rt in runtimes:
        labels = [r["label"] for r in rows if r.get("runtime") == rt]
        items.append({"title": "Cold starts", "text": f"{RUNTIME_TEXT.get(rt, f'{rt} runtime')} "
                                                      f"({', '.join(labels)})."})
    delays = _distinct(r.get("platform_delay_ms") or (r.get("config") or {}).get("platform_delay_ms") for r in rows)
    for d in delays:
        if d:
            labels = [r["label"] for r in rows if (r.get("platform_delay_ms") or
                                                   (r.get("config") or {}).get("platform_delay_ms")) == d]
            items.append({"title": "Modelled platform delay", "text": f"{S.platform_delay_label(float(d))}: added "
                          f"to every cold start of {', '.join(labels)}; it did not run here."})
    if not any(d for d in delays):
        items.append({"title": "Platform delay", "text": "None modelled: cold starts are what this host really "
                                                         "did."})
    pricing = comparison["pricing"]
    entry = pricing.get("entry")
    price = pricing.get("note") or ""
    if entry:
        price += (f" Entry {entry['name']} ({entry['accelerator']}), as of {entry['as_of']}: serverless "
                  f"{format_usd(entry['serverless_usd_per_s'])} per device-second, on demand "
                  f"{format_usd(entry['on_demand_usd_per_h'])} per device-hour. Source: {entry['source']}")
    items.append({"title": "Prices", "text": price.strip()})
    return items


def _caveats(comparison: dict, records: dict[str, dict]) -> list[dict]:
    """Everything a reader must know before trusting the answer, each with its kind (a CSS class and a test
    hook): inconclusive, none_met, no_results, failed, cancelled, too_few, simulated, cpu_priced_as_gpu,
    replay, and the rows' other warning flags."""
    out: list[dict] = []
    rec = comparison["recommendation"]
    rows = comparison["rows"]
    if rec["case"] == "none_met":
        out.append({"kind": "none_met", "text": "No variant met the SLO: " + rec["text"]})
    elif rec["case"] == "no_results":
        out.append({"kind": "no_results", "text": "No finished trial: there are no results to decide on."})
    needs = {d["key"]: d for d in rec.get("inconclusive") or []}
    for r in rows:
        if (r.get("verdict") or {}).get("verdict") == "inconclusive":
            text = f"{r['label']}: inconclusive. " + "; ".join(r["verdict"]["reasons"])
            need = needs.get(r["key"])
            if need and need.get("rule"):
                text += f" ({need['rule']})"
            out.append({"kind": "inconclusive", "text": text.strip()})
    for r in rows:
        for rep in r["repeats"]:
            if rep["status"] in ("failed", "cancelled"):
                err = (records.get(rep["trial"]) or {}).get("error") or ""
                out.append({"kind": rep["status"], "text": f"{r['label']}, repeat {rep['repeat']}: {rep['status']}"
                            + (f": {err}" if err else "") + "; its figures are not counted."})
            elif rep["status"] in ("queued", "running"):
                out.append({"kind": "unfinished", "text": f"{r['label']}, repeat {rep['repeat']}: still {rep['status']} "
                            "when this report was made; its figures are not counted."})
    for r in rows:
        iv = r.get("slo_interval") or {}
        if r["included"] and iv.get("method") is None and iv.get("estimate") is not None:
            out.append({"kind": "too_few", "text": f"{r['label']}: too few samples for an interval of the "
                        f"{comparison['slo']['label']}."})
        codes = {f["code"] for f in r["flags"]}
        for f in r["flags"]:
            if f["code"] in V.WARN_FLAGS:
                kind = "too_few" if f["code"] == "single_repeat" else f["code"]
                out.append({"kind": kind, "text": f"{r['label']}: {f['text']}"})
        if "cpu_priced_as_gpu" not in codes and r.get("on_cpu") and (comparison["pricing"].get("entry") or {}).get("gpu"):
            out.append({"kind": "cpu_priced_as_gpu", "text": f"{r['label']}: {r.get('cpu_label') or 'CPU run'}."})
    simulated = sorted({f"{r['label']}" for r in rows for rep in r["repeats"]
                        if (records.get(rep["trial"]) or {}).get("simulated")})
    if simulated:
        sims = [(records.get(rep["trial"]) or {}).get("simulation") or {} for r in rows for rep in r["repeats"]]
        errs = [s["validation_max_rel_err"] for s in sims if s.get("validation_max_rel_err") is not None]
        trust = (f" The latest validation of their profiles against real runs found p50/p99 within "
                 f"{100 * max(errs):.0f} %." if errs else " Their profiles have not been validated against real runs.")
        out.append({"kind": "simulated", "text": f"Simulated from measured profiles, not measured: "
                                                 f"{', '.join(simulated)}.{trust}"})
    for n in comparison.get("notes") or []:
        out.append({"kind": "note", "text": n})
    for c in out:
        c["label"] = CAVEAT_LABELS.get(c["kind"], c["kind"].replace("_", " "))
    return out


def workloads_of(experiment: Experiment | None, run: int | None) -> list:
    """The run's workloads (`WorkloadSpec`s) from a trial's frozen spec, else the experiment's current spec."""
    if experiment is None:
        return []
    trial = None
    if run is not None:
        trial = experiment.trials.filter(run_number=run).select_related("run_spec").order_by("id").first()
    if trial is not None and trial.spec:
        try:
            from controlplane.registry.selectors import uploaded_models_for

            return list(S.parse_experiment(trial.spec, uploaded_models=uploaded_models_for(experiment.owner)).workloads)
        except S.SpecError:
            pass
    from .. import spec_io

    try:
        return list(spec_io.experiment_to_spec(experiment).workloads)
    except S.SpecError:
        return []


def report_context(comparison: dict, *, experiment: Experiment | None = None, run: int | None = None,
                   author=None, paper: str = "A4", generated: datetime.datetime | None = None,
                   charts: list | None = None, svg_text: str = "path") -> dict:
    """Everything the template shows. `charts`: ready `reports.charts.Chart`s (default: drawn here as SVG,
    glyphs as `svg_text`, see `reports.charts.render`)."""
    records = _trial_records(comparison)
    table = V._table(comparison, set())
    workloads = workloads_of(experiment, run if run is not None else comparison["scope"].get("run"))
    if charts is None:
        charts = charts_mod.report_charts(comparison, workloads=charts_mod.workload_curves(workloads), png=False,
                                            svg_text=svg_text)
    scope = comparison["scope"]
    if experiment is not None:
        title = experiment.name
    elif scope.get("experiment"):
        title = scope["experiment"]["name"]
    else:
        title = "Pinned trials"
    run = run if run is not None else scope.get("run")
    generated = generated or timezone.now()
    slo = comparison["slo"]
    return {
        "title": title, "experiment": experiment, "description": getattr(experiment, "description", ""),
        "run": run, "run_date": _run_date(records), "author": author_name(author),
        "generated": generated.strftime("%Y-%m-%d %H:%M UTC"), "paper": paper_size(paper),
        "data": comparison, "slo": slo, "scale": comparison["display"]["cost_scale"],
        "slo_text": f"{slo['label']} ≤ {C.format_ms(slo['latency_ms'])}",
        "violation_text": C.format_percent(slo["max_violation_rate"]),
        "throughput_text": f"{slo['min_throughput_rps']:g} req/s" if slo.get("min_throughput_rps") else "",
        "summary": _summary(comparison, table), "table": table, "groups": _table_groups(table),
        "charts": charts, "hardware": [_hardware(r, records) for r in comparison["rows"]],
        "method": _method(comparison, records, workloads), "caveats": _caveats(comparison, records),
        "variants": len(comparison["rows"]), "trials": sum(r["trials"] for r in comparison["rows"]),
    }


def render_html(comparison: dict, *, experiment: Experiment | None = None, run: int | None = None, author=None,
                paper: str = "A4", **options) -> bytes:
    """The report as one self-contained HTML file (UTF-8 bytes)."""
    context = report_context(comparison, experiment=experiment, run=run, author=author, paper=paper,
                             generated=options.get("generated"))
    return render_to_string(TEMPLATE, context).encode("utf-8")
