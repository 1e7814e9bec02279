"""The experiment editor's forms.

The forms only give the page its fields, types and layout. The rules are `workers.spec`'s: the editor
turns what the user typed into a spec dict, `parse_experiment` validates it, and each `FieldError`
path ("variants[1].batching.max_batch_size") is mapped back to the field it belongs to, so the browser,
the API and spec files report the same problem in the same words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django import forms
from django.forms import formset_factory

from workers import spec as S

from .models import PriceEntry

PERCENTILE_CHOICES = [(f"{p:g}", f"p{p:g}") for p in S.PERCENTILES]
PATTERN_LABELS = {
    "constant": "constant", "poisson": "poisson", "gamma": "gamma (bursty)", "steps": "steps",
    "diurnal": "diurnal (daily sine)", "burst": "on/off bursts", "trace": "trace file",
}
SHARING_LABELS = {"exclusive": "exclusive", "time_slice": "time-slice", "spatial": "spatial"}
BATCHING_LABELS = {"none": "none", "fixed": "fixed (size + delay)", "adaptive": "adaptive (deadline)"}
KEEP_ALIVE_LABELS = {"fixed": "fixed TTL", "histogram": "histogram (ATC'20)"}
RUNTIME_LABELS = {"process": "process per instance", "thread": "thread, no isolation"}
D = S.DEFAULTS  # every initial value below comes from the spec's one table of defaults
TRACE_FORMAT_LABELS = {"azure2019": "Azure Functions 2019 (per-minute counts)",
                       "timestamps": "Timestamps (one arrival time in seconds per line)"}
DEVICE_CHOICES = [("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda")] + [
    (f"cuda:{i}", f"cuda:{i}") for i in range(8)]


def _num(value: Any) -> Any:
    """Show 60.0 as 60 in an input: the value is the same and easier to read."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _delay_choice_label(p: S.PlatformDelayPreset) -> str:
    if not p.delay_ms:
        return f"{p.label} (0 s)"
    return f"{p.label}: {p.delay_ms / 1000:g} s (as of {p.as_of})"


# The modelled platform delay presets: the select's value is the delay in ms the script fills in; "" is custom.
PLATFORM_DELAY_CHOICES = [(f"{_num(p.delay_ms)}", _delay_choice_label(p)) for p in S.PLATFORM_DELAY_PRESETS] + [
    ("", "custom")]


def number(label: str, *, integer: bool = False, help_text: str = "", placeholder: str = "") -> forms.Field:
    # Type checks only ("Enter a number."); bounds and requiredness are workers.spec's to judge.
    attrs = {"step": "1" if integer else "any", "inputmode": "numeric" if integer else "decimal"}
    if placeholder:
        attrs["placeholder"] = placeholder
    cls = forms.IntegerField if integer else forms.FloatField
    return cls(label=label, required=False, help_text=help_text, widget=forms.NumberInput(attrs=attrs))


@dataclass(frozen=True)
class FieldView:
    """One field as the template lays it out: shown only while `when_field` has one of `when_values`."""

    field: forms.BoundField
    when_field: str = ""
    when_values: str = ""
    wide: bool = False


class LayoutMixin:
    """Groups of fields plus "show when" rules, so one template renders every section the same way."""

    GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = ()
    SHOW_WHEN: dict[str, tuple[str, str]] = {}
    WIDE: tuple[str, ...] = ()

    def grouped(self) -> list[tuple[str, str, str, list[FieldView]]]:
        out = []
        for title, names in self.GROUPS:
            when_field, when_values = self.SHOW_WHEN.get(f"group:{title}", ("", ""))
            views = []
            for name in names:
                wf, wv = self.SHOW_WHEN.get(name, ("", ""))
                views.append(FieldView(self[name], wf, wv, name in self.WIDE))
            out.append((title, when_field, when_values, views))
        return out


