"""Capacity at the SLO: the highest offered rate at which a variant still meets its SLO.

As MLPerf's server scenario and perf_analyzer's latency-threshold search do it: keep the workload's shape and
scale its rate (`scale_workload`), start from an estimate (batch-1 service time x instances), bracket (double or
halve until one probe passes and one fails), then bisect until the bracket is within `tolerance` (5 %) of its top
or the trial budget is spent. Each probe is a normal trial (real or simulated: the caller's `probe` runs it).

The three-way verdict decides: an `inconclusive` probe is run again, longer (stationary patterns: twice the
duration) or with other arrivals of the same shape (other patterns: the next seed), up to `retries` times before
it counts. The bisection treats "not not_met" as passing, so `capacity_rps` is the OPTIMISTIC capacity (highest rate not `not_met`);
`conservative_capacity_rps` is the highest rate whose probe was `met` (None when none was).
No Django here: the management command and the tests hand in the probe.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from workers import spec as S

STATIONARY = ("constant", "poisson", "gamma")
DEFAULT_TOLERANCE = 0.05
DEFAULT_BUDGET = 14  # probes, retries of inconclusive ones included
DEFAULT_RETRIES = 1  # extra runs of an inconclusive probe before it counts as inconclusive
MIN_REQUESTS = 20  # a probe expected to see fewer requests decides nothing: the search stops below that rate


def mean_rate_rps(w: S.WorkloadSpec) -> float:
    """The workload's mean intended arrival rate in wall-clock req/s (its rate x time_compression)."""
    p = w.params
    if w.pattern in STATIONARY:
        rate = p["rate_rps"]
    elif w.pattern == "steps":
        steps = p["steps"]
        ends = [s for s, _ in steps[1:]] + [w.duration_s]
        rate = sum((end - start) * r for (start, r), end in zip(steps, ends, strict=True)) / w.duration_s
    elif w.pattern == "diurnal":
        rate = p["mean_rate_rps"]
    elif w.pattern == "burst":
        on, off = p["mean_on_s"], p["mean_off_s"]
        rate = (p["burst_rate_rps"] * on + p["base_rate_rps"] * off) / (on + off)
    else:
        raise ValueError(f"a {w.pattern} workload's rate cannot be scaled (replay it at its own rate instead)")
    return float(rate) * w.time_compression


def scale_workload(w: S.WorkloadSpec, factor: float, *, duration_s: float | None = None) -> S.WorkloadSpec:
    """The same workload shape at `factor` times its rate (every rate parameter scaled; cv, periods, on/off
    times and step boundaries kept). duration_s: a new length (stationary patterns only: others keep theirs,
    their shape is tied to it). Raises ValueError for traces and when a scaled rate passes MAX_RATE_RPS."""
    if factor <= 0:
        raise ValueError("factor must be above 0")
    p = dict(w.params)
    if w.pattern in STATIONARY:
        p["rate_rps"] = p["rate_rps"] * factor
    elif w.pattern == "steps":
        p["steps"] = [[s, r * factor] for s, r in p["steps"]]
    elif w.pattern == "diurnal":
        p["mean_rate_rps"] = p["mean_rate_rps"] * factor
    elif w.pattern == "burst":
        p["base_rate_rps"] = p["base_rate_rps"] * factor
        p["burst_rate_rps"] = p["burst_rate_rps"] * factor
    else:
        raise ValueError(f"a {w.pattern} workload's rate cannot be scaled (replay it at its own rate instead)")
    peak = S.peak_rate_rps(dataclasses.replace(w, params=p))
    if peak is not None and peak > S.MAX_RATE_RPS:
        raise ValueError(f"scaled rate {peak:.0f} req/s is above the limit of {S.MAX_RATE_RPS:.0f}")
    out = dataclasses.replace(w, params=p)
    if duration_s is not None and w.pattern in STATIONARY:
        out = dataclasses.replace(out, duration_s=min(float(duration_s), S.MAX_DURATION_S))
    return out


