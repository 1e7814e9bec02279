"""Record types shared by the platform (which writes them) and statistics / cost (which read them).

Times are seconds on the run's clock: 0 is the instant the first intended arrival is due, from
`time.perf_counter()` on the real platform, from the virtual clock in the simulator. Instance events
before 0 (min instances started before the load) have negative times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# One row per request, preallocated (workers.recorder.Recorder). Latency = completed_s - intended_s.
ROW_COLUMNS: dict[str, np.dtype] = {
    "function": np.dtype(np.int16),  # index into the experiment's functions
    "intended_s": np.dtype(np.float64),  # scheduled arrival (open loop: what latency is measured from)
    "sent_s": np.dtype(np.float64),  # when the dispatcher really handed it to the platform
    "batch_start_s": np.dtype(np.float64),  # compute of its batch began (NaN: never started)
    "completed_s": np.dtype(np.float64),  # result ready (NaN: not completed)
    "instance": np.dtype(np.int32),  # instance id that ran it (-1: none)
    "batch_size": np.dtype(np.int16),  # size of the batch it ran in (0: none)
    "cold_wait_s": np.dtype(np.float32),  # part of its wait spent waiting for a cold start (modelled part included)
    "modelled_wait_s": np.dtype(np.float32),  # of cold_wait_s: the MODELLED platform delay (platform_delay_ms)
    "batch_wait_s": np.dtype(np.float32),  # part of its wait an instance was free but the batcher held it
    "outcome": np.dtype(np.int8),  # OUTCOME_*
}
# A simulated run of at most this many requests keeps every column above (53 bytes a request: 265 MB at the bound),
# so its artifact has batch starts, instances, batch sizes and waits like a real one; a longer one keeps 23 bytes a
# request (workers.recorder), so a simulated day of 17 M requests stays within its memory bound.
SIM_FULL_ROWS_MAX = 5_000_000
# Phases of a cold start (workers.instance), in the order they happen; platform_delay_modelled is MODELLED.
# "session" (creating an ONNX Runtime InferenceSession) happens only under model_runtime onnxruntime, "build" and
# "to_device" only under torch.
COLD_START_PHASES = ("platform_delay_modelled", "process_start", "import", "device_context", "build", "load",
                     "session", "to_device", "warmup", "total")
OUTCOME_PENDING = 0
OUTCOME_OK = 1
OUTCOME_DROPPED = 2  # shed by the adaptive batcher or never served before the run ended
OUTCOME_ERROR = 3  # the model raised during its batch
OUTCOME_NAMES = {OUTCOME_PENDING: "pending", OUTCOME_OK: "ok", OUTCOME_DROPPED: "dropped", OUTCOME_ERROR: "error"}


def empty_rows(n: int, columns=None) -> dict[str, np.ndarray]:
    """Preallocated rows: every column of ROW_COLUMNS, or the named ones."""
    rows = {name: np.zeros(n, dtype=dt) for name, dt in ROW_COLUMNS.items() if columns is None or name in columns}
    for name in ("sent_s", "batch_start_s", "completed_s"):
        if name in rows:
            rows[name].fill(np.nan)
    if "instance" in rows:
        rows["instance"].fill(-1)
    return rows


@dataclass
class ColdStart:
    function: int
    instance: int
    start_s: float  # cold start began
    end_s: float  # instance ready (after warm-up)
    load_ms: float  # of which: reading the weights file and moving them to the device
    during_load: bool  # False for min-instance prestarts before the load began
    timings_ms: dict | None = None  # phases in ms (workers.instance); platform_delay_modelled is not measured
    page_cache_resident: float | None = None  # share of the weights file still cached after the drop
    weights_bytes: int | None = None

    @property
    def duration_ms(self) -> float:
        return (self.end_s - self.start_s) * 1000.0


@dataclass
class InstanceLife:
    """One instance from the start of its cold start to its eviction (or the end of the run)."""

    function: int
    instance: int
    share: float  # fraction of the device it was given (1.0 for exclusive and time_slice)
    start_s: float
    end_s: float
    last_busy_end_s: float  # end of its last batch (start_s if it never ran one)
    busy_s: float  # total seconds it spent running batches
    evicted: bool  # False: still alive when the run ended
    device: int = 0  # which device of the trial (a simulated fleet has several; a real trial one)


def json_safe(value: Any) -> Any:
    """Plain JSON types for anything results carry: numpy scalars to Python numbers, NaN/inf to None (Postgres
    JSON and json.dumps(allow_nan=False) reject them), tuples to lists, paths and other objects to strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return str(value)