# ---- basics and SLO ----------------------------------------------------------------------------------
class BasicsForm(LayoutMixin, forms.Form):
    name = forms.CharField(label="Name", required=False, max_length=200,
                           widget=forms.TextInput(attrs={"placeholder": "e.g. resnet p99 under bursts"}))
    description = forms.CharField(label="Description", required=False,
                                  widget=forms.Textarea(attrs={"rows": 2}),
                                  help_text="What question this experiment answers.")
    device = forms.ChoiceField(label="Device", choices=DEVICE_CHOICES, initial=D["device"],
                               help_text="Worker pool: auto takes a GPU when there is one.")
    accelerator = forms.ChoiceField(label="Price entry", required=False,
                                    help_text="Prices used to cost each trial (serverless per second, "
                                              "provisioned per hour).")
    notes = forms.CharField(label="Notes", required=False, widget=forms.Textarea(attrs={"rows": 2}))

    GROUPS = (("", ("name", "device", "accelerator", "description", "notes")),)
    WIDE = ("description", "notes")

    def __init__(self, *args: Any, price_entries: list | None = None, worker_devices: dict | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Without an entry the worker prices trials with the "cpu" entry (workers.tasks.DEFAULT_PRICE).
        choices = [("", "none: trials are priced with the cpu entry")]
        for p in price_entries or []:
            serverless_h = p.serverless_usd_per_s * 3600
            choices.append((p.name, f"{p.name}: ${p.on_demand_usd_per_h:.2f}/h on demand, "
                                    f"${serverless_h:.2f}/h serverless (as of {p.as_of:%Y-%m-%d})"))
        current = self.data.get("accelerator") if self.is_bound else self.initial.get("accelerator")
        if current and current not in {c[0] for c in choices}:
            choices.append((current, f"{current} (not in the price catalogue)"))
        self.fields["accelerator"].choices = choices
        current_device = self.data.get("device") if self.is_bound else self.initial.get("device")
        self.fields["device"].choices = device_choices(worker_devices, current_device)
        if worker_devices is not None:
            self.fields["device"].help_text = ("Worker pool: devices the running workers serve come first; auto "
                                               "takes a GPU when there is one.")


NO_WORKER = "no worker has this device"


def device_choices(worker_devices: dict | None, current: str | None = None) -> list:
    """The device select: with worker reports (`selectors.worker_devices`), the devices some worker serves
    first ("auto (cpu on 1 worker)"), then the others marked "no worker has this device", still selectable
    (a worker may start later). Without reports (Redis unreadable): the plain list. A device a spec file
    named (cuda:12) is kept rather than silently changed."""
    names = [c[0] for c in DEVICE_CHOICES]
    if current and current not in names:
        names.append(current)
    if worker_devices is None:
        return [(n, n) for n in names]
    served = worker_devices.get("devices") or {}
    resolves = worker_devices.get("resolves") or {}
    names += sorted(d for d in served if d not in names and S.DEVICE_RE.match(d))

    def label(name: str) -> str:
        workers = len(served[name])
        means = f"{' / '.join(resolves[name])} " if resolves.get(name) else ""
        return f"{name} ({means}on {workers} worker{'s' if workers != 1 else ''})"

    reported = [(n, label(n)) for n in names if n in served]
    others = [(n, f"{n} ({NO_WORKER})") for n in names if n not in served]
    return reported + others


def default_price_entry(device: str, worker_devices: dict | None, price_names: list[str]) -> str:
    """The price entry a new experiment starts with: "cpu" when the device is cpu, or auto and no worker
    reports a GPU (auto runs on the CPU there); otherwise none (the accelerator's entry is the user's call)."""
    if "cpu" not in price_names:
        return ""
    if device == "cpu":
        return "cpu"
    if device == "auto":
        resolves = ((worker_devices or {}).get("resolves") or {}).get("auto") or []
        if not any(str(target).startswith("cuda") for target in resolves):
            return "cpu"
    return ""


class SLOForm(LayoutMixin, forms.Form):
    percentile = forms.ChoiceField(label="Percentile", choices=PERCENTILE_CHOICES, initial=f"{D['slo.percentile']:g}")
    latency_ms = number("Latency target (ms)", help_text="The chosen percentile must be at or under this.")
    max_violation_pct = number("Max late requests (%)", help_text="Share of requests allowed over the target.")
    min_throughput_rps = number("Min throughput (req/s)", help_text="Optional: goodput the run must reach.",
                                placeholder="none")

    GROUPS = (("", ("percentile", "latency_ms", "max_violation_pct", "min_throughput_rps")),)


# ---- functions ---------------------------------------------------------------------------------------
def model_shapes() -> dict[str, list[int] | None]:
    from workers.zoo import ModelError, default_input_shape, model_keys

    out: dict[str, list[int] | None] = {}
    for key in model_keys():
        try:
            out[key] = list(default_input_shape(key))
        except ModelError:
            out[key] = None  # a user model with no default: the function must give a shape
    return out


def shape_text(shape: Any) -> str:
    return "×".join(str(x) for x in shape) if shape else ""


class FunctionForm(LayoutMixin, forms.Form):
    name = forms.CharField(label="Name", required=False, max_length=64,
                           widget=forms.TextInput(attrs={"placeholder": "e.g. classifier"}))
    # A free value shown as a select: an unknown key gets workers.spec's message, not Django's.
    model = forms.CharField(label="Model", required=False, widget=forms.Select)
    input_shape = forms.CharField(label="Input shape", required=False, max_length=100,
                                  help_text="Per request, without the batch dimension. Blank: the model's default.")
    weight = number("Weight", help_text="Share of the workload this function gets.")
    # Model options come from spec files or the API; the editor shows them and keeps them as they are.
    options = forms.JSONField(required=False, widget=forms.HiddenInput)

    model_runtime = forms.ChoiceField(label="Model runtime", required=False, initial=D["function.model_runtime"],
                                      choices=[(r, r) for r in S.MODEL_RUNTIMES],
                                      help_text="torch, or ONNX Runtime (a zoo model is exported to ONNX once; your "
                                                "uploaded ONNX models always run under ONNX Runtime).")

    GROUPS = (("", ("name", "model", "input_shape", "weight", "model_runtime")),)

    def __init__(self, *args: Any, shapes: dict | None = None, uploads: dict | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        shapes = shapes if shapes is not None else model_shapes()
        uploads = uploads or {}  # name -> what the list says of it (your uploaded ONNX models)
        choices = [(k, f"{k} ({uploads[k]})" if k in uploads else f"{k} (input {shape_text(s)})" if s else k)
                   for k, s in shapes.items()]
        current = self.data.get(self.add_prefix("model")) if self.is_bound else self.initial.get("model")
        if current and current not in shapes:
            choices.append((current, f"{current} (not installed)"))
        self.fields["model"].widget.choices = choices
        self.fields["model"].widget.attrs["data-model-select"] = "1"
        default = shapes.get(current or next(iter(shapes), ""), None)
        self.fields["input_shape"].widget.attrs["placeholder"] = (
            f"default {shape_text(default)}" if default else "e.g. 3, 32, 32")

    def clean_input_shape(self) -> list[int] | None:
        text = (self.cleaned_data.get("input_shape") or "").strip()
        if not text:
            return None
        parts = [p for p in re.split(r"[\s,x×*]+", text) if p]
        try:
            return [int(p) for p in parts]
        except ValueError:
            raise forms.ValidationError("must be whole numbers separated by commas, e.g. 3, 32, 32") from None


# ---- workload ----------------------------------------------------------------------------------------
class WorkloadForm(LayoutMixin, forms.Form):
    pattern = forms.ChoiceField(label="Pattern", choices=[(p, PATTERN_LABELS[p]) for p in S.PATTERNS],
                                initial="poisson", help_text="Constant: evenly spaced. Poisson: random at a mean "
                                                             "rate.")
    rate_rps = number("Rate (req/s)")
    cv = number("Coefficient of variation", help_text="1 is Poisson; above 1 is burstier. Traces: optional, "
                                                       "within each minute.")
    mean_rate_rps = number("Mean rate (req/s)")
    peak_to_trough = number("Peak-to-trough ratio", help_text="Peak rate ÷ lowest rate (1 = flat).",
                            placeholder=f"{_num(D['workload.peak_to_trough'])}")
    period_s = number("Period (s)", help_text="86400 is one day; compress time to run it quickly.",
                      placeholder=f"{_num(D['workload.period_s'])}")
    base_rate_rps = number("Base rate (req/s)", help_text="Between bursts (0 allowed).")
    burst_rate_rps = number("Burst rate (req/s)")
    mean_on_s = number("Mean burst length (s)")
    mean_off_s = number("Mean gap between bursts (s)")
    trace_file = forms.FileField(label="Trace file", required=False,
                                 help_text=f"Text file, at most {S.MAX_TRACE_BYTES // (1024 * 1024)} MiB.")
    trace_format = forms.ChoiceField(label="Trace format", required=False, initial=D["workload.trace_format"],
                                     choices=[(f, TRACE_FORMAT_LABELS[f]) for f in S.TRACE_FORMATS])
    function_hash = forms.CharField(label="Function hash", required=False, max_length=200,
                                    help_text="Azure 2019: use only this HashFunction's rows. Blank: all rows.")
    # An uploaded trace survives a re-render with errors here, so the user need not upload it again.
    trace_content = forms.CharField(required=False, strip=False, widget=forms.HiddenInput)
    trace_filename = forms.CharField(required=False, widget=forms.HiddenInput)
    duration_s = number("Duration (s)", help_text="Workload time. A trial runs duration ÷ compression.")
    time_compression = number("Time compression (×)", help_text="10 plays 10 s of the pattern per second.")
    seed = number("Seed", integer=True, help_text="Same seed, same arrivals.")
    replace_workloads = forms.BooleanField(label="Replace the per-function workloads with this one workload",
                                           required=False)

    GROUPS = (
        ("Shape", ("pattern", "rate_rps", "cv", "mean_rate_rps", "peak_to_trough", "period_s", "base_rate_rps",
                   "burst_rate_rps", "mean_on_s", "mean_off_s")),
        ("Trace", ("trace_file", "trace_format", "function_hash")),
        ("Timing", ("duration_s", "time_compression", "seed")),
    )
    SHOW_WHEN = {
        "rate_rps": ("pattern", "constant poisson gamma"),
        "cv": ("pattern", "gamma trace"),
        "mean_rate_rps": ("pattern", "diurnal"),
        "peak_to_trough": ("pattern", "diurnal"),
        "period_s": ("pattern", "diurnal"),
        "base_rate_rps": ("pattern", "burst"),
        "burst_rate_rps": ("pattern", "burst"),
        "mean_on_s": ("pattern", "burst"),
        "mean_off_s": ("pattern", "burst"),
        "group:Trace": ("pattern", "trace"),
    }
    PARAMS = {p: [k for k in keys if k not in ("trace_format", "trace_content", "trace_path", "trace_filename",
                                                  "function_hash")]
              for p, keys in S.PATTERN_PARAMS.items() if p != "steps"}
    PARAMS["trace"] = ["cv"]  # optional for traces: gamma arrivals within each minute instead of Poisson


class StepForm(forms.Form):
    start_s = number("Start (s)")
    rate_rps = number("Rate (req/s)")


class VariantForm(LayoutMixin, forms.Form):
    name = forms.CharField(label="Name", required=False, max_length=64,
                           widget=forms.TextInput(attrs={"data-variant-name": "1"}))
    sharing = forms.ChoiceField(label="Sharing", choices=[(m, SHARING_LABELS[m]) for m in S.SHARING_MODES],
                                initial=D["variant.sharing"],
                                help_text="Exclusive: one instance owns the device. Time-slice: instances share "
                                          "it. Spatial: a fixed share each (MPS/MIG, CPU cores).")
    share = number("Device share per instance", help_text="0-1; blank: 1 ÷ max instances.", placeholder="auto")
    min_instances = number("Min instances", integer=True, help_text="0 scales to zero (cold starts).")
    max_instances = number("Max instances", integer=True)
    target_concurrency = number("Target concurrency", help_text="In-flight requests per instance before "
                                                                 "scaling out.")
    repeats = number("Repeats", integer=True, help_text="Trials of this variant per run.")
    # Not required: a row posted without it (an older page) gets the spec's default runtime.
    runtime = forms.ChoiceField(label="Runtime", choices=[(r, RUNTIME_LABELS[r]) for r in S.RUNTIMES],
                                initial=D["variant.runtime"], required=False,
                                help_text="Process: each instance is its own worker process, as on serverless "
                                          "platforms. Thread: instances share one process, with no isolation. "
                                          "Spatial sharing needs processes.")
    model_runtime = forms.ChoiceField(
        label="Model runtime", required=False,
        choices=[("", "each function's own")] + [(r, r) for r in S.MODEL_RUNTIMES],
        help_text="Run the zoo models of this variant under torch or ONNX Runtime, to compare the two.")
    platform_delay_preset = forms.ChoiceField(
        label="Platform delay preset", required=False, choices=PLATFORM_DELAY_CHOICES,
        widget=forms.Select(attrs={"data-delay-preset": "1"}),
        help_text="Dated public figures (docs/method.md); picking one fills in the delay.")
    platform_delay_ms = number("Modelled platform delay (ms)",
                               help_text="Modelled, not measured: added to each real cold start for provisioning "
                                         "and image pull, which do not happen here. 0: only what really ran.")
    batching_mode = forms.ChoiceField(label="Batching", choices=[(m, BATCHING_LABELS[m]) for m in S.BATCHING_MODES],
                                      initial=D["variant.batching.mode"],
                                      help_text="Adaptive takes the largest batch that still meets the oldest "
                                                "request's deadline.")
    max_batch_size = number("Max batch size", integer=True)
    max_queue_delay_ms = number("Max queue delay (ms)", help_text="Longest a request waits for a batch to fill.")
    shed = forms.BooleanField(label="Shed requests that would miss the SLO", required=False)
    keep_alive_policy = forms.ChoiceField(label="Keep-alive",
                                          choices=[(p, KEEP_ALIVE_LABELS[p]) for p in S.KEEP_ALIVE_POLICIES],
                                          initial=D["variant.keep_alive.policy"],
                                          help_text="Histogram learns each function's idle times and pre-warms.")
    ttl_s = number("Keep-alive TTL (s)", help_text="Idle time before an instance is evicted (histogram: "
                                                   "fallback).")
    bin_s = number("Histogram bin (s)")
    range_s = number("Histogram range (s)")
    head_percentile = number("Pre-warm percentile", help_text="Idle-time percentile to pre-warm at.")
    tail_percentile = number("Keep-alive percentile", help_text="Idle-time percentile to keep alive to.")
    min_samples = number("Min samples", integer=True, help_text="Idle times seen before the histogram is "
                                                                "trusted.")

    GROUPS = (
        ("", ("name",)),
        ("Placement", ("sharing", "share", "runtime", "model_runtime", "min_instances", "max_instances",
                       "target_concurrency", "repeats")),
        ("Batching", ("batching_mode", "max_batch_size", "max_queue_delay_ms", "shed")),
        ("Keep-alive and cold starts", ("keep_alive_policy", "ttl_s", "bin_s", "range_s", "head_percentile",
                                        "tail_percentile", "min_samples", "platform_delay_preset", "platform_delay_ms")),
    )
    SHOW_WHEN = {
        "share": ("sharing", "spatial"),
        "max_batch_size": ("batching_mode", "fixed adaptive"),
        "max_queue_delay_ms": ("batching_mode", "fixed adaptive"),
        "shed": ("batching_mode", "adaptive"),
        "bin_s": ("keep_alive_policy", "histogram"),
        "range_s": ("keep_alive_policy", "histogram"),
        "head_percentile": ("keep_alive_policy", "histogram"),
        "tail_percentile": ("keep_alive_policy", "histogram"),
        "min_samples": ("keep_alive_policy", "histogram"),
    }
    # spec path under a variant -> form field
    SPEC_FIELDS = {
        "batching": "batching_mode", "batching.mode": "batching_mode",
        "batching.max_batch_size": "max_batch_size", "batching.max_queue_delay_ms": "max_queue_delay_ms",
        "batching.shed": "shed", "keep_alive": "keep_alive_policy", "keep_alive.policy": "keep_alive_policy",
        "keep_alive.ttl_s": "ttl_s", "keep_alive.bin_s": "bin_s", "keep_alive.range_s": "range_s",
        "keep_alive.head_percentile": "head_percentile", "keep_alive.tail_percentile": "tail_percentile",
        "keep_alive.min_samples": "min_samples",
    }
    # form field -> its entry in workers.spec.FIELD_RULES (defaults and bounds)
    RULES = {
        "sharing": "variant.sharing", "share": "variant.share", "min_instances": "variant.min_instances",
        "max_instances": "variant.max_instances", "target_concurrency": "variant.target_concurrency",
        "repeats": "variant.repeats", "runtime": "variant.runtime", "platform_delay_ms": "variant.platform_delay_ms",
        "model_runtime": "variant.model_runtime",
        **{field: f"variant.{path}" for path, field in SPEC_FIELDS.items() if "." in path},
    }


def delay_preset_value(delay_ms: Any) -> str:
    """The preset select's value for a delay: the preset's milliseconds, or "" (custom)."""
    preset = S.platform_delay_preset(delay_ms) if isinstance(delay_ms, (int, float)) else None
    return f"{_num(preset.delay_ms)}" if preset else ""


# The values a new row starts with (also the editor's defaults for a new experiment): the spec's defaults.
VARIANT_DEFAULTS = {field: _num(D[rule]) for field, rule in VariantForm.RULES.items()}
VARIANT_DEFAULTS["platform_delay_preset"] = delay_preset_value(D["variant.platform_delay_ms"])


class RowFormSet(forms.BaseFormSet):
    """A formset whose blank row (the template the "Add" button copies) starts from sensible values."""

    empty_initial: dict = {}

    def get_form_kwargs(self, index: int | None) -> dict:
        kwargs = super().get_form_kwargs(index)
        if index is None:
            kwargs["initial"] = dict(self.empty_initial)
        return kwargs


def _formset(form: type[forms.Form], max_rows: int, empty_initial: dict) -> type[forms.BaseFormSet]:
    # Rows beyond what the spec allows are refused by workers.spec with its own message; absolute_max only
    # stops a forged TOTAL_FORMS from building thousands of forms.
    base = type(f"{form.__name__}Rows", (RowFormSet,), {"empty_initial": empty_initial})
    return formset_factory(form, formset=base, extra=0, max_num=max_rows + 8, absolute_max=max_rows + 8)


class SweepForm(LayoutMixin, forms.Form):
    """A sweep: a grid of variant fields, one line per field ("batching.max_batch_size = 1, 4, 8")."""

    grid = forms.CharField(
        label="Grid", required=False, widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false",
                                                                    "placeholder": "batching.max_batch_size = 1, 4, 8\n"
                                                                                   "keep_alive.ttl_s = 0.5, 2, 10\n"
                                                                                   "max_instances = 1, 2, 4"}),
        help_text=f"One variant field per line with its values; every combination becomes a variant (at most "
                  f"{S.MAX_SWEEP_VARIANTS}). Fields: {', '.join(S.SWEEP_FIELDS)}.")
    base = forms.CharField(label="Start from variant", required=False, max_length=64,
                           help_text="A variant above whose other settings each combination takes; empty: the "
                                     "defaults.")
    prefix = forms.CharField(label="Name prefix", required=False, max_length=40,
                             help_text='Generated names read like "b4-ttl2-i2"; a prefix goes in front.')

    GROUPS = (("", ("grid", "base", "prefix")),)
    WIDE = ("grid",)

    def clean_grid(self) -> dict | None:
        text = self.cleaned_data.get("grid") or ""
        grid: dict[str, list] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path, sep, values = line.partition("=")
            if not sep or not path.strip() or not values.strip():
                raise forms.ValidationError(f"line {number}: write it as field = value, value, ...")
            grid[path.strip()] = [_grid_value(v.strip()) for v in values.split(",") if v.strip()]
        return grid or None

    @staticmethod
    def initial_from(sweep: dict | None) -> dict:
        if not sweep:
            return {}
        lines = [f"{path} = {', '.join(_grid_text(v) for v in values)}"
                 for path, values in (sweep.get("grid") or {}).items()]
        return {"grid": "\n".join(lines), "base": sweep.get("base") or "", "prefix": sweep.get("prefix") or ""}


