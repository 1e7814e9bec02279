"""REST API shapes.

Two kinds live here. The *spec document* serializers describe the experiment spec for the OpenAPI schema
only: requests are validated by `workers.spec.parse_experiment` (the one validator of spec files, forms and
the API), never by DRF, so the error messages and field paths are the same everywhere. The *output*
serializers render experiments and the dicts the selectors shape (a trial's figures come from
`selectors.trial_result_row`, so the API shows what the pages show).
"""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from workers import spec as S

from . import selectors, spec_io
from .models import PriceEntry


# ---- errors -------------------------------------------------------------------------------------------------
class FieldErrorSerializer(serializers.Serializer):
    path = serializers.CharField(help_text='Field path, e.g. "variants[2].batching.max_batch_size"; "" for the '
                                           "document as a whole.")
    message = serializers.CharField()


class ErrorResponseSerializer(serializers.Serializer):
    detail = serializers.CharField()
    errors = FieldErrorSerializer(many=True)


# ---- the spec document (schema only; docs/spec.md is the full reference) -----------------------------------
def ruled(rule: str, **kwargs) -> serializers.Field:
    """A document field with the default and bounds of `workers.spec.FIELD_RULES[rule]` (the schema shows them)."""
    r = S.FIELD_RULES[rule]
    if not r.required:
        kwargs["required"] = False
        if r.default is None:
            kwargs["allow_null"] = True
        else:
            kwargs["default"] = r.default
    if r.choices:
        return serializers.ChoiceField(choices=list(r.choices), **kwargs)
    if isinstance(r.default, bool):
        return serializers.BooleanField(**kwargs)
    field = serializers.IntegerField if r.integer else serializers.FloatField
    return field(min_value=r.low, max_value=r.high, **kwargs)


class SLODocument(serializers.Serializer):
    percentile = ruled("slo.percentile", help_text="Latency percentile the SLO is on.")
    latency_ms = ruled("slo.latency_ms", help_text="The percentile must stay under this (above 0).")
    max_violation_rate = ruled("slo.max_violation_rate", help_text="Fraction of requests that may be late or dropped.")
    min_throughput_rps = ruled("slo.min_throughput_rps", help_text="Optional floor on completed requests/s (above 0).")


class FunctionDocument(serializers.Serializer):
    name = serializers.RegexField(S.NAME_RE.pattern, max_length=64)
    model = serializers.CharField(max_length=100, help_text="A zoo or installed model key, or one of your uploaded "
                                                            "ONNX models (GET /api/models/).")
    input_shape = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=4096), min_length=1,
                                        max_length=4, required=False, allow_null=True,
                                        help_text="Per-request input shape, no batch dimension; default: "
                                                  "the model's.")
    options = serializers.DictField(required=False, help_text="Model options (see docs/spec.md).")
    weight = ruled("function.weight", help_text="Share of a workload split across functions (above 0).")
    model_runtime = ruled("function.model_runtime", help_text="torch, or onnxruntime (a zoo model exported to ONNX; "
                                                              "an uploaded ONNX model is always onnxruntime).")


class WorkloadDocument(serializers.Serializer):
    pattern = serializers.ChoiceField(choices=list(S.PATTERNS))
    duration_s = ruled("workload.duration_s", help_text="Length in workload time (above 0).")
    time_compression = ruled("workload.time_compression",
                             help_text="The trial runs duration_s / time_compression wall-clock "
                                       f"seconds (at most {S.MAX_RUN_S:.0f}).")
    seed = ruled("workload.seed")
    function = serializers.CharField(required=False, allow_null=True,
                                     help_text="Target function; absent: split across all functions by weight.")
    rate_rps = serializers.FloatField(required=False, max_value=S.MAX_RATE_RPS, help_text="constant, poisson, gamma")
    cv = serializers.FloatField(required=False, max_value=S.MAX_CV, help_text="gamma; optional for trace")
    steps = serializers.ListField(child=serializers.ListField(child=serializers.FloatField(), min_length=2,
                                                              max_length=2),
                                  required=False, max_length=S.MAX_STEPS,
                                  help_text="steps: [[start_s, rate_rps], ...], first at 0")
    mean_rate_rps = serializers.FloatField(required=False, help_text="diurnal")
    peak_to_trough = ruled("workload.peak_to_trough", help_text="diurnal")
    period_s = ruled("workload.period_s", help_text="diurnal")
    base_rate_rps = serializers.FloatField(required=False, help_text="burst")
    burst_rate_rps = serializers.FloatField(required=False, help_text="burst")
    mean_on_s = serializers.FloatField(required=False, help_text="burst")
    mean_off_s = serializers.FloatField(required=False, help_text="burst")
    trace_format = ruled("workload.trace_format", help_text="trace")
    trace_content = serializers.CharField(required=False,
                                          help_text=f"trace: the file's text (at most "
                                                    f"{S.MAX_TRACE_BYTES // (1024 * 1024)} MiB)")
    trace_filename = serializers.CharField(required=False, max_length=200, help_text="trace")
    function_hash = serializers.CharField(required=False, max_length=200,
                                          help_text="trace: only this function's rows")


class BatchingDocument(serializers.Serializer):
    mode = ruled("variant.batching.mode")
    max_batch_size = ruled("variant.batching.max_batch_size", help_text="fixed and adaptive (mode none: 1)")
    max_queue_delay_ms = ruled("variant.batching.max_queue_delay_ms", help_text="fixed and adaptive")
    shed = ruled("variant.batching.shed", help_text="adaptive only")


class KeepAliveDocument(serializers.Serializer):
    policy = ruled("variant.keep_alive.policy")
    ttl_s = ruled("variant.keep_alive.ttl_s")
    bin_s = ruled("variant.keep_alive.bin_s", help_text="histogram")
    range_s = ruled("variant.keep_alive.range_s", help_text="histogram")
    head_percentile = ruled("variant.keep_alive.head_percentile", help_text="histogram")
    tail_percentile = ruled("variant.keep_alive.tail_percentile", help_text="histogram")
    min_samples = ruled("variant.keep_alive.min_samples", help_text="histogram")


