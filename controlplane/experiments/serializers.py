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
class SLODocument(serializers.Serializer):
    percentile = serializers.ChoiceField(choices=list(S.PERCENTILES), help_text="Latency percentile the SLO is on.")
    latency_ms = serializers.FloatField(min_value=0, max_value=S.MAX_LATENCY_MS,
                                        help_text="The percentile must stay under this (above 0).")
    max_violation_rate = serializers.FloatField(required=False, min_value=0, max_value=1, default=0.01,
                                                help_text="Fraction of requests that may be late or dropped.")
    min_throughput_rps = serializers.FloatField(required=False, allow_null=True, min_value=0)


class FunctionDocument(serializers.Serializer):
    name = serializers.RegexField(S.NAME_RE.pattern, max_length=64)
    model = serializers.CharField(max_length=100, help_text="A model zoo key (GET /api/models/).")
    input_shape = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=4096), min_length=1,
                                        max_length=4, required=False, allow_null=True,
                                        help_text="Per-request input shape, no batch dimension; default: "
                                                  "the model's.")
    options = serializers.DictField(required=False, help_text="Model options (see docs/spec.md).")
    weight = serializers.FloatField(required=False, default=1.0, min_value=0,
                                    help_text="Share of a workload split across functions (above 0).")


class WorkloadDocument(serializers.Serializer):
    pattern = serializers.ChoiceField(choices=list(S.PATTERNS))
    duration_s = serializers.FloatField(min_value=0, max_value=S.MAX_DURATION_S,
                                        help_text="Length in workload time (above 0).")
    time_compression = serializers.FloatField(required=False, default=1.0, min_value=1, max_value=S.MAX_COMPRESSION,
                                              help_text="The trial runs duration_s / time_compression wall-clock "
                                                        f"seconds (at most {S.MAX_RUN_S:.0f}).")
    seed = serializers.IntegerField(required=False, default=0, min_value=0, max_value=2**32 - 1)
    function = serializers.CharField(required=False, allow_null=True,
                                     help_text="Target function; absent: split across all functions by weight.")
    rate_rps = serializers.FloatField(required=False, max_value=S.MAX_RATE_RPS, help_text="constant, poisson, gamma")
    cv = serializers.FloatField(required=False, max_value=S.MAX_CV, help_text="gamma; optional for trace")
    steps = serializers.ListField(child=serializers.ListField(child=serializers.FloatField(), min_length=2,
                                                              max_length=2),
                                  required=False, max_length=S.MAX_STEPS,
                                  help_text="steps: [[start_s, rate_rps], ...], first at 0")
    mean_rate_rps = serializers.FloatField(required=False, help_text="diurnal")
    peak_to_trough = serializers.FloatField(required=False, help_text="diurnal (default 4)")
    period_s = serializers.FloatField(required=False, help_text="diurnal (default 86400)")
    base_rate_rps = serializers.FloatField(required=False, help_text="burst")
    burst_rate_rps = serializers.FloatField(required=False, help_text="burst")
    mean_on_s = serializers.FloatField(required=False, help_text="burst")
    mean_off_s = serializers.FloatField(required=False, help_text="burst")
    trace_format = serializers.ChoiceField(choices=list(S.TRACE_FORMATS), required=False, help_text="trace")
    trace_content = serializers.CharField(required=False,
                                          help_text=f"trace: the file's text (at most "
                                                    f"{S.MAX_TRACE_BYTES // (1024 * 1024)} MiB)")
    trace_filename = serializers.CharField(required=False, max_length=200, help_text="trace")
    function_hash = serializers.CharField(required=False, max_length=200,
                                          help_text="trace: only this function's rows")


class BatchingDocument(serializers.Serializer):
    mode = serializers.ChoiceField(choices=list(S.BATCHING_MODES), default="none")
    max_batch_size = serializers.IntegerField(required=False, min_value=1, max_value=S.MAX_BATCH_SIZE)
    max_queue_delay_ms = serializers.FloatField(required=False, min_value=0, max_value=S.MAX_QUEUE_DELAY_MS)
    shed = serializers.BooleanField(required=False, help_text="adaptive only")


class KeepAliveDocument(serializers.Serializer):
    policy = serializers.ChoiceField(choices=list(S.KEEP_ALIVE_POLICIES), default="fixed")
    ttl_s = serializers.FloatField(required=False, min_value=0, max_value=S.MAX_TTL_S, default=60.0)
    bin_s = serializers.FloatField(required=False, help_text="histogram")
    range_s = serializers.FloatField(required=False, help_text="histogram")
    head_percentile = serializers.FloatField(required=False, help_text="histogram")
    tail_percentile = serializers.FloatField(required=False, help_text="histogram")
    min_samples = serializers.IntegerField(required=False, help_text="histogram")


