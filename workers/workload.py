"""Workload -> intended arrival times, computed in advance (open loop) and deterministic for a seed.

Rates and durations in a WorkloadSpec are in *workload time*: the time the workload represents (a
24-hour day, say). A trial runs it `time_compression` times faster, so the arrival times returned
here are wall-clock seconds from the run's start: workload time / time_compression.

Patterns: constant, poisson, gamma (renewal process with a given coefficient of variation), steps
(piecewise-constant Poisson), diurnal (sinusoidal non-homogeneous Poisson, by thinning), burst (a
Markov-modulated Poisson process: exponential on/off periods) and trace (Azure Functions 2019
per-minute counts, or one timestamp per invocation, e.g. the Azure 2021 invocation trace).
"""

from __future__ import annotations

import hashlib
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workers.spec import MAX_SIM_REQUESTS, TRACE_FORMATS, FunctionSpec, TraceSpec, WorkloadSpec, peak_rate_rps

MAX_TRACE_INVOCATIONS = 5_000_000
AZURE2019_MINUTES = 1440
AZURE2019_COLUMNS = 4 + AZURE2019_MINUTES
AZURE2019_HEAD = ("HashOwner", "HashApp", "HashFunction", "Trigger")
AZURE2021_HEADER = ("app", "func", "end_timestamp", "duration")
# Burst workloads draw one on/off period at a time; more than this many periods in the window means the
# on/off means are far too short to be meaningful (and would exhaust memory).
MAX_BURST_PERIODS = 2_000_000


class WorkloadError(ValueError):
    """The workload cannot be turned into arrivals (no arrivals in the window, unknown function, ...)."""


class TraceError(ValueError):
    """A trace file is malformed; the message names the line ("line 3: ...") where there is one."""


@dataclass
class Arrivals:
    times_s: np.ndarray  # float64, ascending, wall-clock seconds from run start (already compressed)
    function_idx: np.ndarray  # int16 index into the experiment's functions
    run_s: float  # wall-clock length of the run: max over workloads of duration_s / time_compression

    def __len__(self) -> int:
        return int(self.times_s.shape[0])


@dataclass
class TraceData:
    format: str
    counts_per_min: np.ndarray | None = None  # azure2019: int64 counts for minutes 0..1439
    timestamps_s: np.ndarray | None = None  # timestamps: float64 ascending seconds, first at 0
    rows: int = 0  # trace rows summed (azure2019) or invocations read (timestamps)

    @property
    def invocations(self) -> int:
        if self.counts_per_min is not None:
            return int(self.counts_per_min.sum())
        return 0 if self.timestamps_s is None else int(self.timestamps_s.shape[0])

    def invocations_before(self, duration_s: float) -> int:
        """Invocations a replay of the first `duration_s` seconds sends (whole minutes that start inside it)."""
        if self.counts_per_min is not None:
            minutes = np.arange(self.counts_per_min.shape[0])
            return int(self.counts_per_min[minutes * 60.0 < duration_s].sum())
        return 0 if self.timestamps_s is None else int(np.count_nonzero(self.timestamps_s < duration_s))


# ---- traces ---------------------------------------------------------------------------------------------
def parse_trace(content: str, fmt: str, function_hash: str = "") -> TraceData:
    """Validate and parse a trace file's text. Raises TraceError naming the offending line."""
    if fmt not in TRACE_FORMATS:
        raise TraceError(f"unknown trace format {fmt!r} (known: {', '.join(TRACE_FORMATS)})")
    if not isinstance(content, str):
        raise TraceError("the trace must be text")
    lines = [(i + 1, line.strip()) for i, line in enumerate(content.lstrip("\ufeff").splitlines())]
    lines = [(n, line) for n, line in lines if line]  # blank lines (a trailing newline, say) carry nothing
    if not lines:
        raise TraceError("line 1: the trace is empty")
    data = _parse_azure2019(lines, function_hash) if fmt == "azure2019" else _parse_timestamps(lines, function_hash)
    if data.invocations == 0:
        raise TraceError("the trace has no invocations")
    if data.invocations > MAX_TRACE_INVOCATIONS:
        raise TraceError(f"the trace has {data.invocations:,} invocations; at most {MAX_TRACE_INVOCATIONS:,} "
                         "fit in one trial")
    return data


