"""The comparison: every variant of a run (or any pinned trials) side by side. One source of numbers.

The comparison page, the API (`GET /api/experiments/<code>/comparison/`) and the reports all read
`compare_trials` / `experiment_comparison`; no figure of a comparison is computed anywhere else. Each
trial's own figures come from `selectors.trial_result_row` (what the trial page shows); this module
combines repeats, re-prices, compares against a baseline, finds the Pareto front, writes the
recommendation and shapes the chart series. Pages and reports write the numbers with the helpers at the
end (`cost_scale`, `format_ms`, `format_percent`, `format_change`) and `figures.format_usd` for money.

Queries: a constant number whatever the number of trials (trials, their frozen spec parts, the price
entries, the chart windows, the latest capacity searches: 5, plus the run list for `experiment_comparison`). Latency CDFs read two
columns of each trial's Parquet artifact once; the downsampled curve is cached in this process by
(path, mtime, size).

The returned dict is plain JSON (str, int, float, bool, None, list, dict; no NaN or inf). Raw floats,
never rounded. Shape (`ser.ComparisonSerializer` documents every field in the OpenAPI schema):

    version            1
    scope              {kind: "run" | "trials", experiment: {code, name} | None, run: int | None,
                        runs: [int, newest first] (kind "run"), groups: [{experiment: {code, name}, run}]}
    slo                {percentile, key ("p99"), metric ("p99_ms"), latency_ms, max_violation_rate,
                        min_throughput_rps, consistent (False: pinned trials with different SLOs; each
                        verdict is against its own trial's SLO, the chart line is the first group's)}
    metrics            [{key, label, unit, better ("lower" | "higher" | None), beyond_run}]: the keys of
                        every `figures` dict, in table order
    pricing            {entry: {name, accelerator, as_of, source, on_demand_usd_per_h, serverless_usd_per_s,
                        granularity_s, min_billed_s, idle_tail_s, gpu} | None, repriced (bool: every cost
                        was re-billed from stored spans with `entry`), stored: [{name, as_of, changed}] (the
                        prices the trials were billed with when they ran), not_repriced: [{trial, variant,
                        repeat, reason}], note (one sentence: which entry and date the figures use)}
    display            {cost_scale: {per (1000 | 1000000), factor (multiply a per-1,000 figure by it),
                        label ("per 1,000 requests" | "per 1 M requests")}}
    baseline           the baseline row's key, or None (no rows)
    rows               one per variant (per variant and run/experiment when trials come from several):
        key            variant name; "r<run>.<variant>" across runs of one experiment;
                       "<experiment code[:8]>.r<run>.<variant>" across experiments
        label          variant name, or "<experiment> · run N · <variant>"
        variant, experiment {code, name}, run
        status         "queued" | "running" | "finished" (all its trials finished)
        trials, included   its trials, and those whose figures count (succeeded, with a summary)
        baseline, always_on (min_instances >= 1 in the frozen spec)
        config         {sharing, runtime, batching_mode, max_batch_size, min_instances, max_instances,
                        keep_alive_policy, keep_alive_ttl_s, platform_delay_ms}
        verdict        {verdict: "met" | "not_met" | "inconclusive" | None (no result yet), reasons: [str],
                        counts: {met, not_met, inconclusive}}: the repeats' verdicts when they agree; any
                        disagreement is inconclusive; one repeat keeps its own verdict (and the flag
                        "single_repeat")
        slo_interval   {estimate, low, high, method, confidence, beyond_run}: one repeat: its moving-block
                        bootstrap interval; several: `workers.statistics.repeats_interval` (min-max of the
                        repeats' SLO percentiles); a None bound lies beyond the run
        figures        {metric key: {value (median across repeats), low, high (min-max), n, beyond_run}}; for
                        latency metrics (beyond_run True in `metrics`) a None value is "beyond the run" and
                        beyond_run counts the repeats where it was; elsewhere None is "no figure"
        deltas         None for the baseline; else {metric key: {abs, rel, direction ("better" | "worse" |
                        "same" | None), within_spread (the min-max ranges overlap; None with < 2 repeats
                        on either side)} | None}
        functions      [] with one function; else [{function, figures, deltas}] over the function's own
                        requests (`summary.per_function`; no cost or verdict per function)
        breakdown_ms   {dispatch_lag, cold_start, platform_delay_modelled (MODELLED), batch_wait,
                        queue_wait, compute}: medians across repeats
        isolation_level ("none" | "process" | "hardware partition"), isolation (label), runtime, device,
        on_cpu, cpu_label (e.g. "measured on CPU, priced as NVIDIA H100 80GB"), time_compression,
        platform_delay_ms, monthly_note, dispatch_behind (any repeat's dispatcher fell behind)
        notes          [str]: the repeats' notes ("repeat 2: ..." when not shared by all)
        flags          [{code, text}]: single_repeat, partial, excluded, no_results, on_cpu,
                        cpu_priced_as_gpu, dispatch_behind, replay, modelled_delay, thread_runtime,
                        not_repriced
        repeats        [{trial, repeat, status, url, included, verdict, reasons, slo_interval, figures
                        (metric key: value), price, repriced, dispatch_behind, notes}]
        representative the trial whose windows the time charts show (the median repeat by SLO percentile)
        capacity       the latest succeeded capacity search of the variant (experiment and variant name), or None:
                       {search, url, simulated, capacity_rps (optimistic), conservative_capacity_rps,
                       p99_ms_at_capacity, cost_per_1k_usd_at_capacity (provisioned), serverless_per_1k_usd_at_capacity,
                       stopped, finished_at}
    pareto             {x ("serverless_per_1k_usd"), y (slo.metric), slo_ms, points: [{key, label, x, y,
                        x_low, x_high, y_low, y_high, verdict, on_front}], front: [keys, cheapest first],
                        excluded: [{key, reason}]}: lower is better on both axes
    recommendation     {case: "met" | "none_met" | "undecided" | "no_results", text, variant, closest,
                        margin_ms, saving: {per_1k_usd, relative, monthly_usd} | None,
                        inconclusive: [{key, label, reasons, more_requests, more_seconds, more_repeats,
                        rule}]}
    charts             None (charts=False) or {max_points (2000),
        cdf            {slo_ms, series: [{key, label, points: [[latency_ms, fraction of all requests]],
                        reaches, unfinished_share, requests, repeats, missing}]}: the repeats' requests
                        pooled; unfinished requests never arrive, so a curve stops at `reaches` < 1
        p99_over_time  {slo_ms, series: [{key, label, trial, repeat, points: [[t_s, p99_ms | None]]}]}
        instances      {series: [{key, label, trial, repeat, points: [[t_s, starting, idle, busy]],
                        cold_starts: [[t_s, count]]}]}
        breakdown      {components: [keys], labels: {key: label}, modelled: [keys],
                        series: [{key, label, values: {component: ms | None}}]}
        knee           {slo_ms, series: [{key, label, search, simulated, capacity_rps, conservative_capacity_rps,
                        points: [[offered rate req/s, p99_ms | None, verdict]]}]}: the probes that count of each
                        row's capacity search (rows without one have no series)}
                       the two time charts show the `representative` trial of each row; more than
                       max_points windows are bucketed (p99: the bucket's max; instances: its mean;
                       cold starts: its sum)
    live               any trial still queued or running; live_trials: their codes (channel groups)
    notes              [str]
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db.models import Q, QuerySet

from workers import spec as S
from workers.cost import reprice
from workers.records import OUTCOME_OK, json_safe
from workers.statistics import MIN_CI_SECONDS, min_samples, repeats_interval

from . import capacity, selectors
from .figures import PER_MILLION_BELOW_USD, format_usd
from .models import Experiment, PriceEntry, Trial, TrialWindow

VERSION = 1
MAX_POINTS = 2_000  # per chart series
VERDICTS = ("met", "not_met", "inconclusive")
BREAKDOWN_KEYS = ("dispatch_lag", "cold_start", "platform_delay_modelled", "batch_wait", "queue_wait", "compute")
BREAKDOWN_LABELS = {"dispatch_lag": "dispatch lag", "cold_start": "cold start",
                    "platform_delay_modelled": "platform delay (modelled)", "batch_wait": "batch wait",
                    "queue_wait": "queue wait", "compute": "compute"}
# Repeats to suggest when they disagree: the min-max range of n repeats covers the median run with
# probability 1 - 2^(1 - n): 93.8 % for 5, 98.4 % for 7.
REPEAT_TARGETS = (5, 7)
D = S.DEFAULTS


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str  # ms, fraction, rps, count, usd
    better: str | None  # "lower", "higher", or None (neither)
    beyond_run: bool = False  # None means "beyond the run" (+inf), not "no figure"


_PCTS = (("p50", "p50"), ("p90", "p90"), ("p95", "p95"), ("p99", "p99"), ("p999", "p99.9"))
METRICS: tuple[Metric, ...] = (
    *(Metric(f"{k}_ms", label, "ms", "lower", True) for k, label in _PCTS),
    *(Metric(f"{k}_completed_ms", f"{label} (completed only)", "ms", "lower") for k, label in _PCTS),
    Metric("requests", "requests", "count", None),
    Metric("unfinished", "unfinished requests", "count", "lower"),
    Metric("unfinished_share", "unfinished share", "fraction", "lower"),
    Metric("violation_rate", "violation rate", "fraction", "lower"),
    Metric("throughput_rps", "throughput", "rps", "higher"),
    Metric("goodput_rps", "goodput", "rps", "higher"),
    Metric("cold_starts", "cold starts", "count", "lower"),
    Metric("cold_start_p50_ms", "cold start p50", "ms", "lower"),
    Metric("mean_batch_size", "mean batch size", "count", None),
    Metric("serverless_per_1k_usd", "serverless cost per 1,000 requests", "usd", "lower"),
    Metric("provisioned_per_1k_usd", "provisioned cost per 1,000 requests", "usd", "lower"),
    Metric("serverless_per_1k_good_usd", "serverless cost per 1,000 good requests", "usd", "lower"),
    Metric("provisioned_per_1k_good_usd", "provisioned cost per 1,000 good requests", "usd", "lower"),
    Metric("monthly_serverless_usd", "serverless cost per month", "usd", "lower"),
    Metric("monthly_provisioned_usd", "provisioned cost per month", "usd", "lower"),
)
METRIC_KEYS = tuple(m.key for m in METRICS)
FUNCTION_METRIC_KEYS = (*(f"{k}_ms" for k, _ in _PCTS), *(f"{k}_completed_ms" for k, _ in _PCTS), "requests",
                        "unfinished", "unfinished_share", "violation_rate", "throughput_rps", "goodput_rps",
                        "cold_starts")
COST_METRIC_KEYS = ("serverless_per_1k_usd", "provisioned_per_1k_usd", "serverless_per_1k_good_usd",
                    "provisioned_per_1k_good_usd", "monthly_serverless_usd", "monthly_provisioned_usd")
METRIC_BY_KEY = {m.key: m for m in METRICS}


def _pct_key(percentile: float) -> str:
    return f"p{percentile:g}".replace(".", "")


def _pct_label(percentile: float) -> str:
    return f"p{percentile:g}"


# ---- entry points -------------------------------------------------------------------------------------------
def experiment_comparison(*, experiment: Experiment, run: int | None = None, baseline: str | None = None,
                          price: PriceEntry | int | str | None = None, charts: bool = True) -> dict:
    """The comparison of one run of an experiment (default: the latest). A run that does not exist, an unknown
    baseline or price raise `workers.spec.SpecError` naming the parameter (`run`, `baseline`, `price`)."""
    runs = selectors.experiment_runs(experiment=experiment)
    if run is None:
        run = runs[0] if runs else None
    elif run not in runs:
        known = ", ".join(map(str, runs)) if runs else "none: the experiment was never run"
        raise S.SpecError([S.FieldError("run", f"no run {run} (runs: {known})")])
    trials = experiment.trials.none() if run is None else experiment.trials.filter(run_number=run)
    scope = {"kind": "run", "experiment": _exp_ref(experiment), "run": run, "runs": runs}
    return compare_trials(trials, baseline=baseline, price=price, charts=charts, scope=scope)


def compare_trials(trials: QuerySet | Iterable[Trial | int], *, baseline: str | None = None,
                   price: PriceEntry | int | str | None = None, charts: bool = True,
                   scope: dict | None = None) -> dict:
    """The comparison of any trials: one run's (a queryset) or a pinned set from several runs or experiments
    (Trial objects or ids, in the order given). The caller has checked that the user may see them.

    baseline: a row key (default: the first always-on variant, else the first row); price: a PriceEntry,
    its id or its name, to re-bill every trial from its stored spans (default: the figures as billed when
    each trial ran). See the module docstring for the shape."""
    loaded = _load_trials(trials)
    groups = _groups(loaded)
    specs = _spec_parts(groups)
    entry, catalogue = _price_entries(loaded, price)
    multi_exp = len({g[0] for g in groups}) > 1
    multi = len(groups) > 1

    rows: list[dict] = []
    not_repriced: list[dict] = []
    row_variants: list[tuple[int, str]] = []  # (experiment id, variant) of each row: its capacity searches
    for (exp_id, run), group in groups.items():
        spec = specs.get((exp_id, run)) or {}
        order = {v.get("name"): i for i, v in enumerate(spec.get("variants") or [])}
        by_variant: dict[str, list[Trial]] = {}
        for t in sorted(group, key=lambda t: (order.get(t.variant_name, len(order)), t.variant_name, t.repeat)):
            by_variant.setdefault(t.variant_name, []).append(t)
        for name, ts in by_variant.items():
            exp = ts[0].experiment
            key = name if not multi else f"r{run}.{name}" if not multi_exp else f"{exp.code.hex[:8]}.r{run}.{name}"
            label = name if not multi else f"{exp.name} · run {run} · {name}"
            variant_spec = next((v for v in spec.get("variants") or [] if v.get("name") == name), {})
            row = _row(key, label, ts, variant_spec, spec, entry, catalogue, not_repriced)
            rows.append(row)
            row_variants.append((exp_id, name))
    searches = capacity.latest_results(set(row_variants))
    for row, pair in zip(rows, row_variants, strict=True):
        row["capacity"] = capacity.capacity_cell(searches.get(pair))

    slo = _slo(specs, groups)
    base_key = _choose_baseline(rows, baseline)
    for row in rows:
        row["baseline"] = row["key"] == base_key
    base = next((r for r in rows if r["key"] == base_key), None)
    for row in rows:
        _apply_deltas(row, base)

    pareto = _pareto(rows, slo)
    out = {
        "version": VERSION,
        "scope": _scope(scope, groups, loaded),
        "slo": slo,
        "metrics": [{"key": m.key, "label": m.label, "unit": m.unit, "better": m.better, "beyond_run": m.beyond_run}
                    for m in METRICS],
        "pricing": _pricing(entry, catalogue, loaded, not_repriced),
        "display": {"cost_scale": cost_scale(r["figures"][k]["value"] for r in rows for k in COST_METRIC_KEYS[:4])},
        "baseline": base_key,
        "rows": rows,
        "pareto": pareto,
        "recommendation": _recommendation(rows, base, slo),
        "charts": None,
        "live": any(t.status in (Trial.Status.QUEUED, Trial.Status.RUNNING) for t in loaded),
        "live_trials": [str(t.code) for t in loaded if t.status in (Trial.Status.QUEUED, Trial.Status.RUNNING)],
        "notes": _notes(rows, slo),
    }
    chart_data = _charts(rows, loaded, slo) if charts else None  # plain floats by construction: thousands of points
    if chart_data is not None:
        chart_data["knee"] = {"slo_ms": slo["latency_ms"], "series": json_safe([
            capacity.knee_series(searches[pair], key=row["key"], label=row["label"])
            for row, pair in zip(rows, row_variants, strict=True) if pair in searches])}
    for row in rows:  # what only the recommendation and the charts needed
        row.pop("_slo")
        for rep in row["repeats"]:
            for k in [k for k in rep if k.startswith("_")]:
                del rep[k]
    out = json_safe(out)
    out["charts"] = chart_data
    return out


# ---- loading ------------------------------------------------------------------------------------------------
def _load_trials(trials) -> list[Trial]:
    """The trials with their experiments, in one query; the frozen spec (which can hold a whole trace) is
    not read here, only the parts of it that `_spec_parts` needs."""
    if isinstance(trials, QuerySet):
        return list(trials.select_related("experiment"))
    items = list(trials)
    ids = [t.pk if isinstance(t, Trial) else int(t) for t in items]
    found = {t.pk: t for t in Trial.objects.filter(pk__in=ids).select_related("experiment")}
    seen: set[int] = set()
    out = []
    for i in ids:
        if i in found and i not in seen:
            seen.add(i)
            out.append(found[i])
    return out


def _groups(trials: list[Trial]) -> dict[tuple[int, int], list[Trial]]:
    groups: dict[tuple[int, int], list[Trial]] = {}
    for t in trials:
        groups.setdefault((t.experiment_id, t.run_number), []).append(t)
    return groups


def _spec_parts(groups: dict) -> dict[tuple[int, int], dict]:
    """slo, variants, functions and accelerator of each group's frozen spec (one query; equal within a run)."""
    parts = selectors.run_spec_parts({g[0].run_spec_id for g in groups.values()},
                                     ("slo", "variants", "functions", "accelerator"))
    out = {}
    for key, g in groups.items():
        p = parts.get(g[0].run_spec_id, {})
        out[key] = {"slo": p.get("slo") if isinstance(p.get("slo"), dict) else {}, "variants": p.get("variants") or [],
                    "functions": p.get("functions") or [], "accelerator": p.get("accelerator")}
    return out