class VariantDocument(serializers.Serializer):
    name = serializers.RegexField(S.NAME_RE.pattern, max_length=64)
    sharing = serializers.ChoiceField(choices=list(S.SHARING_MODES), default="exclusive")
    share = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1,
                                   help_text="spatial: fraction of the device per instance")
    batching = BatchingDocument(required=False)
    min_instances = serializers.IntegerField(required=False, default=1, min_value=0, max_value=S.MAX_INSTANCES)
    max_instances = serializers.IntegerField(required=False, default=1, min_value=1, max_value=S.MAX_INSTANCES)
    target_concurrency = serializers.FloatField(required=False, default=1.0, max_value=S.MAX_TARGET_CONCURRENCY)
    keep_alive = KeepAliveDocument(required=False)
    repeats = serializers.IntegerField(required=False, default=1, min_value=1, max_value=S.MAX_REPEATS)


class SpecDocument(serializers.Serializer):
    """An experiment spec: the format of spec files and of the API's request and response bodies."""

    spec_version = serializers.IntegerField(required=False, default=1)
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, max_length=5_000)
    notes = serializers.CharField(required=False, allow_blank=True, max_length=20_000)
    device = serializers.RegexField(S.DEVICE_RE.pattern, required=False, default="auto",
                                    help_text="auto, cpu, cuda or cuda:N")
    accelerator = serializers.CharField(required=False, allow_null=True,
                                        help_text="Price catalogue entry used for costs (GET /api/prices/).")
    slo = SLODocument(required=False)
    functions = FunctionDocument(many=True, help_text=f"1 to {S.MAX_FUNCTIONS} functions")
    workload = WorkloadDocument(required=False, help_text="One workload split across all functions by weight.")
    workloads = WorkloadDocument(many=True, required=False,
                                 help_text="Or one workload per function, each naming its function.")
    variants = VariantDocument(many=True, help_text=f"1 to {S.MAX_VARIANTS} configurations to compare")


class RunRequest(serializers.Serializer):
    repeats = serializers.IntegerField(required=False, min_value=1, max_value=S.MAX_REPEATS,
                                       help_text="Repeats of every variant (default: each variant's own).")
    variants = serializers.ListField(child=serializers.CharField(), required=False, min_length=1,
                                     help_text="Run only these variants (default: all).")


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


class ExperimentDetailSerializer(ExperimentSerializer):
    spec = serializers.SerializerMethodField(help_text="The experiment as a spec document (what PUT takes).")
    runs = serializers.SerializerMethodField(help_text="Run numbers, newest first.")

    @extend_schema_field(SpecDocument)
    def get_spec(self, obj) -> dict:
        return spec_io.experiment_to_dict(obj)

    def get_runs(self, obj) -> list[int]:
        return selectors.experiment_runs(experiment=obj)


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
    monthly_serverless_usd = serializers.FloatField(allow_null=True,
                                                    help_text="projected at the workload's uncompressed rate")
    monthly_provisioned_usd = serializers.FloatField(allow_null=True)


class TrialRowSerializer(serializers.Serializer):
    """A trial's figures (`selectors.trial_result_row`); figures are null until the trial has a summary."""

    trial = serializers.UUIDField(help_text="The trial's code.")
    url = serializers.SerializerMethodField()
    variant = serializers.CharField()
    repeat = serializers.IntegerField()
    run_number = serializers.IntegerField()
    status = serializers.CharField()
    device = serializers.CharField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    requests = serializers.IntegerField(allow_null=True)
    completed = serializers.IntegerField(allow_null=True)
    dropped = serializers.IntegerField(allow_null=True)
    errors = serializers.IntegerField(allow_null=True)
    latency_ms = LatencySerializer()
    slo_percentile_ci_ms = serializers.ListField(child=serializers.FloatField(), allow_null=True,
                                                 help_text="95 % confidence interval [low, high] of the SLO "
                                                           "percentile")
    slo_met = serializers.BooleanField(allow_null=True)
    violation_rate = serializers.FloatField(allow_null=True)
    throughput_rps = serializers.FloatField(allow_null=True)
    goodput_rps = serializers.FloatField(allow_null=True)
    cold_starts = serializers.IntegerField(allow_null=True)
    cold_start_ms = ColdStartSerializer()
    mean_batch_size = serializers.FloatField(allow_null=True)
    cost = CostSerializer()
    simulated = serializers.BooleanField(allow_null=True)
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
