"""The control plane's data model.

Field rules live in one place, `workers.spec` (the spec validator), which forms, the API and spec
imports all go through; the database adds the constraints it can enforce on its own so that no path
(admin, shell, a bug) stores a row the engine would reject.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models, transaction
from django.db.models import F, Q
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.urls import reverse

from workers import spec as S

PERCENTILE_CHOICES = [(p, f"p{p:g}") for p in S.PERCENTILES]
DEVICE_HELP = "auto, cpu, cuda or cuda:N"
D = S.DEFAULTS  # every field default comes from the spec's one table


def in_bounds(field: str, rule: str, name: str) -> models.CheckConstraint:
    """`field` within the bounds of FIELD_RULES[rule] (a null passes: nullable fields are optional)."""
    r = S.FIELD_RULES[rule]
    low = Q(**{f"{field}__gt" if r.low_open else f"{field}__gte": r.low})
    condition = low & Q(**{f"{field}__lte": r.high}) if r.high is not None else low
    if r.default is None:
        condition = Q(**{f"{field}__isnull": True}) | condition
    return models.CheckConstraint(condition=condition, name=name)


class PriceEntry(models.Model):
    """One accelerator's dated prices, used to cost trials. Seeded by a data migration; editable in admin."""

    name = models.CharField(max_length=100, unique=True)
    accelerator = models.CharField(max_length=100, help_text="e.g. NVIDIA H100 80GB, or CPU")
    memory_gb = models.FloatField(default=0)
    on_demand_usd_per_h = models.FloatField(help_text="provisioned (always-on) price per device-hour")
    serverless_usd_per_s = models.FloatField(help_text="serverless price per device-second")
    granularity_s = models.FloatField(default=1.0, help_text="billing rounds each instance up to this")
    min_billed_s = models.FloatField(default=0.0)
    idle_tail_s = models.FloatField(default=0.0, help_text="billed idle time after the last request")
    as_of = models.DateField()
    source = models.TextField()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(on_demand_usd_per_h__gte=0), name="price_on_demand_non_negative"),
            models.CheckConstraint(condition=Q(serverless_usd_per_s__gte=0), name="price_serverless_non_negative"),
            models.CheckConstraint(condition=Q(granularity_s__gt=0), name="price_granularity_positive"),
            models.CheckConstraint(condition=Q(min_billed_s__gte=0) & Q(idle_tail_s__gte=0),
                                   name="price_billing_times_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.name} (as of {self.as_of:%Y-%m-%d})"

    def to_spec(self) -> S.PriceSpec:
        return S.PriceSpec(name=self.name, on_demand_usd_per_h=self.on_demand_usd_per_h,
                           serverless_usd_per_s=self.serverless_usd_per_s, granularity_s=self.granularity_s,
                           min_billed_s=self.min_billed_s, idle_tail_s=self.idle_tail_s, memory_gb=self.memory_gb)


class Experiment(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="experiments")
    device = models.CharField(max_length=16, default=D["device"], help_text=DEVICE_HELP)
    accelerator = models.ForeignKey(PriceEntry, null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="experiments")
    notes = models.TextField(blank=True)
    # The sweep as the user wrote it (workers.spec.sweep_to_dict), or None. Its variants are stored as
    # Variant rows too (from_sweep=True), so trials and comparisons treat them like any other.
    sweep = models.JSONField(null=True, blank=True, help_text="grid of variant fields (docs/spec.md, Sweeps)")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated"]
        constraints = [
            models.CheckConstraint(condition=Q(device__regex=r"^(auto|cpu|cuda|cuda:[0-9]{1,2})$"),
                                   name="experiment_device_valid"),
        ]
        indexes = [
            # the experiment list: "my experiments, most recently touched first"
            models.Index(fields=["owner", "-updated"], name="experiment_owner_updated"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("experiment-detail", kwargs={"code": self.code})


class SLOTarget(models.Model):
    experiment = models.OneToOneField(Experiment, on_delete=models.CASCADE, related_name="slo")
    percentile = models.FloatField(choices=PERCENTILE_CHOICES, default=D["slo.percentile"])
    latency_ms = models.FloatField(default=D["slo.latency_ms"])
    max_violation_rate = models.FloatField(default=D["slo.max_violation_rate"])
    min_throughput_rps = models.FloatField(null=True, blank=True)  # default None, as D["slo.min_throughput_rps"]

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(percentile__in=list(S.PERCENTILES)), name="slo_percentile_listed"),
            in_bounds("latency_ms", "slo.latency_ms", "slo_latency_in_bounds"),
            in_bounds("max_violation_rate", "slo.max_violation_rate", "slo_violation_rate_is_a_fraction"),
            models.CheckConstraint(condition=Q(min_throughput_rps__isnull=True) | Q(min_throughput_rps__gt=0),
                                   name="slo_min_throughput_positive"),
        ]

    def to_spec(self) -> S.SLOSpec:
        return S.SLOSpec(percentile=self.percentile, latency_ms=self.latency_ms,
                         max_violation_rate=self.max_violation_rate, min_throughput_rps=self.min_throughput_rps)


class Function(models.Model):
    """A model deployment inside an experiment. Several functions are how sharing is studied."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="functions")
    position = models.PositiveSmallIntegerField(default=0)
    name = models.CharField(max_length=64)
    model_key = models.CharField(max_length=100)
    input_shape = models.JSONField(null=True, blank=True)
    options = models.JSONField(default=dict, blank=True)
    weight = models.FloatField(default=D["function.weight"], help_text="share of a workload split across functions")
    model_runtime = models.CharField(max_length=16, choices=[(r, r) for r in S.MODEL_RUNTIMES],
                                     default=D["function.model_runtime"],
                                     help_text="what runs the model: torch, or onnxruntime (uploaded ONNX models)")

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "name"], name="function_name_unique_in_experiment"),
            models.CheckConstraint(condition=Q(weight__gt=0), name="function_weight_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    def to_spec(self) -> S.FunctionSpec:
        return S.FunctionSpec(name=self.name, model=self.model_key,
                              input_shape=tuple(self.input_shape) if self.input_shape else None,
                              options=dict(self.options or {}), weight=self.weight,
                              model_runtime=self.model_runtime)


def trace_upload_to(instance: Workload, filename: str) -> str:
    return f"traces/{instance.experiment.code}/{uuid.uuid4().hex}-{filename[-80:]}"


class Workload(models.Model):
    """A load pattern. function=None: one workload split across all functions by their weight."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="workloads")
    function = models.OneToOneField(Function, null=True, blank=True, on_delete=models.CASCADE,
                                    related_name="workload")
    pattern = models.CharField(max_length=16, choices=[(p, p) for p in S.PATTERNS])
    params = models.JSONField(default=dict, blank=True, help_text="pattern parameters, validated by workers.spec")
    duration_s = models.FloatField()
    time_compression = models.FloatField(default=D["workload.time_compression"])
    seed = models.BigIntegerField(default=D["workload.seed"])
    trace_file = models.FileField(upload_to=trace_upload_to, null=True, blank=True)
    trace_format = models.CharField(max_length=16, blank=True, choices=[(f, f) for f in S.TRACE_FORMATS])
    trace_filename = models.CharField(max_length=200, blank=True)
    function_hash = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(pattern__in=list(S.PATTERNS)), name="workload_pattern_known"),
            in_bounds("duration_s", "workload.duration_s", "workload_duration_in_bounds"),
            in_bounds("time_compression", "workload.time_compression", "workload_compression_in_bounds"),
            models.CheckConstraint(condition=Q(seed__gte=0), name="workload_seed_non_negative"),
            models.CheckConstraint(condition=~Q(pattern="trace") | (Q(trace_file__gt="") & Q(trace_format__gt="")),
                                   name="workload_trace_has_file"),
        ]

    def trace_content(self) -> str | None:
        if not self.trace_file:
            return None
        with self.trace_file.open("rb") as fh:
            return fh.read().decode("utf-8")

    def to_spec(self) -> S.WorkloadSpec:
        trace = None
        if self.pattern == "trace":
            trace = S.TraceSpec(format=self.trace_format, content=self.trace_content() or "",
                                filename=self.trace_filename, function_hash=self.function_hash)
        return S.WorkloadSpec(pattern=self.pattern, params=dict(self.params or {}), duration_s=self.duration_s,
                              time_compression=self.time_compression, seed=self.seed,
                              function=self.function.name if self.function_id else None, trace=trace)