def _grid_value(text: str) -> Any:
    """A grid value as typed: true/false, a whole number, a number, else the word itself (sharing modes, ...)."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _grid_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


FunctionFormSet = _formset(FunctionForm, S.MAX_FUNCTIONS, {"model": "mlp-small", "weight": _num(D["function.weight"])})
StepFormSet = _formset(StepForm, S.MAX_STEPS, {})
VariantFormSet = _formset(VariantForm, S.MAX_VARIANTS, VARIANT_DEFAULTS)
# A new experiment: the spec's defaults (an empty slo, a variant with only a name), plus a first function and
# workload, whose model, rate and duration have no default and need a value to start from.
NEW_EXPERIMENT: dict = {
    "name": "", "device": D["device"],
    "slo": {},
    "functions": [{"name": "classifier", "model": "mlp-small"}],
    "workload": {"pattern": "poisson", "rate_rps": 50.0, "duration_s": 60.0},
    "variants": [{"name": "baseline"}],
}


def _clean(form: forms.Form) -> dict:
    # Fields that failed their type check are absent here; they carry their own error already.
    return getattr(form, "cleaned_data", None) or {}


def _put(out: dict, key: str, value: Any) -> None:
    if value is not None and value != "":
        out[key] = value


# ---- the whole editor ----------------------------------------------------------------------------------
@dataclass
class SummaryError:
    label: str
    message: str
    anchor: str = ""


class ExperimentEditor:
    """All of the editor's forms, their initial values from a spec dict, and the spec dict back out of them."""

    def __init__(self, *, data: Any = None, files: Any = None, initial: dict | None = None,
                 price_entries: list | None = None, kept_workloads: list[dict] | None = None,
                 stored_trace: dict | None = None, worker_devices: dict | None = None,
                 uploaded_models: list[dict] | None = None):
        spec = initial or NEW_EXPERIMENT
        self.is_bound = data is not None
        self.kept_workloads = kept_workloads or []  # per-function workloads (spec files / API): read-only
        self.stored_trace = stored_trace  # {"content", "filename", "format"} of the saved split workload
        shapes = model_shapes()
        # The owner's uploaded ONNX models (registry.selectors.catalogue_for), listed beside the zoo.
        uploads = [m for m in uploaded_models or [] if m.get("source") == "upload"]
        self.uploaded_models = {m["key"]: S.UploadedModel(name=m["key"], dynamic_batch=m["dynamic_batch"],
                                                          input_shape=tuple(m["input_shape"])) for m in uploads}
        upload_labels = {m["key"]: f"your ONNX model, input {shape_text(m['input_shape'])}, "
                                   f"{m['size_bytes'] / 1e6:.1f} MB"
                                   + ("" if m["dynamic_batch"] else ", batch 1 only") for m in uploads}
        shapes = {**shapes, **{m["key"]: None for m in uploads}}
        self.model_shapes = shapes
        basics = self._basics_initial(spec)
        if initial is None:  # a new experiment starts with the price entry that fits its device
            basics["accelerator"] = default_price_entry(basics["device"], worker_devices,
                                                        [p.name for p in price_entries or []])
        self.basics = BasicsForm(data, initial=basics, price_entries=price_entries, worker_devices=worker_devices)
        self.slo = SLOForm(data, prefix="slo", initial=self._slo_initial(spec.get("slo") or {}))
        workload = spec.get("workload") or NEW_EXPERIMENT["workload"]
        self.workload = WorkloadForm(data, files, prefix="workload", initial=self._workload_initial(workload))
        steps = (workload.get("steps") if workload.get("pattern") == "steps" else None) or [[0, 10], [30, 50]]
        self.steps = StepFormSet(data, prefix="steps", form_kwargs={"empty_permitted": False},
                                 initial=[{"start_s": _num(float(s)), "rate_rps": _num(float(r))} for s, r in steps])
        self.functions = FunctionFormSet(
            data, prefix="functions", form_kwargs={"empty_permitted": False, "shapes": shapes,
                                                   "uploads": upload_labels},
            initial=[self._function_initial(f) for f in spec.get("functions") or []])
        self.variants = VariantFormSet(
            data, prefix="variants", form_kwargs={"empty_permitted": False},
            initial=[self._variant_initial(v) for v in spec.get("variants") or []])
        self.sweep = SweepForm(data, prefix="sweep", initial=SweepForm.initial_from(spec.get("sweep")))
        self.summary: list[SummaryError] = []
        self.section_errors: dict[str, list[str]] = {}
        self.trace_filename = ""
        self._trace: tuple[str | None, str] | None = None

    # -- initial values from a spec dict --
    @staticmethod
    def _basics_initial(spec: dict) -> dict:
        return {k: spec.get(k) or "" for k in ("name", "description", "notes", "accelerator")} | {
            "device": spec.get("device") or D["device"]}

    @staticmethod
    def _slo_initial(slo: dict) -> dict:
        rate = slo.get("max_violation_rate", D["slo.max_violation_rate"])
        return {"percentile": f"{float(slo.get('percentile', D['slo.percentile'])):g}",
                "latency_ms": _num(slo.get("latency_ms", D["slo.latency_ms"])),
                "max_violation_pct": _num(round(rate * 100, 6)) if rate is not None else None,
                "min_throughput_rps": _num(slo.get("min_throughput_rps", D["slo.min_throughput_rps"]))}

    @staticmethod
    def _function_initial(f: dict) -> dict:
        shape = f.get("input_shape")
        return {"name": f.get("name", ""), "model": f.get("model", ""),
                "input_shape": ", ".join(str(x) for x in shape) if shape else "",
                "weight": _num(f.get("weight", D["function.weight"])),
                "options": f.get("options") or None,
                "model_runtime": f.get("model_runtime", D["function.model_runtime"])}

    @staticmethod
    def _workload_initial(w: dict) -> dict:
        out = {k: _num(v) for k, v in w.items() if k in WorkloadForm.base_fields and not isinstance(v, list)}
        out.pop("trace_content", None)  # a stored trace stays on the server; see stored_trace
        out.setdefault("time_compression", _num(D["workload.time_compression"]))
        out.setdefault("seed", D["workload.seed"])
        return out

    @staticmethod
    def _variant_initial(v: dict) -> dict:
        out = dict(VARIANT_DEFAULTS)
        out.update({k: _num(v[k]) for k in ("name", "sharing", "share", "runtime", "min_instances", "max_instances",
                                            "target_concurrency", "platform_delay_ms", "repeats", "model_runtime")
                    if k in v})
        out["platform_delay_preset"] = delay_preset_value(out.get("platform_delay_ms"))
        b = v.get("batching") or {}
        out["batching_mode"] = b.get("mode", D["variant.batching.mode"])
        for k in ("max_batch_size", "max_queue_delay_ms", "shed"):
            if k in b:
                out[k] = _num(b[k])
        ka = v.get("keep_alive") or {}
        out["keep_alive_policy"] = ka.get("policy", D["variant.keep_alive.policy"])
        for k in ("ttl_s", "bin_s", "range_s", "head_percentile", "tail_percentile", "min_samples"):
            if k in ka:
                out[k] = _num(ka[k])
        return out

    # -- binding --
    @property
    def all_forms(self) -> list[forms.Form]:
        return [self.basics, self.slo, self.workload, *self.steps.forms, *self.functions.forms, *self.variants.forms,
                self.sweep]

    def uses_kept_workloads(self) -> bool:
        return bool(self.kept_workloads) and not _clean(self.workload).get("replace_workloads")

    def validate(self) -> S.ExperimentSpec | None:
        """The validated spec, or None with every problem attached to its field (and listed in `summary`)."""
        ok = all([f.is_valid() for f in self.all_forms])  # a list: every form must run its checks
        for name, formset in (("functions", self.functions), ("steps", self.steps), ("variants", self.variants)):
            if formset.is_bound and not formset.management_form.is_valid():
                ok = False
                self._section(name, "the form was incomplete (rows missing); reload the page and try again")
        data = self.to_spec_dict()
        try:
            spec = S.parse_experiment(data, uploaded_models=self.uploaded_models)
        except S.SpecError as exc:
            self.add_spec_errors(exc)
            return None
        if not ok:
            self._collect_form_errors()
            return None
        return spec

    def to_spec_dict(self) -> dict:
        b, slo = _clean(self.basics), _clean(self.slo)
        out: dict[str, Any] = {"name": b.get("name", "")}
        _put(out, "description", b.get("description"))
        _put(out, "notes", b.get("notes"))
        out["device"] = b.get("device") or "auto"
        _put(out, "accelerator", b.get("accelerator"))
        slo_d: dict[str, Any] = {"percentile": float(slo["percentile"]) if slo.get("percentile") else None}
        _put(slo_d, "latency_ms", slo.get("latency_ms"))
        if slo.get("max_violation_pct") is not None:
            slo_d["max_violation_rate"] = slo["max_violation_pct"] / 100.0
        _put(slo_d, "min_throughput_rps", slo.get("min_throughput_rps"))
        out["slo"] = slo_d
        out["functions"] = [self._function_dict(_clean(f)) for f in self.functions.forms]
        if self.uses_kept_workloads():
            out["workloads"] = [dict(w) for w in self.kept_workloads]
        else:
            out["workload"] = self.workload_dict()
        out["variants"] = [self._variant_dict(_clean(f)) for f in self.variants.forms]
        sweep = _clean(self.sweep)
        if sweep.get("grid"):
            out["sweep"] = {"grid": sweep["grid"]}
            _put(out["sweep"], "base", (sweep.get("base") or "").strip())
            _put(out["sweep"], "prefix", (sweep.get("prefix") or "").strip())
        return out

    @staticmethod
    def _function_dict(c: dict) -> dict:
        out: dict[str, Any] = {"name": c.get("name", ""), "model": c.get("model", "")}
        _put(out, "input_shape", c.get("input_shape"))
        _put(out, "weight", c.get("weight"))
        if c.get("options"):
            out["options"] = c["options"]
        if c.get("model_runtime") and c["model_runtime"] != D["function.model_runtime"]:
            out["model_runtime"] = c["model_runtime"]
        return out

    def workload_dict(self) -> dict:
        """The split workload as a spec dict. Also what the preview endpoint validates and plots."""
        c = _clean(self.workload)
        pattern = c.get("pattern") or ""
        out: dict[str, Any] = {"pattern": pattern}
        for key in WorkloadForm.PARAMS.get(pattern, []):
            _put(out, key, c.get(key))
        if pattern == "steps":
            out["steps"] = [[_clean(f).get("start_s"), _clean(f).get("rate_rps")] for f in self.steps.forms]
        if pattern == "trace":
            out["trace_format"] = c.get("trace_format") or D["workload.trace_format"]
            _put(out, "function_hash", (c.get("function_hash") or "").strip())
            if self._trace is None:  # an upload can be read once
                self._trace = self._trace_text(c)
            content, filename = self._trace
            _put(out, "trace_content", content)
            _put(out, "trace_filename", filename)
        for key in ("duration_s", "time_compression", "seed"):
            _put(out, key, c.get(key))
        return out

    def _trace_text(self, c: dict) -> tuple[str | None, str]:
        """A new upload wins; then the text carried over from an earlier post; then the saved trace."""
        upload = c.get("trace_file")
        if upload:
            if upload.size > S.MAX_TRACE_BYTES:
                self.workload.add_error("trace_file", f"is {upload.size / (1024 * 1024):.1f} MiB; traces may be at "
                                                      f"most {S.MAX_TRACE_BYTES // (1024 * 1024)} MiB")
                return None, ""
            try:
                text = upload.read().decode("utf-8")
            except UnicodeDecodeError as exc:
                self.workload.add_error("trace_file", f"is not UTF-8 text (byte {exc.start})")
                return None, ""
            self._carry_trace(text, upload.name)
            return text, upload.name
        if c.get("trace_content"):
            self.trace_filename = c.get("trace_filename") or ""
            # Browsers submit a field's line breaks as CRLF; give the parser back the file's own lines.
            return c["trace_content"].replace("\r\n", "\n"), self.trace_filename
        if self.stored_trace:
            self.trace_filename = self.stored_trace.get("filename") or ""
            return self.stored_trace.get("content"), self.trace_filename
        return None, ""

    def _carry_trace(self, text: str, filename: str) -> None:
        # Bound forms render request data: put the upload into the hidden fields' data for the re-render.
        data = self.workload.data.copy()
        data[self.workload.add_prefix("trace_content")] = text
        data[self.workload.add_prefix("trace_filename")] = filename
        self.workload.data = data
        self.trace_filename = filename

    @staticmethod
    def _variant_dict(c: dict) -> dict:
        out: dict[str, Any] = {"name": c.get("name", "")}
        _put(out, "sharing", c.get("sharing"))
        if c.get("sharing") == "spatial":
            _put(out, "share", c.get("share"))
        _put(out, "runtime", c.get("runtime"))
        if c.get("model_runtime"):
            out["model_runtime"] = c["model_runtime"]
        mode = c.get("batching_mode") or "none"
        batching: dict[str, Any] = {"mode": mode}
        if mode != "none":
            _put(batching, "max_batch_size", c.get("max_batch_size"))
            _put(batching, "max_queue_delay_ms", c.get("max_queue_delay_ms"))
            if mode == "adaptive":
                batching["shed"] = bool(c.get("shed"))
        out["batching"] = batching
        for key in ("min_instances", "max_instances", "target_concurrency", "platform_delay_ms", "repeats"):
            _put(out, key, c.get(key))
        policy = c.get("keep_alive_policy") or "fixed"
        keep_alive: dict[str, Any] = {"policy": policy}
        _put(keep_alive, "ttl_s", c.get("ttl_s"))
        if policy == "histogram":
            for key in ("bin_s", "range_s", "head_percentile", "tail_percentile", "min_samples"):
                _put(keep_alive, key, c.get(key))
        out["keep_alive"] = keep_alive
        return out

    # -- errors --
    def _section(self, name: str, message: str, label: str = "") -> None:
        self.section_errors.setdefault(name, []).append(message)
        self.summary.append(SummaryError(label or name.capitalize(), message, f"section-{name}"))

    def _locate(self, path: str) -> tuple[forms.Form | None, str | None, str]:
        """(form, field, section) for a spec path; form None means a section-level error."""
        if (path or "").startswith("sweep"):
            # sweep.base, sweep.prefix; everything else (grid values, generated variants) lands on the grid.
            return self.sweep, path.split(".", 1)[1] if path in ("sweep.base", "sweep.prefix") else "grid", "sweep"
        m = re.match(r"^(?P<head>[a-z_]+)(?:\[(?P<idx>\d+)\])?(?:\.(?P<rest>.+))?$", path or "")
        if not m:
            return None, None, ""
        head, idx, rest = m["head"], m["idx"], m["rest"]
        if head in ("name", "description", "notes", "device", "accelerator"):
            return self.basics, head, "basics"
        if head == "slo":
            field = {"max_violation_rate": "max_violation_pct"}.get(rest or "", rest)
            return (self.slo, field if field in SLOForm.base_fields else None, "slo")
        if head in ("functions", "variants"):
            formset = self.functions if head == "functions" else self.variants
            if idx is None or int(idx) >= len(formset.forms):
                return None, None, head
            form = formset.forms[int(idx)]
            field = VariantForm.SPEC_FIELDS.get(rest or "", rest) if head == "variants" else rest
            visible = field in form.fields and not form.fields[field].widget.is_hidden
            return form, field if visible else None, head
        if head == "workload":
            if self.uses_kept_workloads():
                return None, None, "workload"
            if rest and rest.startswith("steps"):
                sm = re.match(r"^steps\[(\d+)\]", rest)
                if sm and int(sm[1]) < len(self.steps.forms):
                    return self.steps.forms[int(sm[1])], None, "steps"
                return None, None, "steps"
            field = {"trace_content": "trace_file", "trace_filename": "trace_file"}.get(rest or "", rest)
            return self.workload, field if field in WorkloadForm.base_fields else None, "workload"
        if head == "workloads":
            return None, None, "workload"
        return None, None, ""

    def _label(self, form: forms.Form | None, field: str | None, section: str) -> str:
        titles = {"basics": "Basics", "slo": "SLO", "workload": "Workload", "steps": "Workload steps",
                  "functions": "Functions", "variants": "Variants", "sweep": "Sweep"}
        parts = [titles.get(section, "Experiment")]
        if form is not None and section in ("functions", "variants", "steps"):
            formset = {"functions": self.functions, "variants": self.variants, "steps": self.steps}[section]
            i = formset.forms.index(form)
            name = (form.data.get(form.add_prefix("name")) if form.is_bound else form.initial.get("name")) or ""
            parts.append(f"#{i + 1}" + (f" {name}" if name and section != "steps" else ""))
        if form is not None and field:
            parts.append(str(form.fields[field].label))
        return " › ".join(parts)

    def add_spec_errors(self, exc: S.SpecError) -> None:
        for err in exc.errors:
            form, field, section = self._locate(err.path)
            if form is None:
                message = f"{err.path}: {err.message}" if err.path else err.message
                if section:
                    self._section(section, message, self._label(None, None, section))
                else:
                    self.summary.append(SummaryError("Experiment", message))
                continue
            message = err.message
            if section == "sweep" and field == "grid":
                # One field holds the whole grid: say which value or generated variant each problem is about.
                message = f"{err.path.removeprefix('sweep.grid.')}: {err.message}"
            # A field that failed its type check ("Enter a number.") already says what is wrong.
            elif field and form.errors.get(field):
                continue
            form.add_error(field, message)
            anchor = form[field].auto_id if field else ""
            self.summary.append(SummaryError(self._label(form, field, section), message, anchor))
        self._collect_form_errors(skip_known=True)

    def _collect_form_errors(self, skip_known: bool = False) -> None:
        """Django's own type errors join the summary too, so the top of the page lists everything."""
        known = {(s.anchor, s.message) for s in self.summary}
        sections = [("basics", [self.basics]), ("slo", [self.slo]), ("workload", [self.workload]),
                    ("steps", self.steps.forms), ("functions", self.functions.forms), ("variants", self.variants.forms),
                    ("sweep", [self.sweep])]
        for section, forms_ in sections:
            for form in forms_:
                for field, errors in form.errors.items():
                    name = None if field == "__all__" else field
                    anchor = form[name].auto_id if name else ""
                    for message in errors:
                        if (anchor, message) in known:
                            continue
                        known.add((anchor, message))
                        self.summary.append(SummaryError(self._label(form, name, section), message, anchor))

    @property
    def has_errors(self) -> bool:
        return bool(self.summary)


# ---- the price catalogue ---------------------------------------------------------------------------------
class PriceEntryForm(forms.ModelForm):
    """Add or edit one dated price entry (staff). The model's check constraints are validated with the form."""

    class Meta:
        model = PriceEntry
        fields = ["name", "accelerator", "memory_gb", "on_demand_usd_per_h", "serverless_usd_per_s", "min_billed_s",
                  "granularity_s", "idle_tail_s", "as_of", "source"]
        labels = {"on_demand_usd_per_h": "Provisioned ($ per device-hour)",
                  "serverless_usd_per_s": "Serverless ($ per device-second)", "min_billed_s": "Minimum billed (s)",
                  "granularity_s": "Billing granularity (s)", "idle_tail_s": "Idle tail billed (s)",
                  "memory_gb": "Device memory (GB)", "as_of": "Prices as of"}
        widgets = {"as_of": forms.DateInput(attrs={"type": "date"}), "source": forms.Textarea(attrs={"rows": 2}),
                   **{f: forms.NumberInput(attrs={"step": "any", "inputmode": "decimal"})
                      for f in ("memory_gb", "on_demand_usd_per_h", "serverless_usd_per_s", "min_billed_s",
                                "granularity_s", "idle_tail_s")}}
