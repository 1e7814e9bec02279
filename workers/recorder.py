"""Recorder: one preallocated row per request, per-second windows, and the Parquet artifact.

With stream=True (the simulated driver: millions of requests) finished batches are kept as one tuple each until the
next window, which computes their waits and latencies at once and adds them to the summary's tallies
(workers.histograms: HDR histograms, counts, sums). Per request it keeps every column of a real run when the stream
asks for full_rows (a run small enough: workers.records.SIM_FULL_ROWS_MAX), else only what the scheduling core reads
and the artifact's latency (function, intended_s, sent_s, outcome, latency_ms as float32: 23 bytes a request).

The platform writes rows by index (numpy arrays from `records.empty_rows`) from its threads without a
lock: each request's row is written by exactly one thread (the one that ran or dropped it), and the
window reader only looks at rows after they were announced through `finished()` (a list append, atomic
under the GIL), so it never reads a half-written row. Windows are incremental: each one looks only at
what finished since the previous one, so a long run costs the same per second as a short one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from workers import records
from workers.histograms import GroupTally, UnitHistograms, tally_completed
from workers.records import (
    COLD_START_PHASES,
    OUTCOME_DROPPED,
    OUTCOME_ERROR,
    OUTCOME_NAMES,
    OUTCOME_OK,
    OUTCOME_PENDING,
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


STREAM_COLUMNS = ("function", "intended_s", "sent_s", "outcome")
BREAKDOWN_PARTS = ("dispatch_lag", "cold_start", "platform_delay_modelled", "batch_wait", "queue_wait", "compute")


class Stream:
    """The summary's tallies of a streamed run: all requests, each function, per-unit histograms for the interval,
    sums of the latency breakdown (seconds) and the count of requests that waited for a cold start."""

    def __init__(self, n_functions: int, slo_latency_ms: float, arrival_s: float, seconds: int, unit_s: int):
        self.slo_latency_ms = float(slo_latency_ms)
        self.arrival_s = float(arrival_s)
        self.all = GroupTally()
        self.functions = [GroupTally() for _ in range(n_functions)]
        self.units = UnitHistograms(-(-int(seconds) // int(unit_s)), unit_s)
        self.breakdown_sums = dict.fromkeys(BREAKDOWN_PARTS, 0.0)
        self.paid_cold_start = 0
        self._buffer: list[tuple] = []  # completed (function, latency, completion, intended) not yet in histograms
        self._buffered = 0

    def completed(self, function: np.ndarray, latency_ms: np.ndarray, completed_s: np.ndarray,
                  intended_s: np.ndarray, *, now: bool = False) -> None:
        """Completed requests, added to the histograms in bulk (about a million at a time, or now)."""
        if len(latency_ms):
            self._buffer.append((function, latency_ms, completed_s, intended_s))
            self._buffered += len(latency_ms)
        if self._buffer and (now or self._buffered >= 1 << 20):
            fn, lat, done, intended = (np.concatenate(c) for c in zip(*self._buffer, strict=True))
            self._buffer, self._buffered = [], 0
            tally_completed(self.functions, self.all, fn, lat, done, slo_latency_ms=self.slo_latency_ms,
                            arrival_s=self.arrival_s)
            self.units.record(intended, lat)


class Recorder:
    def __init__(self, n_requests: int, function_names: Sequence[str], *, slo_latency_ms: float | None = None,
                 stream: dict | None = None):
        """stream: {"arrival_s", "seconds", "unit_s"} to record without a row per request (see the module
        docstring); arrival_s is the arrival window (throughput), seconds the span of the arrivals, unit_s the
        block bootstrap's unit."""
        self.n = int(n_requests)
        self.slo_latency_ms = slo_latency_ms  # windows count completions over it as "late"
        self.function_names = list(function_names)
        if stream is None:
            self.rows: dict[str, np.ndarray] = records.empty_rows(self.n)
            self.stream = None
        else:
            if stream.get("full_rows"):  # every column of a real run: the tallies stream, the rows are kept too
                self.rows = records.empty_rows(self.n)
            else:
                self.rows = records.empty_rows(self.n, columns=STREAM_COLUMNS)
                self.rows["latency_ms"] = np.full(self.n, np.nan, dtype=np.float32)
            self.stream = Stream(len(self.function_names), slo_latency_ms, stream["arrival_s"], stream["seconds"],
                                 stream["unit_s"])
        self.cold_starts: list[ColdStart] = []
        self.cold_start_began: list[float] = []  # run-clock start of each cold start during the load
        self._cold_seen = 0  # cold_start_began[:_cold_seen] all lie before the last window's end
        self.instances: list[InstanceLife] = []
        self.n_batches = 0
        # Index arrays of requests whose outcome (ok / error / dropped) was just written, in finishing order.
        self._finished: list[np.ndarray | int] = []
        self._batches: list[tuple] = []  # stream: finished batches not yet tallied
        self._window_lat: list[np.ndarray] = []  # stream: tallied, not yet reported by a window
        self._window_not_ok: list = []

    # -- written by the platform ----------------------------------------------------------------------
    def finished(self, idx: np.ndarray | int) -> None:
        """Announce requests whose rows are complete (call after writing them)."""
        self._finished.append(idx)

    def batch(self, idx: np.ndarray, t_start: float, t_end: float, inst) -> None:
        """stream: a batch ended well (the simulated driver); tallied at the next window or flush()."""
        self._batches.append((idx, t_start, t_end, inst.held_from, inst.taken_s, inst))

    def flush(self) -> None:
        """stream: tally the batches that ended since the last call (outcome, latency, waits, histograms, sums) and
        the requests that ended without running; the next window reports them."""
        new, self._finished = self._finished, []
        if new:
            self._not_ok(np.concatenate([np.atleast_1d(np.asarray(x, dtype=np.int64)) for x in new]))
            self._window_not_ok += new
        batches, self._batches = self._batches, []
        if not batches:
            return
        from workers.platform.core import batch_waits

        rows, st = self.rows, self.stream
        self.n_batches += len(batches)
        idxs, t_starts, t_ends, helds, takens, insts = zip(*batches, strict=True)
        sizes = np.fromiter(map(len, idxs), dtype=np.int64, count=len(idxs))
        idx = np.concatenate(idxs)
        # An instance's ready, cold-start and delay times do not change once it ran a batch; its hold does.
        per_batch = np.array([t_starts, t_ends, [math.nan if h is None else h for h in helds], takens,
                              [i.ready_s for i in insts], [i.cs_start_s for i in insts],
                              [i.delay_end_s for i in insts]], dtype=np.float64)
        t_start, t_end, held, taken, ready, cs, dend = np.repeat(per_batch, sizes, axis=1)
        intended = rows["intended_s"][idx]
        sent = rows["sent_s"][idx]
        bwait, cold, modelled = batch_waits(sent, held, taken, ready, cs, dend)
        lat = (t_end - intended) * 1e3
        rows["outcome"][idx] = OUTCOME_OK
        if "completed_s" in rows:  # full rows: what record_batch writes on the real platform
            rows["batch_start_s"][idx] = t_start
            rows["completed_s"][idx] = t_end
            rows["instance"][idx] = np.repeat(np.fromiter((i.id for i in insts), dtype=np.int32, count=len(insts)),
                                              sizes)
            rows["batch_size"][idx] = np.repeat(sizes, sizes)
            rows["batch_wait_s"][idx] = bwait
            rows["cold_wait_s"][idx] = cold
            rows["modelled_wait_s"][idx] = modelled
        else:
            rows["latency_ms"][idx] = lat
        st.completed(rows["function"][idx], lat, t_end, intended)
        sums = st.breakdown_sums
        sums["dispatch_lag"] += float((sent - intended).sum())
        sums["cold_start"] += float((cold - modelled).sum())
        sums["platform_delay_modelled"] += float(modelled.sum())
        sums["batch_wait"] += float(bwait.sum())
        sums["queue_wait"] += float(((t_start - sent) - cold - bwait).sum())
        sums["compute"] += float((t_end - t_start).sum())
        st.paid_cold_start += int(np.count_nonzero(cold > 0))
        self._window_lat.append(lat)

    def _not_ok(self, idx: np.ndarray) -> None:
        """stream: count requests that ended without running (dropped, errors) in the tallies."""
        st = self.stream
        outcome = self.rows["outcome"][idx]
        fn = self.rows["function"][idx]
        for code, attr in ((OUTCOME_ERROR, "errors"), (OUTCOME_DROPPED, "dropped")):
            mine = outcome == code
            setattr(st.all, attr, getattr(st.all, attr) + int(np.count_nonzero(mine)))
            for f, c in enumerate(np.bincount(fn[mine], minlength=len(st.functions))):
                setattr(st.functions[f], attr, getattr(st.functions[f], attr) + int(c))

    def settle(self, k: int) -> list[int]:
        """stream, at the end: tally what is left, count the k requests sent per unit of arrival time (the
        interval's denominators); returns the requests sent per function."""
        self.flush()
        self.stream.completed(np.empty(0, dtype=np.int16), np.empty(0), np.empty(0), np.empty(0), now=True)
        for a in range(0, k, 1 << 20):
            self.stream.units.add_requests(self.rows["intended_s"][a:min(k, a + (1 << 20))])
        return np.bincount(self.rows["function"][:k], minlength=len(self.function_names)).tolist()

    def pending(self) -> int:
        return int(np.count_nonzero(self.rows["outcome"] == OUTCOME_PENDING))

    # -- per-second windows -----------------------------------------------------------------------------
    def window(self, t0_s: float, t1_s: float, *, state: dict | None = None, telemetry: dict | None = None,
               cost_usd: float | None = None) -> dict:
        """One window [t0_s, t1_s) of the run clock. Completions, drops and errors are those announced since
        the previous window (the engine calls this once per second, in order); offered load and dispatch lag
        are those of requests intended in [t0_s, t1_s)."""
        dt = max(t1_s - t0_s, 1e-9)
        rows = self.rows
        if self.stream is not None:
            self.flush()
            new, self._window_not_ok = self._window_not_ok, []
        else:
            end = len(self._finished)
            new = self._finished[:end]
            del self._finished[:end]  # consumed: a day of requests must not keep one object each (appends go on)
        if new:
            idx = np.concatenate([np.atleast_1d(np.asarray(x, dtype=np.int64)) for x in new])
        else:
            idx = np.empty(0, dtype=np.int64)
        outcome = rows["outcome"][idx]
        if self.stream is not None:
            lat_ms = np.concatenate(self._window_lat) if self._window_lat else np.empty(0)
            self._window_lat = []
        else:
            ok = idx[outcome == OUTCOME_OK]
            lat_ms = (rows["completed_s"][ok] - rows["intended_s"][ok]) * 1e3
        pct = window_latency(lat_ms)  # exact, from every sample completed in the window

        intended = rows["intended_s"]
        lo, hi = np.searchsorted(intended, [t0_s, t1_s], side="left")
        lag = rows["sent_s"][lo:hi] - intended[lo:hi]
        lag = lag[np.isfinite(lag)]
        lag_p99_us = float(np.percentile(lag, 99.0)) * 1e6 if len(lag) else None

        # Counted in the second the cold start began, even when it ends seconds later.
        # Windows come in order: entries before the first one not yet past this window were counted already (a day
        # of cold starts must not be rescanned at every window).
        began = self.cold_start_began[self._cold_seen:]
        cold = sum(1 for t in began if t0_s <= t < t1_s)
        for t in began:
            if t >= t1_s:
                break
            self._cold_seen += 1
        state = state or {}
        telemetry = telemetry or {}
        out = {
            "t_s": json_safe(t1_s),
            "offered_rps": json_safe((hi - lo) / dt),
            "completed_rps": json_safe(len(lat_ms) / dt),
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
        if "completed_s" in cols:
            table["latency_ms"] = pa.array((cols["completed_s"] - cols["intended_s"]) * 1e3, from_pandas=True)
        fn_idx = cols["function"].astype(np.int32)
        table["function_name"] = pa.DictionaryArray.from_arrays(pa.array(fn_idx), pa.array(names, pa.string()))
        # The phases of the cold start a request waited for (that of the instance that then ran it), so each row
        # says where its cold wait went; null for requests that waited for none.
        # A streamed run without full rows (a long simulation) has no per-request cold wait or instance: neither here.
        phases = COLD_START_PHASES if "cold_wait_s" in cols else ()
        waited = (cols["cold_wait_s"] > 0) & (cols["instance"] >= 0) if phases else None
        n_inst = max([c.instance for c in self.cold_starts] + [int(cols["instance"].max()) if k and phases else -1]) + 1
        for phase in phases:
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