def _parse_azure2019(lines: list[tuple[int, str]], function_hash: str) -> TraceData:
    expect = (f"expected {AZURE2019_COLUMNS} columns "
              f"(HashOwner,HashApp,HashFunction,Trigger,1..{AZURE2019_MINUTES})")
    n0, header = lines[0]
    cols = [c.strip() for c in header.split(",")]
    if len(cols) != AZURE2019_COLUMNS:
        raise TraceError(f"line {n0}: {expect}, found {len(cols)}")
    wanted = list(AZURE2019_HEAD) + [str(m) for m in range(1, AZURE2019_MINUTES + 1)]
    for j, (got, want) in enumerate(zip(cols, wanted, strict=True)):
        if got != want:
            raise TraceError(f"line {n0}: header column {j + 1} is {got!r}, expected {want!r} "
                             f"(HashOwner,HashApp,HashFunction,Trigger,1..{AZURE2019_MINUTES})")
    counts = np.zeros(AZURE2019_MINUTES, dtype=np.int64)
    matched = 0
    total = 0
    for n, line in lines[1:]:
        function, values = _azure2019_row(n, line, expect)
        if function_hash and function != function_hash:
            continue
        counts += values
        matched += 1
        total += int(values.sum())
        if total > MAX_TRACE_INVOCATIONS:  # stop early rather than summing a huge file
            raise TraceError(f"line {n}: the trace has more than {MAX_TRACE_INVOCATIONS:,} invocations "
                             "(at most that many fit in one trial)")
    if matched == 0:
        if function_hash:
            raise TraceError(f"no row has HashFunction {function_hash!r} ({len(lines) - 1} rows in the trace)")
        raise TraceError(f"line {n0}: the trace has a header but no rows")
    return TraceData(format="azure2019", counts_per_min=counts, rows=matched)