def scale_trial(spec: S.TrialSpec, factor: float, *, run_s: float | None = None, reseed: int = 0) -> S.TrialSpec:
    """The trial with every workload at `factor` times its rate; run_s: wall seconds per stationary workload;
    reseed: added to every workload's seed (other arrivals of the same shape)."""
    exp = spec.experiment
    workloads = tuple(dataclasses.replace(
        scale_workload(w, factor, duration_s=None if run_s is None else run_s * w.time_compression),
        seed=(w.seed + reseed) % 2**32) for w in exp.workloads)
    exp = dataclasses.replace(exp, workloads=workloads)
    return dataclasses.replace(spec, experiment=exp)


def offered_rate_rps(spec: S.TrialSpec) -> float:
    return sum(mean_rate_rps(w) for w in spec.experiment.workloads)


def estimate_rps(spec: S.TrialSpec, batch1_service_ms: list[float]) -> float:
    """The search's starting point: each function's instances busy back to back at batch size 1, split across
    the functions by weight (a function with twice the weight gets twice the traffic, so it bounds the total
    first)."""
    var = spec.variant
    fns = spec.experiment.functions
    total_w = sum(f.weight for f in fns) or 1.0
    bounds = [var.max_instances * 1000.0 / max(ms, 1e-3) / (f.weight / total_w)
              for f, ms in zip(fns, batch1_service_ms, strict=True)]
    return min(bounds)


def profile_batch1_ms(profile: dict) -> float:
    """Median batch-1 service time of a measured profile at its lowest sharing level."""
    levels = sorted(profile["service_ms"], key=int)
    return float(statistics.median(profile["service_ms"][levels[0]]["1"]))


@dataclass
class Probe:
    rate_rps: float
    factor: float
    verdict: str  # met | not_met | inconclusive
    p99_ms: float | None
    run_s: float
    trial: str = ""  # the trial's id / code when the probe was stored
    cost_per_1k_usd: float | None = None  # provisioned cost per 1,000 requests at this rate
    serverless_per_1k_usd: float | None = None
    retry_of: int | None = None  # index of the probe this one repeats (inconclusive)
    counted: bool = True  # False: an inconclusive probe that was repeated (the repeat counts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class CapacityResult:
    capacity_rps: float | None
    conservative_capacity_rps: float | None
    p99_ms_at_capacity: float | None
    cost_per_1k_usd_at_capacity: float | None
    serverless_per_1k_usd_at_capacity: float | None
    bracket_rps: list  # [highest passing, lowest failing] (None where not found)
    estimate_rps: float
    stopped: str  # "converged" | "budget" | "no_passing_rate" | "limit" | "cancelled"
    probes: list[Probe] = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["probes"] = [p.to_dict() for p in self.probes]
        return d


def probe_from_summary(rate: float, factor: float, summary: dict, *, trial: str = "") -> Probe:
    cost = summary.get("cost") or {}
    return Probe(rate_rps=rate, factor=factor, verdict=(summary.get("slo_verdict") or {}).get("verdict", "not_met"),
                 p99_ms=(summary.get("latency_ms") or {}).get("p99"), run_s=float(summary.get("run_s") or 0.0),
                 trial=trial, cost_per_1k_usd=cost.get("provisioned_per_1k_usd"),
                 serverless_per_1k_usd=cost.get("serverless_per_1k_usd"))