class VariantDocument(serializers.Serializer):
    name = serializers.RegexField(S.NAME_RE.pattern, max_length=64)
    sharing = ruled("variant.sharing")
    share = ruled("variant.share", help_text="spatial: fraction of the device per instance (default 1 / "
                                             "max_instances)")
    runtime = ruled("variant.runtime", help_text='process: each instance its own worker process; thread: instances '
                                                 'share one process ("shared process, no isolation"). Spatial '
                                                 "sharing needs process.")
    model_runtime = ruled("variant.model_runtime", help_text="torch or onnxruntime for this variant's zoo and installed "
                                                             "models (default: each function's own).")
    batching = BatchingDocument(required=False)
    min_instances = ruled("variant.min_instances")
    max_instances = ruled("variant.max_instances", help_text="Default: 1, or min_instances when larger.")
    target_concurrency = ruled("variant.target_concurrency")
    keep_alive = KeepAliveDocument(required=False)
    platform_delay_ms = ruled("variant.platform_delay_ms",
                              help_text="MODELLED, not measured: added to each real cold start for provisioning "
                                        "and image pull; 0: only what really ran. Presets: "
                                        + ", ".join(f"{p.key} {p.delay_ms:g}" for p in S.PLATFORM_DELAY_PRESETS)
                                        + " (docs/method.md).")
    repeats = ruled("variant.repeats")


class SweepDocument(serializers.Serializer):
    base = serializers.CharField(required=False, help_text="A variant in `variants` to start from (default: the "
                                                           "table defaults).")
    prefix = serializers.CharField(required=False, allow_blank=True, max_length=40,
                                   help_text='Put before each generated name ("b4-ttl2-i2").')
    grid = serializers.DictField(child=serializers.ListField(), help_text=(
        f"Variant field path -> values; every combination is one variant, at most {S.MAX_SWEEP_VARIANTS} with "
        f"the listed ones. Fields: {', '.join(S.SWEEP_FIELDS)}."))


class SpecDocument(serializers.Serializer):
    """An experiment spec: the format of spec files and of the API's request and response bodies."""

    spec_version = serializers.IntegerField(required=False, default=1)
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, max_length=5_000)
    notes = serializers.CharField(required=False, allow_blank=True, max_length=20_000)
    device = serializers.RegexField(S.DEVICE_RE.pattern, required=False, default=S.DEFAULTS["device"],
                                    help_text="auto, cpu, cuda or cuda:N")
    accelerator = serializers.CharField(required=False, allow_null=True,
                                        help_text="Price catalogue entry used for costs (GET /api/prices/).")
    slo = SLODocument(required=False)
    functions = FunctionDocument(many=True, help_text=f"1 to {S.MAX_FUNCTIONS} functions")
    workload = WorkloadDocument(required=False, help_text="One workload split across all functions by weight.")
    workloads = WorkloadDocument(many=True, required=False,
                                 help_text="Or one workload per function, each naming its function.")
    variants = VariantDocument(many=True, required=False,
                               help_text=f"1 to {S.MAX_VARIANTS} configurations to compare (0 with a sweep)")
    sweep = SweepDocument(required=False, help_text="A grid of variant fields expanded into more variants.")


class SimulateRequest(serializers.Serializer):
    devices = serializers.IntegerField(required=False, min_value=1, help_text="Simulated devices (default 1).")
    placement = serializers.ChoiceField(choices=["first_fit", "load_pack"], required=False,
                                        help_text="How functions are placed on the devices (default first_fit).")
    profiles = serializers.DictField(child=serializers.CharField(), required=False,
                                     help_text="Function name -> profile code (default: the newest profile of its "
                                               "model on the device).")


class RunRequest(serializers.Serializer):
    repeats = serializers.IntegerField(required=False, min_value=1, max_value=S.MAX_REPEATS,
                                       help_text="Repeats of every variant (default: each variant's own).")
    variants = serializers.ListField(child=serializers.CharField(), required=False, min_length=1,
                                     help_text="Run only these variants (default: all).")
    simulate = SimulateRequest(required=False, help_text="Simulate the run from measured profiles instead of running "
                                                         "it on the device (queue `sim`); {} for the defaults.")


class CloneRequest(serializers.Serializer):
    name = serializers.CharField(required=False, max_length=200, help_text='Default: "<name> (copy)".')


# ---- experiments --------------------------------------------------------------------------------------------
class ExperimentSerializer(serializers.Serializer):
    """An experiment as listed; its status and counts are those of the latest run."""

    code = serializers.UUIDField(read_only=True)
    url = serializers.SerializerMethodField(help_text="This experiment in the API.")
    html_url = serializers.SerializerMethodField(help_text="This experiment's page.")
    name = serializers.CharField()
    description = serializers.CharField()
    device = serializers.CharField()
    accelerator = serializers.CharField(source="accelerator.name", allow_null=True, default=None)
    status = serializers.ChoiceField(source="run_status", choices=list(selectors.STATUSES),
                                     help_text="Status of the latest run (draft: never run).")
    latest_run = serializers.IntegerField(allow_null=True)
    trial_count = serializers.IntegerField(help_text="Trials of all runs.")
    queued_count = serializers.IntegerField()
    running_count = serializers.IntegerField()
    succeeded_count = serializers.IntegerField()
    failed_count = serializers.IntegerField()
    cancelled_count = serializers.IntegerField()
    created = serializers.DateTimeField()
    updated = serializers.DateTimeField()

    def _absolute(self, url: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request is not None else url

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, obj) -> str:
        return self._absolute(reverse("api-experiment-detail", kwargs={"code": obj.code}))

    @extend_schema_field(OpenApiTypes.URI)
    def get_html_url(self, obj) -> str:
        return self._absolute(obj.get_absolute_url())


class RunPlanSerializer(serializers.Serializer):
    """What pressing Run would queue, before it is pressed."""

    variants = serializers.IntegerField()
    trials = serializers.IntegerField(help_text="variants x repeats")
    trial_run_s = serializers.FloatField(help_text="wall-clock seconds of workload in one trial")
    total_run_s = serializers.FloatField(help_text="workload time of every trial one after the other (one device); "
                                                   "cold starts and the drain come on top")
    repeats = serializers.IntegerField(allow_null=True, help_text="the run's repeats override, or null")
    workers = serializers.IntegerField(allow_null=True, help_text="live workers of the experiment's device pool "
                                                                  "(null: unknown)")
    devices = serializers.IntegerField(required=False)
    run_s_on_devices = serializers.FloatField(required=False, help_text="workload time with the pool's workers "
                                                                       "taking one trial each at a time")
    text = serializers.CharField(help_text='e.g. "45 variants, 45 trials, about 22 min of run time"')


