"""The experiment spec: one validated, plain-Python description of an experiment.

Everything that accepts an experiment (spec files, the REST API, the browser forms) funnels through
`parse_experiment` or one of the per-section parsers below, so one set of rules and one set of error
messages ("variants[2].batching.max_batch_size: must be between 1 and 1024") serves them all. The
engine receives the same dataclasses. No Django here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# ---- documented bounds (docs/spec.md lists them) -------------------------------------------
MAX_RATE_RPS = 20_000.0
MAX_DURATION_S = 86_400.0  # one day of workload time
MAX_RUN_S = 3_600.0  # workload time / compression: how long a trial may really run
MAX_COMPRESSION = 10_000.0
MAX_CV = 20.0
MAX_STEPS = 1_000
MAX_FUNCTIONS = 16
MAX_VARIANTS = 32
MAX_INSTANCES = 64
MAX_BATCH_SIZE = 1_024
MAX_QUEUE_DELAY_MS = 10_000.0
MAX_TARGET_CONCURRENCY = 1_024.0
MAX_TTL_S = 86_400.0
MAX_REPEATS = 20
MAX_LATENCY_MS = 600_000.0
MAX_TRACE_BYTES = 8 * 1024 * 1024
MAX_REQUESTS = 5_000_000  # expected arrivals in one trial (rate x run time)

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
PATTERNS = ("constant", "poisson", "gamma", "steps", "diurnal", "burst", "trace")
TRACE_FORMATS = ("azure2019", "timestamps")
SHARING_MODES = ("exclusive", "time_slice", "spatial")
BATCHING_MODES = ("none", "fixed", "adaptive")
KEEP_ALIVE_POLICIES = ("fixed", "histogram")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,2})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# ---- errors ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ValueError):
    """One or more invalid fields. `errors` lists every problem found, each with its field path."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))

    def by_path(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for e in self.errors:
            out.setdefault(e.path, []).append(e.message)
        return out


class _Ctx:
    """Collects errors while a section is parsed, so the user sees all of them at once."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def err(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def mapping(self, value: Any, path: str, allowed: Iterable[str], required: Iterable[str] = ()) -> dict:
        if not isinstance(value, Mapping):
            self.err(path, "must be an object")
            return {}
        allowed = set(allowed)
        for key in value:
            if key not in allowed:
                self.err(_join(path, key), f"unknown field (allowed: {', '.join(sorted(allowed))})")
        for key in required:
            if key not in value or value[key] is None:
                self.err(_join(path, key), "is required")
        return dict(value)

    def number(self, data: dict, key: str, path: str, *, default: Any = None, low: float | None = None,
               high: float | None = None, low_open: bool = False, integer: bool = False) -> Any:
        p = _join(path, key)
        value = data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.err(p, "must be a number" if not integer else "must be a whole number")
            return default
        if integer and (isinstance(value, float) and not value.is_integer()):
            self.err(p, "must be a whole number")
            return default
        if not math.isfinite(value):
            self.err(p, "must be a finite number")
            return default
        if low is not None and high is not None:
            bad = (value <= low if low_open else value < low) or value > high
            if bad:
                lo = f"above {_fmt(low)}" if low_open else f"between {_fmt(low)}"
                self.err(p, f"must be {lo} and at most {_fmt(high)}" if low_open else f"must be {lo} and {_fmt(high)}")
                return default
        elif low is not None and (value <= low if low_open else value < low):
            self.err(p, f"must be {'above' if low_open else 'at least'} {_fmt(low)}")
            return default
        return int(value) if integer else float(value)

    def choice(self, data: dict, key: str, path: str, choices: Iterable, *, default: Any = None) -> Any:
        value = data.get(key, default)
        if value not in tuple(choices):
            self.err(_join(path, key), f"must be one of: {', '.join(str(c) for c in choices)}")
            return default
        return value

    def string(self, data: dict, key: str, path: str, *, default: str = "", max_len: int = 10_000,
               pattern: re.Pattern | None = None, rule: str = "") -> str:
        value = data.get(key, default)
        if value is None:
            value = default
        if not isinstance(value, str):
            self.err(_join(path, key), "must be a string")
            return default
        if len(value) > max_len:
            self.err(_join(path, key), f"must be at most {max_len} characters")
            return default
        if pattern is not None and not pattern.match(value):
            self.err(_join(path, key), rule or f"must match {pattern.pattern}")
            return default
        return value

    def raise_if_any(self) -> None:
        if self.errors:
            raise SpecError(self.errors)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# ---- dataclasses -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SLOSpec:
    percentile: float = 99.0
    latency_ms: float = 100.0
    max_violation_rate: float = 0.01
    min_throughput_rps: float | None = None


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    model: str
    input_shape: tuple[int, ...] | None = None  # None: the zoo model's default
    options: dict = field(default_factory=dict)
    weight: float = 1.0  # share of a split workload


@dataclass(frozen=True)
class TraceSpec:
    format: str  # azure2019 | timestamps
    content: str  # the file's text (validated by workers.workload.parse_trace)
    filename: str = ""
    function_hash: str = ""  # azure2019: take only this HashFunction's row(s); "" = sum of all rows


@dataclass(frozen=True)
class WorkloadSpec:
    pattern: str
    params: dict  # pattern-specific, validated; see PATTERN_PARAMS
    duration_s: float
    time_compression: float = 1.0
    seed: int = 0
    function: str | None = None  # None: split across all functions by weight
    trace: TraceSpec | None = None

    @property
    def run_s(self) -> float:
        """Wall-clock seconds a trial of this workload lasts."""
        return self.duration_s / self.time_compression


@dataclass(frozen=True)
class BatchingSpec:
    mode: str = "none"
    max_batch_size: int = 1
    max_queue_delay_ms: float = 0.0
    shed: bool = False  # adaptive only: drop requests that can no longer meet the SLO


@dataclass(frozen=True)
class KeepAliveSpec:
    policy: str = "fixed"
    ttl_s: float = 60.0  # fixed TTL; also the histogram policy's fallback
    # histogram policy (Shahrad et al., ATC'20), in wall-clock seconds of the run
    bin_s: float = 1.0
    range_s: float = 240.0
    head_percentile: float = 5.0
    tail_percentile: float = 99.0
    min_samples: int = 10


@dataclass(frozen=True)
class VariantSpec:
    name: str
    sharing: str = "exclusive"
    share: float | None = None  # spatial: fraction of the device per instance (default 1/max_instances)
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    min_instances: int = 1
    max_instances: int = 1
    target_concurrency: float = 1.0
    keep_alive: KeepAliveSpec = field(default_factory=KeepAliveSpec)
    repeats: int = 1

    @property
    def effective_share(self) -> float:
        if self.sharing != "spatial":
            return 1.0
        return self.share if self.share is not None else 1.0 / self.max_instances


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    functions: tuple[FunctionSpec, ...]
    workloads: tuple[WorkloadSpec, ...]
    variants: tuple[VariantSpec, ...]
    slo: SLOSpec = field(default_factory=SLOSpec)
    device: str = "auto"
    accelerator: str | None = None
    description: str = ""
    notes: str = ""

    def to_dict(self) -> dict:
        return experiment_to_dict(self)


@dataclass(frozen=True)
class PriceSpec:
    name: str
    on_demand_usd_per_h: float
    serverless_usd_per_s: float
    granularity_s: float = 1.0
    min_billed_s: float = 0.0
    idle_tail_s: float = 0.0
    memory_gb: float = 0.0


@dataclass(frozen=True)
class TrialSpec:
    """What the engine runs: one variant of one experiment, one repeat."""

    experiment: ExperimentSpec
    variant: VariantSpec
    repeat: int = 0
    price: PriceSpec | None = None
    trial_id: str = ""

    @property
    def seed(self) -> int:
        # Repeats differ in their arrivals; the same repeat of the same spec is identical.
        return self.experiment.workloads[0].seed + self.repeat


# ---- per-section parsers -------------------------------------------------------------------------
PATTERN_PARAMS: dict[str, tuple[str, ...]] = {
    "constant": ("rate_rps",),
    "poisson": ("rate_rps",),
    "gamma": ("rate_rps", "cv"),
    "steps": ("steps",),
    "diurnal": ("mean_rate_rps", "peak_to_trough", "period_s"),
    "burst": ("base_rate_rps", "burst_rate_rps", "mean_on_s", "mean_off_s"),
    "trace": ("trace_format", "trace_content", "trace_path", "trace_filename", "function_hash", "cv"),
}
_WORKLOAD_COMMON = ("pattern", "duration_s", "time_compression", "seed", "function")


def parse_slo(data: Any, path: str = "slo", ctx: _Ctx | None = None) -> SLOSpec:
    own = ctx is None
    ctx = ctx or _Ctx()
    d = ctx.mapping(data, path, ("percentile", "latency_ms", "max_violation_rate", "min_throughput_rps"),
                    required=("percentile", "latency_ms"))
    pct = d.get("percentile", 99)
    if isinstance(pct, bool) or not isinstance(pct, (int, float)) or float(pct) not in PERCENTILES:
        ctx.err(_join(path, "percentile"), "must be one of: 50, 90, 95, 99, 99.9")
        pct = 99.0
    spec = SLOSpec(
        percentile=float(pct),
        latency_ms=ctx.number(d, "latency_ms", path, default=100.0, low=0, high=MAX_LATENCY_MS, low_open=True),
        max_violation_rate=ctx.number(d, "max_violation_rate", path, default=0.01, low=0.0, high=1.0),
        min_throughput_rps=ctx.number(d, "min_throughput_rps", path, default=None, low=0, high=MAX_RATE_RPS * 10,
                                      low_open=True),
    )
    if own:
        ctx.raise_if_any()
    return spec


def parse_function(data: Any, path: str, ctx: _Ctx | None = None, known_models: Iterable[str] | None = None
                   ) -> FunctionSpec:
    own = ctx is None
    ctx = ctx or _Ctx()
    d = ctx.mapping(data, path, ("name", "model", "input_shape", "options", "weight"), required=("name", "model"))
    name = ctx.string(d, "name", path, pattern=NAME_RE,
                      rule="must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    model = ctx.string(d, "model", path, max_len=100)
    models = tuple(known_models) if known_models is not None else _zoo_keys()
    if model and model not in models:
        ctx.err(_join(path, "model"), f"unknown model {model!r} (known: {', '.join(sorted(models))})")
    shape = d.get("input_shape")
    if shape is not None:
        if (not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 4
                or not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 4096 for x in shape)
                or math.prod(shape) > 4_000_000):
            ctx.err(_join(path, "input_shape"), "must be a list of 1-4 whole numbers between 1 and 4096 "
                    "(at most 4,000,000 elements)")
            shape = None
        else:
            shape = tuple(shape)
    options = d.get("options") or {}
    if not isinstance(options, Mapping):
        ctx.err(_join(path, "options"), "must be an object")
        options = {}
    if model and model in models and known_models is None:
        # The zoo knows each model's shape and option rules: a bad option fails on submit, not at cold start.
        from workers.zoo import ModelError, check_model

        try:
            check_model(model, input_shape=shape, options=dict(options))
        except ModelError as exc:
            ctx.err(_join(path, "options" if options else "input_shape"), str(exc))
    spec = FunctionSpec(name=name, model=model, input_shape=shape, options=dict(options),
                        weight=ctx.number(d, "weight", path, default=1.0, low=0, high=1e6, low_open=True))
    if own:
        ctx.raise_if_any()
    return spec


def parse_workload(data: Any, path: str = "workload", ctx: _Ctx | None = None,
                   function_names: Iterable[str] | None = None) -> WorkloadSpec:
    """Validate a workload. A trace's text must be in `trace_content` (spec loaders read `trace_path`)."""
    own = ctx is None
    ctx = ctx or _Ctx()
    raw = data if isinstance(data, Mapping) else {}
    pattern = raw.get("pattern")
    allowed = _WORKLOAD_COMMON + PATTERN_PARAMS.get(pattern, ())
    d = ctx.mapping(data, path, allowed, required=("pattern", "duration_s"))
    if pattern not in PATTERNS:
        ctx.err(_join(path, "pattern"), f"must be one of: {', '.join(PATTERNS)}")
        pattern = "constant"
    duration = ctx.number(d, "duration_s", path, default=10.0, low=0, high=MAX_DURATION_S, low_open=True)
    compression = ctx.number(d, "time_compression", path, default=1.0, low=1.0, high=MAX_COMPRESSION)
    seed = ctx.number(d, "seed", path, default=0, low=0, high=2**32 - 1, integer=True)
    function = d.get("function")
    if function is not None:
        if not isinstance(function, str):
            ctx.err(_join(path, "function"), "must be a function name")
            function = None
        elif function_names is not None and function not in set(function_names):
            ctx.err(_join(path, "function"), f"no function named {function!r} in this experiment")
    if duration and compression and duration / compression > MAX_RUN_S:
        ctx.err(_join(path, "duration_s"), f"runs {duration / compression:.0f} s of wall time; at most "
                f"{MAX_RUN_S:.0f} s (raise time_compression or shorten it)")

    params: dict[str, Any] = {}
    trace: TraceSpec | None = None
    rate = lambda k, low=0.0, open_=True: ctx.number(d, k, path, low=low, high=MAX_RATE_RPS, low_open=open_)  # noqa: E731
    if pattern in ("constant", "poisson"):
        _require(ctx, d, path, "rate_rps")
        params["rate_rps"] = rate("rate_rps")
    elif pattern == "gamma":
        _require(ctx, d, path, "rate_rps", "cv")
        params["rate_rps"] = rate("rate_rps")
        params["cv"] = ctx.number(d, "cv", path, low=0, high=MAX_CV, low_open=True)
    elif pattern == "steps":
        params["steps"] = _parse_steps(ctx, d.get("steps"), _join(path, "steps"), duration)
    elif pattern == "diurnal":
        _require(ctx, d, path, "mean_rate_rps")
        params["mean_rate_rps"] = rate("mean_rate_rps")
        params["peak_to_trough"] = ctx.number(d, "peak_to_trough", path, default=4.0, low=1.0, high=1000.0)
        params["period_s"] = ctx.number(d, "period_s", path, default=86_400.0, low=1.0, high=MAX_DURATION_S * 7)
        if params["mean_rate_rps"] and params["peak_to_trough"]:
            # rate(t) = mean * (1 + a sin), a = (r-1)/(r+1): the peak is mean * (1 + a) < 2 * mean
            if 2 * params["mean_rate_rps"] > MAX_RATE_RPS:
                ctx.err(_join(path, "mean_rate_rps"), f"peak would exceed {MAX_RATE_RPS:.0f} requests/s")
    elif pattern == "burst":
        _require(ctx, d, path, "base_rate_rps", "burst_rate_rps", "mean_on_s", "mean_off_s")
        params["base_rate_rps"] = rate("base_rate_rps", open_=False)
        params["burst_rate_rps"] = rate("burst_rate_rps")
        params["mean_on_s"] = ctx.number(d, "mean_on_s", path, low=0, high=MAX_DURATION_S, low_open=True)
        params["mean_off_s"] = ctx.number(d, "mean_off_s", path, low=0, high=MAX_DURATION_S, low_open=True)
    elif pattern == "trace":
        fmt = ctx.choice(d, "trace_format", path, TRACE_FORMATS, default="azure2019")
        content = d.get("trace_content")
        if not isinstance(content, str) or not content.strip():
            ctx.err(_join(path, "trace_content"), "is required: the trace file's text (upload a file, or give "
                    "trace_path in a spec file)")
        elif len(content.encode()) > MAX_TRACE_BYTES:
            ctx.err(_join(path, "trace_content"), f"trace is larger than {MAX_TRACE_BYTES // (1024 * 1024)} MiB")
        else:
            fh = ctx.string(d, "function_hash", path, max_len=200)
            trace = TraceSpec(format=fmt, content=content, filename=ctx.string(d, "trace_filename", path, max_len=200),
                              function_hash=fh)
            try:
                from workers.workload import TraceError, parse_trace

                parse_trace(content, fmt, function_hash=fh)
            except TraceError as exc:
                ctx.err(_join(path, "trace_content"), str(exc))
        if "cv" in d:
            params["cv"] = ctx.number(d, "cv", path, low=0, high=MAX_CV, low_open=True)
    spec = WorkloadSpec(pattern=pattern, params={k: v for k, v in params.items() if v is not None},
                        duration_s=duration or 10.0, time_compression=compression or 1.0, seed=seed or 0,
                        function=function, trace=trace)
    peak = peak_rate_rps(spec)
    if peak and spec.run_s * peak * spec.time_compression > MAX_REQUESTS:
        ctx.err(_join(path, "duration_s"), f"would send about {spec.run_s * peak * spec.time_compression:,.0f} "
                f"requests; at most {MAX_REQUESTS:,} in one trial")
    if own:
        ctx.raise_if_any()
    return spec


def peak_rate_rps(w: WorkloadSpec) -> float | None:
    """Highest intended arrival rate in workload time (None for traces: known only once expanded)."""
    p = w.params
    if w.pattern in ("constant", "poisson", "gamma"):
        return p.get("rate_rps")
    if w.pattern == "steps":
        return max((r for _, r in p.get("steps") or []), default=None)
    if w.pattern == "diurnal":
        m, r = p.get("mean_rate_rps"), p.get("peak_to_trough")
        return m * (1 + (r - 1) / (r + 1)) if m and r else None
    if w.pattern == "burst":
        return p.get("burst_rate_rps")
    return None


def _require(ctx: _Ctx, d: dict, path: str, *keys: str) -> None:
    for k in keys:
        if d.get(k) is None:
            ctx.err(_join(path, k), "is required")


def _parse_steps(ctx: _Ctx, steps: Any, path: str, duration: float | None) -> list[list[float]]:
    if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_STEPS:
        ctx.err(path, f"must be a list of 1-{MAX_STEPS} [start_s, rate_rps] pairs")
        return []
    out: list[list[float]] = []
    for i, step in enumerate(steps):
        p = _join(path, i)
        if (not isinstance(step, (list, tuple)) or len(step) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in step)):
            ctx.err(p, "must be a [start_s, rate_rps] pair of numbers")
            continue
        start, r = float(step[0]), float(step[1])
        if start < 0 or (duration and start >= duration):
            ctx.err(p, "start_s must be at least 0 and before the end of the workload")
            continue
        if not 0 <= r <= MAX_RATE_RPS:
            ctx.err(p, f"rate_rps must be between 0 and {MAX_RATE_RPS:.0f}")
            continue
        if out and start <= out[-1][0]:
            ctx.err(p, "start_s must increase from step to step")
            continue
        out.append([start, r])
    if out and out[0][0] != 0:
        ctx.err(_join(path, 0), "the first step must start at 0")
    return out