def _azure2019_row(n: int, line: str, expect: str) -> tuple[str, np.ndarray]:
    """One row's HashFunction and its 1,440 counts, each a whole number in [0, MAX_TRACE_INVOCATIONS]. The counts are
    read by numpy's C parser (an 8 MiB trace in a fraction of a second); a row it does not take as it is goes
    through the field-by-field checks below, which accept what Python's int() accepts and say what is wrong."""
    parts = line.split(",", 4)
    if len(parts) == 5 and parts[4].count(",") == AZURE2019_MINUTES - 1:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                values = np.fromstring(parts[4], dtype=np.int64, sep=",")  # text mode: not deprecated
        except (ValueError, DeprecationWarning):
            values = None
        # A count past int64 saturates here: out of bounds, so the checks below say what it really is.
        if (values is not None and values.shape[0] == AZURE2019_MINUTES and values.min() >= 0
                and values.max() <= MAX_TRACE_INVOCATIONS):
            return parts[2].strip(), values
    cols = line.split(",")
    if len(cols) != AZURE2019_COLUMNS:
        raise TraceError(f"line {n}: {expect}, found {len(cols)}")
    try:
        values = np.array(cols[4:], dtype=np.int64)
    except ValueError:
        j = next(j for j, c in enumerate(cols[4:]) if not _is_int(c))
        raise TraceError(f"line {n}: minute {j + 1} is {cols[4 + j].strip()!r}, not a whole number") from None
    except OverflowError:  # beyond int64
        j = next(j for j, c in enumerate(cols[4:]) if abs(int(c)) > np.iinfo(np.int64).max)
        raise TraceError(f"line {n}: minute {j + 1} has {int(cols[4 + j]):,} invocations; at most "
                         f"{MAX_TRACE_INVOCATIONS:,} fit in one trial") from None
    if values.min() < 0:
        j = int(np.argmax(values < 0))
        raise TraceError(f"line {n}: minute {j + 1} has a negative count ({values[j]})")
    # Each count bounded first, so a row's sum (at most 1,440 x the cap) cannot wrap int64: a wrapped,
    # negative total would pass the cap below and then ask for an array of that many arrivals.
    if values.max() > MAX_TRACE_INVOCATIONS:
        j = int(np.argmax(values > MAX_TRACE_INVOCATIONS))
        raise TraceError(f"line {n}: minute {j + 1} has {int(values[j]):,} invocations; at most "
                         f"{MAX_TRACE_INVOCATIONS:,} fit in one trial")
    return cols[2].strip(), values


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _parse_timestamps(lines: list[tuple[int, str]], function_hash: str) -> TraceData:
    n0, first = lines[0]
    head = [c.strip().lower() for c in first.split(",")]
    if tuple(head) == AZURE2021_HEADER:
        return _parse_azure2021(lines[1:], function_hash, n0)
    if function_hash:
        raise TraceError("function_hash applies only to azure2019 traces and to timestamp traces with the "
                         "app,func,end_timestamp,duration header")
    body = lines
    if len(head) == 1 and not _is_float(head[0]):
        body = lines[1:]  # an optional one-column header such as "timestamp_s"
    if not body:
        raise TraceError(f"line {n0}: the trace has a header but no timestamps")
    if len(body) > MAX_TRACE_INVOCATIONS:
        raise TraceError(f"the trace has {len(body):,} invocations; at most {MAX_TRACE_INVOCATIONS:,} fit in one trial")
    try:
        # Fast path for a clean file; the slow loop below only runs to name the bad line.
        values = np.array([line for _, line in body], dtype=np.float64)
    except ValueError:
        values = None
    if values is None or not np.isfinite(values).all():
        for n, line in body:
            if "," in line:
                raise TraceError(f"line {n}: expected 1 column (seconds) or the header "
                                 f"{','.join(AZURE2021_HEADER)}, found {len(line.split(','))} columns")
            if not _is_float(line) or not math.isfinite(float(line)):
                raise TraceError(f"line {n}: {line[:40]!r} is not a finite number of seconds")
        if values is None:  # numpy refused a spelling Python's float accepts ("1_000"): use float's reading
            values = np.array([float(line) for _, line in body], dtype=np.float64)
    return TraceData(format="timestamps", timestamps_s=_normalize(values), rows=len(values))


def _parse_azure2021(body: list[tuple[int, str]], function_hash: str, header_line: int) -> TraceData:
    if not body:
        raise TraceError(f"line {header_line}: the trace has a header but no rows")
    if len(body) > MAX_TRACE_INVOCATIONS:
        raise TraceError(f"the trace has {len(body):,} invocations; at most {MAX_TRACE_INVOCATIONS:,} fit in one trial")
    arrivals = []
    for n, line in body:
        cols = line.split(",")
        if len(cols) != 4:
            raise TraceError(f"line {n}: expected 4 columns ({','.join(AZURE2021_HEADER)}), found {len(cols)}")
        try:
            end, dur = float(cols[2]), float(cols[3])
        except ValueError:
            raise TraceError(f"line {n}: end_timestamp and duration must be numbers of seconds") from None
        if not (math.isfinite(end) and math.isfinite(dur)):
            raise TraceError(f"line {n}: end_timestamp and duration must be finite")
        if dur < 0:
            raise TraceError(f"line {n}: duration is negative ({dur})")
        if function_hash and cols[1].strip() != function_hash:
            continue
        arrivals.append(end - dur)  # the trace logs completions; the arrival is end - duration
    if not arrivals:
        raise TraceError(f"no row has func {function_hash!r} ({len(body)} rows in the trace)")
    return TraceData(format="timestamps", timestamps_s=_normalize(np.array(arrivals, dtype=np.float64)),
                     rows=len(arrivals))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _normalize(values: np.ndarray) -> np.ndarray:
    values = np.sort(values, kind="stable")
    return values - values[0]


_trace_cache: OrderedDict[tuple[str, str, str], TraceData] = OrderedDict()
_trace_lock = threading.Lock()