def resolve_price(price: PriceEntry | int | str | None) -> PriceEntry | None:
    """A price entry by instance, id or name; SpecError on `price` when there is no such entry."""
    entry, _ = _price_entries([], price)
    return entry


def _price_entries(trials: list[Trial], price) -> tuple[PriceEntry | None, dict[str, PriceEntry]]:
    """The chosen entry and the catalogue entries named by the trials' stored costs, in one query."""
    names = {((t.summary or {}).get("cost") or {}).get("price", {}).get("name") for t in trials
             if isinstance(((t.summary or {}).get("cost") or {}).get("price"), dict)}
    names.discard(None)
    q = Q(name__in=sorted(names)) if names else Q(pk__in=[])
    wanted_name = wanted_id = None
    if isinstance(price, PriceEntry):
        pass
    elif price is not None and str(price).strip():
        wanted_name = str(price).strip()
        q |= Q(name=wanted_name)
        if wanted_name.isdigit():
            wanted_id = int(wanted_name)
            q |= Q(pk=wanted_id)
    elif price is not None:
        price = None
    entries = list(PriceEntry.objects.filter(q)) if (names or wanted_name) else []
    catalogue = {e.name: e for e in entries}
    entry = price if isinstance(price, PriceEntry) else None
    if wanted_name is not None:
        entry = catalogue.get(wanted_name) or next((e for e in entries if e.pk == wanted_id), None)
        if entry is None:
            raise S.SpecError([S.FieldError("price", f"no price entry {wanted_name!r} (GET /api/prices/ lists "
                                                     "them; give its name or id)")])
    if entry is not None:
        catalogue.setdefault(entry.name, entry)
    return entry, catalogue