def parse_batching(data: Any, path: str, ctx: _Ctx) -> BatchingSpec:
    d = ctx.mapping(data if data is not None else {"mode": "none"}, path,
                    ("mode", "max_batch_size", "max_queue_delay_ms", "shed"))
    mode = ctx.choice(d, "mode", path, BATCHING_MODES, default="none")
    if mode == "none":
        for k in ("max_queue_delay_ms", "shed"):
            if k in d:
                ctx.err(_join(path, k), "only applies to mode fixed or adaptive")
        if d.get("max_batch_size") not in (None, 1):
            ctx.err(_join(path, "max_batch_size"), "must be 1 (or absent) when mode is none")
        return BatchingSpec()
    size = ctx.number(d, "max_batch_size", path, default=8, low=1, high=MAX_BATCH_SIZE, integer=True)
    delay = ctx.number(d, "max_queue_delay_ms", path, default=0.0, low=0.0, high=MAX_QUEUE_DELAY_MS)
    shed = d.get("shed", False)
    if not isinstance(shed, bool):
        ctx.err(_join(path, "shed"), "must be true or false")
        shed = False
    if shed and mode != "adaptive":
        ctx.err(_join(path, "shed"), "only applies to mode adaptive")
    return BatchingSpec(mode=mode, max_batch_size=size or 8, max_queue_delay_ms=delay or 0.0, shed=shed)