def clear_trace_cache() -> None:
    """Forget every parsed trace (a benchmark times a parse as a fresh process would do it)."""
    with _trace_lock:
        _trace_cache.clear()


def _cached_trace(workload: WorkloadSpec) -> TraceData:
    if workload.trace is None:
        raise WorkloadError("pattern 'trace' needs the trace's content (workload.trace is missing)")
    return parsed_trace(workload.trace)


def parsed_trace(trace: TraceSpec) -> TraceData:
    """`parse_trace` once per content (the validator, the run's request count and a sweep's many expansions all
    read the same trace): the last 8 parsed are kept. Raises TraceError as parse_trace does."""
    key = (hashlib.sha256(trace.content.encode()).hexdigest(), trace.format, trace.function_hash)
    with _trace_lock:
        data = _trace_cache.get(key)
        if data is not None:
            _trace_cache.move_to_end(key)
            return data
    data = parse_trace(trace.content, trace.format, trace.function_hash)
    with _trace_lock:
        _trace_cache[key] = data
        while len(_trace_cache) > 8:
            _trace_cache.popitem(last=False)
    return data


# ---- arrival generation ------------------------------------------------------------------------------------
def _rng(workload: WorkloadSpec, index: int, seed_offset: int) -> np.random.Generator:
    # Seed = workload seed + offset (the repeat), mixed with the workload's index so two workloads with
    # the same seed still draw independent streams.
    return np.random.default_rng([int(workload.seed) + int(seed_offset), int(index)])


def _poisson_segments(rng: np.random.Generator, starts: np.ndarray, ends: np.ndarray,
                      rates: np.ndarray) -> np.ndarray:
    """Homogeneous Poisson arrivals on each [start, end): a Poisson count, then uniform positions.

    Given its count, a Poisson process's points are i.i.d. uniform on the interval, so this is exact.
    Returned unsorted.
    """
    lengths = np.maximum(ends - starts, 0.0)
    counts = rng.poisson(rates * lengths)
    total = int(counts.sum())
    return np.repeat(starts, counts) + rng.random(total) * np.repeat(lengths, counts)


def _renewal(rng: np.random.Generator, duration: float, rate: float, cv: float) -> np.ndarray:
    """Gamma renewal process on [0, duration): gaps with mean 1/rate and coefficient of variation cv."""
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    expected = rate * duration
    chunk = int(expected * 1.05 + 6.0 * math.sqrt(expected) * max(cv, 1.0) + 16)
    parts: list[np.ndarray] = []
    t = 0.0
    while t < duration:
        times = t + np.cumsum(rng.gamma(shape, scale, size=chunk))
        parts.append(times)
        t = float(times[-1])
        chunk = max(16, int(chunk * 0.1))  # rarely needed: only the tail past the first estimate
    times = np.concatenate(parts)
    return times[times < duration]


def _diurnal_rate(t: np.ndarray, p: dict) -> np.ndarray:
    r = float(p.get("peak_to_trough", 4.0))
    a = (r - 1.0) / (r + 1.0)
    period = float(p.get("period_s", 86_400.0))
    # Starts at the trough: sin(-pi/2) = -1, so rate(0) = mean * (1 - a) and peak/trough = r.
    return float(p["mean_rate_rps"]) * (1.0 + a * np.sin(2.0 * np.pi * t / period - np.pi / 2.0))