# ---- one row ------------------------------------------------------------------------------------------------
def _is_gpu_entry(entry: PriceEntry | None) -> bool | None:
    if entry is None:
        return None
    return not (entry.accelerator.strip().lower().startswith("cpu") or entry.name.strip().lower() == "cpu")


def _good(summary: dict) -> int:
    """Requests that completed within the latency target: requests x (1 - violation rate), exactly."""
    n = int(summary.get("requests") or 0)
    return n - int(round(float(summary.get("violation_rate") or 0.0) * n))


def _trial_cost(trial: Trial, entry: PriceEntry | None) -> tuple[dict, str | None, bool, str | None]:
    """(cost figures, price name, repriced, why not repriced) of one trial."""
    s = trial.summary or {}
    stored = s.get("cost") or {}
    stored_name = (stored.get("price") or {}).get("name") if isinstance(stored.get("price"), dict) else None
    if entry is None:
        return stored, stored_name, False, None
    try:
        cost = reprice(stored, entry.to_spec(), int(s.get("completed") or 0), _good(s))
    except ValueError as exc:
        reason = str(exc)
        if "missing" in reason:
            reason = "its billed spans were not stored (a trial from before re-pricing existed)"
        return stored, stored_name, False, reason
    return cost, entry.name, True, None


def _repeat_figures(trial: Trial, result: dict, cost: dict) -> dict:
    s = trial.summary or {}
    lat, done = result["latency_ms"], result["latency_completed_ms"]
    latency = s.get("latency_ms") or {}
    out: dict[str, Any] = {}
    for k, _ in _PCTS:
        out[f"{k}_ms"] = lat.get(k)
        out[f"{k}_completed_ms"] = done.get(k)
    out.update({
        "requests": result["requests"],
        "unfinished": result["unfinished"],
        "unfinished_share": latency.get("unfinished_share"),
        "violation_rate": result["violation_rate"],
        "throughput_rps": result["throughput_rps"],
        "goodput_rps": result["goodput_rps"],
        "cold_starts": result["cold_starts"],
        "cold_start_p50_ms": result["cold_start_ms"]["p50"],
        "mean_batch_size": result["mean_batch_size"],
    })
    for k in COST_METRIC_KEYS:
        out[k] = cost.get(k)
    return out


def _function_figures(group: dict) -> dict:
    lat = group.get("latency_ms") or {}
    done = group.get("latency_completed_ms") or {}
    out: dict[str, Any] = {}
    for k, _ in _PCTS:
        out[f"{k}_ms"] = lat.get(k)
        out[f"{k}_completed_ms"] = done.get(k)
    out.update({"requests": group.get("requests"), "unfinished": lat.get("unfinished"),
                "unfinished_share": lat.get("unfinished_share"), "violation_rate": group.get("violation_rate"),
                "throughput_rps": group.get("throughput_rps"), "goodput_rps": group.get("goodput_rps"),
                "cold_starts": group.get("cold_starts")})
    return out


def _figure(values: Sequence[float | None], beyond_run: bool) -> dict:
    """Median across repeats with the min-max spread. Latency (beyond_run): None is +inf."""
    if beyond_run:
        vals = [math.inf if v is None else float(v) for v in values]
    else:
        vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"value": None, "low": None, "high": None, "n": 0, "beyond_run": 0}
    arr = np.asarray(vals, dtype=np.float64)

    def f(x) -> float | None:
        x = float(x)
        return x if math.isfinite(x) else None

    return {"value": f(np.median(arr)), "low": f(arr.min()), "high": f(arr.max()), "n": len(vals),
            "beyond_run": sum(1 for v in values if v is None) if beyond_run else 0}


def _figures(per_repeat: list[dict], keys: Sequence[str]) -> dict:
    return {k: _figure([r.get(k) for r in per_repeat], METRIC_BY_KEY[k].beyond_run) for k in keys}