def parse_keep_alive(data: Any, path: str, ctx: _Ctx) -> KeepAliveSpec:
    d = ctx.mapping(data if data is not None else {"policy": "fixed"}, path,
                    ("policy", "ttl_s", "bin_s", "range_s", "head_percentile", "tail_percentile", "min_samples"))
    policy = ctx.choice(d, "policy", path, KEEP_ALIVE_POLICIES, default="fixed")
    if policy == "fixed":
        for k in ("bin_s", "range_s", "head_percentile", "tail_percentile", "min_samples"):
            if k in d:
                ctx.err(_join(path, k), "only applies to policy histogram")
    ka = KeepAliveSpec(
        policy=policy,
        ttl_s=ctx.number(d, "ttl_s", path, default=60.0, low=0.0, high=MAX_TTL_S),
        bin_s=ctx.number(d, "bin_s", path, default=1.0, low=0.001, high=3_600.0),
        range_s=ctx.number(d, "range_s", path, default=240.0, low=0.01, high=MAX_TTL_S),
        head_percentile=ctx.number(d, "head_percentile", path, default=5.0, low=0.0, high=50.0),
        tail_percentile=ctx.number(d, "tail_percentile", path, default=99.0, low=50.0, high=100.0),
        min_samples=ctx.number(d, "min_samples", path, default=10, low=1, high=100_000, integer=True),
    )
    if None in (ka.ttl_s, ka.bin_s, ka.range_s, ka.head_percentile, ka.tail_percentile, ka.min_samples):
        return KeepAliveSpec(policy=policy)
    if ka.range_s < ka.bin_s:
        ctx.err(_join(path, "range_s"), "must be at least bin_s")
    return ka


