"""The experiment spec: one validated, plain-Python description of an experiment.

Everything that accepts an experiment (spec files, the REST API, the browser forms) funnels through
`parse_experiment` or one of the per-section parsers below, so one set of rules and one set of error
messages ("variants[2].batching.max_batch_size: must be between 1 and 1024") serves them all. The
engine receives the same dataclasses. Every default and bound is written once, in `FIELD_RULES`; the
dataclasses, the parsers, the editor, the API documents and the database read them from there.
No Django here.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# ---- documented bounds (docs/spec.md lists them) -------------------------------------------
MAX_RATE_RPS = 20_000.0
MAX_DURATION_S = 86_400.0  # one day of workload time
MAX_RUN_S = 3_600.0  # workload time / compression: how long a REAL trial may run (real_run_errors)
MAX_SIM_RUN_S = 7 * 86_400.0  # how much run time a simulated trial may cover
MAX_COMPRESSION = 10_000.0
MAX_CV = 20.0
MAX_STEPS = 1_000
MAX_FUNCTIONS = 256  # a simulated fleet runs hundreds; a real trial is bounded by the device's memory
MAX_VARIANTS = 32
MAX_INSTANCES = 64
MAX_BATCH_SIZE = 1_024
MAX_QUEUE_DELAY_MS = 10_000.0
MAX_TARGET_CONCURRENCY = 1_024.0
MAX_TTL_S = 86_400.0
MAX_REPEATS = 20
MAX_LATENCY_MS = 600_000.0
MAX_TRACE_BYTES = 8 * 1024 * 1024
MAX_REQUESTS = 5_000_000  # expected arrivals in one REAL trial (rate x run time; real_run_errors)
MAX_SIM_REQUESTS = 50_000_000  # expected arrivals in one simulated trial (what a spec may ask for at all)
MAX_PLATFORM_DELAY_MS = 600_000.0  # a modelled platform delay of at most ten minutes per cold start
MAX_SWEEP_VARIANTS = 256  # variants one experiment may have with its sweep expanded (explicit ones included)
MAX_SWEEP_AXES = 8
MAX_SWEEP_VALUES = 64  # values on one axis of a sweep grid

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
PATTERNS = ("constant", "poisson", "gamma", "steps", "diurnal", "burst", "trace")
TRACE_FORMATS = ("azure2019", "timestamps")
SHARING_MODES = ("exclusive", "time_slice", "spatial")
BATCHING_MODES = ("none", "fixed", "adaptive")
KEEP_ALIVE_POLICIES = ("fixed", "histogram")
RUNTIMES = ("process", "thread")
# What runs a function's model inside its instance (not to be confused with RUNTIMES, the instance's isolation).
MODEL_RUNTIMES = ("torch", "onnxruntime")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,2})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # FieldRule.default of a field that has no default


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
        self.requests: dict[str, float] = {}  # workload path -> about how many requests it sends

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

    def ruled(self, data: dict, rule: str, path: str, *, default: Any = REQUIRED) -> Any:
        """A field by its FIELD_RULES entry (the key is the rule's last part): its default and bounds."""
        r = FIELD_RULES[rule]
        key = rule.rsplit(".", 1)[-1]
        default = r.default if default is REQUIRED else default
        default = None if default is REQUIRED else default
        if r.choices:
            return self.choice(data, key, path, r.choices, default=default)
        return self.number(data, key, path, default=default, low=r.low, high=r.high, low_open=r.low_open,
                           integer=r.integer)

    def raise_if_any(self) -> None:
        if self.errors:
            raise SpecError(self.errors)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# ---- defaults and bounds: the one table ------------------------------------------------------------
@dataclass(frozen=True)
class FieldRule:
    """A field's default and bounds. `low_open`: the low bound itself is not allowed ("above 0")."""

    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    integer: bool = False
    choices: tuple = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def bounds_text(self) -> str:
        """The bounds as docs/spec.md writes them: "0-10000", "above 0, at most 1024", "one of ..."."""
        if self.choices:
            if all(isinstance(c, str) for c in self.choices):
                return ", ".join(f"`{c}`" for c in self.choices)
            return "one of " + ", ".join(_fmt(c) for c in self.choices)
        if isinstance(self.default, bool):
            return "true / false"
        if self.low is None and self.high is None:
            return ""
        if self.low_open:
            return f"above {_fmt(self.low)}, at most {_fmt(self.high)}"
        return f"{_fmt(self.low)}-{_fmt(self.high)}"


# Every default and bound of the spec, by dotted path ("variant.batching.max_batch_size"). The dataclasses
# below, the parsers, the editor's initial values, the API's document serializers and the database's field
# defaults and constraints all read them from here, and docs/spec.md states them (a test holds all of them
# to this table).
FIELD_RULES: dict[str, FieldRule] = {
    "device": FieldRule("auto"),
    "slo.percentile": FieldRule(99.0, choices=PERCENTILES),
    "slo.latency_ms": FieldRule(100.0, 0.0, MAX_LATENCY_MS, low_open=True),
    "slo.max_violation_rate": FieldRule(0.01, 0.0, 1.0),
    "slo.min_throughput_rps": FieldRule(None, 0.0, MAX_RATE_RPS * 10, low_open=True),
    "function.weight": FieldRule(1.0, 0.0, 1e6, low_open=True),
    "function.model_runtime": FieldRule("torch", choices=MODEL_RUNTIMES),  # an uploaded ONNX model: onnxruntime
    "variant.model_runtime": FieldRule(None, choices=MODEL_RUNTIMES),  # None: each function's own
    "workload.duration_s": FieldRule(REQUIRED, 0.0, MAX_DURATION_S, low_open=True),
    "workload.time_compression": FieldRule(1.0, 1.0, MAX_COMPRESSION),
    "workload.seed": FieldRule(0, 0, 2**32 - 1, integer=True),
    "workload.peak_to_trough": FieldRule(4.0, 1.0, 1000.0),
    "workload.period_s": FieldRule(86_400.0, 1.0, MAX_DURATION_S * 7),
    "workload.trace_format": FieldRule("azure2019", choices=TRACE_FORMATS),
    "variant.sharing": FieldRule("exclusive", choices=SHARING_MODES),
    "variant.share": FieldRule(None, 0.0, 1.0, low_open=True),  # None: 1 / max_instances
    "variant.runtime": FieldRule("process", choices=RUNTIMES),
    "variant.min_instances": FieldRule(1, 0, MAX_INSTANCES, integer=True),
    "variant.max_instances": FieldRule(1, 1, MAX_INSTANCES, integer=True),  # or min_instances when larger
    "variant.target_concurrency": FieldRule(1.0, 0.0, MAX_TARGET_CONCURRENCY, low_open=True),
    "variant.platform_delay_ms": FieldRule(0.0, 0.0, MAX_PLATFORM_DELAY_MS),
    "variant.repeats": FieldRule(1, 1, MAX_REPEATS, integer=True),
    "variant.batching.mode": FieldRule("none", choices=BATCHING_MODES),
    "variant.batching.max_batch_size": FieldRule(8, 1, MAX_BATCH_SIZE, integer=True),  # mode none: always 1
    "variant.batching.max_queue_delay_ms": FieldRule(0.0, 0.0, MAX_QUEUE_DELAY_MS),
    "variant.batching.shed": FieldRule(False),
    "variant.keep_alive.policy": FieldRule("fixed", choices=KEEP_ALIVE_POLICIES),
    "variant.keep_alive.ttl_s": FieldRule(60.0, 0.0, MAX_TTL_S),
    "variant.keep_alive.bin_s": FieldRule(1.0, 0.001, 3_600.0),
    "variant.keep_alive.range_s": FieldRule(240.0, 0.01, MAX_TTL_S),
    "variant.keep_alive.head_percentile": FieldRule(5.0, 0.0, 50.0),
    "variant.keep_alive.tail_percentile": FieldRule(99.0, 50.0, 100.0),
    "variant.keep_alive.min_samples": FieldRule(10, 1, 100_000, integer=True),
}
DEFAULTS: dict[str, Any] = {k: r.default for k, r in FIELD_RULES.items() if not r.required}


# ---- modelled platform delay -----------------------------------------------------------------------
@dataclass(frozen=True)
class PlatformDelayPreset:
    """A dated, sourced figure for the part of a serverless cold start that does not run here."""

    key: str
    label: str
    delay_ms: float
    as_of: str  # YYYY-MM-DD
    source: str
    reasoning: str


PLATFORM_DELAY_PRESETS: tuple[PlatformDelayPreset, ...] = (
    PlatformDelayPreset(
        "none", "none: only what really ran", 0.0, "2026-12-01", "",
        "Nothing is added: cold starts are what this host really did (process start, imports, device context, "
        "weights, warm-up)."),
    PlatformDelayPreset(
        "warm-pool", "warm container pool", 2_000.0, "2026-12-01",
        "Cumulus Labs, GPU Glossary: Cold Start (2026), https://cumuluslabs.io/glossary/cold-start; "
        "T. Pan, Warm Pools and Cold Truths: The Hidden Latency Floor of Serverless LLM Inference (2026-05-17), "
        "https://tianpan.co/blog/2026-05-17-warm-pools-cold-truths-serverless-llm-cold-start",
        "A pre-warmed pool keeps GPU hosts provisioned with the image cached, so neither host provisioning nor "
        "an image pull is paid; what is left is scheduling the container onto a pooled host and booting it, "
        "'a few hundred milliseconds to a couple of seconds': 2 s, also the low end of the 2-60 s reported for "
        "getting a GPU host."),
    PlatformDelayPreset(
        "fresh-pull", "fresh container with image pull", 25_000.0, "2026-12-01",
        "ParallelIQ, Serverless GPU Cold Start Latency: Causes and Solutions (2026-05-16), "
        "https://paralleliq.ai/blog/gpu-ops-serverless-cold-start; Lyceum, Serverless GPU Cold Start Latency: "
        "Architecture Comparison (2026-06-10), "
        "https://lyceum-landing.pages.dev/magazine/serverless-gpu-cold-start-latency-comparison",
        "A GPU host provisioned for the request (10 s, the low end of the reported 10-60 s) plus pulling a "
        "few-GB inference image (15 s, mid-range of the reported 5-30 s). Add the CUDA context and framework "
        "start that really run here with runtime process (3-15 s on a GPU) and a cold start totals about "
        "28-40 s, inside the 10-60 s published for serverless GPU cold starts."),
)


def platform_delay_preset(delay_ms: float) -> PlatformDelayPreset | None:
    """The preset with exactly this delay, if any."""
    return next((p for p in PLATFORM_DELAY_PRESETS if p.delay_ms == delay_ms), None)


def platform_delay_label(delay_ms: float) -> str:
    """How the pages name a variant's modelled platform delay."""
    if not delay_ms:
        return "none: only what really ran"
    preset = platform_delay_preset(delay_ms)
    name = f" ({preset.label}, as of {preset.as_of})" if preset else ""
    return f"modelled: +{delay_ms / 1000:g} s per cold start{name}"


# ---- isolation -------------------------------------------------------------------------------------
ISOLATION_LEVELS = ("none", "process", "hardware partition")


def isolation_level(sharing: str, runtime: str, mechanism: str | None = None) -> str:
    """What keeps one instance from disturbing another.

    "none": threads of one process (runtime thread), or instances time-slicing one device (time_slice);
    "process": each instance its own process (exclusive, or spatial with MPS or CPU core sets);
    "hardware partition": spatial on MIG. `mechanism` is the sharing mechanism a trial actually used
    (workers.devices: "mig", "mps", "cpu-core-sets", ...); without it spatial counts as "process".
    """
    if runtime == "thread" or sharing == "time_slice":
        return "none"
    if sharing == "spatial" and mechanism == "mig":
        return "hardware partition"
    return "process"


def isolation_label(sharing: str, runtime: str, mechanism: str | None = None) -> str:
    """The isolation in the words the pages use; a thread runtime is "shared process, no isolation"."""
    level = isolation_level(sharing, runtime, mechanism)
    if runtime == "thread":
        return "shared process, no isolation"
    if level == "none":
        return "own processes, time-sliced device, no isolation"
    if level == "hardware partition":
        return "hardware partition (MIG)"
    if sharing == "spatial":
        return f"process with a fixed share ({mechanism})" if mechanism else "process with a fixed share"
    return "process"


# ---- dataclasses -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SLOSpec:
    percentile: float = DEFAULTS["slo.percentile"]
    latency_ms: float = DEFAULTS["slo.latency_ms"]
    max_violation_rate: float = DEFAULTS["slo.max_violation_rate"]
    min_throughput_rps: float | None = DEFAULTS["slo.min_throughput_rps"]


@dataclass(frozen=True)
class UploadedModel:
    """An ONNX model from the owner's registry, as the validator needs it (controlplane/registry supplies these)."""

    name: str
    dynamic_batch: bool
    input_shape: tuple = ()  # the first input's per-sample shape, for messages


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    model: str
    input_shape: tuple[int, ...] | None = None  # None: the zoo model's default
    options: dict = field(default_factory=dict)
    weight: float = DEFAULTS["function.weight"]  # share of a split workload
    # "torch", or "onnxruntime": a zoo model exported to ONNX, or an uploaded ONNX model (always onnxruntime)
    model_runtime: str = DEFAULTS["function.model_runtime"]
    # Filled in when a trial runs, never part of a document: the .onnx file an instance loads (an uploaded model's
    # stored file, or a zoo model's export) and, for an upload, its SHA-256 as registered.
    model_file: str = ""
    model_sha256: str = ""


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
    time_compression: float = DEFAULTS["workload.time_compression"]
    seed: int = DEFAULTS["workload.seed"]
    function: str | None = None  # None: split across all functions by weight
    trace: TraceSpec | None = None

    @property
    def run_s(self) -> float:
        """Wall-clock seconds a trial of this workload lasts."""
        return self.duration_s / self.time_compression


@dataclass(frozen=True)
class BatchingSpec:
    """Mode none runs one request at a time: its max_batch_size reads 1 (and there is no delay or shedding)."""

    mode: str = DEFAULTS["variant.batching.mode"]
    max_batch_size: int = DEFAULTS["variant.batching.max_batch_size"]
    max_queue_delay_ms: float = DEFAULTS["variant.batching.max_queue_delay_ms"]
    shed: bool = DEFAULTS["variant.batching.shed"]  # adaptive only: drop requests that can no longer meet the SLO

    def __post_init__(self) -> None:
        if self.mode == "none":
            object.__setattr__(self, "max_batch_size", 1)
            object.__setattr__(self, "max_queue_delay_ms", 0.0)
            object.__setattr__(self, "shed", False)


@dataclass(frozen=True)
class KeepAliveSpec:
    policy: str = DEFAULTS["variant.keep_alive.policy"]
    ttl_s: float = DEFAULTS["variant.keep_alive.ttl_s"]  # fixed TTL; also the histogram policy's fallback
    # histogram policy (Shahrad et al., ATC'20), in wall-clock seconds of the run
    bin_s: float = DEFAULTS["variant.keep_alive.bin_s"]
    range_s: float = DEFAULTS["variant.keep_alive.range_s"]
    head_percentile: float = DEFAULTS["variant.keep_alive.head_percentile"]
    tail_percentile: float = DEFAULTS["variant.keep_alive.tail_percentile"]
    min_samples: int = DEFAULTS["variant.keep_alive.min_samples"]


@dataclass(frozen=True)
class VariantSpec:
    name: str
    sharing: str = DEFAULTS["variant.sharing"]
    # spatial: fraction of the device per instance (default 1/max_instances)
    share: float | None = DEFAULTS["variant.share"]
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    min_instances: int = DEFAULTS["variant.min_instances"]
    max_instances: int = DEFAULTS["variant.max_instances"]
    target_concurrency: float = DEFAULTS["variant.target_concurrency"]
    keep_alive: KeepAliveSpec = field(default_factory=KeepAliveSpec)
    repeats: int = DEFAULTS["variant.repeats"]
    # "process": each instance its own worker process, as on serverless platforms; "thread": instances are
    # threads of one process (results say "shared process, no isolation"). Spatial sharing is always process.
    runtime: str = DEFAULTS["variant.runtime"]
    # MODELLED, not measured: added to each real cold start for provisioning and image pull (0: none)
    platform_delay_ms: float = DEFAULTS["variant.platform_delay_ms"]
    # Overrides the functions' model_runtime for zoo and installed torch models (uploaded ONNX models always run
    # under onnxruntime); None: each function's own.
    model_runtime: str | None = DEFAULTS["variant.model_runtime"]

    @property
    def effective_share(self) -> float:
        if self.sharing != "spatial":
            return 1.0
        return self.share if self.share is not None else 1.0 / self.max_instances

    @property
    def isolation(self) -> str:
        """"none", "process" or "hardware partition" (spatial on MIG: see `isolation_level`)."""
        return isolation_level(self.sharing, self.runtime)

    def isolation_label(self, mechanism: str | None = None) -> str:
        return isolation_label(self.sharing, self.runtime, mechanism)

    @property
    def platform_delay_label(self) -> str:
        return platform_delay_label(self.platform_delay_ms)


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    functions: tuple[FunctionSpec, ...]
    workloads: tuple[WorkloadSpec, ...]
    variants: tuple[VariantSpec, ...]
    slo: SLOSpec = field(default_factory=SLOSpec)
    device: str = DEFAULTS["device"]
    accelerator: str | None = None
    description: str = ""
    notes: str = ""
    sweep: SweepSpec | None = None  # its variants are in `variants` too, after the explicit ones

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
    d = ctx.mapping(data, path, ("percentile", "latency_ms", "max_violation_rate", "min_throughput_rps"))
    rule = FIELD_RULES["slo.percentile"]
    pct = d.get("percentile", rule.default)
    if isinstance(pct, bool) or not isinstance(pct, (int, float)) or float(pct) not in rule.choices:
        ctx.err(_join(path, "percentile"), f"must be one of: {', '.join(_fmt(p) for p in rule.choices)}")
        pct = rule.default
    spec = SLOSpec(
        percentile=float(pct),
        latency_ms=ctx.ruled(d, "slo.latency_ms", path),
        max_violation_rate=ctx.ruled(d, "slo.max_violation_rate", path),
        min_throughput_rps=ctx.ruled(d, "slo.min_throughput_rps", path),
    )
    if own:
        ctx.raise_if_any()
    return spec


def parse_function(data: Any, path: str, ctx: _Ctx | None = None, known_models: Iterable[str] | None = None,
                   uploaded_models: Mapping[str, UploadedModel] | None = None) -> FunctionSpec:
    """`uploaded_models`: the ONNX models of the experiment's owner, by name; nobody else's can be named."""
    own = ctx is None
    ctx = ctx or _Ctx()
    uploaded = dict(uploaded_models or {})
    d = ctx.mapping(data, path, ("name", "model", "input_shape", "options", "weight", "model_runtime"),
                    required=("name", "model"))
    name = ctx.string(d, "name", path, pattern=NAME_RE,
                      rule="must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    model = ctx.string(d, "model", path, max_len=100)
    builtin = tuple(known_models) if known_models is not None else _zoo_keys()
    is_upload = bool(model) and model not in builtin and model in uploaded
    if model and model not in builtin and not is_upload:
        known = sorted(builtin) + sorted(uploaded)
        ctx.err(_join(path, "model"), f"unknown model {model!r} (known: {', '.join(known)}; your uploaded "
                                      "models are listed on the Models page)")
    models = builtin
    runtime = ctx.ruled(d, "function.model_runtime", path)
    if is_upload:
        if d.get("model_runtime") not in (None, "onnxruntime"):
            ctx.err(_join(path, "model_runtime"), f"{model!r} is an uploaded ONNX model: it runs under onnxruntime")
        runtime = "onnxruntime"
        for key in ("input_shape", "options"):
            if d.get(key):
                ctx.err(_join(path, key), f"{model!r} is an uploaded ONNX model: its signature fixes its inputs "
                                          "(leave this out)")
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
            field = f"options.{exc.option}" if exc.option else "options" if options else "input_shape"
            ctx.err(_join(path, field), str(exc))
    spec = FunctionSpec(name=name, model=model, input_shape=shape, options=dict(options),
                        weight=ctx.ruled(d, "function.weight", path),
                        model_runtime=runtime or DEFAULTS["function.model_runtime"])
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
    if not isinstance(pattern, str):
        pattern = None  # a list or an object: refused below, and never used as a dict key
    allowed = _WORKLOAD_COMMON + PATTERN_PARAMS.get(pattern, ())
    d = ctx.mapping(data, path, allowed, required=("pattern", "duration_s"))
    if pattern not in PATTERNS:
        ctx.err(_join(path, "pattern"), f"must be one of: {', '.join(PATTERNS)}")
        pattern = "constant"
    duration = ctx.ruled(d, "workload.duration_s", path)
    compression = ctx.ruled(d, "workload.time_compression", path)
    seed = ctx.ruled(d, "workload.seed", path)
    function = d.get("function")
    if function is not None:
        if not isinstance(function, str):
            ctx.err(_join(path, "function"), "must be a function name")
            function = None
        elif function_names is not None and function not in set(function_names):
            ctx.err(_join(path, "function"), f"no function named {function!r} in this experiment")
    if duration and compression and duration / compression > MAX_SIM_RUN_S:
        ctx.err(_join(path, "duration_s"), f"runs {duration / compression:.0f} s; at most "
                f"{MAX_SIM_RUN_S:.0f} s even simulated (raise time_compression or shorten it)")

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
        params["peak_to_trough"] = ctx.ruled(d, "workload.peak_to_trough", path)
        params["period_s"] = ctx.ruled(d, "workload.period_s", path)
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
        fmt = ctx.ruled(d, "workload.trace_format", path)
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
                from workers.workload import TraceError, parsed_trace

                parsed = parsed_trace(trace)
                if duration:
                    ctx.requests[path] = float(parsed.invocations_before(duration))
            except TraceError as exc:
                ctx.err(_join(path, "trace_content"), str(exc))
        if "cv" in d:
            params["cv"] = ctx.number(d, "cv", path, low=0, high=MAX_CV, low_open=True)
    spec = WorkloadSpec(pattern=pattern, params={k: v for k, v in params.items() if v is not None},
                        duration_s=duration or 10.0,  # only after an error: the spec is refused anyway
                        time_compression=compression or DEFAULTS["workload.time_compression"],
                        seed=seed or DEFAULTS["workload.seed"], function=function, trace=trace)
    peak = peak_rate_rps(spec)
    if peak:
        ctx.requests[path] = peak * spec.duration_s
    if peak and spec.run_s * peak * spec.time_compression > MAX_SIM_REQUESTS:
        ctx.err(_join(path, "duration_s"), f"would send about {spec.run_s * peak * spec.time_compression:,.0f} "
                f"requests; at most {MAX_SIM_REQUESTS:,} in one trial, even simulated")
    if own:
        ctx.raise_if_any()
    return spec


def trial_run_s(exp: ExperimentSpec) -> float:
    """Wall-clock seconds of workload in one trial: its longest workload's run time."""
    return max((w.run_s for w in exp.workloads), default=0.0)


def trial_requests(exp: ExperimentSpec) -> float:
    """About how many arrivals one trial sends, over all workloads together (peak rate x duration, or a trace's
    invocations inside the window): what MAX_REQUESTS caps. A trace is parsed once per content."""
    from workers.workload import TraceError, expected_requests

    total = 0.0
    for w in exp.workloads:
        if w.pattern == "trace" and w.trace is None:
            continue
        try:
            total += expected_requests(w)
        except TraceError:
            pass  # a malformed trace was refused when the spec was parsed
    return total


def real_run_errors(exp: ExperimentSpec) -> list[FieldError]:
    """What makes a valid spec too big to RUN for real (a simulation may still cover it): a workload longer
    than MAX_RUN_S of wall time, or more than MAX_REQUESTS expected arrivals over all workloads."""
    errors = []
    for i, w in enumerate(exp.workloads):
        path = "workload" if len(exp.workloads) == 1 and w.function is None else f"workloads[{i}]"
        if w.run_s > MAX_RUN_S + 1e-9:
            errors.append(FieldError(f"{path}.duration_s", f"runs {w.run_s:.0f} s of wall time; at most "
                                                           f"{MAX_RUN_S:.0f} s for a real run (raise time_compression, "
                                                           "shorten it, or simulate it)"))
    total = trial_requests(exp)
    if total > MAX_REQUESTS:
        errors.append(FieldError("workload", f"would send about {total:,.0f} requests; at most {MAX_REQUESTS:,} in "
                                             "one real trial (shorten it or simulate it)"))
    return errors


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
    d = ctx.mapping(data if data is not None else {}, path,
                    ("mode", "max_batch_size", "max_queue_delay_ms", "shed"))
    mode = ctx.ruled(d, "variant.batching.mode", path)
    if mode == "none":
        for k in ("max_queue_delay_ms", "shed"):
            if k in d:
                ctx.err(_join(path, k), "only applies to mode fixed or adaptive")
        if d.get("max_batch_size") not in (None, 1):
            ctx.err(_join(path, "max_batch_size"), "must be 1 (or absent) when mode is none")
        return BatchingSpec()
    size = ctx.ruled(d, "variant.batching.max_batch_size", path)
    delay = ctx.ruled(d, "variant.batching.max_queue_delay_ms", path)
    shed = d.get("shed", DEFAULTS["variant.batching.shed"])
    if not isinstance(shed, bool):
        ctx.err(_join(path, "shed"), "must be true or false")
        shed = DEFAULTS["variant.batching.shed"]
    if shed and mode != "adaptive":
        ctx.err(_join(path, "shed"), "only applies to mode adaptive")
    return BatchingSpec(mode=mode, max_batch_size=size or DEFAULTS["variant.batching.max_batch_size"],
                        max_queue_delay_ms=delay or DEFAULTS["variant.batching.max_queue_delay_ms"], shed=shed)


def parse_keep_alive(data: Any, path: str, ctx: _Ctx) -> KeepAliveSpec:
    d = ctx.mapping(data if data is not None else {}, path,
                    ("policy", "ttl_s", "bin_s", "range_s", "head_percentile", "tail_percentile", "min_samples"))
    policy = ctx.ruled(d, "variant.keep_alive.policy", path)
    if policy == "fixed":
        for k in ("bin_s", "range_s", "head_percentile", "tail_percentile", "min_samples"):
            if k in d:
                ctx.err(_join(path, k), "only applies to policy histogram")
    ka = KeepAliveSpec(
        policy=policy,
        ttl_s=ctx.ruled(d, "variant.keep_alive.ttl_s", path),
        bin_s=ctx.ruled(d, "variant.keep_alive.bin_s", path),
        range_s=ctx.ruled(d, "variant.keep_alive.range_s", path),
        head_percentile=ctx.ruled(d, "variant.keep_alive.head_percentile", path),
        tail_percentile=ctx.ruled(d, "variant.keep_alive.tail_percentile", path),
        min_samples=ctx.ruled(d, "variant.keep_alive.min_samples", path),
    )
    if None in (ka.ttl_s, ka.bin_s, ka.range_s, ka.head_percentile, ka.tail_percentile, ka.min_samples):
        return KeepAliveSpec(policy=policy)
    if ka.range_s < ka.bin_s:
        ctx.err(_join(path, "range_s"), "must be at least bin_s")
    return ka


def parse_variant(data: Any, path: str, ctx: _Ctx | None = None) -> VariantSpec:
    own = ctx is None
    ctx = ctx or _Ctx()
    d = ctx.mapping(data, path, ("name", "sharing", "share", "runtime", "batching", "min_instances",
                                 "max_instances", "target_concurrency", "keep_alive", "platform_delay_ms", "repeats",
                                 "model_runtime"),
                    required=("name",))
    name = ctx.string(d, "name", path, pattern=NAME_RE,
                      rule="must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    sharing = ctx.ruled(d, "variant.sharing", path)
    runtime = ctx.ruled(d, "variant.runtime", path)
    if sharing == "spatial" and runtime == "thread":
        ctx.err(_join(path, "runtime"), "must be process for sharing spatial (each instance has its own process "
                                        "and share of the device)")
    lo = ctx.ruled(d, "variant.min_instances", path)
    hi = ctx.ruled(d, "variant.max_instances", path, default=max(DEFAULTS["variant.max_instances"], lo or 1))
    if lo is not None and hi is not None and lo > hi:
        ctx.err(_join(path, "min_instances"), f"must be at most max_instances ({hi})")
    share = ctx.ruled(d, "variant.share", path)
    if share is not None and sharing != "spatial":
        ctx.err(_join(path, "share"), "only applies to sharing spatial")
        share = None
    if sharing == "spatial" and hi and share is not None and share * hi > 1.0 + 1e-9:
        ctx.err(_join(path, "share"), f"{hi} instances x {share:g} is more than the whole device")
    delay = ctx.ruled(d, "variant.platform_delay_ms", path)
    spec = VariantSpec(
        name=name, sharing=sharing, share=share, runtime=runtime,
        batching=parse_batching(d.get("batching"), _join(path, "batching"), ctx),
        min_instances=lo if lo is not None else DEFAULTS["variant.min_instances"],
        max_instances=hi if hi is not None else DEFAULTS["variant.max_instances"],
        target_concurrency=ctx.ruled(d, "variant.target_concurrency", path) or DEFAULTS["variant.target_concurrency"],
        keep_alive=parse_keep_alive(d.get("keep_alive"), _join(path, "keep_alive"), ctx),
        platform_delay_ms=delay if delay is not None else DEFAULTS["variant.platform_delay_ms"],
        repeats=ctx.ruled(d, "variant.repeats", path) or DEFAULTS["variant.repeats"],
        model_runtime=(ctx.ruled(d, "variant.model_runtime", path)
                       if d.get("model_runtime") is not None else DEFAULTS["variant.model_runtime"]),
    )
    if own:
        ctx.raise_if_any()
    return spec


EXPERIMENT_KEYS = ("name", "description", "notes", "device", "accelerator", "slo", "functions", "workload",
                   "workloads", "variants", "sweep", "spec_version")


def parse_experiment(data: Any, *, known_models: Iterable[str] | None = None,
                     uploaded_models: Mapping[str, UploadedModel] | None = None) -> ExperimentSpec:
    """Validate a whole experiment spec (a dict from JSON or YAML). Raises SpecError listing every problem.

    `uploaded_models`: the ONNX models the experiment's owner may name (controlplane.registry.uploaded_models_for);
    without it only zoo and installed models can be named."""
    ctx = _Ctx()
    has_sweep = isinstance(data, Mapping) and data.get("sweep") is not None
    d = ctx.mapping(data, "", EXPERIMENT_KEYS, required=("name", "functions") + (() if has_sweep else ("variants",)))
    if not isinstance(data, Mapping):
        ctx.raise_if_any()
    name = ctx.string(d, "name", "", max_len=200)
    if "name" in d and not name.strip():
        ctx.err("name", "must not be empty")
    device = ctx.string(d, "device", "", default=DEFAULTS["device"], pattern=DEVICE_RE,
                        rule="must be auto, cpu, cuda or cuda:N")
    accelerator = d.get("accelerator")
    if accelerator is not None and (not isinstance(accelerator, str) or len(accelerator) > 100):
        ctx.err("accelerator", "must be the name of a price catalogue entry")
        accelerator = None
    slo = parse_slo(d.get("slo", {}), "slo", ctx)  # absent: every SLO field takes its default

    functions: list[FunctionSpec] = []
    raw_functions = d.get("functions")
    if not isinstance(raw_functions, list) or not 1 <= len(raw_functions) <= MAX_FUNCTIONS:
        if "functions" in d:
            ctx.err("functions", f"must be a list of 1-{MAX_FUNCTIONS} functions")
    else:
        for i, f in enumerate(raw_functions):
            functions.append(parse_function(f, _join("functions", i), ctx, known_models, uploaded_models))
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
            total = sum(ctx.requests.values())  # the cap is per trial, not per workload
            if len(workloads) > 1 and total > MAX_SIM_REQUESTS:
                ctx.err("workloads", f"would send about {total:,.0f} requests together; at most "
                                     f"{MAX_SIM_REQUESTS:,} in one trial, even simulated (shorten or slow some "
                                     "workloads)")
    elif "workload" in d:
        workloads.append(parse_workload(d["workload"], "workload", ctx, names))
    else:
        ctx.err("workload", "is required")

    variants: list[VariantSpec] = []
    errors_before_variants = len(ctx.errors)
    raw_v = d.get("variants", [])
    fewest = 0 if has_sweep else 1  # a sweep may make every variant
    if not isinstance(raw_v, list) or not fewest <= len(raw_v) <= MAX_VARIANTS:
        if "variants" in d:
            ctx.err("variants", f"must be a list of {fewest}-{MAX_VARIANTS} variants")
    else:
        for i, v in enumerate(raw_v):
            variants.append(parse_variant(v, _join("variants", i), ctx))
        _unique(ctx, [v.name for v in variants], "variants", "variant")
        _check_uploaded_models(ctx, functions, variants, dict(uploaded_models or {}))
    sweep = None
    if has_sweep and len(ctx.errors) == errors_before_variants:  # a sweep starts from valid variants
        sweep, generated = parse_sweep(d["sweep"], variants, ctx=ctx)
        _check_uploaded_models(ctx, functions, generated, dict(uploaded_models or {}),
                               paths=[f"sweep[{v.name}]" for v in generated])
        variants.extend(generated)
    ctx.raise_if_any()
    return ExperimentSpec(name=name.strip(), functions=tuple(functions), workloads=tuple(workloads),
                          variants=tuple(variants), slo=slo, device=device, accelerator=accelerator, sweep=sweep,
                          description=ctx.string(d, "description", "", max_len=5_000),
                          notes=ctx.string(d, "notes", "", max_len=20_000))


def _check_uploaded_models(ctx: _Ctx, functions: list[FunctionSpec], variants: list[VariantSpec],
                           uploaded: dict[str, UploadedModel], paths: list[str] | None = None) -> None:
    """An uploaded ONNX model runs only under onnxruntime, and one without a dynamic batch dimension at batch 1.
    `paths`: each variant's field path (default variants[i]; a sweep's variants are sweep[name])."""
    paths = paths if paths is not None else [_join("variants", i) for i in range(len(variants))]
    for f in functions:
        m = uploaded.get(f.model)
        if m is None or f.model_runtime != "onnxruntime":
            continue
        for v, path in zip(variants, paths, strict=True):
            if v.model_runtime == "torch":
                ctx.err(_join(path, "model_runtime"),
                        f"function {f.name!r} runs the uploaded ONNX model {f.model!r}, which only onnxruntime runs")
            if not m.dynamic_batch and v.batching.max_batch_size > 1:
                ctx.err(_join(_join(path, "batching"), "max_batch_size"),
                        f"function {f.name!r}: model {f.model!r} has no dynamic batch dimension, so it runs at "
                        "batch 1 (set batching mode none or max_batch_size 1)")


def effective_model_runtime(f: FunctionSpec, v: VariantSpec) -> str:
    """What runs this function's model in this variant: an uploaded ONNX model always onnxruntime; otherwise the
    variant's model_runtime when it sets one, else the function's."""
    if f.model_file and f.model_sha256:  # an upload resolved by the worker
        return "onnxruntime"
    return v.model_runtime or f.model_runtime


def _unique(ctx: _Ctx, names: list[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            ctx.err(_join(_join(path, i), "name"), f"another {what} is already named {n!r}")
        seen.add(n)


def _zoo_keys() -> tuple[str, ...]:
    from workers.zoo import model_keys

    return tuple(model_keys())


# ---- sweeps ------------------------------------------------------------------------------------------
# A sweep expands a grid of variant fields into ordinary variants, one per combination, each checked by
# the same rules (`parse_variant`, FIELD_RULES) as a variant written out by hand. The stored spec keeps the
# grid, not the expansion, so an exported spec says what the user asked for.
SWEEP_KEYS = ("base", "prefix", "grid")
# Grid axes: every variant field with a FIELD_RULES entry, by its path inside a variant. A variant's name is
# made by the sweep, and its repeats are how often it runs, not a configuration: neither is an axis.
SWEEP_FIELDS: tuple[str, ...] = tuple(k.removeprefix("variant.") for k in FIELD_RULES
                                      if k.startswith("variant.") and k != "variant.repeats")
# Short labels for the generated names ("b4-ttl2-i2"); other numeric axes use their field name, and axes
# with named choices (sharing, batching.mode, ...) the chosen value alone.
SWEEP_LABELS = {"batching.max_batch_size": "b", "batching.max_queue_delay_ms": "d", "keep_alive.ttl_s": "ttl",
                "max_instances": "i", "min_instances": "min", "target_concurrency": "c", "share": "s",
                "platform_delay_ms": "pd", "batching.shed": "shed"}
# A grid over one of these on a base whose batching mode is none (or keep-alive policy fixed) switches that
# base to the mode the field needs, instead of refusing every combination.
_NEEDS_BATCHING = {"batching.max_batch_size": "fixed", "batching.max_queue_delay_ms": "fixed",
                   "batching.shed": "adaptive"}
_NEEDS_HISTOGRAM = ("keep_alive.bin_s", "keep_alive.range_s", "keep_alive.head_percentile",
                    "keep_alive.tail_percentile", "keep_alive.min_samples")
_SWEEP_ERRORS_SHOWN = 10  # combinations reported when many fail the same way


@dataclass(frozen=True)
class SweepSpec:
    """A grid of variant fields. `grid`: (field path, values) in the alphabetical order of the paths; `variant_names`: the
    variants it made, in expansion order (the last axis varies fastest)."""

    grid: tuple[tuple[str, tuple], ...]
    base: str | None = None  # an explicit variant to start from; None: the table defaults
    prefix: str = ""
    variant_names: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return math.prod(len(values) for _, values in self.grid)


def sweep_variant_name(prefix: str, assignment: Iterable[tuple[str, Any]]) -> str:
    """"b4-ttl2-i2" for {batching.max_batch_size: 4, keep_alive.ttl_s: 2, max_instances: 2}."""
    parts = []
    for path, value in assignment:
        rule = FIELD_RULES[f"variant.{path}"]
        if rule.choices:
            parts.append(str(value))
        elif isinstance(value, bool):
            parts.append(f"{SWEEP_LABELS.get(path, path)}{int(value)}")
        else:
            parts.append(f"{SWEEP_LABELS.get(path, path.rsplit('.', 1)[-1])}{_fmt(value)}")
    body = "-".join(parts)
    return f"{prefix}-{body}" if prefix else body


def _sweep_value_error(path: str, value: Any) -> str | None:
    """Why one grid value breaks its field's rule, or None."""
    rule = FIELD_RULES[f"variant.{path}"]
    if isinstance(rule.default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    ctx = _Ctx()
    key = path.rsplit(".", 1)[-1]
    if rule.choices:
        ctx.choice({key: value}, key, "", rule.choices)
    else:
        ctx.number({key: value}, key, "", low=rule.low, high=rule.high, low_open=rule.low_open,
                   integer=rule.integer)
    return ctx.errors[0].message if ctx.errors else None


def _set_path(d: dict, path: str, value: Any) -> None:
    head, _, rest = path.partition(".")
    if rest:
        d[head] = dict(d.get(head) or {})
        _set_path(d[head], rest, value)
    else:
        d[head] = value


def parse_sweep(data: Any, variants: Iterable[VariantSpec], *, ctx: _Ctx | None = None, path: str = "sweep"
                ) -> tuple[SweepSpec | None, list[VariantSpec]]:
    """Validate a sweep and expand it: (the sweep, its variants). `variants` are the explicit ones (the base
    is looked up among them, and generated names must not clash with theirs). The number of variants is
    computed from the grid before anything is expanded, so an oversized grid costs nothing."""
    own = ctx is None
    ctx = ctx or _Ctx()
    explicit = list(variants)
    d = ctx.mapping(data, path, SWEEP_KEYS, required=("grid",))
    base_name = d.get("base")
    base: VariantSpec | None = None
    if base_name is not None:
        base = next((v for v in explicit if v.name == base_name), None)
        if base is None:
            ctx.err(_join(path, "base"), f"no variant named {base_name!r} (known: "
                    f"{', '.join(v.name for v in explicit) or 'none'}); omit base to start from the defaults")
    prefix = ctx.string(d, "prefix", path, pattern=re.compile(r"^$|^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$"),
                        rule="must be 0-40 letters, digits, '.', '_' or '-', starting with a letter or digit")
    grid_path = _join(path, "grid")
    raw_grid = d.get("grid")
    grid: list[tuple[str, tuple]] = []
    if not isinstance(raw_grid, Mapping) or not 1 <= len(raw_grid) <= MAX_SWEEP_AXES:
        if "grid" in d:
            ctx.err(grid_path, f"must be an object of 1-{MAX_SWEEP_AXES} fields, each with a list of values, "
                    'e.g. {"batching.max_batch_size": [1, 4, 8]}')
        raw_grid = {}
    for field_path, values in raw_grid.items():
        p = _join(grid_path, field_path)
        if field_path not in SWEEP_FIELDS:
            ctx.err(p, f"not a variant field a sweep can vary (fields: {', '.join(SWEEP_FIELDS)})")
            continue
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_SWEEP_VALUES:
            ctx.err(p, f"must be a list of 1-{MAX_SWEEP_VALUES} values")
            continue
        ok = True
        for i, value in enumerate(values):
            problem = _sweep_value_error(field_path, value)
            if problem:
                ctx.err(_join(p, i), f"{value!r} is not allowed: {problem}")
                ok = False
        rule = FIELD_RULES[f"variant.{field_path}"]
        if ok and not rule.choices and not isinstance(rule.default, bool):
            values = [int(v) if rule.integer else float(v) for v in values]
        if ok and len(set(values)) != len(values):
            ctx.err(p, "lists a value twice")
            ok = False
        if ok:
            grid.append((field_path, tuple(values)))
    # Axes in the alphabetical order of their field paths, whatever order the document gave: a stored JSON object
    # does not keep its keys' order on every database (PostgreSQL's jsonb does not), and the generated names
    # and the expansion must be the same however the spec travelled.
    grid.sort(key=lambda axis: axis[0])
    size = math.prod(len(v) for _, v in grid) if grid else 0
    total = size + len(explicit)
    if grid and total > MAX_SWEEP_VARIANTS:
        counts = " x ".join(str(len(v)) for _, v in grid)
        more = f" plus {len(explicit)} listed in variants" if explicit else ""
        ctx.err(grid_path, f"makes {size:,} variants ({counts}){more}; at most {MAX_SWEEP_VARIANTS} in one "
                "experiment")
    if len(ctx.errors) or not grid:
        if own:
            ctx.raise_if_any()
        return None, []

    base_dict = variant_to_dict(base) if base is not None else {}
    axes = [p for p, _ in grid]
    batching = base_dict.setdefault("batching", {"mode": DEFAULTS["variant.batching.mode"]})
    if batching.get("mode", "none") == "none" and "batching.mode" not in axes:
        needed = [_NEEDS_BATCHING[a] for a in axes if a in _NEEDS_BATCHING]
        if needed:
            batching["mode"] = "adaptive" if "adaptive" in needed else "fixed"
    keep_alive = base_dict.setdefault("keep_alive", {"policy": DEFAULTS["variant.keep_alive.policy"]})
    if keep_alive.get("policy") == "fixed" and "keep_alive.policy" not in axes and set(axes) & set(_NEEDS_HISTOGRAM):
        keep_alive["policy"] = "histogram"

    taken = {v.name for v in explicit}
    generated: list[VariantSpec] = []
    failures: list[FieldError] = []
    for combo in itertools.product(*(values for _, values in grid)):
        assignment = list(zip(axes, combo, strict=True))
        name = sweep_variant_name(prefix, assignment)
        vctx = _Ctx()
        if not NAME_RE.match(name):
            vctx.err(f"{path}[{name}]", "the generated name is longer than 64 characters; use a shorter prefix "
                                        "or fewer axes")
        elif name in taken:
            vctx.err(f"{path}[{name}]", "a variant listed in variants already has this name; rename it or set "
                                        "a prefix")
        v = dict(base_dict, name=name)
        for field_path, value in assignment:
            _set_path(v, field_path, value)
        if not vctx.errors:
            generated.append(parse_variant(v, f"{path}[{name}]", vctx))
        failures.extend(vctx.errors)
    for err in failures[:_SWEEP_ERRORS_SHOWN]:
        ctx.errors.append(err)
    if len(failures) > _SWEEP_ERRORS_SHOWN:
        ctx.err(path, f"and {len(failures) - _SWEEP_ERRORS_SHOWN} more problems in other combinations")
    if failures:
        if own:
            ctx.raise_if_any()
        return None, []
    sweep = SweepSpec(grid=tuple(grid), base=base.name if base else None, prefix=prefix,
                      variant_names=tuple(v.name for v in generated))
    return sweep, generated


def sweep_to_dict(sweep: SweepSpec) -> dict:
    out: dict[str, Any] = {}
    if sweep.base is not None:
        out["base"] = sweep.base
    if sweep.prefix:
        out["prefix"] = sweep.prefix
    out["grid"] = {path: list(values) for path, values in sweep.grid}
    return out


# ---- what a run costs in time ------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPlan:
    """What pressing Run queues, shown before it is pressed: variants, trials (variants x repeats) and the
    workload's wall-clock time they add up to. Cold starts, the drain and storing come on top of it."""

    variants: int
    trials: int
    trial_run_s: float  # wall-clock seconds of workload in one trial
    repeats: int | None  # the run's repeats override, or None: each variant's own

    @property
    def total_run_s(self) -> float:
        """Workload time of every trial one after the other: one device does it in this long."""
        return self.trials * self.trial_run_s

    def run_s_on(self, devices: int) -> float:
        """Workload time with `devices` workers taking one trial each at a time (whole rounds of trials)."""
        devices = max(1, devices)
        return math.ceil(self.trials / devices) * self.trial_run_s

    def to_dict(self, devices: int | None = None) -> dict:
        out = {"variants": self.variants, "trials": self.trials, "trial_run_s": self.trial_run_s,
               "total_run_s": self.total_run_s, "repeats": self.repeats}
        if devices:
            out.update(devices=devices, run_s_on_devices=self.run_s_on(devices))
        return out


def run_plan(spec: ExperimentSpec, *, repeats: int | None = None) -> RunPlan:
    trials = sum(repeats if repeats is not None else v.repeats for v in spec.variants)
    return RunPlan(variants=len(spec.variants), trials=trials, trial_run_s=trial_run_s(spec), repeats=repeats)


def duration_text(seconds: float) -> str:
    """"45 s", "12 min", "3.5 h": how the pages say a run time."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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
    out.update(runtime=v.runtime, batching=batching, min_instances=v.min_instances, max_instances=v.max_instances,
               target_concurrency=v.target_concurrency, keep_alive=keep_alive, platform_delay_ms=v.platform_delay_ms,
               repeats=v.repeats)
    if v.model_runtime is not None:
        out["model_runtime"] = v.model_runtime
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
        if f.model_runtime != DEFAULTS["function.model_runtime"]:
            fd["model_runtime"] = f.model_runtime
        out["functions"].append(fd)
    if len(e.workloads) == 1 and e.workloads[0].function is None:
        out["workload"] = workload_to_dict(e.workloads[0])
    else:
        out["workloads"] = [workload_to_dict(w) for w in e.workloads]
    generated = set(e.sweep.variant_names) if e.sweep else set()
    out["variants"] = [variant_to_dict(v) for v in e.variants if v.name not in generated]
    if e.sweep:
        out["sweep"] = sweep_to_dict(e.sweep)
    return out