class Variant(models.Model):
    """One configuration to compare."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="variants")
    position = models.PositiveSmallIntegerField(default=0)
    name = models.CharField(max_length=64)
    sharing = models.CharField(max_length=16, choices=[(m, m) for m in S.SHARING_MODES],
                               default=D["variant.sharing"])
    share = models.FloatField(null=True, blank=True, help_text="spatial: fraction of the device per instance "
                                                               "(null, the default: 1 / max instances)")
    runtime = models.CharField(max_length=16, choices=[(r, r) for r in S.RUNTIMES], default=D["variant.runtime"],
                               help_text="process: each instance its own worker process; thread: instances share "
                                         "one process (no isolation)")
    batching_mode = models.CharField(max_length=16, choices=[(m, m) for m in S.BATCHING_MODES],
                                     default=D["variant.batching.mode"])
    max_batch_size = models.PositiveIntegerField(default=D["variant.batching.max_batch_size"],
                                                 help_text="fixed and adaptive batching (mode none: 1)")
    max_queue_delay_ms = models.FloatField(default=D["variant.batching.max_queue_delay_ms"])
    shed = models.BooleanField(default=D["variant.batching.shed"])
    min_instances = models.PositiveSmallIntegerField(default=D["variant.min_instances"])
    max_instances = models.PositiveSmallIntegerField(default=D["variant.max_instances"])
    target_concurrency = models.FloatField(default=D["variant.target_concurrency"])
    keep_alive_policy = models.CharField(max_length=16, choices=[(p, p) for p in S.KEEP_ALIVE_POLICIES],
                                         default=D["variant.keep_alive.policy"])
    keep_alive_ttl_s = models.FloatField(default=D["variant.keep_alive.ttl_s"])
    keep_alive_params = models.JSONField(default=dict, blank=True, help_text="histogram policy parameters")
    platform_delay_ms = models.FloatField(default=D["variant.platform_delay_ms"],
                                          help_text="MODELLED delay added to each real cold start (provisioning, "
                                                    "image pull); 0: only what really ran")
    repeats = models.PositiveSmallIntegerField(default=D["variant.repeats"])
    model_runtime = models.CharField(max_length=16, null=True, blank=True, default=D["variant.model_runtime"],
                                     choices=[(r, r) for r in S.MODEL_RUNTIMES],
                                     help_text="overrides the functions' model runtime for zoo models (null: theirs)")
    from_sweep = models.BooleanField(default=False, help_text="made by the experiment's sweep: edit the sweep, "
                                                              "not the row")

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "name"], name="variant_name_unique_in_experiment"),
            models.CheckConstraint(condition=Q(min_instances__lte=F("max_instances")), name="variant_min_le_max"),
            in_bounds("max_instances", "variant.max_instances", "variant_max_instances_in_bounds"),
            in_bounds("max_batch_size", "variant.batching.max_batch_size", "variant_batch_size_in_bounds"),
            in_bounds("max_queue_delay_ms", "variant.batching.max_queue_delay_ms", "variant_queue_delay_in_bounds"),
            models.CheckConstraint(condition=Q(target_concurrency__gt=0), name="variant_target_concurrency_positive"),
            models.CheckConstraint(condition=Q(keep_alive_ttl_s__gte=0), name="variant_ttl_non_negative"),
            in_bounds("repeats", "variant.repeats", "variant_repeats_in_bounds"),
            in_bounds("share", "variant.share", "variant_share_is_a_fraction"),
            models.CheckConstraint(condition=Q(runtime__in=list(S.RUNTIMES)), name="variant_runtime_known"),
            models.CheckConstraint(condition=~(Q(sharing="spatial") & Q(runtime="thread")),
                                   name="variant_spatial_runs_processes"),
            in_bounds("platform_delay_ms", "variant.platform_delay_ms", "variant_platform_delay_in_bounds"),
        ]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def spec_fields(v: S.VariantSpec) -> dict:
        """The row's fields for a variant spec (the reverse of `to_spec`), as the services store them."""
        ka = v.keep_alive
        return dict(
            sharing=v.sharing, share=v.share, runtime=v.runtime,
            batching_mode=v.batching.mode, max_batch_size=v.batching.max_batch_size,
            max_queue_delay_ms=v.batching.max_queue_delay_ms, shed=v.batching.shed,
            min_instances=v.min_instances, max_instances=v.max_instances, target_concurrency=v.target_concurrency,
            keep_alive_policy=ka.policy, keep_alive_ttl_s=ka.ttl_s,
            keep_alive_params=(dict(bin_s=ka.bin_s, range_s=ka.range_s, head_percentile=ka.head_percentile,
                                    tail_percentile=ka.tail_percentile, min_samples=ka.min_samples)
                               if ka.policy == "histogram" else {}),
            platform_delay_ms=v.platform_delay_ms, repeats=v.repeats, model_runtime=v.model_runtime,
        )

    def to_spec(self) -> S.VariantSpec:
        ka = dict(self.keep_alive_params or {})
        return S.VariantSpec(
            name=self.name, sharing=self.sharing, share=self.share, runtime=self.runtime,
            platform_delay_ms=self.platform_delay_ms,
            batching=S.BatchingSpec(mode=self.batching_mode, max_batch_size=self.max_batch_size,
                                    max_queue_delay_ms=self.max_queue_delay_ms, shed=self.shed),
            min_instances=self.min_instances, max_instances=self.max_instances,
            target_concurrency=self.target_concurrency,
            keep_alive=S.KeepAliveSpec(policy=self.keep_alive_policy, ttl_s=self.keep_alive_ttl_s, **ka),
            repeats=self.repeats, model_runtime=self.model_runtime,
        )