def parse_variant(data: Any, path: str, ctx: _Ctx | None = None) -> VariantSpec:
    own = ctx is None
    ctx = ctx or _Ctx()
    d = ctx.mapping(data, path, ("name", "sharing", "share", "batching", "min_instances", "max_instances",
                                 "target_concurrency", "keep_alive", "repeats"), required=("name",))
    name = ctx.string(d, "name", path, pattern=NAME_RE,
                      rule="must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    sharing = ctx.choice(d, "sharing", path, SHARING_MODES, default="exclusive")
    lo = ctx.number(d, "min_instances", path, default=1, low=0, high=MAX_INSTANCES, integer=True)
    hi = ctx.number(d, "max_instances", path, default=max(1, lo or 1), low=1, high=MAX_INSTANCES, integer=True)
    if lo is not None and hi is not None and lo > hi:
        ctx.err(_join(path, "min_instances"), f"must be at most max_instances ({hi})")
    share = ctx.number(d, "share", path, default=None, low=0.0, high=1.0, low_open=True)
    if share is not None and sharing != "spatial":
        ctx.err(_join(path, "share"), "only applies to sharing spatial")
        share = None
    if sharing == "spatial" and hi and share is not None and share * hi > 1.0 + 1e-9:
        ctx.err(_join(path, "share"), f"{hi} instances x {share:g} is more than the whole device")
    spec = VariantSpec(
        name=name, sharing=sharing, share=share,
        batching=parse_batching(d.get("batching"), _join(path, "batching"), ctx),
        min_instances=lo if lo is not None else 1, max_instances=hi if hi is not None else 1,
        target_concurrency=ctx.number(d, "target_concurrency", path, default=1.0, low=0,
                                      high=MAX_TARGET_CONCURRENCY, low_open=True) or 1.0,
        keep_alive=parse_keep_alive(d.get("keep_alive"), _join(path, "keep_alive"), ctx),
        repeats=ctx.number(d, "repeats", path, default=1, low=1, high=MAX_REPEATS, integer=True) or 1,
    )
    if own:
        ctx.raise_if_any()
    return spec


EXPERIMENT_KEYS = ("name", "description", "notes", "device", "accelerator", "slo", "functions", "workload",
                   "workloads", "variants", "spec_version")


def parse_experiment(data: Any, *, known_models: Iterable[str] | None = None) -> ExperimentSpec:
    """Validate a whole experiment spec (a dict from JSON or YAML). Raises SpecError listing every problem."""
    ctx = _Ctx()
    d = ctx.mapping(data, "", EXPERIMENT_KEYS, required=("name", "functions", "variants"))
    if not isinstance(data, Mapping):
        ctx.raise_if_any()
    name = ctx.string(d, "name", "", max_len=200)
    if "name" in d and not name.strip():
        ctx.err("name", "must not be empty")
    device = ctx.string(d, "device", "", default="auto", pattern=DEVICE_RE,
                        rule="must be auto, cpu, cuda or cuda:N")
    accelerator = d.get("accelerator")
    if accelerator is not None and (not isinstance(accelerator, str) or len(accelerator) > 100):
        ctx.err("accelerator", "must be the name of a price catalogue entry")
        accelerator = None
    slo = parse_slo(d.get("slo", {"percentile": 99, "latency_ms": 100}), "slo", ctx)

    functions: list[FunctionSpec] = []
    raw_functions = d.get("functions")
    if not isinstance(raw_functions, list) or not 1 <= len(raw_functions) <= MAX_FUNCTIONS:
        if "functions" in d:
            ctx.err("functions", f"must be a list of 1-{MAX_FUNCTIONS} functions")
    else:
        for i, f in enumerate(raw_functions):
            functions.append(parse_function(f, _join("functions", i), ctx, known_models))
        _unique(ctx, [f.name for f in functions], "functions", "function")
    names = [f.name for f in functions]

    if "workload" in d and "workloads" in d:
        ctx.err("workloads", "give either workload (split across functions) or workloads, not both")
    workloads: list[WorkloadSpec] = []
    if "workloads" in d:
        raw_w = d["workloads"]
        if not isinstance(raw_w, list) or not 1 <= len(raw_w) <= MAX_FUNCTIONS:
            ctx.err("workloads", f"must be a list of 1-{MAX_FUNCTIONS} workloads")
        else:
            for i, w in enumerate(raw_w):
                workloads.append(parse_workload(w, _join("workloads", i), ctx, names))
            targeted = [w.function for w in workloads]
            if len(workloads) > 1 and (None in targeted or len(set(targeted)) != len(targeted)):
                ctx.err("workloads", "with several workloads, each must name a different function")
    elif "workload" in d:
        workloads.append(parse_workload(d["workload"], "workload", ctx, names))
    else:
        ctx.err("workload", "is required")

    variants: list[VariantSpec] = []
    raw_v = d.get("variants")
    if not isinstance(raw_v, list) or not 1 <= len(raw_v) <= MAX_VARIANTS:
        if "variants" in d:
            ctx.err("variants", f"must be a list of 1-{MAX_VARIANTS} variants")
    else:
        for i, v in enumerate(raw_v):
            variants.append(parse_variant(v, _join("variants", i), ctx))
        _unique(ctx, [v.name for v in variants], "variants", "variant")
    ctx.raise_if_any()
    return ExperimentSpec(name=name.strip(), functions=tuple(functions), workloads=tuple(workloads),
                          variants=tuple(variants), slo=slo, device=device, accelerator=accelerator,
                          description=ctx.string(d, "description", "", max_len=5_000),
                          notes=ctx.string(d, "notes", "", max_len=20_000))


def _unique(ctx: _Ctx, names: list[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            ctx.err(_join(_join(path, i), "name"), f"another {what} is already named {n!r}")
        seen.add(n)


def _zoo_keys() -> tuple[str, ...]:
    from workers.zoo import model_keys

    return tuple(model_keys())


# ---- canonical dicts (export) --------------------------------------------------------------------
def workload_to_dict(w: WorkloadSpec) -> dict:
    out: dict[str, Any] = {"pattern": w.pattern, **w.params, "duration_s": w.duration_s}
    if w.time_compression != 1.0:
        out["time_compression"] = w.time_compression
    out["seed"] = w.seed
    if w.function is not None:
        out["function"] = w.function
    if w.trace is not None:
        out["trace_format"] = w.trace.format
        if w.trace.filename:
            out["trace_filename"] = w.trace.filename
        if w.trace.function_hash:
            out["function_hash"] = w.trace.function_hash
        out["trace_content"] = w.trace.content
    return out


def variant_to_dict(v: VariantSpec) -> dict:
    b = v.batching
    batching: dict[str, Any] = {"mode": b.mode}
    if b.mode != "none":
        batching.update(max_batch_size=b.max_batch_size, max_queue_delay_ms=b.max_queue_delay_ms)
        if b.mode == "adaptive":
            batching["shed"] = b.shed
    ka = v.keep_alive
    keep_alive: dict[str, Any] = {"policy": ka.policy, "ttl_s": ka.ttl_s}
    if ka.policy == "histogram":
        keep_alive.update(bin_s=ka.bin_s, range_s=ka.range_s, head_percentile=ka.head_percentile,
                          tail_percentile=ka.tail_percentile, min_samples=ka.min_samples)
    out: dict[str, Any] = {"name": v.name, "sharing": v.sharing}
    if v.share is not None:
        out["share"] = v.share
    out.update(batching=batching, min_instances=v.min_instances, max_instances=v.max_instances,
               target_concurrency=v.target_concurrency, keep_alive=keep_alive, repeats=v.repeats)
    return out


def experiment_to_dict(e: ExperimentSpec) -> dict:
    out: dict[str, Any] = {"spec_version": 1, "name": e.name}
    if e.description:
        out["description"] = e.description
    if e.notes:
        out["notes"] = e.notes
    out["device"] = e.device
    if e.accelerator:
        out["accelerator"] = e.accelerator
    out["slo"] = {k: v for k, v in asdict(e.slo).items() if v is not None}
    out["functions"] = []
    for f in e.functions:
        fd: dict[str, Any] = {"name": f.name, "model": f.model}
        if f.input_shape is not None:
            fd["input_shape"] = list(f.input_shape)
        if f.options:
            fd["options"] = dict(f.options)
        if f.weight != 1.0:
            fd["weight"] = f.weight
        out["functions"].append(fd)
    if len(e.workloads) == 1 and e.workloads[0].function is None:
        out["workload"] = workload_to_dict(e.workloads[0])
    else:
        out["workloads"] = [workload_to_dict(w) for w in e.workloads]
    out["variants"] = [variant_to_dict(v) for v in e.variants]
    return out