def search(spec: S.TrialSpec, probe: Callable[[S.TrialSpec], tuple[dict, str]], *, estimate: float,
           probe_run_s: float | None = None, tolerance: float = DEFAULT_TOLERANCE, budget: int = DEFAULT_BUDGET,
           retries: int = DEFAULT_RETRIES, should_stop: Callable[[], bool] | None = None,
           on_probe: Callable[[Probe], None] | None = None) -> CapacityResult:
    """Find the highest rate at which `spec`'s variant meets its SLO. probe(trial_spec) runs one trial and returns
    (summary, trial id); estimate: the starting rate in req/s; probe_run_s: wall seconds per probe (stationary
    workloads; None: the spec's own duration)."""
    base = offered_rate_rps(spec)
    if base <= 0:
        raise ValueError("the workload offers no traffic to scale")
    probes: list[Probe] = []
    results: dict[float, Probe] = {}  # factor -> the probe that counts
    stopped = ""

    def run(factor: float) -> Probe | None:
        nonlocal stopped
        first = len(probes)
        run_s, reseed = probe_run_s, 0
        for attempt in range(retries + 1):
            if len(probes) >= budget:
                stopped = "budget"
                return None
            if should_stop is not None and should_stop():
                stopped = "cancelled"
                return None
            summary, trial = probe(scale_trial(spec, factor, run_s=run_s, reseed=reseed))
            p = probe_from_summary(base * factor, factor, summary, trial=trial)
            if attempt:
                p.retry_of = first
            probes.append(p)
            if on_probe is not None:
                on_probe(p)
            if p.verdict != "inconclusive" or attempt == retries:
                results[factor] = p
                return p
            p.counted = False
            # longer (stationary: twice as long) or, when the shape fixes the length, other arrivals (next seed)
            if all(w.pattern in STATIONARY for w in spec.experiment.workloads):
                run_s = 2.0 * (run_s if run_s is not None else spec.experiment.workloads[0].run_s)
            else:
                reseed += 1
        return None

    def ok(p: Probe) -> bool:
        return p.verdict != "not_met"

    run_s = probe_run_s if probe_run_s is not None else max(w.run_s for w in spec.experiment.workloads)
    min_factor = MIN_REQUESTS / (base * run_s)
    factor = max(estimate / base, min_factor)
    lo = hi = None  # factors: highest passing, lowest failing
    # bracket
    while lo is None or hi is None:
        try:
            p = run(factor)
        except ValueError:  # the scaled rate passes the spec's limit: the top of the range passes
            stopped = "limit"
            break
        if p is None:
            break
        if ok(p):
            lo = factor
            factor *= 2.0
        else:
            hi = factor
            factor /= 2.0
            if factor < min_factor:
                stopped = "no_passing_rate"
                break
    # bisect
    if not stopped:
        while (hi - lo) / hi > tolerance:
            mid = math.sqrt(lo * hi) if hi / lo > 4 else (lo + hi) / 2
            p = run(mid)
            if p is None:
                break
            if ok(p):
                lo = mid
            else:
                hi = mid
        else:
            stopped = "converged"
    # the conservative capacity: bisect on `met` between the highest met rate and the lowest one not met, with
    # the budget that is left (inconclusive probes between them count as failures here)
    if stopped in ("converged", "limit"):
        while True:
            met_f = [f for f, p in results.items() if p.verdict == "met"]
            if not met_f:
                break
            c_lo = max(met_f)
            c_hi = min((f for f, p in results.items() if p.verdict != "met" and f > c_lo), default=None)
            if c_hi is None or (c_hi - c_lo) / c_hi <= tolerance:
                break
            if run((c_lo + c_hi) / 2) is None:
                break
    at = results.get(lo) if lo is not None else None
    met = [p for p in results.values() if p.verdict == "met" and (hi is None or p.factor < hi)]
    return CapacityResult(
        capacity_rps=base * lo if lo is not None else None,
        conservative_capacity_rps=max((p.rate_rps for p in met), default=None),
        p99_ms_at_capacity=at.p99_ms if at else None,
        cost_per_1k_usd_at_capacity=at.cost_per_1k_usd if at else None,
        serverless_per_1k_usd_at_capacity=at.serverless_per_1k_usd if at else None,
        bracket_rps=[base * lo if lo is not None else None, base * hi if hi is not None else None],
        estimate_rps=estimate, stopped=stopped or "budget", probes=probes, tolerance=tolerance)