def _median(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def _config(variant: dict) -> dict:
    batching = variant.get("batching") or {}
    keep_alive = variant.get("keep_alive") or {}
    mode = batching.get("mode", D["variant.batching.mode"])
    min_i = variant.get("min_instances", D["variant.min_instances"])
    return {
        "sharing": variant.get("sharing", D["variant.sharing"]),
        "runtime": variant.get("runtime", D["variant.runtime"]),
        "batching_mode": mode,
        "max_batch_size": 1 if mode == "none" else batching.get("max_batch_size", D["variant.batching.max_batch_size"]),
        "min_instances": min_i,
        "max_instances": variant.get("max_instances", max(D["variant.max_instances"], min_i or 0)),
        "keep_alive_policy": keep_alive.get("policy", D["variant.keep_alive.policy"]),
        "keep_alive_ttl_s": keep_alive.get("ttl_s", D["variant.keep_alive.ttl_s"]),
        "platform_delay_ms": variant.get("platform_delay_ms", D["variant.platform_delay_ms"]),
    }


def _row_verdict(repeats: list[dict]) -> dict:
    used = [r for r in repeats if r["included"] and r["verdict"] is not None]
    counts = {v: sum(1 for r in used if r["verdict"] == v) for v in VERDICTS}
    if not used:
        return {"verdict": None, "reasons": [], "counts": counts}

    def reasons_of(rs: list[dict]) -> list[str]:
        if len(used) == 1:
            return list(rs[0]["reasons"])
        common = set.intersection(*(set(r["reasons"]) for r in used))
        out = [x for x in rs[0]["reasons"] if x in common]
        for r in rs:
            out += [f"repeat {r['repeat']}: {x}" for x in r["reasons"] if x not in common]
        return out

    kinds = {r["verdict"] for r in used}
    if len(kinds) == 1:
        return {"verdict": kinds.pop(), "reasons": reasons_of(used), "counts": counts}
    split = ", ".join(f"{v.replace('_', ' ')} in {counts[v]}" for v in VERDICTS if counts[v])
    return {"verdict": "inconclusive",
            "reasons": [f"the repeats disagree: {split} of {len(used)}"] + reasons_of(used), "counts": counts}


def _slo_interval(repeats: list[dict], slo_metric: str) -> dict:
    used = [r for r in repeats if r["included"]]
    if len(used) == 1:
        r = used[0]
        ci = r["slo_interval"]
        return {"estimate": r["figures"].get(slo_metric), "low": ci[0] if ci else None,
                "high": ci[1] if ci else None, "method": "moving-block bootstrap" if ci else None,
                "confidence": r["_ci_confidence"] if ci else None,
                "beyond_run": 1 if r["figures"].get(slo_metric) is None else 0}
    ri = repeats_interval([r["figures"].get(slo_metric) for r in used])
    return {"estimate": ri["median"], "low": ri["low"], "high": ri["high"],
            "method": ri["method"] if used else None, "confidence": ri["confidence"], "beyond_run": ri["beyond_run"]}


def _notes_of(repeats: list[dict]) -> list[str]:
    used = [r for r in repeats if r["included"]] or repeats
    if not used:
        return []
    if len(used) == 1:
        return list(used[0]["notes"])
    common = set.intersection(*(set(r["notes"]) for r in used))
    out = [n for n in used[0]["notes"] if n in common]
    for r in used:
        out += [f"repeat {r['repeat']}: {n}" for n in r["notes"] if n not in common]
    return out


def _row(key: str, label: str, trials: list[Trial], variant: dict, spec: dict, entry: PriceEntry | None,
         catalogue: dict[str, PriceEntry], not_repriced: list[dict]) -> dict:
    slo_pct = float((spec.get("slo") or {}).get("percentile", D["slo.percentile"]))
    slo_key = _pct_key(slo_pct)
    slo_metric = f"{slo_key}_ms"
    exp = trials[0].experiment
    repeats: list[dict] = []
    hardware: list[dict] = []
    summaries: list[dict] = []
    price_entries: list[PriceEntry | None] = []
    for t in trials:
        s = t.summary or {}
        result = selectors.trial_result_row(t)
        included = t.status == Trial.Status.SUCCEEDED and bool(s)
        cost, price_name, repriced, why = _trial_cost(t, entry) if s else ({}, None, False, None)
        if why is not None:
            not_repriced.append({"trial": str(t.code), "variant": t.variant_name, "repeat": t.repeat, "reason": why})
        verdict = result["slo_verdict"] or {}
        ci_info = s.get("slo_percentile_ci") or {}
        rep = {
            "trial": str(t.code), "repeat": t.repeat, "status": t.status, "url": t.get_absolute_url(),
            "included": included,
            "verdict": verdict.get("verdict") if s else None, "reasons": list(verdict.get("reasons") or []),
            "slo_interval": result["slo_percentile_ci_ms"],
            "figures": _repeat_figures(t, result, cost) if s else dict.fromkeys(METRIC_KEYS),
            "price": price_name, "repriced": repriced,
            "dispatch_behind": (result["dispatch"] or {}).get("behind"),
            "notes": list(result["notes"]),
            # private (dropped before returning): what the recommendation needs
            "_ci_confidence": ci_info.get("confidence"), "_ci_info": ci_info,
            "_arrival_s": s.get("arrival_s") or s.get("run_s"), "_why_not_repriced": why,
        }
        repeats.append(rep)
        if included:
            summaries.append(s)
            hardware.append(s.get("hardware") or {})
            price_entries.append(catalogue.get(price_name) if price_name else None)
    used = [r for r in repeats if r["included"]]
    figures = _figures([r["figures"] for r in used], METRIC_KEYS)

    functions: list[dict] = []
    names = [f.get("name") for f in spec.get("functions") or []]
    per_fn = [s.get("per_function") or {} for s in summaries]
    if len(names) > 1 or any(len(p) > 1 for p in per_fn):
        for fn in names or sorted({n for p in per_fn for n in p}):
            functions.append({"function": fn, "figures": _figures(
                [_function_figures(p[fn]) for p in per_fn if fn in p], FUNCTION_METRIC_KEYS), "deltas": None})

    statuses = {t.status for t in trials}
    status = ("running" if Trial.Status.RUNNING in statuses or (Trial.Status.QUEUED in statuses and len(statuses) > 1)
              else "queued" if Trial.Status.QUEUED in statuses else "finished")
    on_cpu = any(h.get("on_cpu") for h in hardware) if hardware else None
    priced = next((e for e in price_entries if e is not None), entry)  # the entry its costs use
    gpu_priced = _is_gpu_entry(priced)
    cpu_label = None
    if on_cpu:
        cpu_label = (f"measured on CPU, priced as {priced.accelerator}" if gpu_priced else "measured on CPU")
    first = summaries[0] if summaries else {}
    level = next((h.get("isolation_level") for h in hardware if h.get("isolation_level")), None)
    config = _config(variant)
    runtime = first.get("runtime") or config["runtime"]
    if level is None and summaries:
        level = S.isolation_level(config["sharing"], runtime, (hardware[0] or {}).get("sharing_mechanism"))
    compression = max((float(s.get("time_compression") or (s.get("cost") or {}).get("time_compression") or 1.0)
                       for s in summaries), default=None)
    delay = _median((s.get("platform_delay_ms") or {}).get("value") for s in summaries)
    behind_repeats = [r["repeat"] for r in used if r["dispatch_behind"]]
    row = {
        "key": key, "label": label, "variant": trials[0].variant_name, "experiment": _exp_ref(exp),
        "run": trials[0].run_number, "status": status, "trials": len(trials), "included": len(used),
        "baseline": False, "always_on": int(config["min_instances"] or 0) >= 1, "config": config,
        "verdict": _row_verdict(repeats), "slo_interval": _slo_interval(repeats, slo_metric),
        "figures": figures, "deltas": None, "functions": functions,
        "breakdown_ms": {k: _median((s.get("breakdown_ms") or {}).get(k) for s in summaries) for k in BREAKDOWN_KEYS},
        "isolation_level": level,
        "isolation": first.get("isolation") or (first.get("hardware") or {}).get("isolation"),
        "runtime": runtime if summaries else config["runtime"],
        "device": first.get("device") or next((t.device for t in trials if t.device), None),
        "on_cpu": on_cpu, "cpu_label": cpu_label, "time_compression": compression, "platform_delay_ms": delay,
        "monthly_note": next(((s.get("cost") or {}).get("monthly_note") for s in summaries
                              if (s.get("cost") or {}).get("monthly_note")), None),
        "dispatch_behind": bool(behind_repeats) if used else None,
        "notes": _notes_of(repeats),
        "flags": [],
        "repeats": repeats,
        "representative": _representative(repeats, trials, slo_metric),
        "_slo": spec.get("slo") or {},
    }
    row["flags"] = _flags(row, trials, used, behind_repeats, gpu_priced, priced)
    return row


def _flags(row: dict, trials: list[Trial], used: list[dict], behind: list[int], gpu_priced: bool | None,
           priced: PriceEntry | None) -> list[dict]:
    flags = []

    def add(code: str, text: str) -> None:
        flags.append({"code": code, "text": text})

    n = len(trials)
    if not used:
        add("no_results", "no finished repeat yet" if row["status"] != "finished" else "no repeat succeeded")
    elif len(used) == 1:
        add("single_repeat", "1 repeat: the verdict and figures rest on a single run; repeats can disagree")
    if used and row["status"] != "finished":
        add("partial", f"{len(used)} of {n} repeats finished; the figures will change")
    excluded = [t for t in trials if t.status in (Trial.Status.FAILED, Trial.Status.CANCELLED)]
    if excluded:
        add("excluded", "not counted: " + ", ".join(f"repeat {t.repeat} ({t.status})" for t in excluded))
    if row["on_cpu"]:
        if gpu_priced:
            add("cpu_priced_as_gpu", f"measured on CPU, priced as {priced.accelerator}: the costs are not what "
                                     "that GPU would cost")
        else:
            add("on_cpu", "measured on CPU")
    if behind:
        add("dispatch_behind", "the dispatcher fell behind in repeat " + ", ".join(map(str, behind))
            + ": latencies include its lag")
    if row["time_compression"] and row["time_compression"] > 1.0 + 1e-9:
        add("replay", f"replayed {row['time_compression']:g}× faster: wall-clock figures of the faster load, "
                      "no monthly projection")
    if row["platform_delay_ms"]:
        add("modelled_delay", f"cold starts include a MODELLED platform delay of {row['platform_delay_ms']:g} ms")
    if row["runtime"] == "thread":
        add("thread_runtime", "instances are threads of one process: no isolation")
    simulated = [t for t in trials if t.simulation is not None or (t.summary or {}).get("simulated")]
    if simulated:
        vals = [p.get("validation") for t in simulated
                for p in ((t.summary or {}).get("simulation") or {}).get("profiles") or [] if p.get("validation")]
        errs = [v["max_latency_rel_err"] for v in vals if v.get("max_latency_rel_err") is not None]
        how = (f"; the latest validation of its profiles ({max(v['date'] for v in vals)}) found p50/p99 within "
               f"{100 * max(errs):.0f} % of a real run" if errs else
               "; its profiles have not been validated (manage.py validate_simulator)")
        add("simulated", "SIMULATED from measured profiles, not run on the device" + how)
    missing = [r for r in row["repeats"] if r["_why_not_repriced"]]
    if missing:
        add("not_repriced", "repeat " + ", ".join(str(r["repeat"]) for r in missing) + " kept the costs billed "
                            "when it ran: " + missing[0]["_why_not_repriced"])
    return flags


def _representative(repeats: list[dict], trials: list[Trial], slo_metric: str) -> str | None:
    """The repeat the time charts show: the median repeat by SLO percentile (beyond the run sorts last)."""
    used = [r for r in repeats if r["included"]]
    if used:
        ranked = sorted(used, key=lambda r: (math.inf if r["figures"].get(slo_metric) is None
                                             else r["figures"][slo_metric], r["repeat"]))
        return ranked[(len(ranked) - 1) // 2]["trial"]
    live = [t for t in trials if t.status == Trial.Status.RUNNING]
    return str((live or trials)[0].code) if trials else None


# ---- across rows --------------------------------------------------------------------------------------------
def _exp_ref(exp: Experiment) -> dict:
    return {"code": str(exp.code), "name": exp.name}


def _scope(scope: dict | None, groups: dict, trials: list[Trial]) -> dict:
    exps = {t.experiment_id: t.experiment for t in trials}
    out = {"kind": "trials", "experiment": None, "run": None, "runs": [],
           "groups": [{"experiment": _exp_ref(exps[e]), "run": r} for e, r in groups]}
    if len(exps) == 1 and len(groups) == 1:
        (e, r), = groups
        out.update(experiment=_exp_ref(exps[e]), run=r)
    if scope:
        out.update(scope)
    return out


def _slo(specs: dict, groups: dict) -> dict:
    slos = [specs.get(g, {}).get("slo") or {} for g in groups]
    first = slos[0] if slos else {}
    pct = float(first.get("percentile", D["slo.percentile"]))
    key = _pct_key(pct)

    def norm(s: dict) -> tuple:
        return (float(s.get("percentile", D["slo.percentile"])), float(s.get("latency_ms", D["slo.latency_ms"])),
                float(s.get("max_violation_rate", D["slo.max_violation_rate"])), s.get("min_throughput_rps"))

    return {"percentile": pct, "key": key, "label": _pct_label(pct), "metric": f"{key}_ms",
            "latency_ms": float(first.get("latency_ms", D["slo.latency_ms"])),
            "max_violation_rate": float(first.get("max_violation_rate", D["slo.max_violation_rate"])),
            "min_throughput_rps": first.get("min_throughput_rps"),
            "consistent": len({norm(s) for s in slos}) <= 1}


def _choose_baseline(rows: list[dict], baseline: str | None) -> str | None:
    if baseline not in (None, ""):
        keys = [r["key"] for r in rows]
        if baseline not in keys:
            known = ", ".join(keys) if keys else "none: nothing to compare"
            raise S.SpecError([S.FieldError("baseline", f"no variant {baseline!r} in this comparison "
                                                        f"(known: {known})")])
        return baseline
    always_on = next((r for r in rows if r["always_on"]), None)
    return (always_on or rows[0])["key"] if rows else None


def _delta(value, base, metric: Metric, spread: tuple | None) -> dict | None:
    if metric.beyond_run and (value is None) != (base is None) and spread is not None:
        # one side lies beyond the run: no number, but the direction is known
        worse = value is None
        return {"abs": None, "rel": None, "direction": None if metric.better is None else
                ("worse" if worse else "better"), "within_spread": None}
    if value is None or base is None:
        return None
    diff = float(value) - float(base)
    rel = diff / abs(float(base)) if base else None
    if metric.better is None:
        direction = None
    elif abs(diff) <= 1e-12 * max(abs(float(value)), abs(float(base)), 1.0):
        direction = "same"
    else:
        lower_is_better = metric.better == "lower"
        direction = "better" if (diff < 0) == lower_is_better else "worse"
    within = None
    if spread is not None:
        (lo, hi, n), (blo, bhi, bn) = spread
        if n >= 2 and bn >= 2:
            lo = -math.inf if lo is None else lo
            blo = -math.inf if blo is None else blo
            hi = math.inf if hi is None else hi
            bhi = math.inf if bhi is None else bhi
            within = bool(lo <= bhi and blo <= hi)
    return {"abs": diff, "rel": rel, "direction": direction, "within_spread": within}


def _deltas(figures: dict, base_figures: dict, keys: Sequence[str]) -> dict:
    out = {}
    for k in keys:
        f, b = figures[k], base_figures[k]
        has = f["n"] > 0 and b["n"] > 0
        spread = ((f["low"], f["high"], f["n"]), (b["low"], b["high"], b["n"])) if has else None
        out[k] = _delta(f["value"], b["value"], METRIC_BY_KEY[k], spread)
    return out


def _apply_deltas(row: dict, base: dict | None) -> None:
    if base is None or row is base:
        return
    row["deltas"] = _deltas(row["figures"], base["figures"], METRIC_KEYS)
    base_fns = {f["function"]: f for f in base["functions"]}
    for fn in row["functions"]:
        if fn["function"] in base_fns:
            fn["deltas"] = _deltas(fn["figures"], base_fns[fn["function"]]["figures"], FUNCTION_METRIC_KEYS)


def _pareto(rows: list[dict], slo: dict) -> dict:
    y_key, x_key = slo["metric"], "serverless_per_1k_usd"
    points, excluded = [], []
    for r in rows:
        fx, fy = r["figures"][x_key], r["figures"][y_key]
        if not r["included"]:
            excluded.append({"key": r["key"], "reason": "no finished repeat"})
        elif fy["value"] is None:
            excluded.append({"key": r["key"], "reason": f"{slo['label']} beyond the run"})
        elif fx["value"] is None:
            excluded.append({"key": r["key"], "reason": "no cost figure"})
        else:
            points.append({"key": r["key"], "label": r["label"], "x": fx["value"], "y": fy["value"],
                           "x_low": fx["low"], "x_high": fx["high"], "y_low": fy["low"], "y_high": fy["high"],
                           "verdict": r["verdict"]["verdict"], "on_front": False})
    for p in points:
        p["on_front"] = not any(q is not p and q["x"] <= p["x"] and q["y"] <= p["y"]
                                and (q["x"] < p["x"] or q["y"] < p["y"]) for q in points)
    front = [p["key"] for p in sorted(points, key=lambda p: (p["x"], p["y"])) if p["on_front"]]
    return {"x": x_key, "y": y_key, "slo_ms": slo["latency_ms"], "points": points, "front": front,
            "excluded": excluded}


# ---- recommendation -----------------------------------------------------------------------------------------
def _rate(rep: dict) -> float | None:
    n, arrival = rep["figures"].get("requests"), rep["_arrival_s"]
    return float(n) / float(arrival) if n and arrival else None


def _need_of_repeat(rep: dict, slo: dict) -> tuple[int | None, str]:
    """More requests that would decide one inconclusive repeat, and the rule used."""
    n = int(rep["figures"].get("requests") or 0)
    info = rep["_ci_info"] or {}
    target = float(slo.get("latency_ms", D["slo.latency_ms"]))
    pct = float(slo.get("percentile", D["slo.percentile"]))
    ci = rep["slo_interval"]
    est = rep["figures"].get(f"{_pct_key(pct)}_ms")
    if ci is None:
        need = min_samples(pct)
        if n < need:
            return need - n, (f"a 95 % interval of a {_pct_label(pct)} needs at least ⌈ln(0.025) / ln(q)⌉ = "
                              f"{need:,} requests; this repeat had {n:,}")
        seconds = int(info.get("seconds") or 0)
        if seconds < MIN_CI_SECONDS:
            rate = _rate(rep)
            more = math.ceil(rate * (MIN_CI_SECONDS - seconds)) if rate else None
            return more, (f"the interval needs arrivals over at least {MIN_CI_SECONDS} s; this repeat's "
                          f"spanned {seconds} s")
        return None, "no interval: " + str(info.get("reason") or "not computed")
    lo, hi = ci
    if est is None or hi is None:
        return None, ("its interval reaches beyond the run (unfinished requests): more requests do not narrow "
                      "that; fewer dropped or unfinished ones would")
    margin = target - est
    half = (hi - est) if margin > 0 else (est - (lo if lo is not None else est))
    if margin == 0 or half <= 0:
        return None, "its estimate sits on the target: no number of requests decides it"
    factor = (half / abs(margin)) ** 2
    return max(1, math.ceil(n * (factor - 1.0))), (
        "the interval narrows about as 1/√n: about n × (half-width / distance to the target)² requests put "
        "it on one side of the target, if the percentile stays where it is")


def _decide(row: dict, slo_all: dict) -> dict:
    used = [r for r in row["repeats"] if r["included"]]
    slo = row["_slo"] or slo_all
    counts = row["verdict"]["counts"]
    out = {"key": row["key"], "label": row["label"], "reasons": list(row["verdict"]["reasons"]),
           "more_requests": None, "more_seconds": None, "more_repeats": None, "rule": ""}
    if sum(1 for v in VERDICTS if counts[v]) > 1:
        n = len(used)
        target = next((t for t in REPEAT_TARGETS if t > n), None)
        if target is not None:
            out["more_repeats"] = target - n
            conf = 1.0 - 2.0 ** (1 - target)
            out["rule"] = (f"the repeats disagree; the min-max range of n repeats covers the median run with "
                           f"probability 1 - 2^(1-n): {target} repeats give {conf * 100:.1f} %")
        else:
            out["rule"] = "the repeats disagree even over many repeats: the variant sits at the target"
        return out
    needs = [(_need_of_repeat(r, slo), r) for r in used if r["verdict"] == "inconclusive"]
    if not needs:
        return out
    known = [(m, rule, r) for (m, rule), r in needs if m is not None]
    if known:
        more, rule, rep = max(known, key=lambda x: x[0])
        rate = _rate(rep)
        out["more_requests"] = int(more)
        out["more_seconds"] = float(more / rate) if rate else None
        out["rule"] = rule + (" (per repeat)" if len(used) > 1 else "")
    else:
        out["rule"] = needs[0][0][1]
    return out


def _cheapest(rows: list[dict], slo_metric: str) -> dict:
    def key(r):
        cost = r["figures"]["serverless_per_1k_usd"]["value"]
        y = r["figures"][slo_metric]["value"]
        return (cost is None, cost if cost is not None else 0.0, math.inf if y is None else y)

    return min(rows, key=key)


def _closeness(row: dict, slo: dict) -> tuple:
    y = row["figures"][slo["metric"]]["value"]
    v = row["figures"]["violation_rate"]["value"]
    return (math.inf if y is None else y / slo["latency_ms"], math.inf if v is None else v)


def _recommendation(rows: list[dict], base: dict | None, slo: dict) -> dict:
    metric, target, label = slo["metric"], slo["latency_ms"], slo["label"]
    out = {"case": "no_results", "text": "", "variant": None, "closest": None, "margin_ms": None, "saving": None,
           "inconclusive": []}
    decided = [r for r in rows if r["verdict"]["verdict"] is not None]
    met = [r for r in decided if r["verdict"]["verdict"] == "met"]
    not_met = [r for r in decided if r["verdict"]["verdict"] == "not_met"]
    unsure = [r for r in decided if r["verdict"]["verdict"] == "inconclusive"]
    out["inconclusive"] = [_decide(r, slo) for r in unsure]
    slo_text = f"{label} ≤ {format_ms(target)}, at most {format_percent(slo['max_violation_rate'])} violations"
    scale = cost_scale([r["figures"]["serverless_per_1k_usd"]["value"] for r in rows])
    parts: list[str] = []
    if not decided:
        out["text"] = "No results yet: no repeat has finished." if rows else "Nothing to compare: no trials."
        return out
    if met:
        best = _cheapest(met, metric)
        y = best["figures"][metric]["value"]
        cost = best["figures"]["serverless_per_1k_usd"]["value"]
        out.update(case="met", variant=best["key"], margin_ms=target - y if y is not None else None)
        s = (f"{best['label']} is the cheapest variant that meets the SLO: {label} {format_ms(y)}, "
             f"{format_ms(target - y)} under the {format_ms(target)} target")
        if cost is None:
            s += " (no cost figures: chosen by the lowest latency)"
        else:
            s += f", at {format_usd(cost * scale['factor'])} {scale['label']} (serverless)"
        s += _saving_text(best, base, scale, out) + "."
        if best["included"] == 1:
            s += " It rests on 1 repeat: run more before relying on it."
        parts.append(s)
    else:
        if not_met:
            closest = min(not_met, key=lambda r: _closeness(r, slo))
            y = closest["figures"][metric]["value"]
            gap = (f"{format_ms(y)}, {format_ms(y - target)} over the target" if y is not None and y > target
                   else format_ms(y) if y is not None else "beyond the run")
            why = "; ".join(closest["verdict"]["reasons"]) or "see its repeats"
            out.update(case="none_met", closest=closest["key"])
            lead = "No variant meets the SLO" if not unsure else "No variant is shown to meet the SLO"
            parts.append(f"{lead} ({slo_text}). Closest that fails: {closest['label']}, {label} {gap}: {why}.")
        else:
            out["case"] = "undecided"
            parts.append(f"No variant is shown to meet the SLO ({slo_text}) yet, and none is shown to miss it.")
    if unsure:
        named = []
        for d in out["inconclusive"]:
            row = next(r for r in rows if r["key"] == d["key"])
            y = row["figures"][metric]["value"]
            iv = row["slo_interval"]
            bits = f"{label} {format_ms(y)}"
            if iv["low"] is not None or iv["high"] is not None:
                bits += f", interval {format_ms(iv['low'])} – {format_ms(iv['high'])}"
            named.append(f"{d['label']} ({bits}; {_need_text(d)})")
        parts.append("Undecided: " + "; ".join(named) + ".")
    out["text"] = " ".join(parts)
    return out


def _saving_text(best: dict, base: dict | None, scale: dict, out: dict) -> str:
    if base is None:
        return ""
    if best is base:
        return "; it is the baseline"
    c, b = best["figures"]["serverless_per_1k_usd"]["value"], base["figures"]["serverless_per_1k_usd"]["value"]
    if c is None or b is None:
        return f"; no cost to compare with the baseline {base['label']}"
    saving = b - c
    rel = saving / b if b else None
    cm, bm = best["figures"]["monthly_serverless_usd"]["value"], base["figures"]["monthly_serverless_usd"]["value"]
    monthly = bm - cm if cm is not None and bm is not None else None
    out["saving"] = {"per_1k_usd": saving, "relative": rel, "monthly_usd": monthly}
    word = "saving" if saving >= 0 else "costing"
    s = (f", {word} {format_usd(abs(saving) * scale['factor'])} {scale['label']}"
         + (f" ({format_percent(abs(rel))})" if rel is not None else "")
         + (" against" if saving >= 0 else " more than") + f" the baseline {base['label']}")
    if base["verdict"]["verdict"] != "met" and saving < 0:
        s += ", which does not meet the SLO"
    if monthly is not None:
        s += f"; {format_usd(abs(monthly))} a month {'less' if monthly >= 0 else 'more'}"
    else:
        note = best["monthly_note"] or base["monthly_note"]
        s += f"; no monthly figure ({note})" if note else "; no monthly figure"
    return s


def _need_text(d: dict) -> str:
    if d["more_repeats"] is not None:
        return f"{d['more_repeats']} more repeat{'s' if d['more_repeats'] != 1 else ''} would decide it"
    if d["more_requests"] is not None:
        s = f"about {d['more_requests']:,} more requests"
        if d["more_seconds"] is not None:
            s += f" (~{format_duration(d['more_seconds'])} at this rate)"
        return s + " would decide it"
    return d["rule"] or "more data would decide it"


def _pricing(entry: PriceEntry | None, catalogue: dict[str, PriceEntry], trials: list[Trial],
             not_repriced: list[dict]) -> dict:
    stored: dict[str, dict] = {}
    for t in trials:
        price = ((t.summary or {}).get("cost") or {}).get("price")
        if isinstance(price, dict) and price.get("name") and price["name"] not in stored:
            cat = catalogue.get(price["name"])
            changed = None
            if cat is not None:
                now = cat.to_spec()
                changed = any(abs(float(price.get(k) or 0.0) - float(getattr(now, k))) > 1e-15 for k in
                              ("on_demand_usd_per_h", "serverless_usd_per_s", "granularity_s", "idle_tail_s",
                               "min_billed_s") if k in price)
            stored[price["name"]] = {"name": price["name"], "as_of": cat.as_of.isoformat() if cat else None,
                                     "changed": changed}
    shown = entry
    if entry is None and len(stored) == 1:
        shown = catalogue.get(next(iter(stored)))
    if entry is not None:
        note = f"Costs re-billed from the stored spans with {entry.name}, prices as of {entry.as_of:%Y-%m-%d}."
        if not_repriced:
            note += f" {len(not_repriced)} trial(s) kept the costs billed when they ran (spans not stored)."
    elif not stored:
        note = "No price entry: no cost figures." if trials else "No trials."
    else:
        names = ", ".join(f"{s['name']} (as of {s['as_of']})" if s["as_of"] else s["name"] for s in stored.values())
        note = f"Costs as billed when the trials ran, with {names}."
        if any(s["changed"] for s in stored.values()):
            note += " The catalogue entry has changed since; choose it to re-price."
    return {"entry": _entry_dict(shown), "repriced": entry is not None and not not_repriced,
            "stored": list(stored.values()), "not_repriced": not_repriced, "note": note}


def _entry_dict(e: PriceEntry | None) -> dict | None:
    if e is None:
        return None
    return {"name": e.name, "accelerator": e.accelerator, "as_of": e.as_of.isoformat(), "source": e.source,
            "on_demand_usd_per_h": e.on_demand_usd_per_h, "serverless_usd_per_s": e.serverless_usd_per_s,
            "granularity_s": e.granularity_s, "min_billed_s": e.min_billed_s, "idle_tail_s": e.idle_tail_s,
            "gpu": bool(_is_gpu_entry(e))}


def _notes(rows: list[dict], slo: dict) -> list[str]:
    notes = []
    if not slo["consistent"]:
        notes.append("The trials come from experiments with different SLOs: each verdict is against its own "
                     f"trial's SLO; the charts draw the first one ({slo['label']} ≤ {format_ms(slo['latency_ms'])}).")
    if any(r["included"] > 1 for r in rows):
        notes.append("Each figure is the median across a variant's repeats, with the min-max range; a variant's "
                     "verdict is its repeats' when they agree, inconclusive when they do not.")
    return notes


# ---- charts -------------------------------------------------------------------------------------------------
_CDF_LEVELS = np.unique(np.concatenate([np.linspace(0.0, 1.0, 1001)[1:],
                                        1.0 - np.logspace(-7.0, math.log10(0.5), MAX_POINTS - 1001)]))
_cdf_cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, int, int]] = OrderedDict()
_cdf_lock = threading.Lock()
CDF_CACHE_SIZE = 512