class RunSpec(models.Model):
    """An experiment spec dict frozen at Run (trace text inlined), stored ONCE: every trial of the run points at
    it, and a later run of the unchanged experiment finds it by its hash (`services.run_spec_store`). So a trace
    is stored once per distinct spec, never once per trial, and editing the experiment never changes what a
    queued or finished trial runs. Read it as `trial.spec`; lists and polls never load it."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="run_specs")
    sha256 = models.CharField(max_length=64, help_text="of the canonical JSON (sorted keys, compact)")
    size_bytes = models.PositiveBigIntegerField(help_text="length of the canonical JSON")
    spec = models.JSONField(help_text="experiment spec dict frozen at enqueue time")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["experiment", "sha256"], name="run_spec_unique_per_experiment"),
        ]

    def __str__(self) -> str:
        return f"spec {self.sha256[:12]} of experiment {self.experiment_id}"


class Trial(models.Model):
    """One run of one variant (one repeat). `run_spec` is the frozen plain spec it runs (shared by the run's
    trials), so later edits of the experiment never change what a queued or finished trial measured. What
    lists, polls and the queue need from it is copied onto the row at Run: `run_s`, `expected_requests`,
    `time_limit_s`."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="trials")
    variant = models.ForeignKey(Variant, null=True, on_delete=models.SET_NULL, related_name="trials")
    variant_name = models.CharField(max_length=64)  # kept when the variant is later deleted
    run_number = models.PositiveIntegerField(default=1)  # each press of Run is one run of the experiment
    repeat = models.PositiveSmallIntegerField(default=0)
    run_spec = models.ForeignKey(RunSpec, on_delete=models.CASCADE, related_name="trials")
    # From the frozen spec at Run, so nobody parses a spec to show or schedule a trial:
    run_s = models.FloatField(help_text="wall-clock seconds of workload (the longest workload's run time)")
    expected_requests = models.FloatField(help_text="about how many arrivals, over all workloads (what "
                                                    "MAX_REQUESTS caps)")
    time_limit_s = models.FloatField(help_text="the Celery soft time limit it is sent with (hard: 120 s more)")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    queue = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    device = models.CharField(max_length=64, blank=True)
    # The physical device it ran on, as its lease names it (DEVICE_ID, a GPU's UUID, or host:device).
    device_id = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When its Celery message was last handed to the broker; None while none has been (the broker was down
    # at Run): the reaper (controlplane.experiments.reaper) sends it then.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # The device lease its worker holds (key and token), so a reaper can free exactly that lease when the
    # worker is lost, and never a lease someone else has taken since.
    lease_key = models.CharField(max_length=200, blank=True)
    lease_token = models.CharField(max_length=300, blank=True)
    error = models.TextField(blank=True)
    summary = models.JSONField(null=True, blank=True)
    artifact = models.FileField(upload_to="artifacts/", null=True, blank=True)
    # Null: a real run on a device. Otherwise a SIMULATED trial (workers.platform.sim) and how:
    # {"devices": N, "placement": "first_fit" | "load_pack", "profiles": {function name: profile code} | {}}.
    simulation = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-run_number", "variant_name", "repeat"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "run_number", "variant_name", "repeat"],
                                    name="trial_unique_per_run_variant_repeat"),
            models.CheckConstraint(condition=Q(status__in=["queued", "running", "succeeded", "failed", "cancelled"]),
                                   name="trial_status_known"),
        ]
        indexes = [
            # experiment page and comparison: "trials of this experiment, newest run first"
            models.Index(fields=["experiment", "-run_number"], name="trial_experiment_run"),
            # stale-trial sweeps: "running trials whose heartbeat is old"
            models.Index(fields=["status", "heartbeat_at"], name="trial_status_heartbeat"),
        ]

    def __str__(self) -> str:
        return f"{self.variant_name} #{self.repeat} (run {self.run_number})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def simulated(self) -> bool:
        return self.simulation is not None

    @property
    def spec(self) -> dict:
        """The frozen experiment spec dict this trial runs (its run's `RunSpec`; one query unless joined)."""
        return self.run_spec.spec

    def get_absolute_url(self) -> str:
        return reverse("trial-detail", kwargs={"code": self.code})