class ExperimentDetailSerializer(ExperimentSerializer):
    spec = serializers.SerializerMethodField(help_text="The experiment as a spec document (what PUT takes).")
    runs = serializers.SerializerMethodField(help_text="Run numbers, newest first.")
    plan = serializers.SerializerMethodField(help_text="What a run queues: variants, trials, run time.")

    @extend_schema_field(SpecDocument)
    def get_spec(self, obj) -> dict:
        return spec_io.experiment_to_dict(obj)

    def get_runs(self, obj) -> list[int]:
        return selectors.experiment_runs(experiment=obj)

    @extend_schema_field(RunPlanSerializer)
    def get_plan(self, obj) -> dict:
        return selectors.experiment_plan(spec=spec_io.experiment_to_spec(obj),
                                         workers=selectors.pool_workers(obj.device))


# ---- trials -------------------------------------------------------------------------------------------------
class LatencySerializer(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    p90 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)
    p99 = serializers.FloatField(allow_null=True)
    p999 = serializers.FloatField(allow_null=True)
    max = serializers.FloatField(allow_null=True)
    mean = serializers.FloatField(allow_null=True)


class ColdStartSerializer(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    max = serializers.FloatField(allow_null=True)


class CostSerializer(serializers.Serializer):
    serverless_per_1k_usd = serializers.FloatField(allow_null=True)
    provisioned_per_1k_usd = serializers.FloatField(allow_null=True)
    serverless_per_1k_good_usd = serializers.FloatField(allow_null=True, help_text="per 1,000 requests that met "
                                                                                   "the SLO")
    provisioned_per_1k_good_usd = serializers.FloatField(allow_null=True)
    monthly_serverless_usd = serializers.FloatField(
        allow_null=True, help_text="30 days at the run's real rate, from the same billed spans as the per-1,000 "
                                   "figures; null for a compressed replay (see monthly_note)")
    monthly_provisioned_usd = serializers.FloatField(allow_null=True)
    monthly_note = serializers.CharField(allow_null=True, required=False,
                                         help_text="Why there is no monthly figure (a compressed replay).")
    time_compression = serializers.FloatField(allow_null=True, required=False)


class ColdStartPhasesSerializer(serializers.Serializer):
    """p50 of each phase of the cold starts paid during the load, in ms; null for a phase that did not happen."""

    platform_delay_modelled = serializers.FloatField(allow_null=True, help_text="MODELLED, not measured")
    process_start = serializers.FloatField(allow_null=True)
    import_ = serializers.FloatField(allow_null=True, source="import", label="import")
    device_context = serializers.FloatField(allow_null=True)
    build = serializers.FloatField(allow_null=True)
    load = serializers.FloatField(allow_null=True)
    session = serializers.FloatField(allow_null=True, help_text="model_runtime onnxruntime: creating the "
                                                                 "InferenceSession")
    to_device = serializers.FloatField(allow_null=True)
    warmup = serializers.FloatField(allow_null=True)
    total = serializers.FloatField(allow_null=True)

    def to_representation(self, instance):
        out = super().to_representation(instance)
        out["import"] = out.pop("import_")
        return out


class DispatchSerializer(serializers.Serializer):
    behind = serializers.BooleanField(allow_null=True, help_text="The dispatcher's worst lag exceeded 10 % of "
                                                                 "the SLO latency (latencies include it).")
    lag_p99_us = serializers.FloatField(allow_null=True)
    lag_max_us = serializers.FloatField(allow_null=True)
    behind_threshold_us = serializers.FloatField(allow_null=True)


class SLOVerdictSerializer(serializers.Serializer):
    verdict = serializers.ChoiceField(choices=["met", "not_met", "inconclusive"],
                                      help_text="inconclusive: the percentile's 95 % interval straddles the "
                                                "target, or there were too few requests or seconds for one")
    reasons = serializers.ListField(child=serializers.CharField(), help_text="One sentence per condition that "
                                                                             "failed or could not be decided.")


class TrialRowSerializer(serializers.Serializer):
    """A trial's figures (`selectors.trial_result_row`); figures are null until the trial has a summary."""

    trial = serializers.UUIDField(help_text="The trial's code.")
    url = serializers.SerializerMethodField()
    variant = serializers.CharField()
    repeat = serializers.IntegerField()
    run_number = serializers.IntegerField()
    status = serializers.CharField()
    device = serializers.CharField(allow_null=True)
    device_id = serializers.CharField(allow_null=True, help_text="The physical device it ran on, as its lease "
                                                                 "names it (DEVICE_ID, a GPU's UUID, or host:device)")
    error = serializers.CharField(allow_null=True)
    run_s = serializers.FloatField(help_text="Wall-clock seconds of workload the trial runs (its longest workload), "
                                             "from its frozen spec.")
    expected_requests = serializers.FloatField(help_text="About how many requests it sends over all workloads "
                                                         "(what the per-trial cap counts), from its frozen spec.")
    requests = serializers.IntegerField(allow_null=True)
    completed = serializers.IntegerField(allow_null=True)
    dropped = serializers.IntegerField(allow_null=True)
    errors = serializers.IntegerField(allow_null=True)
    latency_ms = LatencySerializer(help_text="Over every request: dropped, failed and unfinished ones count as "
                                             "beyond the run, so a percentile whose rank falls among them is null.")
    latency_completed_ms = LatencySerializer(help_text="Over the completed requests only.")
    unfinished = serializers.IntegerField(allow_null=True, help_text="Requests that never completed (dropped, "
                                                                     "failed or still waiting at the end).")
    slo_percentile_ci_ms = serializers.ListField(
        child=serializers.FloatField(allow_null=True), allow_null=True,
        help_text="95 % confidence interval [low, high] of the SLO percentile (moving-block bootstrap); a null "
                  "bound lies beyond the run; null: no interval (too few requests or seconds)")
    slo_met = serializers.BooleanField(allow_null=True, help_text="True only when slo_verdict is met.")
    slo_verdict = SLOVerdictSerializer(allow_null=True)
    violation_rate = serializers.FloatField(allow_null=True)
    throughput_rps = serializers.FloatField(allow_null=True, help_text="Completions within the arrival window "
                                                                       "divided by that window.")
    goodput_rps = serializers.FloatField(allow_null=True)
    drain_s = serializers.FloatField(allow_null=True, help_text="Seconds from the last arrival to the end of the "
                                                                "drain.")
    completed_in_drain = serializers.IntegerField(allow_null=True, help_text="Requests completed after the "
                                                                             "arrival window (not in throughput).")
    cold_starts = serializers.IntegerField(allow_null=True)
    cold_start_ms = ColdStartSerializer()
    mean_batch_size = serializers.FloatField(allow_null=True)
    cold_start_phases_ms = ColdStartPhasesSerializer(allow_null=True)
    prewarms = serializers.IntegerField(allow_null=True, help_text="Histogram pre-warms (cold starts no request "
                                                                   "asked for).")
    requests_paid_cold_start = serializers.IntegerField(allow_null=True)
    dispatch = DispatchSerializer(allow_null=True)
    notes = serializers.ListField(child=serializers.CharField())
    cost = CostSerializer()
    time_compression = serializers.FloatField(allow_null=True, help_text="> 1: an accelerated replay; its "
                                                                         "figures are wall-clock figures of the "
                                                                         "faster load.")
    runtime = serializers.CharField(allow_null=True, help_text="process (each instance its own process) or "
                                                               "thread (shared process, no isolation)")
    isolation = serializers.CharField(allow_null=True)
    platform_delay_ms = serializers.FloatField(allow_null=True, help_text="MODELLED delay added to each cold "
                                                                          "start (0: none)")
    simulated = serializers.BooleanField(allow_null=True, help_text="true: simulated from measured profiles, not run")
    simulation = serializers.DictField(allow_null=True, help_text="simulated trials: devices, placement, and the "
                                                                  "latest validation of their profiles")
    hardware = serializers.DictField(allow_null=True, help_text="device name, torch version, sharing mechanism, ...")
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, row) -> str:
        url = reverse("api-trial-detail", kwargs={"code": row["trial"]})
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request is not None else url


