"""The comparison page: every variant of one run side by side (or the user's pinned trials), with a run,
baseline and price picker, the recommendation, the table and the charts.

Every number comes from the comparison selector (`comparison.experiment_comparison` /
`comparison.compare_trials`); this module only chooses what to show and writes it with the selector's
formatters (`comparison.format_ms`, `format_percent`, `format_change`, `cost_scale`) and
`figures.format_usd`. It never computes a figure.

The page's JavaScript re-prices, changes the baseline and follows running trials without a reload: it asks
the `.../compare/data/` view for the same selector dict plus the page's table rendered by the same template
(the `comparison_body` block), so cells are written by the server alone, and only the charts are drawn in
the browser.
"""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.context import make_context
from django.template.loader import get_template
from django.template.loader_tags import BlockNode
from django.urls import reverse
from django.views.decorators.http import require_GET

from workers import spec as S

from . import comparison as C
from . import selectors
from .figures import format_usd, format_usd_per_1k

TEMPLATE = "experiments/comparison.html"
BODY_BLOCK = "comparison_body"

# Table columns after the variant and its verdict: (metric key, heading). The SLO percentile, when it is not
# one of these four, is added in its place among the latency columns.
LATENCY_COLUMNS = (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))
OTHER_COLUMNS = (("violation_rate", "violations"), ("throughput_rps", "throughput"), ("goodput_rps", "goodput"),
                 ("cold_starts", "cold starts"), ("cold_start_p50_ms", "cold start p50"),
                 ("mean_batch_size", "mean batch"))
COST_COLUMNS = (("serverless_per_1k_usd", "serverless"), ("serverless_per_1k_good_usd", "serverless, good only"),
                ("provisioned_per_1k_usd", "provisioned"), ("provisioned_per_1k_good_usd", "provisioned, good only"))
SCALED_COSTS = {k for k, _ in COST_COLUMNS}  # per-1,000 figures, written in the page's cost unit
PRICE_TAGGED = ("serverless_per_1k_usd", "provisioned_per_1k_usd")  # "CPU run, GPU price" beside these
UNITS = {"rps": "req/s"}

VERDICT_BADGES = {"met": ("✓ met", "met"), "not_met": ("✗ not met", "not-met"),
                  "inconclusive": ("? inconclusive", "inconclusive")}
FLAG_LABELS = {"single_repeat": "1 repeat", "partial": "partial", "excluded": "repeats left out",
               "no_results": "no results yet", "on_cpu": "CPU run", "cpu_priced_as_gpu": "CPU run, GPU price",
               "dispatch_behind": "dispatcher fell behind", "replay": "replay", "modelled_delay": "modelled delay",
               "thread_runtime": "threads, no isolation", "not_repriced": "not re-priced", "simulated": "simulated"}
WARN_FLAGS = {"single_repeat", "partial", "excluded", "cpu_priced_as_gpu", "dispatch_behind", "replay",
              "modelled_delay", "thread_runtime", "not_repriced"}


# ---- reading the request -----------------------------------------------------------------------------------
def _params(request: HttpRequest) -> tuple[dict[str, Any], list[dict]]:
    """run / baseline / price from the query string; a run that is not a number is reported and ignored."""
    q = request.GET
    errors: list[dict] = []
    run: int | None = None
    raw = (q.get("run") or "").strip()
    if raw:
        try:
            run = int(raw)
        except ValueError:
            errors.append({"path": "run", "message": f"{raw!r} is not a run number; showing the latest run"})
    return {"run": run, "baseline": (q.get("baseline") or "").strip() or None,
            "price": (q.get("price") or "").strip() or None}, errors


def _with_fallback(build, params: dict[str, Any], errors: list[dict]) -> dict:
    """The selector's dict; a parameter it refuses (no such run, baseline or price) is reported on the page
    and dropped, so a stale link still opens the comparison with the defaults."""
    for _ in range(len(params) + 1):
        try:
            return build(**params)
        except S.SpecError as exc:
            dropped = False
            for e in exc.errors:
                if params.get(e.path) is not None:
                    errors.append({"path": e.path, "message": f"{e.message}; showing the default instead"})
                    params[e.path] = None
                    dropped = True
            if not dropped:
                raise
    return build(**params)


# ---- shaping the selector's dict for the template (formatting only) -----------------------------------------
def _columns(data: dict) -> list[dict]:
    metrics = {m["key"]: m for m in data["metrics"]}
    slo_metric = data["slo"]["metric"]
    latency = list(LATENCY_COLUMNS)
    if slo_metric not in {k for k, _ in latency} and slo_metric in metrics:
        latency.append((slo_metric, data["slo"]["label"]))
        latency.sort(key=lambda c: data["metrics"].index(metrics[c[0]]))
    cols = []
    for group, items in (("latency", latency), ("cost", COST_COLUMNS), ("load", OTHER_COLUMNS)):
        for key, heading in items:
            m = metrics[key]
            cols.append({"key": key, "heading": heading, "title": m["label"], "unit": m["unit"], "group": group,
                         "slo": key == slo_metric, "better": m["better"]})
    return cols