class TrialWindow(models.Model):
    """One second of a trial: what the live page plots, kept for the comparison page afterwards."""

    trial = models.ForeignKey(Trial, on_delete=models.CASCADE, related_name="windows")
    index = models.PositiveIntegerField()
    t_s = models.FloatField()
    data = models.JSONField()

    class Meta:
        ordering = ["trial", "index"]
        constraints = [
            models.UniqueConstraint(fields=["trial", "index"], name="window_unique_per_trial_second"),
        ]


class Pin(models.Model):
    """A trial in a user's "compare" basket: trials of any run or experiment, opened on one comparison page.
    Stored per user so the basket (and its link) outlives the session."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="pins")
    trial = models.ForeignKey(Trial, on_delete=models.CASCADE, related_name="pins")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]
        constraints = [
            models.UniqueConstraint(fields=["user", "trial"], name="pin_unique_per_user_trial"),
        ]

    def __str__(self) -> str:
        return f"{self.user} pinned {self.trial}"


EXPORT_FORMATS = ("csv", "json", "html", "pdf", "pptx", "zip")


class Export(models.Model):
    """One export of a comparison (a run of an experiment, or a pinned set of trials) in one format
    (controlplane.experiments.reports.exports): made in the background by a Celery task on the `reports`
    queue (small ones inline), stored under MEDIA_ROOT with a generated name and served only to its owner."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="exports")
    experiment = models.ForeignKey(Experiment, null=True, blank=True, on_delete=models.CASCADE,
                                   related_name="exports", help_text="None: a pinned set of trials (`trials`)")
    run_number = models.PositiveIntegerField(null=True, blank=True)
    trials = models.JSONField(default=list, blank=True, help_text="a pinned set's trial codes, in table order")
    format = models.CharField(max_length=8, choices=[(f, f) for f in EXPORT_FORMATS])
    baseline = models.CharField(max_length=200, blank=True)
    price = models.CharField(max_length=100, blank=True, help_text="a price entry's name to re-bill with")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0, help_text="0 to 1")
    stage = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    file = models.FileField(upload_to="exports/", null=True, blank=True)
    filename = models.CharField(max_length=255, blank=True, help_text="the name the download is saved as")
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(format__in=list(EXPORT_FORMATS)), name="export_format_known"),
            models.CheckConstraint(condition=Q(status__in=["queued", "running", "succeeded", "failed"]),
                                   name="export_status_known"),
            models.CheckConstraint(condition=Q(progress__gte=0) & Q(progress__lte=1), name="export_progress_0_1"),
        ]

    def __str__(self) -> str:
        return f"{self.format} export of {self.experiment or 'pinned trials'} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED)