class TrialDetailSerializer(TrialRowSerializer):
    experiment = serializers.UUIDField(help_text="The experiment's code.")
    html_url = serializers.URLField(help_text="The trial's live page.")
    queue = serializers.CharField()
    cancel_requested = serializers.BooleanField()
    summary = serializers.DictField(allow_null=True, help_text="Everything the engine measured (docs/spec.md).")


class RunResponseSerializer(serializers.Serializer):
    run_number = serializers.IntegerField()
    trials = TrialRowSerializer(many=True)
    unsent = serializers.IntegerField(help_text="Trials whose message could not reach the broker yet (it was "
                                                "unavailable): they stay queued and are sent once it is back.")


class CancelResponseSerializer(serializers.Serializer):
    cancelled = serializers.IntegerField(help_text="Trials cancelled, or asked to stop when already running.")


class ResultsSerializer(serializers.Serializer):
    run_number = serializers.IntegerField(allow_null=True, help_text="null: the experiment was never run.")
    runs = serializers.ListField(child=serializers.IntegerField(), help_text="All run numbers, newest first.")
    results = TrialRowSerializer(many=True)


class WindowSerializer(serializers.Serializer):
    """One second of a trial; any figure may be null."""

    index = serializers.IntegerField()
    t_s = serializers.FloatField()
    offered_rps = serializers.FloatField(allow_null=True, required=False)
    completed_rps = serializers.FloatField(allow_null=True, required=False)
    dropped = serializers.IntegerField(allow_null=True, required=False)
    errors = serializers.IntegerField(allow_null=True, required=False)
    p50_ms = serializers.FloatField(allow_null=True, required=False)
    p95_ms = serializers.FloatField(allow_null=True, required=False)
    p99_ms = serializers.FloatField(allow_null=True, required=False)
    latency_buckets = serializers.ListField(child=serializers.IntegerField(), required=False, help_text=(
        "Requests completed in the window per latency bucket: <= 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, "
        "5000, 10000 ms, and above."))
    latency_sum_ms = serializers.FloatField(allow_null=True, required=False)
    queue_depth = serializers.IntegerField(allow_null=True, required=False)
    instances_starting = serializers.IntegerField(allow_null=True, required=False)
    instances_idle = serializers.IntegerField(allow_null=True, required=False)
    instances_busy = serializers.IntegerField(allow_null=True, required=False)
    cold_starts = serializers.IntegerField(allow_null=True, required=False)
    dispatch_lag_p99_us = serializers.FloatField(allow_null=True, required=False)
    cpu_util_pct = serializers.FloatField(allow_null=True, required=False)
    rss_mb = serializers.FloatField(allow_null=True, required=False)
    gpu_util_pct = serializers.FloatField(allow_null=True, required=False)
    gpu_mem_used_mb = serializers.FloatField(allow_null=True, required=False)
    power_w = serializers.FloatField(allow_null=True, required=False)
    cost_usd = serializers.FloatField(allow_null=True, required=False)


class WindowsSerializer(serializers.Serializer):
    trial = serializers.UUIDField()
    status = serializers.CharField()
    windows = WindowSerializer(many=True, help_text="Oldest first.")


# ---- catalogues ---------------------------------------------------------------------------------------------
class PriceEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = PriceEntry
        fields = ["name", "accelerator", "memory_gb", "on_demand_usd_per_h", "serverless_usd_per_s", "granularity_s",
                  "min_billed_s", "idle_tail_s", "as_of", "source"]
        read_only_fields = fields


class ModelEntrySerializer(serializers.Serializer):
    key = serializers.CharField()
    default_input_shape = serializers.ListField(child=serializers.IntegerField(), allow_null=True)


# ---- the compare basket -------------------------------------------------------------------------------------
class CapacityRequest(serializers.Serializer):
    variant = serializers.CharField(help_text="The variant whose capacity at the SLO is searched.")
    simulated = serializers.BooleanField(default=False, help_text="Probe on the simulator (stored profiles).")
    budget = serializers.IntegerField(default=14, min_value=1, max_value=50,
                                      help_text="Most probes, repeats of inconclusive ones included.")
    probe_s = serializers.FloatField(required=False, allow_null=True,
                                     help_text="Wall seconds per probe (constant/poisson/gamma workloads; default: "
                                               "the spec's duration; under 10 s every probe is inconclusive).")
    tolerance = serializers.FloatField(default=0.05, help_text="Stop when the bracket is this close (0 to 0.5).")