def _value_text(unit: str, key: str, value, scale: dict, *, unfinished=None, beyond: bool = False) -> str:
    if unit == "ms":
        if value is None:
            return C.format_ms(None, int(round(unfinished or 0))) if beyond else "—"
        return C.format_ms(value)
    if value is None:
        return "—"
    if unit == "usd":
        return format_usd(value * (scale["factor"] if key in SCALED_COSTS else 1.0))
    if unit == "fraction":
        return C.format_percent(value)
    if unit == "rps":
        return f"{value:.3g}"
    if unit == "count":
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
    return f"{value:.3g}"


def _spread_text(unit: str, key: str, fig: dict, scale: dict) -> str:
    """min - max across repeats, when there are several and they differ."""
    if fig["n"] < 2 or fig["low"] == fig["high"]:
        return ""
    low = _value_text(unit, key, fig["low"], scale)
    high = "> drain" if (unit == "ms" and fig["high"] is None) else _value_text(unit, key, fig["high"], scale)
    if unit == "ms":
        low = low.removesuffix(" ms")
    return f"{low} – {high}"


def _cell(col: dict, fig: dict | None, delta: dict | None, figures: dict, scale: dict, baseline_label: str, *,
          interval: bool = False) -> dict:
    """One table cell. `interval`: the SLO interval is shown in it, in place of the min - max spread (for
    repeats the interval is that same min - max)."""
    if fig is None:
        return {"key": col["key"], "empty": True}
    beyond = col["unit"] == "ms" and fig["n"] > 0 and fig["beyond_run"] > 0
    unfinished = (figures.get("unfinished") or {}).get("value")
    text = _value_text(col["unit"], col["key"], fig["value"], scale, unfinished=unfinished, beyond=beyond)
    change = C.format_change(delta, col["key"], scale) if delta else ""
    if change and delta["abs"] == 0:
        change = "±0"
    title = ""
    if change:
        title = f"against the baseline {baseline_label}"
        if delta.get("within_spread"):
            title += ": within the repeats' min-max ranges, so possibly noise"
    return {"key": col["key"], "empty": False, "slo": col["slo"], "price_tag": col["key"] in PRICE_TAGGED, "text": text,
            "spread": "" if interval and col["slo"] else _spread_text(col["unit"], col["key"], fig, scale),
            "n": fig["n"], "beyond": fig["value"] is None and beyond, "change": change,
            "direction": (delta or {}).get("direction") or "", "noise": bool((delta or {}).get("within_spread")),
            "title": title}


def _interval_text(iv: dict, scale: dict) -> str:
    if not iv or iv.get("method") is None:
        return "no interval (too little data)" if iv and iv.get("estimate") is not None else ""
    low = "> drain" if iv["low"] is None else C.format_ms(iv["low"]).removesuffix(" ms")
    high = "> drain" if iv["high"] is None else C.format_ms(iv["high"])
    conf = f"{iv['confidence'] * 100:.3g} % " if iv.get("confidence") else ""
    what = "CI" if iv["method"] == "moving-block bootstrap" else "repeats"
    return f"{conf}{what} {low} – {high}"


def _verdict(verdict: str | None) -> dict:
    text, css = VERDICT_BADGES.get(verdict or "", ("—", "none"))
    return {"verdict": verdict or "", "text": text, "css": css}


def _repeat(rep: dict, row: dict, data: dict, scale: dict, pinned: set[str]) -> dict:
    f = rep["figures"]
    slo_metric = data["slo"]["metric"]
    ci = rep["slo_interval"]
    ci_text = ""
    if ci:
        ci_text = ("> drain" if ci[0] is None else C.format_ms(ci[0]).removesuffix(" ms")) + " – " + (
            "> drain" if ci[1] is None else C.format_ms(ci[1]))

    def ms(key: str) -> str:
        return _value_text("ms", key, f.get(key), scale, unfinished=f.get("unfinished"),
                           beyond=rep["included"] and f.get(key) is None)

    return {
        "trial": rep["trial"], "repeat": rep["repeat"], "status": rep["status"], "url": rep["url"],
        "included": rep["included"], "verdict": _verdict(rep["verdict"]), "reasons": rep["reasons"],
        "slo": ms(slo_metric), "ci": ci_text, "p50": ms("p50_ms"), "p99": ms("p99_ms"),
        "violation": _value_text("fraction", "violation_rate", f.get("violation_rate"), scale),
        "serverless": format_usd_per_1k(f.get("serverless_per_1k_usd"), short=True),
        "provisioned": format_usd_per_1k(f.get("provisioned_per_1k_usd"), short=True),
        "price": rep["price"], "repriced": rep["repriced"], "notes": rep["notes"],
        "dispatch_behind": rep["dispatch_behind"], "pinned": rep["trial"] in pinned,
        "run": row["run"], "experiment": row["experiment"],
    }