def _burst_periods(rng: np.random.Generator, p: dict, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """Alternating off/on periods covering [0, duration), starting off. Returns (starts, on flags)."""
    mean_on, mean_off = float(p["mean_on_s"]), float(p["mean_off_s"])
    expected = 2.0 * duration / (mean_on + mean_off)
    if expected > MAX_BURST_PERIODS:
        raise WorkloadError(f"burst: about {expected:,.0f} on/off periods in {duration:g} s; at most "
                            f"{MAX_BURST_PERIODS:,} (lengthen mean_on_s / mean_off_s)")
    means = np.array([mean_off, mean_on])
    parts: list[np.ndarray] = []
    t = 0.0
    pairs = int(expected * 0.55 + 16)  # one off + one on period per pair, so every chunk starts off
    while t < duration:
        lengths = rng.exponential(np.tile(means, pairs))
        parts.append(lengths)
        t += float(lengths.sum())
        pairs = max(16, pairs // 10)
    lengths = np.concatenate(parts)
    ends = np.cumsum(lengths)
    keep = int(np.searchsorted(ends, duration, side="left")) + 1  # periods that start before the end
    starts = np.concatenate(([0.0], ends[: keep - 1]))
    on = (np.arange(keep) % 2) == 1
    return starts, on


def _workload_times(workload: WorkloadSpec, rng: np.random.Generator) -> np.ndarray:
    """Arrival times in workload seconds within [0, duration_s), unsorted for some patterns."""
    p, d, pattern = workload.params, float(workload.duration_s), workload.pattern
    peak = peak_rate_rps(workload)
    if peak is not None and peak * d > 2 * MAX_SIM_REQUESTS:
        raise WorkloadError(f"about {peak * d:,.0f} arrivals at the peak rate; at most {MAX_SIM_REQUESTS:,} in one "
                            "trial")
    if pattern == "constant":
        rate = float(p["rate_rps"])
        times = np.arange(int(math.ceil(d * rate)), dtype=np.float64) / rate
        return times[times < d]
    if pattern == "poisson":
        return _poisson_segments(rng, np.array([0.0]), np.array([d]), np.array([float(p["rate_rps"])]))
    if pattern == "gamma":
        return _renewal(rng, d, float(p["rate_rps"]), float(p["cv"]))
    if pattern == "steps":
        steps = np.asarray(p["steps"], dtype=np.float64).reshape(-1, 2)
        starts = np.minimum(steps[:, 0], d)
        ends = np.append(starts[1:], d)
        return _poisson_segments(rng, starts, ends, steps[:, 1])
    if pattern == "diurnal":
        r = float(p.get("peak_to_trough", 4.0))
        peak_rate = float(p["mean_rate_rps"]) * (1.0 + (r - 1.0) / (r + 1.0))
        cand = _poisson_segments(rng, np.array([0.0]), np.array([d]), np.array([peak_rate]))
        # Thinning (Lewis & Shedler): keep a candidate at t with probability rate(t) / peak.
        keep = rng.random(cand.shape[0]) * peak_rate < _diurnal_rate(cand, p)
        return cand[keep]
    if pattern == "burst":
        starts, on = _burst_periods(rng, p, d)
        ends = np.minimum(np.append(starts[1:], d), d)
        rates = np.where(on, float(p["burst_rate_rps"]), float(p["base_rate_rps"]))
        return _poisson_segments(rng, starts, ends, rates)
    if pattern == "trace":
        return _trace_times(workload, rng)
    raise WorkloadError(f"unknown pattern {pattern!r}")


def _trace_times(workload: WorkloadSpec, rng: np.random.Generator) -> np.ndarray:
    data = _cached_trace(workload)
    d = float(workload.duration_s)
    if data.timestamps_s is not None:
        ts = data.timestamps_s
        return ts[ts < d].copy()  # replayed as recorded
    counts = data.counts_per_min
    assert counts is not None
    minutes = np.arange(counts.shape[0])
    # Minutes that start inside the window; in a partial last minute only the arrivals before d stay.
    inside = (minutes * 60.0 < d) & (counts > 0)
    minutes, counts = minutes[inside], counts[inside]
    cv = workload.params.get("cv")
    if cv is None:
        # Given a minute's count, Poisson arrivals are uniform order statistics inside it.
        times = np.repeat(minutes * 60.0, counts) + rng.random(int(counts.sum())) * 60.0
    else:
        times = _gamma_within_minutes(rng, minutes, counts, float(cv))
    return times[times < d]


def _gamma_within_minutes(rng: np.random.Generator, minutes: np.ndarray, counts: np.ndarray,
                          cv: float) -> np.ndarray:
    """Place each minute's `count` arrivals with gamma(cv) spacing, rescaled to fill the minute.

    Draw count + 1 gaps per minute, take the cumulative sums divided by the total, and keep the first
    `count`: the spacing keeps the gamma shape (burstiness) while the count stays exactly the trace's.
    """
    shape = 1.0 / (cv * cv)
    sizes = counts + 1
    gaps = rng.gamma(shape, 1.0, size=int(sizes.sum()))
    ends = np.cumsum(sizes) - 1  # index of each minute's last gap
    starts = ends - counts
    cs = np.cumsum(gaps)
    base = np.repeat(cs[starts] - gaps[starts], sizes)
    span = np.repeat(cs[ends], sizes) - base
    frac = (cs - base) / span
    last = np.zeros(gaps.shape[0], dtype=bool)
    last[ends] = True
    return np.repeat(minutes * 60.0, counts) + frac[~last] * 60.0


def _function_index(workload: WorkloadSpec, functions: Sequence[FunctionSpec]) -> int | None:
    if workload.function is None:
        return None
    for i, f in enumerate(functions):
        if f.name == workload.function:
            return i
    raise WorkloadError(f"workload targets function {workload.function!r}, which is not among "
                        f"{', '.join(f.name for f in functions) or 'no functions'}")


def expected_requests(workload: WorkloadSpec) -> float:
    """About how many arrivals a workload sends: its peak rate x duration, or a trace's invocations inside the
    window (the trace is parsed, once per content)."""
    if workload.pattern == "trace":
        return float(_cached_trace(workload).invocations_before(float(workload.duration_s)))
    return float(peak_rate_rps(workload) or 0.0) * float(workload.duration_s)


def generate_arrivals(workloads: Sequence[WorkloadSpec], functions: Sequence[FunctionSpec], *,
                      seed_offset: int = 0) -> Arrivals:
    """Intended arrivals of all workloads, merged and sorted, in wall-clock seconds from run start.

    Deterministic: the same specs and seed_offset give identical arrays. A workload with function=None
    is split across all functions by weight, each arrival drawn independently with the seeded rng.
    """
    if not functions:
        raise WorkloadError("no functions to send requests to")
    if not workloads:
        raise WorkloadError("no workload")
    if len(functions) > np.iinfo(np.int16).max:
        raise WorkloadError("too many functions")
    # The cap holds for the trial, all workloads together, and is checked before any array is allocated.
    # Twice the spec's cap, as for one workload: a Poisson count may exceed its mean. (A real run's tighter
    # bound, spec.real_run_errors, is checked by the engine and by Run.)
    expected = sum(expected_requests(w) for w in workloads)
    if expected > 2 * MAX_SIM_REQUESTS:
        raise WorkloadError(f"the workloads together would send about {expected:,.0f} arrivals; at most "
                            f"{MAX_SIM_REQUESTS:,} in one trial")
    all_times: list[np.ndarray] = []
    all_fidx: list[np.ndarray] = []
    for i, w in enumerate(workloads):
        rng = _rng(w, i, seed_offset)
        target = _function_index(w, functions)
        times = np.sort(_workload_times(w, rng), kind="stable")
        if w.pattern == "trace" and times.shape[0] == 0:
            raise WorkloadError(f"workload {i}: the trace has no invocations in the first {w.duration_s:g} s "
                                "(duration_s); lengthen it or pick another part of the trace")
        if target is not None:
            fidx = np.full(times.shape[0], target, dtype=np.int16)
        elif len(functions) == 1:
            fidx = np.zeros(times.shape[0], dtype=np.int16)
        else:
            weights = np.array([f.weight for f in functions], dtype=np.float64)
            fidx = rng.choice(len(functions), size=times.shape[0], p=weights / weights.sum()).astype(np.int16)
        all_times.append(times / float(w.time_compression))
        all_fidx.append(fidx)
    times = np.concatenate(all_times)
    fidx = np.concatenate(all_fidx)
    if times.shape[0] == 0:
        raise WorkloadError("the workload produces no arrivals in its window (duration_s); raise the rate "
                            "or lengthen duration_s")
    if len(all_times) > 1:
        order = np.argsort(times, kind="stable")
        times, fidx = times[order], fidx[order]
    run_s = max(float(w.duration_s) / float(w.time_compression) for w in workloads)
    return Arrivals(times_s=np.ascontiguousarray(times, dtype=np.float64),
                    function_idx=np.ascontiguousarray(fidx, dtype=np.int16), run_s=run_s)


# ---- preview -----------------------------------------------------------------------------------------------
def rate_curve(workload: WorkloadSpec, points: int = 200) -> dict:
    """Intended arrival rate over workload time, for a preview chart: {"t_s": [...], "rate_rps": [...]}.

    Analytic for constant/poisson/gamma/steps/diurnal; for burst, the on/off realisation that the same
    seed draws for the first workload of a trial's first repeat; for traces, per-minute counts / 60 or
    timestamps binned. At most about `points` points (steps and short burst realisations are drawn as
    exact staircases).
    """
    points = max(2, int(points))
    p, d = workload.params, float(workload.duration_s)
    pattern = workload.pattern
    grid = np.linspace(0.0, d, points)
    if pattern in ("constant", "poisson", "gamma"):
        return _curve(grid, np.full(points, float(p["rate_rps"])))
    if pattern == "steps":
        steps = np.asarray(p["steps"], dtype=np.float64).reshape(-1, 2)
        ends = np.append(steps[1:, 0], d)
        return _staircase(steps[:, 0], ends, steps[:, 1], d, points, exact_up_to=len(steps))
    if pattern == "diurnal":
        return _curve(grid, _diurnal_rate(grid, p))
    if pattern == "burst":
        starts, on = _burst_periods(_rng(workload, 0, 0), p, d)
        ends = np.minimum(np.append(starts[1:], d), d)
        rates = np.where(on, float(p["burst_rate_rps"]), float(p["base_rate_rps"]))
        return _staircase(starts, ends, rates, d, points, exact_up_to=points // 2)
    if pattern == "trace":
        data = _cached_trace(workload)
        if data.counts_per_min is not None:
            n_min = int(min(data.counts_per_min.shape[0], math.ceil(d / 60.0)))
            counts = data.counts_per_min[:n_min].astype(np.float64)
            group = max(1, math.ceil(n_min / points))  # average whole minutes into at most `points` bins
            pad = (-n_min) % group
            per_bin = np.append(counts, np.zeros(pad)).reshape(-1, group)
            widths = np.full(per_bin.shape[0], group)
            if pad:
                widths[-1] = group - pad
            return _curve(np.arange(per_bin.shape[0]) * group * 60.0, per_bin.sum(axis=1) / (widths * 60.0))
        ts = data.timestamps_s
        assert ts is not None
        edges = np.linspace(0.0, d, points + 1)
        hist, _ = np.histogram(ts[ts < d], bins=edges)
        return _curve(edges[:-1], hist / np.diff(edges))
    raise WorkloadError(f"unknown pattern {pattern!r}")


def _staircase(starts: np.ndarray, ends: np.ndarray, rates: np.ndarray, d: float, points: int, *,
               exact_up_to: int) -> dict:
    """Exact steps when there are at most `exact_up_to`; else the time-averaged rate over `points` bins."""
    if starts.shape[0] <= exact_up_to:
        t = np.column_stack([starts, ends]).ravel()
        r = np.repeat(rates, 2)
        return _curve(t, r)
    edges = np.linspace(0.0, d, points + 1)
    # Cumulative expected arrivals is piecewise linear; its differences over bins give average rates.
    knots = np.append(starts, d)
    cum = np.concatenate(([0.0], np.cumsum(rates * (ends - starts))))
    expected = np.diff(np.interp(edges, knots, cum))
    return _curve(edges[:-1], expected / np.diff(edges))


def _curve(t: np.ndarray, rate: np.ndarray) -> dict:
    return {"t_s": [float(x) for x in t], "rate_rps": [float(x) for x in rate]}
