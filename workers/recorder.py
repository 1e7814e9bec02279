"""Recorder: one preallocated row per request, per-second windows, and the Parquet artifact.

The platform writes rows by index (numpy arrays from `records.empty_rows`) from its threads without a
lock: each request's row is written by exactly one thread (the one that ran or dropped it), and the
window reader only looks at rows after they were announced through `finished()` (a list append, atomic
under the GIL), so it never reads a half-written row. Windows are incremental: each one looks only at
what finished since the previous one, so a long run costs the same per second as a short one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from workers import records
from workers.records import (
    COLD_START_PHASES,
    OUTCOME_DROPPED,
    OUTCOME_ERROR,
    OUTCOME_NAMES,
    OUTCOME_OK,
    ColdStart,
    InstanceLife,
    json_safe,
)
from workers.statistics import window_latency

# Telemetry fields copied into every window (None when the device or psutil cannot tell).
TELEMETRY_FIELDS = ("cpu_util_pct", "rss_mb", "gpu_util_pct", "gpu_mem_used_mb", "power_w")
STATE_FIELDS = ("queue_depth", "instances_starting", "instances_idle", "instances_busy")
# Upper bounds (ms, inclusive) of the latency histogram each window carries: counts of the window's completed
# requests per bucket, the last one above the largest bound (Prometheus `le` buckets are their running sums;
# controlplane.experiments.metrics). Fixed, so windows of every trial add up.
LATENCY_BUCKETS_MS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)
_BUCKET_EDGES = np.asarray(LATENCY_BUCKETS_MS)


class Recorder:
    def __init__(self, n_requests: int, function_names: Sequence[str], *, slo_latency_ms: float | None = None):
        self.n = int(n_requests)
        self.slo_latency_ms = slo_latency_ms  # windows count completions over it as "late"
        self.function_names = list(function_names)
        self.rows: dict[str, np.ndarray] = records.empty_rows(self.n)
        self.cold_starts: list[ColdStart] = []
        self.cold_start_began: list[float] = []  # run-clock start of each cold start during the load
        self.instances: list[InstanceLife] = []
        self.n_batches = 0
        # Index arrays of requests whose outcome (ok / error / dropped) was just written, in finishing order.
        self._finished: list[np.ndarray | int] = []

    # -- written by the platform ----------------------------------------------------------------------
    def finished(self, idx: np.ndarray | int) -> None:
        """Announce requests whose rows are complete (call after writing them)."""
        self._finished.append(idx)

    # -- per-second windows -----------------------------------------------------------------------------
    def window(self, t0_s: float, t1_s: float, *, state: dict | None = None, telemetry: dict | None = None,
               cost_usd: float | None = None) -> dict:
        """One window [t0_s, t1_s) of the run clock. Completions, drops and errors are those announced since
        the previous window (the engine calls this once per second, in order); offered load and dispatch lag
        are those of requests intended in [t0_s, t1_s)."""
        dt = max(t1_s - t0_s, 1e-9)
        rows = self.rows
        end = len(self._finished)
        new = self._finished[:end]
        del self._finished[:end]  # consumed: a day of requests must not keep one object each (appends go on after end)
        if new:
            idx = np.concatenate([np.atleast_1d(np.asarray(x, dtype=np.int64)) for x in new])
        else:
            idx = np.empty(0, dtype=np.int64)
        outcome = rows["outcome"][idx]
        ok = idx[outcome == OUTCOME_OK]
        lat_ms = (rows["completed_s"][ok] - rows["intended_s"][ok]) * 1e3
        pct = window_latency(lat_ms)  # exact, from every sample completed in the window

        intended = rows["intended_s"]
        lo, hi = np.searchsorted(intended, [t0_s, t1_s], side="left")
        lag = rows["sent_s"][lo:hi] - intended[lo:hi]
        lag = lag[np.isfinite(lag)]
        lag_p99_us = float(np.percentile(lag, 99.0)) * 1e6 if len(lag) else None

        # Counted in the second the cold start began, even when it ends seconds later.
        cold = sum(1 for t in list(self.cold_start_began) if t0_s <= t < t1_s)
        state = state or {}
        telemetry = telemetry or {}
        out = {
            "t_s": json_safe(t1_s),
            "offered_rps": json_safe((hi - lo) / dt),
            "completed_rps": json_safe(len(ok) / dt),
            "dropped": int(np.count_nonzero(outcome == OUTCOME_DROPPED)),
            "errors": int(np.count_nonzero(outcome == OUTCOME_ERROR)),
            # Completed in the window but later than the SLO target, plus errors: with dropped, the requests
            # of this window that violate the SLO (the live page's exact late share).
            "late": (int(np.count_nonzero(lat_ms > self.slo_latency_ms)) + int(np.count_nonzero(outcome == OUTCOME_ERROR))
                     if self.slo_latency_ms is not None else None),
            "p50_ms": json_safe(pct["p50"]),
            "p95_ms": json_safe(pct["p95"]),
            "p99_ms": json_safe(pct["p99"]),
            # the histogram of the same completions: one count per LATENCY_BUCKETS_MS bound (x <= bound) and the
            # overflow, and their latency sum
            "latency_buckets": np.bincount(np.searchsorted(_BUCKET_EDGES, lat_ms, side="left"),
                                           minlength=len(_BUCKET_EDGES) + 1).tolist(),
            "latency_sum_ms": json_safe(float(lat_ms.sum())),
            **{k: json_safe(state.get(k, 0)) for k in STATE_FIELDS},
            "cold_starts": int(cold),
            "dispatch_lag_p99_us": json_safe(lag_p99_us),
            **{k: json_safe(telemetry.get(k)) for k in TELEMETRY_FIELDS},
            "cost_usd": json_safe(cost_usd),
        }
        return out

    # -- artifact ------------------------------------------------------------------------------------------
    def write_parquet(self, path: Path | str, function_names: Sequence[str] | None = None, *,
                      n: int | None = None) -> Path:
        """Raw per-request columns (the first n rows: the requests that were sent), plus latency_ms and the
        outcome and function names, zstd-compressed Parquet."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = list(function_names if function_names is not None else self.function_names)
        k = self.n if n is None else int(n)
        cols = {name: arr[:k] for name, arr in self.rows.items()}
        # from_pandas: NaN (never started / not completed) becomes a Parquet null, not a float NaN.
        table = {name: pa.array(arr, from_pandas=True) for name, arr in cols.items()}
        table["latency_ms"] = pa.array((cols["completed_s"] - cols["intended_s"]) * 1e3, from_pandas=True)
        fn_idx = cols["function"].astype(np.int32)
        table["function_name"] = pa.DictionaryArray.from_arrays(pa.array(fn_idx), pa.array(names, pa.string()))
        # The phases of the cold start a request waited for (that of the instance that then ran it), so each row
        # says where its cold wait went; null for requests that waited for none.
        waited = (cols["cold_wait_s"] > 0) & (cols["instance"] >= 0)
        n_inst = max([c.instance for c in self.cold_starts] + [int(cols["instance"].max()) if k else -1]) + 1
        for phase in COLD_START_PHASES:
            by_instance = np.full(max(n_inst, 1), np.nan, dtype=np.float32)
            for c in self.cold_starts:
                v = (c.timings_ms or {}).get(phase)
                if v is not None:
                    by_instance[c.instance] = v
            col = np.full(k, np.nan, dtype=np.float32)
            col[waited] = by_instance[cols["instance"][waited]]
            table[f"cold_start_{phase}_ms"] = pa.array(col, from_pandas=True)
        outcome_names = [OUTCOME_NAMES[i] for i in range(len(OUTCOME_NAMES))]
        table["outcome_name"] = pa.DictionaryArray.from_arrays(pa.array(cols["outcome"].astype(np.int32)),
                                                               pa.array(outcome_names, pa.string()))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {b"slsbench.columns": b"times in seconds on the run clock (0 = first intended arrival)"}
        pq.write_table(pa.table(table).replace_schema_metadata(meta), str(path), compression="zstd")
        return path