def capacity_text(cap: dict | None) -> dict:
    """The "capacity at SLO" cell of a row (pages and every report format): the optimistic capacity, the
    conservative one, whether it was simulated; "—" when the variant has no finished search."""
    if cap is None:
        return {"text": "—", "conservative": "", "simulated": False, "url": None, "found": False}
    text = (f"{_value_text('rps', 'capacity_rps', cap['capacity_rps'], {})} req/s" if cap["capacity_rps"] is not None
            else "none found")
    cons = cap["conservative_capacity_rps"]
    return {"text": text, "found": True, "simulated": cap["simulated"], "url": cap["url"],
            "conservative": f"conservative {_value_text('rps', 'capacity_rps', cons, {})} req/s" if cons is not None
            else "conservative: no probe met",
            "cost": format_usd_per_1k(cap["cost_per_1k_usd_at_capacity"], short=True)}


def _live_text(row: dict, charts: dict | None) -> str:
    """A running row's latest second, from the selector's own time series (its figures come at the end)."""
    if row["status"] == "finished" or not charts:
        return ""
    p99 = next((s for s in charts["p99_over_time"]["series"] if s["key"] == row["key"]), None)
    inst = next((s for s in charts["instances"]["series"] if s["key"] == row["key"]), None)
    if not p99 or not p99["points"]:
        return ""
    t, value = p99["points"][-1]
    text = f"second {t:g}" + (f" of repeat {p99['repeat']}" if p99["repeat"] is not None else "")
    text += f": p99 {C.format_ms(value)}" if value is not None else ": no request finished"
    if inst and inst["points"]:
        n = sum(inst["points"][-1][1:])
        text += f", {n:g} instance{'s' if n != 1 else ''}"
    return text


def _table(data: dict, pinned: set[str]) -> dict:
    scale = data["display"]["cost_scale"]
    cols = _columns(data)
    function_keys = set(C.FUNCTION_METRIC_KEYS)
    base = next((r for r in data["rows"] if r["baseline"]), None)
    base_label = base["label"] if base else ""
    rows = []
    for r in data["rows"]:
        interval = _interval_text(r["slo_interval"], scale)
        cells = [_cell(c, r["figures"][c["key"]], (r["deltas"] or {}).get(c["key"]), r["figures"], scale, base_label,
                       interval=bool(interval)) for c in cols]
        functions = []
        for fn in r["functions"]:
            functions.append({"function": fn["function"], "cells": [
                _cell(c, fn["figures"][c["key"]], (fn["deltas"] or {}).get(c["key"]), fn["figures"], scale,
                      base_label) if c["key"] in function_keys else {"key": c["key"], "empty": True}
                for c in cols]})
        flags = [{"code": f["code"], "label": FLAG_LABELS.get(f["code"], f["code"].replace("_", " ")),
                  "text": f["text"], "warn": f["code"] in WARN_FLAGS} for f in r["flags"]]
        rows.append({
            "key": r["key"], "label": r["label"], "variant": r["variant"], "experiment": r["experiment"],
            "run": r["run"], "status": r["status"], "baseline": r["baseline"], "trials": r["trials"],
            "included": r["included"], "verdict": _verdict(r["verdict"]["verdict"]) | {
                "reasons": r["verdict"]["reasons"], "counts": r["verdict"]["counts"]},
            "live_text": _live_text(r, data["charts"]), "interval": interval, "cells": cells, "functions": functions,
            "flags": flags, "notes": r["notes"], "isolation_level": r["isolation_level"], "isolation": r["isolation"],
            "runtime": r["runtime"], "device": r["device"], "on_cpu": r["on_cpu"], "cpu_label": r["cpu_label"],
            "cpu_priced_as_gpu": any(f["code"] == "cpu_priced_as_gpu" for f in r["flags"]),
            "cpu_price_text": next((f["text"] for f in r["flags"] if f["code"] == "cpu_priced_as_gpu"), ""),
            "config": r["config"], "capacity": capacity_text(r.get("capacity")),
            "repeats": [_repeat(rep, r, data, scale, pinned) for rep in r["repeats"]],
        })
    return {"columns": cols, "rows": rows, "width": len(cols) + 5, "multi": len(data["scope"]["groups"]) > 1,
            "groups": [{"name": g, "span": sum(1 for c in cols if c["group"] == g)} for g in ("latency", "cost", "load")]}