class CapacityProbeSerializer(serializers.Serializer):
    rate_rps = serializers.FloatField(help_text="Offered rate of this probe (req/s).")
    factor = serializers.FloatField(help_text="Its rate over the spec's own.")
    verdict = serializers.CharField(help_text="met, not_met or inconclusive.")
    p99_ms = serializers.FloatField(allow_null=True)
    run_s = serializers.FloatField()
    trial = serializers.CharField(help_text="The probe's trial code.")
    cost_per_1k_usd = serializers.FloatField(allow_null=True, help_text="Provisioned cost per 1,000 requests.")
    serverless_per_1k_usd = serializers.FloatField(allow_null=True)
    retry_of = serializers.IntegerField(allow_null=True, help_text="Index of the inconclusive probe it repeats.")
    counted = serializers.BooleanField(help_text="False: inconclusive and repeated (the repeat counts).")


class CapacityResultSerializer(serializers.Serializer):
    capacity_rps = serializers.FloatField(allow_null=True, help_text="Optimistic: highest rate not `not_met`.")
    conservative_capacity_rps = serializers.FloatField(allow_null=True, help_text="Highest rate whose probe was met.")
    p99_ms_at_capacity = serializers.FloatField(allow_null=True)
    cost_per_1k_usd_at_capacity = serializers.FloatField(allow_null=True,
                                                         help_text="Provisioned cost per 1,000 requests there.")
    serverless_per_1k_usd_at_capacity = serializers.FloatField(allow_null=True)
    bracket_rps = serializers.ListField(child=serializers.FloatField(allow_null=True))
    estimate_rps = serializers.FloatField()
    stopped = serializers.CharField(help_text="converged, budget, no_passing_rate, limit or cancelled.")
    probes = CapacityProbeSerializer(many=True)
    tolerance = serializers.FloatField()


class CapacitySearchSerializer(serializers.Serializer):
    code = serializers.UUIDField()
    experiment = serializers.UUIDField(help_text="The experiment whose variant is searched.")
    variant = serializers.CharField()
    probes_experiment = serializers.UUIDField(allow_null=True, help_text="The experiment whose runs are the probes.")
    simulated = serializers.BooleanField()
    budget = serializers.IntegerField()
    probe_s = serializers.FloatField(allow_null=True)
    tolerance = serializers.FloatField()
    status = serializers.CharField(help_text="queued, running, succeeded, failed or cancelled.")
    progress = serializers.FloatField(help_text="Probes run over the budget, 0 to 1.")
    stage = serializers.CharField(help_text="The last progress line.")
    estimate_rps = serializers.FloatField(allow_null=True, help_text="Where the search started.")
    bracket_rps = serializers.ListField(child=serializers.FloatField(allow_null=True),
                                        help_text="[highest passing, lowest failing] so far.")
    probes = CapacityProbeSerializer(many=True, help_text="The probes finished so far.")
    result = CapacityResultSerializer(allow_null=True, help_text="workers.capacity.CapacityResult, once it ended.")
    error = serializers.CharField()
    created = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    url = serializers.CharField(help_text="This search in the API.")
    html_url = serializers.CharField(help_text="Its page.")


class PinRequest(serializers.Serializer):
    trial = serializers.UUIDField(help_text="Code of one of your trials.")


class PinSerializer(serializers.Serializer):
    """One pinned trial, labelled with its experiment and run."""

    trial = serializers.UUIDField(source="trial.code", help_text="The trial's code.")
    url = serializers.SerializerMethodField(help_text="The trial in the API.")
    html_url = serializers.SerializerMethodField(help_text="The trial's page.")
    experiment = serializers.UUIDField(source="trial.experiment.code", help_text="Its experiment's code.")
    experiment_name = serializers.CharField(source="trial.experiment.name")
    run_number = serializers.IntegerField(source="trial.run_number")
    variant = serializers.CharField(source="trial.variant_name")
    repeat = serializers.IntegerField(source="trial.repeat")
    status = serializers.CharField(source="trial.status")
    pinned_at = serializers.DateTimeField(source="created")

    def _absolute(self, url: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request is not None else url

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, pin) -> str:
        return self._absolute(reverse("api-trial-detail", kwargs={"code": pin.trial.code}))

    @extend_schema_field(OpenApiTypes.URI)
    def get_html_url(self, pin) -> str:
        return self._absolute(pin.trial.get_absolute_url())


class PinListSerializer(serializers.Serializer):
    html_url = serializers.URLField(help_text="The page that compares the pinned trials.")
    count = serializers.IntegerField()
    pins = PinSerializer(many=True, help_text="In the order they were pinned.")


class UnpinResponseSerializer(serializers.Serializer):
    unpinned = serializers.IntegerField(help_text="How many trials were unpinned.")


# ---- the comparison (controlplane/experiments/comparison.py builds it; these only document and render it) --
def _comparison_serializers() -> dict[str, type[serializers.Serializer]]:
    """Serializers whose fields are the comparison's metric keys (one per figure), built from its METRICS."""
    from . import comparison as cmp

    def figure_fields(keys, field):
        return {k: field(cmp.METRIC_BY_KEY[k]) for k in keys}

    def figure(m):
        return ComparisonFigureSerializer(help_text=f"{m.label} ({m.unit}; lower/higher is better: {m.better})")

    def delta(m):
        return ComparisonDeltaSerializer(allow_null=True, help_text=f"{m.label} against the baseline")

    def value(m):
        return serializers.FloatField(allow_null=True, help_text=f"{m.label} ({m.unit})"
                                      + (": null beyond the run" if m.beyond_run else ""))

    return {
        "figures": type("ComparisonFiguresSerializer", (serializers.Serializer,),
                        figure_fields(cmp.METRIC_KEYS, figure)),
        "deltas": type("ComparisonDeltasSerializer", (serializers.Serializer,), figure_fields(cmp.METRIC_KEYS, delta)),
        "function_figures": type("ComparisonFunctionFiguresSerializer", (serializers.Serializer,),
                                 figure_fields(cmp.FUNCTION_METRIC_KEYS, figure)),
        "function_deltas": type("ComparisonFunctionDeltasSerializer", (serializers.Serializer,),
                                figure_fields(cmp.FUNCTION_METRIC_KEYS, delta)),
        "repeat_figures": type("ComparisonRepeatFiguresSerializer", (serializers.Serializer,),
                               figure_fields(cmp.METRIC_KEYS, value)),
    }


