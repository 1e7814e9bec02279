"""Which devices the running workers serve, as they report it themselves in Redis.

Each Celery worker writes one key, `slsbench:workers:<hostname>` (under the broker's key prefix, so test
sessions sharing a Redis DB stay apart), holding JSON: the device pools it consumes and the devices they
stand for. A heartbeat thread in the worker's main process rewrites the key every `HEARTBEAT_S` with a
TTL of `TTL_S`, so a worker that dies disappears from the list within the TTL; a clean shutdown deletes
its key at once. The editor offers the reported devices first (`selectors.worker_devices`).

The report is built from the worker's queues alone: the main process of a prefork worker must not
initialise CUDA (its pool children are forked from it), so it never imports torch. `manage.py worker`
gives each device its queue (`pool.cpu`, `pool.cuda-N`) and adds `pool.auto` and `pool.cuda` to the
device they resolve to on that host, so the queues say what "auto" means there.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time

import redis

log = logging.getLogger(__name__)

KEY_PREFIX = "slsbench:workers"
TTL_S = 30.0  # a worker that stops heart-beating is gone from the list after this
HEARTBEAT_S = 10.0
POOL_RE = re.compile(r"^pool\.(auto|cpu|cuda|cuda-(\d{1,2}))$")


def key_prefix() -> str:
    """`slsbench:workers`, under the broker's `global_keyprefix` when one is set (test sessions set one)."""
    from django.conf import settings

    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}
    return f"{options.get('global_keyprefix') or ''}{KEY_PREFIX}"


def worker_key(hostname: str, *, prefix: str | None = None) -> str:
    return f"{prefix or key_prefix()}:{hostname}"


def device_of_pool(queue: str) -> str | None:
    """pool.cpu -> cpu, pool.cuda-3 -> cuda:3, pool.auto -> auto, pool.cuda -> cuda; other queues -> None."""
    m = POOL_RE.match(queue)
    if not m:
        return None
    return f"cuda:{m.group(2)}" if m.group(2) is not None else m.group(1)


def report_for(hostname: str, queues: list[str]) -> dict:
    """What a worker consuming `queues` tells the control plane: its devices, pools and what auto means."""
    pools = sorted(q for q in queues if device_of_pool(q) is not None)
    devices = [device_of_pool(q) for q in pools]
    concrete = sorted(d for d in devices if d == "cpu" or d.startswith("cuda:"))
    gpus = [d for d in concrete if d.startswith("cuda:")]
    # auto and bare cuda ride with the device they resolve to on this host (manage.py worker): a GPU first.
    resolves = {}
    if "auto" in devices:
        resolves["auto"] = gpus[0] if gpus else ("cpu" if "cpu" in concrete else None)
    if "cuda" in devices:
        resolves["cuda"] = gpus[0] if gpus else None
    return {"hostname": hostname, "devices": sorted(set(devices)), "pools": pools, "resolves": resolves,
            "pid": os.getpid(), "reported_at": time.time()}


def register(conn: redis.Redis, report: dict, *, ttl_s: float = TTL_S, prefix: str | None = None) -> None:
    conn.set(worker_key(report["hostname"], prefix=prefix), json.dumps(report), px=int(ttl_s * 1000))


def unregister(conn: redis.Redis, hostname: str, *, prefix: str | None = None) -> None:
    conn.delete(worker_key(hostname, prefix=prefix))


def read_reports(conn: redis.Redis, *, prefix: str | None = None) -> list[dict]:
    """Every live worker's report, by hostname. Keys that expired between the scan and the read are skipped,
    and so is anything that is not a report (a foreign key under the prefix)."""
    keys = sorted(conn.scan_iter(match=f"{prefix or key_prefix()}:*", count=100))
    if not keys:
        return []
    out = []
    for raw in conn.mget(keys):
        if raw is None:
            continue
        try:
            report = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if isinstance(report, dict) and isinstance(report.get("devices"), list):
            out.append(report)
    return sorted(out, key=lambda r: str(r.get("hostname")))


class Heartbeat(threading.Thread):
    """Keeps one worker's report alive: `start()` registers at once, then every `interval_s`; `stop()` unregisters.

    Redis errors are logged and retried at the next beat: a blip must not take the worker down, and the
    TTL (three beats) outlives a short one."""

    def __init__(self, conn: redis.Redis, report: dict, *, interval_s: float = HEARTBEAT_S, ttl_s: float = TTL_S,
                 prefix: str | None = None):
        super().__init__(name="worker-registry", daemon=True)
        self.conn = conn
        self.report = report
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.prefix = prefix or key_prefix()
        self._stop_event = threading.Event()

    def beat(self) -> bool:
        try:
            register(self.conn, {**self.report, "reported_at": time.time()}, ttl_s=self.ttl_s, prefix=self.prefix)
            return True
        except redis.RedisError:
            log.warning("could not report this worker's devices to Redis; retrying", exc_info=True)
            return False

    def start(self) -> None:
        self.beat()  # listed from the moment the worker says it is ready, not one thread switch later
        super().start()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.beat()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(5)
        try:
            unregister(self.conn, self.report["hostname"], prefix=self.prefix)
        except redis.RedisError:
            log.warning("could not remove this worker's report from Redis (it expires by itself)", exc_info=True)


# ---- Celery signal handlers (connected in controlplane/celery.py) ------------------------------------------
_heartbeat: Heartbeat | None = None


def _client() -> redis.Redis:
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def on_worker_ready(sender, **kwargs) -> None:
    """worker_ready: start reporting the devices of the pools this worker consumes."""
    global _heartbeat
    queues = sorted(sender.app.amqp.queues.consume_from or {})
    report = report_for(sender.hostname, queues)
    if not report["devices"]:
        return  # a worker on other queues only (tests' private queues) serves no device pool
    _heartbeat = Heartbeat(_client(), report)
    _heartbeat.start()
    log.info("reporting devices %s (pools %s) as %s", ", ".join(report["devices"]), ", ".join(report["pools"]),
             worker_key(sender.hostname))


def on_worker_shutdown(sender=None, **kwargs) -> None:
    """worker_shutdown: stop reporting and delete the key, so the editor stops offering our devices at once."""
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None


def warm_up() -> None:
    """Import what every trial needs before the first one is claimed: torch, the model zoo and the memory
    estimate's meta-device forward pass (which pulls in torch's decompositions, ~3.5 s the first time), scipy
    for the percentile interval and pyarrow for the artifact. Without it a worker's first trial spent ~4 s
    on imports after its claim, while its live page waited for the first window. Run in a pool process, off
    its main thread: Celery gives a pool process only a few seconds to report itself up."""
    started = time.perf_counter()
    try:
        import numpy as np
        import pyarrow.parquet  # noqa: F401
        import torch  # noqa: F401

        from workers import statistics, zoo

        statistics.percentile_ci(np.arange(10.0), 50.0)
        for key in zoo.model_keys():  # default shapes: the estimates are cached, the imports are the point
            try:
                zoo.estimate_memory_bytes(key)
            except zoo.ModelError:
                pass  # a user model with no default input shape
    except Exception:  # noqa: BLE001 - a warm-up is an optimisation: the trial imports what it needs anyway
        log.warning("worker warm-up failed; the first trial will import what it needs", exc_info=True)
        return
    log.info("worker warm-up: imports done in %.1f s", time.perf_counter() - started)


def on_worker_process_init(**kwargs) -> None:
    """worker_process_init (each prefork pool process, after the fork): warm up in a background thread."""
    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
