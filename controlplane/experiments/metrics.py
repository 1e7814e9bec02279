"""Prometheus exposition of the control plane and of running trials (`GET /metrics`, bearer token).

Control plane (read from the database and Redis at each scrape): trials by status, queued trials per device pool,
workers seen and the devices they report (worker_registry), device leases held.

Running trials: the trial monitor (workers.tasks.TrialMonitor) folds each live window into one Redis hash per
trial (`record_windows`): counters accumulated with HINCRBYFLOAT (requests offered, completed, dropped, failed,
late; cold starts) and the latest window's gauges (latency p50/p95/p99 of the requests completed in that window,
queue depth, instances by state, device utilisation and memory). The view reads every hash. Why Redis rather than
prometheus-client's multiprocess mode: trials run in Celery pool processes on several hosts, and multiprocess mode
only aggregates processes of ONE host sharing a directory; the monitor already talks to Redis, every host reaches
it, and one scrape of the control plane then sees every trial wherever it runs. Each hash expires
`TRIAL_TTL_S` after its last window, so a finished trial's series end within a minute.

Latency is exposed twice: a real histogram, `slsbench_trial_request_latency_seconds` (cumulative `le` buckets, sum and
count of every request completed so far), from the bucket counts each window carries (`workers.recorder`
LATENCY_BUCKETS_MS: the window's own completions, counted exactly, added with HINCRBYFLOAT like the counters), which
`histogram_quantile` aggregates across trials and hosts; and per-window quantile gauges (`slsbench_trial_latency_ms`),
the exact percentiles of the latest second's requests.
"""

from __future__ import annotations

import hmac
import math
import time

import redis
from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from workers.recorder import LATENCY_BUCKETS_MS

KEY_PREFIX = "slsbench:metrics"
TRIAL_TTL_S = 60
LABELS = ("experiment", "variant", "function", "trial")
# window field -> counter name (without _total); each window's count is added
COUNTERS = {"offered": "slsbench_trial_requests_offered", "completed": "slsbench_trial_requests_completed",
            "dropped": "slsbench_trial_requests_dropped", "errors": "slsbench_trial_requests_failed",
            "late": "slsbench_trial_requests_late", "cold_starts": "slsbench_trial_cold_starts"}
GAUGES = {"queue_depth": "slsbench_trial_queue_depth", "cpu_util_pct": "slsbench_trial_cpu_util_percent",
          "rss_mb": "slsbench_trial_rss_megabytes", "gpu_util_pct": "slsbench_trial_gpu_util_percent",
          "gpu_mem_used_mb": "slsbench_trial_gpu_memory_used_megabytes"}
QUANTILES = {"p50_ms": "0.5", "p95_ms": "0.95", "p99_ms": "0.99"}
INSTANCE_STATES = ("starting", "idle", "busy")
HISTOGRAM = "slsbench_trial_request_latency_seconds"


def key_prefix() -> str:
    """Under the broker's `global_keyprefix` when one is set (test sessions set one), like the worker registry."""
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}
    return f"{options.get('global_keyprefix') or ''}{KEY_PREFIX}"


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def trial_labels(trial, functions=()) -> dict:
    """A running trial's labels; `functions`: its function names (from the spec the worker already parsed)."""
    return {"experiment": trial.experiment.name, "variant": trial.variant_name, "function": ",".join(functions),
            "trial": str(trial.code)}


def record_windows(labels: dict, windows: list[dict], *, last_t_s: float, conn: redis.Redis | None = None) -> float:
    """Fold live windows (in order) into the trial's hash; returns the last window's end (for the next call)."""
    conn = conn or _client()
    key = f"{key_prefix()}:trial:{labels['trial']}"
    pipe = conn.pipeline()
    pipe.hset(key, mapping={f"label:{k}": v for k, v in labels.items()})
    for w in windows:
        t = float(w.get("t_s") or last_t_s)
        dt = max(t - last_t_s, 0.0)
        last_t_s = t
        counts = {"offered": (w.get("offered_rps") or 0.0) * dt, "completed": (w.get("completed_rps") or 0.0) * dt}
        counts.update({k: w.get(k) or 0 for k in ("dropped", "errors", "late", "cold_starts")})
        for k, v in counts.items():
            pipe.hincrbyfloat(key, f"c:{k}", float(v))
        for i, n in enumerate(w.get("latency_buckets") or []):
            if n:
                pipe.hincrbyfloat(key, f"b:{i}", float(n))
        if w.get("latency_sum_ms"):
            pipe.hincrbyfloat(key, "h:sum_ms", float(w["latency_sum_ms"]))
        gauges = {f"g:{k}": w[k] for k in (*GAUGES, *QUANTILES) if w.get(k) is not None}
        gauges.update({f"g:instances_{s}": w.get(f"instances_{s}") or 0 for s in INSTANCE_STATES})
        if gauges:
            pipe.hset(key, mapping=gauges)
    pipe.hset(key, "updated", time.time())
    pipe.expire(key, TRIAL_TTL_S)
    pipe.execute()
    return last_t_s