class ComparisonFigureSerializer(serializers.Serializer):
    """One figure of a variant: the median across its repeats, with their min-max."""

    value = serializers.FloatField(allow_null=True, help_text="Median across the repeats. For a latency, null is "
                                                              "beyond the run (see beyond_run); else no figure.")
    low = serializers.FloatField(allow_null=True, help_text="Smallest repeat.")
    high = serializers.FloatField(allow_null=True, help_text="Largest repeat (null: beyond the run).")
    n = serializers.IntegerField(help_text="Repeats with a figure.")
    beyond_run = serializers.IntegerField(help_text="Repeats whose percentile lay beyond the run.")


class ComparisonDeltaSerializer(serializers.Serializer):
    abs = serializers.FloatField(allow_null=True, help_text="value - baseline value (null: one of them lies "
                                                            "beyond the run)")
    rel = serializers.FloatField(allow_null=True, help_text="abs / |baseline value|")
    direction = serializers.ChoiceField(choices=["better", "worse", "same"], allow_null=True,
                                        help_text="For this metric (lower latency and cost, higher throughput); "
                                                  "null for metrics that are neither")
    within_spread = serializers.BooleanField(allow_null=True, help_text="The two min-max ranges overlap (null: "
                                                                        "fewer than 2 repeats on a side).")


_CMP = _comparison_serializers()


class ComparisonExperimentSerializer(serializers.Serializer):
    code = serializers.UUIDField()
    name = serializers.CharField()


class ComparisonGroupSerializer(serializers.Serializer):
    experiment = ComparisonExperimentSerializer()
    run = serializers.IntegerField()


class ComparisonScopeSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["run", "trials"], help_text="One run of an experiment, or pinned trials.")
    experiment = ComparisonExperimentSerializer(allow_null=True)
    run = serializers.IntegerField(allow_null=True, help_text="null: the experiment was never run (or several runs).")
    runs = serializers.ListField(child=serializers.IntegerField(), help_text="The experiment's runs, newest first "
                                                                            "(the run picker).")
    groups = ComparisonGroupSerializer(many=True, help_text="The (experiment, run) pairs the trials come from.")


class ComparisonSLOSerializer(serializers.Serializer):
    percentile = serializers.FloatField()
    key = serializers.CharField(help_text='e.g. "p99" or "p999"')
    label = serializers.CharField(help_text='e.g. "p99.9"')
    metric = serializers.CharField(help_text='The figure the SLO is on, e.g. "p99_ms".')
    latency_ms = serializers.FloatField()
    max_violation_rate = serializers.FloatField()
    min_throughput_rps = serializers.FloatField(allow_null=True)
    consistent = serializers.BooleanField(help_text="false: pinned trials with different SLOs (each verdict is "
                                                    "against its own; this is the first).")


class ComparisonMetricSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    unit = serializers.ChoiceField(choices=["ms", "count", "fraction", "rps", "usd"])
    better = serializers.ChoiceField(choices=["lower", "higher"], allow_null=True)
    beyond_run = serializers.BooleanField(help_text="A null value means beyond the run.")


class ComparisonPriceEntrySerializer(serializers.Serializer):
    name = serializers.CharField()
    accelerator = serializers.CharField()
    as_of = serializers.DateField()
    source = serializers.CharField()
    on_demand_usd_per_h = serializers.FloatField()
    serverless_usd_per_s = serializers.FloatField()
    granularity_s = serializers.FloatField()
    min_billed_s = serializers.FloatField()
    idle_tail_s = serializers.FloatField()
    gpu = serializers.BooleanField(help_text="false: a CPU price")


class ComparisonStoredPriceSerializer(serializers.Serializer):
    name = serializers.CharField()
    as_of = serializers.DateField(allow_null=True)
    changed = serializers.BooleanField(allow_null=True, help_text="The catalogue entry differs from the price the "
                                                                  "trials were billed with.")


class ComparisonNotRepricedSerializer(serializers.Serializer):
    trial = serializers.UUIDField()
    variant = serializers.CharField()
    repeat = serializers.IntegerField()
    reason = serializers.CharField()


class ComparisonPricingSerializer(serializers.Serializer):
    entry = ComparisonPriceEntrySerializer(allow_null=True, help_text="The entry the cost figures use.")
    repriced = serializers.BooleanField(help_text="Every cost was re-billed from its stored spans with entry.")
    stored = ComparisonStoredPriceSerializer(many=True, help_text="Prices the trials were billed with when they ran.")
    not_repriced = ComparisonNotRepricedSerializer(many=True, help_text="Trials that kept their stored costs.")
    note = serializers.CharField(help_text="Which entry and date the figures use.")


class ComparisonCostScaleSerializer(serializers.Serializer):
    per = serializers.IntegerField(help_text="1000 or 1000000 requests")
    factor = serializers.FloatField(help_text="Multiply a per-1,000 figure by this.")
    label = serializers.CharField()


class ComparisonDisplaySerializer(serializers.Serializer):
    cost_scale = ComparisonCostScaleSerializer(help_text="One unit for every per-request cost column.")


class ComparisonConfigSerializer(serializers.Serializer):
    sharing = serializers.CharField()
    runtime = serializers.CharField()
    batching_mode = serializers.CharField()
    max_batch_size = serializers.IntegerField()
    min_instances = serializers.IntegerField()
    max_instances = serializers.IntegerField()
    keep_alive_policy = serializers.CharField()
    keep_alive_ttl_s = serializers.FloatField()
    platform_delay_ms = serializers.FloatField(help_text="MODELLED")


class ComparisonVerdictCountsSerializer(serializers.Serializer):
    met = serializers.IntegerField()
    not_met = serializers.IntegerField()
    inconclusive = serializers.IntegerField()