class Profile(models.Model):
    """A measured profile of one function model on one device (workers.profiling): service time per batch size
    and sharing level, runtime overhead, cold-start phases. `data` is the profile dict itself (version 1), the
    document the simulator reads and the JSON export serves. Any experiment with the same model, options,
    input shape and device reuses the newest one (selectors `find_profile`, matched on `key`)."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    FINISHED = (Status.SUCCEEDED, Status.FAILED)

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="profiles", help_text="None: shared (measured by a command)")
    experiment = models.ForeignKey(Experiment, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="profiles", help_text="the experiment whose page asked for it")
    key = models.CharField(max_length=64, help_text="workers.profiling.profile_key(model, options, shape, device)")
    model = models.CharField(max_length=200)
    options = models.JSONField(default=dict, blank=True)
    input_shape = models.JSONField(null=True, blank=True)
    device = models.CharField(max_length=16, help_text="the device measured (cpu, cuda:N), or the one asked for")
    hardware = models.CharField(max_length=500, blank=True, help_text="one line: device, cores, memory, torch")
    asked = models.JSONField(default=dict, blank=True, help_text="what was asked: samples, max batch size, cold starts, short")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    queue = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    stage = models.CharField(max_length=200, blank=True, help_text="the last progress line")
    error = models.TextField(blank=True)
    data = models.JSONField(null=True, blank=True, help_text="the profile dict (version 1) once measured")
    # The latest validate_simulator run that drew from this profile: when, which spec, and per variant the relative
    # errors of simulated vs real p50, p99, throughput and cold starts (shown beside every simulated result).
    validation = models.JSONField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=["queued", "running", "succeeded", "failed"]),
                                   name="profile_status_known"),
            models.CheckConstraint(condition=~Q(status="succeeded") | Q(data__isnull=False),
                                   name="profile_succeeded_has_data"),
        ]
        indexes = [
            # find_profile: "the newest finished profile with this key"
            models.Index(fields=["key", "status", "-finished_at"], name="profile_key_status_finished"),
        ]

    def __str__(self) -> str:
        return f"{self.model} on {self.device} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    def get_absolute_url(self) -> str:
        return reverse("profile-detail", kwargs={"code": self.code})


class CapacitySearch(models.Model):
    """A search for one variant's capacity at the SLO (workers.capacity): the highest offered rate at which it
    still meets the SLO. Its probes are ordinary trials of the experiment `probes_experiment` ("<name> capacity
    <variant>"), run one after another by the task `capacity.search` (controlplane.experiments.capacity), or in
    the calling process by `manage.py capacity`. `probes` grows as they finish; `result` is
    `CapacityResult.to_dict()` once the search ends."""

    Status = Trial.Status  # a search's states are a trial's: one set of names for both
    FINISHED = Trial.FINISHED

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="capacity_searches")
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="capacity_searches",
                                   help_text="the experiment whose variant is searched (its comparison shows the result)")
    variant_name = models.CharField(max_length=64)
    probes_experiment = models.ForeignKey(Experiment, null=True, blank=True, on_delete=models.SET_NULL,
                                          related_name="+", help_text="the experiment whose runs are the probes")
    simulated = models.BooleanField(default=False)
    budget = models.PositiveSmallIntegerField(help_text="most probes, repeats of inconclusive ones included")
    probe_s = models.FloatField(null=True, blank=True, help_text="wall seconds per probe (stationary workloads)")
    tolerance = models.FloatField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    queue = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    stage = models.CharField(max_length=200, blank=True, help_text="the last progress line")
    estimate_rps = models.FloatField(null=True, blank=True)
    probes = models.JSONField(default=list, blank=True, help_text="Probe.to_dict() of each finished probe, in order")
    result = models.JSONField(null=True, blank=True, help_text="CapacityResult.to_dict() once the search ended")
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=["queued", "running", "succeeded", "failed", "cancelled"]),
                                   name="capacity_status_known"),
            models.CheckConstraint(condition=Q(budget__gte=1) & Q(budget__lte=50), name="capacity_budget_1_50"),
            models.CheckConstraint(condition=Q(tolerance__gt=0) & Q(tolerance__lte=0.5),
                                   name="capacity_tolerance_bounds"),
            models.CheckConstraint(condition=~Q(status="succeeded") | Q(result__isnull=False),
                                   name="capacity_succeeded_has_result"),
        ]
        indexes = [models.Index(fields=["experiment", "variant_name", "status", "-finished_at"],
                                name="capacity_latest_finished")]

    def __str__(self) -> str:
        return f"capacity of {self.variant_name} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def progress(self) -> float:
        """Probes run over the budget, 0 to 1 (1 once finished)."""
        return 1.0 if self.is_finished else min(1.0, len(self.probes or []) / max(self.budget, 1))

    def get_absolute_url(self) -> str:
        return reverse("capacity-detail", kwargs={"code": self.code})


class ShareLink(models.Model):
    """A read-only link to the HTML report of one run, for people without an account: a random token, an
    expiry date, revocable. `/share/<token>/` shows that report and nothing else."""

    token = models.CharField(max_length=64, unique=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="share_links")
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="share_links")
    run_number = models.PositiveIntegerField()
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return f"share link to {self.experiment} run {self.run_number}"


@receiver(post_delete, sender=Export)
def _export_file_delete(sender, instance: Export, **kwargs) -> None:
    """An export's file goes with its row (also when its experiment or owner is deleted), once that commits."""
    if instance.file:
        name, storage = instance.file.name, instance.file.storage
        transaction.on_commit(lambda: storage.delete(name))