class _Collector:
    def __init__(self, conn: redis.Redis):
        self.conn = conn

    def collect(self):
        from controlplane.experiments import worker_registry
        from controlplane.experiments.lease import configured_prefix
        from controlplane.experiments.models import Trial

        trials = GaugeMetricFamily("slsbench_trials", "Trials by status", labels=["status"])
        counts = dict(Trial.objects.values_list("status").annotate(n=Count("id")))
        for status in Trial.Status.values:
            trials.add_metric([status], counts.get(status, 0))
        yield trials
        queued = GaugeMetricFamily("slsbench_queue_length", "Queued trials per device pool", labels=["pool"])
        for pool, n in Trial.objects.filter(status=Trial.Status.QUEUED).values_list("queue").annotate(n=Count("id")):
            queued.add_metric([pool or ""], n)
        yield queued
        reports = worker_registry.read_reports(self.conn)
        workers = GaugeMetricFamily("slsbench_workers", "Workers heart-beating now")
        workers.add_metric([], len(reports))
        yield workers
        devices = GaugeMetricFamily("slsbench_worker_devices", "Devices each worker serves (1 per pair)",
                                    labels=["worker", "device"])
        for r in reports:
            for d in r.get("devices") or []:
                devices.add_metric([str(r.get("hostname", "")), str(d)], 1)
        yield devices
        leases = GaugeMetricFamily("slsbench_leases_held", "Device leases held now")
        leases.add_metric([], sum(1 for _ in self.conn.scan_iter(match=f"{configured_prefix()}:*", count=500)))
        yield leases
        yield from self._trials()

    def _trials(self):
        fams = {k: CounterMetricFamily(name, f"Requests/events of running trials: {k}", labels=list(LABELS))
                for k, name in COUNTERS.items()}
        gauges = {k: GaugeMetricFamily(name, f"Latest live window: {k}", labels=list(LABELS))
                  for k, name in GAUGES.items()}
        latency = GaugeMetricFamily("slsbench_trial_latency_ms", "Latency percentile of the latest window's "
                                    "completed requests (ms)", labels=[*LABELS, "quantile"])
        instances = GaugeMetricFamily("slsbench_trial_instances", "Instances by state (latest window)",
                                      labels=[*LABELS, "state"])
        histogram = HistogramMetricFamily(HISTOGRAM, "Latency of the requests completed so far (intended arrival to "
                                          "completion)", labels=list(LABELS))
        for key in self.conn.scan_iter(match=f"{key_prefix()}:trial:*", count=500):
            h = {k.decode(): v.decode() for k, v in self.conn.hgetall(key).items()}
            if not h:
                continue
            lv = [h.get(f"label:{k}", "") for k in LABELS]
            for k, fam in fams.items():
                fam.add_metric(lv, float(h.get(f"c:{k}", 0.0)))
            for k, fam in gauges.items():
                if f"g:{k}" in h:
                    fam.add_metric(lv, float(h[f"g:{k}"]))
            for k, q in QUANTILES.items():
                if f"g:{k}" in h:
                    latency.add_metric([*lv, q], float(h[f"g:{k}"]))
            for s in INSTANCE_STATES:
                instances.add_metric([*lv, s], float(h.get(f"g:instances_{s}", 0)))
            running, buckets = 0.0, []
            for i, le_ms in enumerate((*LATENCY_BUCKETS_MS, math.inf)):
                running += float(h.get(f"b:{i}", 0.0))
                buckets.append(("+Inf" if le_ms == math.inf else f"{le_ms / 1000:g}", running))
            histogram.add_metric(lv, buckets, sum_value=float(h.get("h:sum_ms", 0.0)) / 1000)
        yield from fams.values()
        yield from gauges.values()
        yield latency
        yield instances
        yield histogram


def exposition(conn: redis.Redis | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(conn or _client()))
    return generate_latest(registry)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The exposition for a scraper holding `Authorization: Bearer <METRICS_TOKEN>`; 401 otherwise (and always
    when no METRICS_TOKEN is configured: the endpoint is off)."""
    token = getattr(settings, "METRICS_TOKEN", "") or ""
    given = request.headers.get("Authorization", "")
    if not token or not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        response = HttpResponse("metrics need Authorization: Bearer <METRICS_TOKEN>\n", status=401,
                                content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