class ComparisonVerdictSerializer(serializers.Serializer):
    verdict = serializers.ChoiceField(choices=["met", "not_met", "inconclusive"], allow_null=True,
                                      help_text="The repeats' verdict when they agree, inconclusive when they do "
                                                "not; null: no finished repeat yet")
    reasons = serializers.ListField(child=serializers.CharField())
    counts = ComparisonVerdictCountsSerializer(help_text="Repeats by verdict.")


class ComparisonIntervalSerializer(serializers.Serializer):
    estimate = serializers.FloatField(allow_null=True, help_text="null: beyond the run")
    low = serializers.FloatField(allow_null=True)
    high = serializers.FloatField(allow_null=True, help_text="null: beyond the run (or no interval)")
    method = serializers.CharField(allow_null=True, help_text='"moving-block bootstrap" (one repeat) or "min-max '
                                                              'of repeats"')
    confidence = serializers.FloatField(allow_null=True)
    beyond_run = serializers.IntegerField()


class ComparisonFunctionRowSerializer(serializers.Serializer):
    function = serializers.CharField()
    figures = _CMP["function_figures"]()
    deltas = _CMP["function_deltas"](allow_null=True)


class ComparisonBreakdownSerializer(serializers.Serializer):
    dispatch_lag = serializers.FloatField(allow_null=True)
    cold_start = serializers.FloatField(allow_null=True)
    platform_delay_modelled = serializers.FloatField(allow_null=True, help_text="MODELLED, not measured")
    batch_wait = serializers.FloatField(allow_null=True)
    queue_wait = serializers.FloatField(allow_null=True)
    compute = serializers.FloatField(allow_null=True)


class ComparisonFlagSerializer(serializers.Serializer):
    code = serializers.ChoiceField(choices=["single_repeat", "partial", "excluded", "no_results", "on_cpu",
                                            "cpu_priced_as_gpu", "dispatch_behind", "replay", "modelled_delay",
                                            "thread_runtime", "not_repriced"])
    text = serializers.CharField()


class ComparisonRepeatSerializer(serializers.Serializer):
    trial = serializers.UUIDField()
    repeat = serializers.IntegerField()
    status = serializers.CharField()
    url = serializers.CharField(help_text="The trial's page.")
    included = serializers.BooleanField(help_text="Counted in the row's figures (succeeded, with a summary).")
    verdict = serializers.ChoiceField(choices=["met", "not_met", "inconclusive"], allow_null=True)
    reasons = serializers.ListField(child=serializers.CharField())
    slo_interval = serializers.ListField(child=serializers.FloatField(allow_null=True), allow_null=True,
                                         help_text="The trial's 95 % interval of the SLO percentile")
    figures = _CMP["repeat_figures"]()
    price = serializers.CharField(allow_null=True, help_text="The price entry its costs use.")
    repriced = serializers.BooleanField()
    dispatch_behind = serializers.BooleanField(allow_null=True)
    notes = serializers.ListField(child=serializers.CharField())


class ComparisonCapacitySerializer(serializers.Serializer):
    search = serializers.UUIDField()
    url = serializers.CharField(help_text="Its page.")
    simulated = serializers.BooleanField()
    capacity_rps = serializers.FloatField(allow_null=True, help_text="Optimistic: highest rate not `not_met`.")
    conservative_capacity_rps = serializers.FloatField(allow_null=True, help_text="Highest rate whose probe was met.")
    p99_ms_at_capacity = serializers.FloatField(allow_null=True)
    cost_per_1k_usd_at_capacity = serializers.FloatField(allow_null=True, help_text="Provisioned, at that rate.")
    serverless_per_1k_usd_at_capacity = serializers.FloatField(allow_null=True)
    stopped = serializers.CharField(allow_null=True)
    finished_at = serializers.CharField(allow_null=True)


class ComparisonKneeSeriesSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    search = serializers.UUIDField()
    simulated = serializers.BooleanField()
    capacity_rps = serializers.FloatField(allow_null=True)
    conservative_capacity_rps = serializers.FloatField(allow_null=True)
    points = serializers.ListField(child=serializers.ListField(), help_text="[offered rate req/s, p99_ms | null, "
                                                                            "verdict] per probe that counts")


class ComparisonKneeSerializer(serializers.Serializer):
    slo_ms = serializers.FloatField()
    series = ComparisonKneeSeriesSerializer(many=True)


class ComparisonRowSerializer(serializers.Serializer):
    key = serializers.CharField(help_text="What baseline= takes.")
    label = serializers.CharField()
    variant = serializers.CharField()
    experiment = ComparisonExperimentSerializer()
    run = serializers.IntegerField()
    status = serializers.CharField(help_text="queued, running, or finished (every trial of the row finished)")
    trials = serializers.IntegerField()
    included = serializers.IntegerField(help_text="Repeats whose figures count.")
    baseline = serializers.BooleanField()
    always_on = serializers.BooleanField(help_text="min_instances >= 1")
    config = ComparisonConfigSerializer()
    verdict = ComparisonVerdictSerializer()
    slo_interval = ComparisonIntervalSerializer(help_text="Of the SLO percentile.")
    figures = _CMP["figures"]()
    deltas = _CMP["deltas"](allow_null=True, help_text="null for the baseline")
    functions = ComparisonFunctionRowSerializer(many=True, help_text="Per function (empty with one function).")
    breakdown_ms = ComparisonBreakdownSerializer(help_text="Medians across repeats.")
    isolation_level = serializers.ChoiceField(choices=["none", "process", "hardware partition"], allow_null=True)
    isolation = serializers.CharField(allow_null=True)
    runtime = serializers.CharField(allow_null=True)
    device = serializers.CharField(allow_null=True)
    on_cpu = serializers.BooleanField(allow_null=True)
    cpu_label = serializers.CharField(allow_null=True, help_text='e.g. "measured on CPU, priced as NVIDIA H100 '
                                                                 '80GB"')
    time_compression = serializers.FloatField(allow_null=True, help_text="> 1: an accelerated replay")
    platform_delay_ms = serializers.FloatField(allow_null=True, help_text="MODELLED")
    monthly_note = serializers.CharField(allow_null=True)
    dispatch_behind = serializers.BooleanField(allow_null=True)
    notes = serializers.ListField(child=serializers.CharField())
    flags = ComparisonFlagSerializer(many=True)
    repeats = ComparisonRepeatSerializer(many=True)
    representative = serializers.UUIDField(allow_null=True, help_text="The trial the time charts show.")
    capacity = ComparisonCapacitySerializer(allow_null=True, help_text="The variant's latest finished capacity "
                                                                       "search (null: none).")


class ComparisonParetoPointSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    x = serializers.FloatField(help_text="Serverless cost per 1,000 requests (median).")
    y = serializers.FloatField(help_text="SLO percentile in ms (median).")
    x_low = serializers.FloatField(allow_null=True)
    x_high = serializers.FloatField(allow_null=True)
    y_low = serializers.FloatField(allow_null=True)
    y_high = serializers.FloatField(allow_null=True)
    verdict = serializers.ChoiceField(choices=["met", "not_met", "inconclusive"], allow_null=True)
    on_front = serializers.BooleanField()


class ComparisonExcludedSerializer(serializers.Serializer):
    key = serializers.CharField()
    reason = serializers.CharField()


class ComparisonParetoSerializer(serializers.Serializer):
    x = serializers.CharField()
    y = serializers.CharField()
    slo_ms = serializers.FloatField()
    points = ComparisonParetoPointSerializer(many=True)
    front = serializers.ListField(child=serializers.CharField(), help_text="Row keys, cheapest first.")
    excluded = ComparisonExcludedSerializer(many=True)


class ComparisonSavingSerializer(serializers.Serializer):
    per_1k_usd = serializers.FloatField(help_text="Baseline minus chosen, serverless, per 1,000 requests.")
    relative = serializers.FloatField(allow_null=True)
    monthly_usd = serializers.FloatField(allow_null=True, help_text="null for a compressed replay")


class ComparisonUndecidedSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    reasons = serializers.ListField(child=serializers.CharField())
    more_requests = serializers.IntegerField(allow_null=True)
    more_seconds = serializers.FloatField(allow_null=True, help_text="At the repeat's own request rate.")
    more_repeats = serializers.IntegerField(allow_null=True)
    rule = serializers.CharField(help_text="How the need was estimated.")


class ComparisonRecommendationSerializer(serializers.Serializer):
    case = serializers.ChoiceField(choices=["met", "none_met", "undecided", "no_results"])
    text = serializers.CharField()
    variant = serializers.CharField(allow_null=True, help_text="The recommended row (case met).")
    closest = serializers.CharField(allow_null=True, help_text="The closest failing row (case none_met).")
    margin_ms = serializers.FloatField(allow_null=True, help_text="Target minus the recommended row's percentile.")
    saving = ComparisonSavingSerializer(allow_null=True)
    inconclusive = ComparisonUndecidedSerializer(many=True)


@extend_schema_field({"type": "array", "items": {"type": "array", "items": {"type": "number", "nullable": True}}})
class ComparisonPointsField(serializers.Field):
    """Chart points as they are ([x, y, ...] arrays): thousands of them, so not field by field."""

    def to_representation(self, value):
        return value


class ComparisonCdfSeriesSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    points = ComparisonPointsField(help_text="[latency_ms, fraction of all requests], at most max_points")
    reaches = serializers.FloatField(allow_null=True, help_text="Where the curve stops: completed / requests.")
    unfinished_share = serializers.FloatField(allow_null=True)
    requests = serializers.IntegerField()
    repeats = serializers.IntegerField(help_text="Repeats pooled.")
    missing = serializers.ListField(child=serializers.UUIDField(), help_text="Trials without a readable artifact.")


class ComparisonCdfSerializer(serializers.Serializer):
    slo_ms = serializers.FloatField()
    series = ComparisonCdfSeriesSerializer(many=True)


class ComparisonTimeSeriesSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    trial = serializers.UUIDField(allow_null=True)
    repeat = serializers.IntegerField(allow_null=True)
    points = ComparisonPointsField(help_text="[t_s, p99_ms or null]")


class ComparisonP99Serializer(serializers.Serializer):
    slo_ms = serializers.FloatField()
    series = ComparisonTimeSeriesSerializer(many=True)


class ComparisonInstancesSeriesSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    trial = serializers.UUIDField(allow_null=True)
    repeat = serializers.IntegerField(allow_null=True)
    points = ComparisonPointsField(help_text="[t_s, starting, idle, busy]")
    cold_starts = ComparisonPointsField(help_text="[t_s, cold starts begun] where there were any")


class ComparisonInstancesSerializer(serializers.Serializer):
    series = ComparisonInstancesSeriesSerializer(many=True)


class ComparisonBreakdownSeriesSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    values = ComparisonBreakdownSerializer()


class ComparisonBreakdownChartSerializer(serializers.Serializer):
    components = serializers.ListField(child=serializers.CharField())
    labels = serializers.DictField(child=serializers.CharField())
    modelled = serializers.ListField(child=serializers.CharField())
    series = ComparisonBreakdownSeriesSerializer(many=True)


class ComparisonChartsSerializer(serializers.Serializer):
    max_points = serializers.IntegerField()
    cdf = ComparisonCdfSerializer()
    p99_over_time = ComparisonP99Serializer()
    instances = ComparisonInstancesSerializer()
    breakdown = ComparisonBreakdownChartSerializer()
    knee = ComparisonKneeSerializer(help_text="p99 against offered rate from each row's capacity search.")


class ComparisonSerializer(serializers.Serializer):
    """Every variant side by side (`controlplane.experiments.comparison`, whose docstring explains each field)."""

    version = serializers.IntegerField()
    scope = ComparisonScopeSerializer()
    slo = ComparisonSLOSerializer()
    metrics = ComparisonMetricSerializer(many=True, help_text="The keys of every figures object, in table order.")
    pricing = ComparisonPricingSerializer()
    display = ComparisonDisplaySerializer()
    baseline = serializers.CharField(allow_null=True, help_text="The baseline row's key.")
    rows = ComparisonRowSerializer(many=True)
    pareto = ComparisonParetoSerializer(help_text="Lower is better on both axes.")
    recommendation = ComparisonRecommendationSerializer()
    charts = ComparisonChartsSerializer(allow_null=True, help_text="null with charts=false")
    live = serializers.BooleanField(help_text="Some trial is still queued or running.")
    live_trials = serializers.ListField(child=serializers.UUIDField(), help_text="Their codes (channel groups "
                                                                                 "trial.<code>).")
    notes = serializers.ListField(child=serializers.CharField())