def clear_cdf_cache() -> None:
    """Forget the cached CDFs and time series (tests; a process that must re-read everything)."""
    with _cdf_lock:
        _cdf_cache.clear()
        _series_cache.clear()


def _level_points(xs: np.ndarray, ps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most len(_CDF_LEVELS) points of an increasing CDF (xs, ps): the first point at or above each level."""
    if xs.size <= len(_CDF_LEVELS):
        return xs, ps
    idx = np.unique(np.clip(np.searchsorted(ps, _CDF_LEVELS - 1e-12, side="left"), 0, xs.size - 1))
    return xs[idx], ps[idx]


def trial_cdf(path: str) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """(latency_ms, fraction of all requests, requests, completed) of one artifact's latency CDF, downsampled
    to at most MAX_POINTS points (dense in the tail); None when the file cannot be read. Cached by path,
    mtime and size."""
    import os

    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, st.st_mtime_ns, st.st_size)
    with _cdf_lock:
        hit = _cdf_cache.get(key)
        if hit is not None:
            _cdf_cache.move_to_end(key)
            return hit
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        col = "outcome" if "outcome" in names else "outcome_name"
        table = pf.read(columns=["latency_ms", col])
    except Exception:  # noqa: BLE001 - a missing or damaged artifact leaves its curve out, it does not fail the page
        return None
    lat = table.column("latency_ms").to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if col == "outcome":
        ok = table.column(col).to_numpy(zero_copy_only=False) == OUTCOME_OK
    else:
        import pyarrow.compute as pc

        ok = pc.fill_null(pc.equal(pc.cast(table.column(col), "string"), "ok"), False).to_numpy(zero_copy_only=False)
    done = np.sort(lat[ok & np.isfinite(lat)])
    n = int(lat.size)
    m = int(done.size)
    if m:
        ranks = np.unique(np.clip(np.ceil(_CDF_LEVELS * n).astype(np.int64) - 1, 0, n - 1))
        ranks = ranks[ranks < m]
        if ranks.size == 0 or ranks[-1] != m - 1:
            ranks = np.append(ranks, m - 1)  # the last completed request: where the curve stops
        xs, ps = done[ranks], (ranks + 1) / n
        if xs.size > MAX_POINTS:
            keep = np.unique(np.linspace(0, xs.size - 1, MAX_POINTS).astype(np.int64))
            xs, ps = xs[keep], ps[keep]
    else:
        xs, ps = np.empty(0), np.empty(0)
    value = (xs, ps.astype(np.float64), n, m)
    with _cdf_lock:
        _cdf_cache[key] = value
        while len(_cdf_cache) > CDF_CACHE_SIZE:
            _cdf_cache.popitem(last=False)
    return value


def _pooled_cdf(curves: list[tuple[np.ndarray, np.ndarray, int, int]]) -> tuple[list, int, int]:
    """Points [[x, F(x)]] of the repeats' pooled CDF (each repeat weighted by its requests), at most MAX_POINTS."""
    n = sum(c[2] for c in curves)
    m = sum(c[3] for c in curves)
    curves = [c for c in curves if c[0].size]
    if not curves or n == 0:
        return [], n, m
    if len(curves) == 1:
        xs, ps = curves[0][0], curves[0][1]
    else:
        xs = np.unique(np.concatenate([c[0] for c in curves]))
        total = np.zeros(xs.size)
        for cx, cp, cn, _ in curves:
            i = np.searchsorted(cx, xs, side="right") - 1
            total += np.where(i >= 0, cp[np.clip(i, 0, None)], 0.0) * cn
        ps = total / n
        xs, ps = _level_points(xs, ps)
        if xs.size > MAX_POINTS:
            keep = np.unique(np.linspace(0, xs.size - 1, MAX_POINTS).astype(np.int64))
            xs, ps = xs[keep], ps[keep]
    return [[float(x), float(p)] for x, p in zip(xs, ps, strict=True)], n, m


def _bucket(n: int) -> np.ndarray | None:
    """Start indices of MAX_POINTS buckets over n windows, or None when n fits."""
    if n <= MAX_POINTS:
        return None
    return np.unique(np.linspace(0, n, MAX_POINTS, endpoint=False).astype(np.int64))


def _time_series(rows_w: list[tuple]) -> tuple[list, list, list]:
    """(p99 points, instance points, cold-start markers) of one trial's windows, bucketed to MAX_POINTS."""
    if not rows_w:
        return [], [], []
    arr = np.asarray([[t, np.nan if p is None else p, s or 0, i or 0, b or 0, c or 0]
                      for t, p, s, i, b, c in rows_w], dtype=np.float64)
    starts = _bucket(arr.shape[0])
    if starts is not None:
        ends = np.append(starts[1:], arr.shape[0]) - 1
        counts = np.diff(np.append(starts, arr.shape[0])).astype(np.float64)
        t = arr[ends, 0]
        with np.errstate(invalid="ignore"):
            p99 = np.fmax.reduceat(arr[:, 1], starts)
        inst = np.add.reduceat(arr[:, 2:5], starts, axis=0) / counts[:, None]
        cold = np.add.reduceat(arr[:, 5], starts)
        arr = np.column_stack([t, p99, inst, cold])
    p99_points = [[float(r[0]), None if math.isnan(r[1]) else float(r[1])] for r in arr]
    inst_points = [[float(r[0]), float(r[2]), float(r[3]), float(r[4])] for r in arr]
    cold_points = [[float(r[0]), float(r[5])] for r in arr if r[5] > 0]
    return p99_points, inst_points, cold_points


_series_cache: OrderedDict[tuple, tuple[list, list, list]] = OrderedDict()
SERIES_CACHE_SIZE = 256


def _series_key(t: Trial) -> tuple | None:
    """Cache key of a finished trial's time series (its windows no longer change); None while it runs."""
    if t.status not in Trial.FINISHED or t.finished_at is None:
        return None
    return (t.pk, t.finished_at.isoformat())


def _trial_series(trials: list[Trial]) -> dict[int, tuple[list, list, list]]:
    """Downsampled (p99, instances, cold starts) series of these trials: finished ones from this process's
    cache, the others from their windows in one query (only the five keys the charts plot)."""
    out: dict[int, tuple[list, list, list]] = {}
    todo: list[Trial] = []
    with _cdf_lock:
        for t in trials:
            key = _series_key(t)
            hit = _series_cache.get(key) if key else None
            if hit is not None:
                _series_cache.move_to_end(key)
                out[t.pk] = tuple(list(x) for x in hit)  # the caller may change its lists, not the cache's
            else:
                todo.append(t)
    if not todo:
        return out
    windows: dict[int, list[tuple]] = {t.pk: [] for t in todo}
    for tid, *vals in (TrialWindow.objects.filter(trial_id__in=list(windows)).order_by("trial_id", "index")
                       .values_list("trial_id", "t_s", "data__p99_ms", "data__instances_starting",
                                    "data__instances_idle", "data__instances_busy", "data__cold_starts")):
        windows[tid].append(tuple(vals))
    with _cdf_lock:
        for t in todo:
            out[t.pk] = _time_series(windows[t.pk])
            key = _series_key(t)
            if key is not None:
                _series_cache[key] = tuple(list(x) for x in out[t.pk])
        while len(_series_cache) > SERIES_CACHE_SIZE:
            _series_cache.popitem(last=False)
    return out


def _charts(rows: list[dict], trials: list[Trial], slo: dict) -> dict:
    by_code = {str(t.code): t for t in trials}
    series = _trial_series([by_code[r["representative"]] for r in rows if r["representative"] in by_code])
    cdf, p99, inst, breakdown = [], [], [], []
    for r in rows:
        curves, missing = [], []
        for rep in r["repeats"]:
            if not rep["included"]:
                continue
            t = by_code[rep["trial"]]
            c = trial_cdf(t.artifact.path) if t.artifact else None
            if c is None:
                missing.append(rep["trial"])
            else:
                curves.append(c)
        points, n, m = _pooled_cdf(curves)
        reaches = m / n if n else None
        cdf.append({"key": r["key"], "label": r["label"], "points": points, "reaches": reaches,
                    "unfinished_share": 1.0 - reaches if reaches is not None else None, "requests": n,
                    "repeats": len(curves), "missing": missing})
        code = r["representative"]
        t = by_code.get(code) if code else None
        p_pts, i_pts, c_pts = series.get(t.pk, ([], [], [])) if t else ([], [], [])
        rep_no = t.repeat if t else None
        p99.append({"key": r["key"], "label": r["label"], "trial": code, "repeat": rep_no, "points": p_pts})
        inst.append({"key": r["key"], "label": r["label"], "trial": code, "repeat": rep_no, "points": i_pts,
                     "cold_starts": c_pts})
        breakdown.append({"key": r["key"], "label": r["label"], "values": dict(r["breakdown_ms"])})
    return {
        "max_points": MAX_POINTS,
        "cdf": {"slo_ms": slo["latency_ms"], "series": cdf},
        "p99_over_time": {"slo_ms": slo["latency_ms"], "series": p99},
        "instances": {"series": inst},
        "breakdown": {"components": list(BREAKDOWN_KEYS), "labels": dict(BREAKDOWN_LABELS),
                      "modelled": ["platform_delay_modelled"], "series": breakdown},
    }


# ---- formatting (shared by pages and reports; money: `figures.format_usd`) ------------------------------------
def cost_scale(per_1k_values: Iterable[float | None]) -> dict:
    """One unit for a whole cost column, by the rule of `figures.per_requests`: per 1 M requests when its
    smallest non-zero figure is under $0.001 per 1,000 (so it reads $0.213 per 1 M, not $0.000213 per 1,000),
    else per 1,000. Write the scaled amounts with `figures.format_usd` (three significant figures)."""
    vals = [abs(float(v)) for v in per_1k_values if v]
    if vals and min(vals) < PER_MILLION_BELOW_USD:
        return {"per": 1_000_000, "factor": 1000.0, "label": "per 1 M requests"}
    return {"per": 1000, "factor": 1.0, "label": "per 1,000 requests"}


def format_ms(x: float | None, unfinished: int | None = None) -> str:
    """3 significant figures below 100 ms (0.412 ms, 38.2 ms), whole ms above (612 ms, 1,234 ms); None is
    beyond the run (with the unfinished count when given)."""
    if x is None:
        return f"> drain ({unfinished:,} unfinished)" if unfinished else "beyond the run"
    x = float(x)
    a = abs(x)
    if a >= 100 or a == 0:
        return f"{x:,.0f} ms"
    decimals = max(2 - math.floor(math.log10(a)), 0)
    return f"{x:.{decimals}f} ms"


def format_percent(fraction: float | None, sig: int = 3) -> str:
    """A fraction as a percentage with up to `sig` significant figures: 0.004 -> "0.4 %"."""
    if fraction is None:
        return "n/a"
    return f"{float(fraction) * 100:.{sig}g} %"


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _signed_percent(rel: float) -> str:
    v = rel * 100.0
    return f"{v:+.0f} %" if abs(v) >= 9.95 else f"{v:+.2g} %"


def format_change(delta: dict | None, metric: str, scale: dict | None = None) -> str:
    """A delta cell: "-3.1 ms (-8.2 %)", "+12 %" (fractions and counts by their relative change), "$-0.0412"
    for costs (per `scale`, default per 1,000). Empty when there is no delta."""
    if not delta:
        return ""
    if delta["abs"] is None:
        return {"better": "better (the baseline is beyond the run)",
                "worse": "beyond the run"}.get(delta["direction"] or "", "")
    m = METRIC_BY_KEY[metric]
    rel = _signed_percent(delta["rel"]) if delta["rel"] is not None else ""
    if m.unit == "ms":
        a = format_ms(delta["abs"])
        a = a if a.startswith("-") else "+" + a
        return f"{a} ({rel})" if rel else a
    if m.unit == "usd":
        factor = (scale or {}).get("factor", 1.0) if m.key.endswith(("per_1k_usd", "per_1k_good_usd")) else 1.0
        a = format_usd(delta["abs"] * factor)
        a = a if a.startswith("-") else "+" + a
        return f"{a} ({rel})" if rel else a
    return rel or f"{delta['abs']:+.3g}"