def _context(request: HttpRequest, data: dict, *, params: dict, errors: list[dict], data_url: str,
             page_url: str, pinned_page: bool, experiment=None) -> dict:
    pinned = selectors.pinned_trial_codes(user=request.user)
    pricing = data["pricing"]
    entry = pricing["entry"]
    return {
        "data": data, "table": _table(data, pinned), "params": params, "errors": errors,
        "experiment": experiment, "pinned_page": pinned_page, "data_url": data_url, "page_url": page_url,
        # where a pin button comes back to: the page (not its data view) with the same parameters
        "return_url": page_url + (f"?{request.GET.urlencode()}" if request.GET else ""),
        "prices": list(selectors.price_list()), "scale": data["display"]["cost_scale"],
        "price_used": (f"{entry['name']}, as of {entry['as_of']}" if entry else
                       ", ".join(f"{s['name']}" + (f", as of {s['as_of']}" if s["as_of"] else "")
                                 for s in pricing["stored"])),
        "recommendation": data["recommendation"], "baseline": data["baseline"],
        "live": data["live"], "slo": data["slo"],
        "trial_count": sum(r["trials"] for r in data["rows"]),
        "experiment_count": len({g["experiment"]["code"] for g in data["scope"]["groups"]}),
    }


def _render_body(request: HttpRequest, context: dict) -> str:
    """The `comparison_body` block of the page's template alone: the part the page swaps in place."""
    template = get_template(TEMPLATE).template
    node = next(n for n in template.nodelist.get_nodes_by_type(BlockNode) if n.name == BODY_BLOCK)
    ctx = make_context(context, request)
    with ctx.render_context.push_state(template), ctx.bind_template(template):
        return node.render(ctx)


def _respond(request: HttpRequest, context: dict, started: float, *, as_json: bool) -> HttpResponse:
    if as_json:
        body = _render_body(request, context)
        server_ms = (time.perf_counter() - started) * 1000.0
        response = JsonResponse({"comparison": context["data"], "html": body, "errors": context["errors"],
                                 "server_ms": round(server_ms, 1)})
    else:
        context["server_ms"] = None  # the full page is timed by its Server-Timing header
        response = render(request, TEMPLATE, context)
        server_ms = (time.perf_counter() - started) * 1000.0
    response["Server-Timing"] = f"compare;dur={server_ms:.1f}"
    response["Cache-Control"] = "no-store"
    return response


# ---- one run of an experiment ------------------------------------------------------------------------------
def _experiment(request: HttpRequest, code, *, as_json: bool) -> HttpResponse:
    started = time.perf_counter()
    experiment = selectors.experiment_get_for(user=request.user, code=code)
    params, errors = _params(request)
    data = _with_fallback(lambda **kw: C.experiment_comparison(experiment=experiment, **kw), params, errors)
    params["run"] = data["scope"]["run"]
    context = _context(request, data, params=params, errors=errors, experiment=experiment, pinned_page=False,
                       data_url=reverse("experiment-compare-data", kwargs={"code": experiment.code}),
                       page_url=reverse("experiment-compare", kwargs={"code": experiment.code}))
    return _respond(request, context, started, as_json=as_json)


@login_required
@require_GET
def experiment_compare(request: HttpRequest, code) -> HttpResponse:
    """/experiments/<code>/compare/?run=N&baseline=V&price=P: one run's variants side by side."""
    return _experiment(request, code, as_json=False)


@login_required
@require_GET
def experiment_compare_data(request: HttpRequest, code) -> HttpResponse:
    """The page's own refresh: {"comparison": the selector's dict, "html": the table block, "errors",
    "server_ms"}. Same parameters as the page."""
    return _experiment(request, code, as_json=True)


# ---- the pinned trials -------------------------------------------------------------------------------------
def _pinned(request: HttpRequest, *, as_json: bool) -> HttpResponse:
    started = time.perf_counter()
    params, errors = _params(request)
    params.pop("run")
    trials = list(selectors.pinned_trials(user=request.user))
    data = _with_fallback(lambda **kw: C.compare_trials(trials, **kw), params, errors)
    context = _context(request, data, params=params, errors=errors, pinned_page=True,
                       data_url=reverse("compare-pinned-data"), page_url=reverse("compare-pinned"))
    return _respond(request, context, started, as_json=as_json)


def pinned_page(request: HttpRequest) -> HttpResponse:
    """/compare/pinned/ (routed by pin_views): the user's pinned trials on the comparison page, each row
    labelled with its experiment and run."""
    return _pinned(request, as_json=False)


@login_required
@require_GET
def pinned_compare_data(request: HttpRequest) -> HttpResponse:
    return _pinned(request, as_json=True)
