"""Devices, sharing plans and telemetry.

Everything CUDA- or NVML-specific is guarded: this module imports and works on a host with no GPU,
no NVIDIA driver and a CPU-only torch. What a host cannot provide is reported as an error that says
what is missing, never silently replaced by something else (a result must say what the hardware was).
"""

from __future__ import annotations

import math
import os
import platform
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil


class DeviceError(RuntimeError):
    """The requested device does not exist on this host."""


class SharingUnavailable(RuntimeError):
    """This host cannot provide the requested sharing mode; the message says what is missing."""


@dataclass
class DeviceInfo:
    name: str  # "cpu", "cuda:0"
    kind: str  # "cpu" | "cuda"
    index: int | None
    description: str  # CPU model or GPU name
    total_memory_bytes: int
    cores: int  # usable CPU cores (affinity) on cpu; streaming multiprocessors on cuda


# ---- resolving a device ---------------------------------------------------------------------------------
def _usable_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: assume every core is usable
        return list(range(os.cpu_count() or 1))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_info() -> DeviceInfo:
    return DeviceInfo(name="cpu", kind="cpu", index=None, description=cpu_model(),
                      total_memory_bytes=int(psutil.virtual_memory().total), cores=len(_usable_cores()))


def _cuda_count() -> int:
    import torch

    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver install raises here; for us that is "no CUDA device"
        return 0


def resolve_device(requested: str) -> DeviceInfo:
    """auto | cpu | cuda | cuda:N -> DeviceInfo. Raises DeviceError for a device the host lacks."""
    import torch

    req = (requested or "auto").strip().lower()
    if req == "cpu":
        return _cpu_info()
    if req == "auto":
        return _cuda_info(0) if _cuda_count() > 0 else _cpu_info()
    m = re.fullmatch(r"cuda(?::(\d+))?", req)
    if not m:
        raise DeviceError(f"unknown device {requested!r} (use auto, cpu, cuda or cuda:N)")
    index = int(m.group(1) or 0)
    count = _cuda_count()
    if index >= count:
        why = ("torch was built without CUDA" if torch.version.cuda is None
               else "no NVIDIA driver or GPU is visible" if count == 0
               else f"valid indices are 0..{count - 1}")
        raise DeviceError(f"cuda:{index} requested but this host has {count} CUDA devices "
                          f"(torch {torch.__version__}: {why}); use device 'cpu' or 'auto'")
    return _cuda_info(index)


def _cuda_info(index: int) -> DeviceInfo:
    import torch

    props = torch.cuda.get_device_properties(index)
    return DeviceInfo(name=f"cuda:{index}", kind="cuda", index=index, description=props.name,
                      total_memory_bytes=int(props.total_memory), cores=int(props.multi_processor_count))


# ---- NVML (guarded) -----------------------------------------------------------------------------------
def _nvml():
    """The pynvml module, initialised, or None when there is no NVML (no driver, no package)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError subclasses (library not found, driver not loaded, ...)
        return None
    return pynvml


def _nvml_shutdown(nv) -> None:
    try:
        nv.nvmlShutdown()
    except Exception:
        pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_handle(nv, device: DeviceInfo):
    """NVML handle of a CUDA device. Matched by UUID, since CUDA_VISIBLE_DEVICES can reorder indices."""
    if device.kind != "cuda" or device.index is None:
        return None
    try:
        import torch

        uuid = getattr(torch.cuda.get_device_properties(device.index), "uuid", None)
        if uuid is not None:
            for prefix in ("GPU-", "MIG-"):
                try:
                    return nv.nvmlDeviceGetHandleByUUID(f"{prefix}{uuid}")
                except Exception:
                    continue
        return nv.nvmlDeviceGetHandleByIndex(device.index)
    except Exception:
        return None


def _physical_handle(nv, handle):
    """The GPU a handle belongs to. With MIG enabled and CUDA_VISIBLE_DEVICES unset, CUDA's device 0 is the
    first MIG device, so a handle found by its UUID is a MIG device's, and MIG mode and the list of MIG devices
    can only be read from its parent GPU."""
    if handle is None:
        return None
    try:
        if nv.nvmlDeviceIsMigDeviceHandle(handle):
            return nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
    except Exception:  # an NVML without MIG support: the handle is a whole GPU's
        pass
    return handle


def nvml_facts(device: DeviceInfo) -> dict:
    """What NVML says about a CUDA device, for the GPU acceptance check (workers.gpucheck): whether NVML is
    readable (and why not), driver and CUDA driver versions, the GPU's UUID and memory, its MIG capability and
    mode, and its MIG devices. Every read is guarded: a field NVML cannot give is None."""
    out: dict[str, Any] = {"nvml_readable": False, "nvml_error": None, "driver_version": None,
                           "cuda_driver_version": None, "uuid": None, "nvml_memory_bytes": None,
                           "mig_capable": None, "mig_enabled": False, "mig_devices": []}
    try:
        import pynvml as nv
    except ImportError:
        out["nvml_error"] = "the nvidia-ml-py package (pynvml) is not installed"
        return out
    try:
        nv.nvmlInit()
    except Exception as exc:  # NVMLError: library not found, driver not loaded, insufficient permissions
        out["nvml_error"] = f"nvmlInit failed: {exc}"
        return out
    try:
        out["nvml_readable"] = True
        try:
            out["driver_version"] = _text(nv.nvmlSystemGetDriverVersion())
            v = int(nv.nvmlSystemGetCudaDriverVersion())
            out["cuda_driver_version"] = f"{v // 1000}.{(v % 1000) // 10}"
        except Exception:
            pass
        handle = _physical_handle(nv, _nvml_handle(nv, device))
        if handle is None:
            out["nvml_error"] = f"NVML has no handle for {device.name}"
            return out
        for key, read in (("uuid", lambda: _text(nv.nvmlDeviceGetUUID(handle))),
                          ("nvml_memory_bytes", lambda: int(nv.nvmlDeviceGetMemoryInfo(handle).total))):
            try:
                out[key] = read()
            except Exception:
                pass
        try:
            current, _pending = nv.nvmlDeviceGetMigMode(handle)
            out["mig_capable"] = True
            out["mig_enabled"] = current == getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1)
        except Exception:  # NVML_ERROR_NOT_SUPPORTED: a GPU without MIG
            out["mig_capable"] = False
    finally:
        _nvml_shutdown(nv)
    if out["mig_enabled"]:
        out["mig_devices"] = mig_devices(device)
    return out


def gpu_process_counts(device: DeviceInfo) -> dict | None:
    """How many processes NVML lists on a CUDA device: {"compute": ordinary CUDA processes (an MPS server counts
    here), "mps": MPS client processes}; None without NVML or a handle, a count NVML cannot give is None. Counts,
    not pids: inside a container NVML reports the host's pids."""
    if device.kind != "cuda":
        return None
    nv = _nvml()
    if nv is None:
        return None
    try:
        handle = _nvml_handle(nv, device)
        if handle is None:
            return None
        out: dict[str, int | None] = {}
        for key, name in (("compute", "nvmlDeviceGetComputeRunningProcesses"),
                          ("mps", "nvmlDeviceGetMPSComputeRunningProcesses")):
            try:
                out[key] = len(getattr(nv, name)(handle))
            except Exception:  # an NVML or driver without this query
                out[key] = None
        return out
    finally:
        _nvml_shutdown(nv)


def gpu_uuid(device: DeviceInfo) -> str | None:
    """The GPU's UUID ("GPU-..."), which names the physical device whatever index CUDA gives it (a MIG device's
    parent GPU: the trial's sharing plan may use all of it); None on CPU or when NVML cannot be read. Only on a
    CUDA host (untested where there is none)."""
    if device.kind != "cuda":
        return None
    nv = _nvml()
    if nv is None:
        return None
    try:
        handle = _physical_handle(nv, _nvml_handle(nv, device))
        return _text(nv.nvmlDeviceGetUUID(handle)) if handle is not None else None
    except Exception:  # NVMLError: a device NVML cannot describe is named by host and index instead
        return None
    finally:
        _nvml_shutdown(nv)


# ---- hardware description --------------------------------------------------------------------------
def hardware_info(device: DeviceInfo, sharing_mechanism: str) -> dict:
    """What the trial ran on, for the record (docs/architecture.md, rule 8)."""
    import torch

    driver = None
    cuda_version = None
    if device.kind == "cuda":
        cuda_version = torch.version.cuda
        nv = _nvml()
        if nv is not None:
            try:
                driver = _text(nv.nvmlSystemGetDriverVersion())
            except Exception:
                driver = None
            finally:
                _nvml_shutdown(nv)
    return {
        "device_name": device.description,
        "device": device.name,
        "on_cpu": device.kind == "cpu",
        "driver_version": driver,
        "cuda_version": cuda_version,
        "torch_version": torch.__version__,
        "sharing_mechanism": sharing_mechanism,
        "host": platform.node(),
        "cpu_model": cpu_model(),
        "cores": len(_usable_cores()),
        "python_version": platform.python_version(),
    }


# ---- sharing plans ---------------------------------------------------------------------------------
@dataclass
class SharingPlan:
    mode: str  # exclusive | time_slice | spatial
    mechanism: str  # exclusive | processes | threads | cpu-core-sets | cuda-contexts | cuda-streams | mps | mig
    core_sets: list[list[int]] | None = None  # cpu spatial: each instance's cores (affinity)
    threads_per_instance: int | None = None  # torch intra-op threads an instance should use
    mps_active_thread_percentage: int | None = None  # CUDA_MPS_ACTIVE_THREAD_PERCENTAGE per instance
    mig_devices: list[str] | None = None  # MIG device UUIDs, one per instance


def mps_pipe_directory() -> Path:
    return Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps")


def mps_available() -> bool:
    """An MPS control daemon is reachable: its control pipe exists in the pipe directory."""
    return (mps_pipe_directory() / "control").exists()


def mig_devices(device: DeviceInfo) -> list[str]:
    """UUIDs of the MIG devices of this GPU when MIG mode is enabled, else []."""
    nv = _nvml()
    if nv is None:
        return []
    try:
        handle = _physical_handle(nv, _nvml_handle(nv, device))
        if handle is None:
            return []
        try:
            current, _pending = nv.nvmlDeviceGetMigMode(handle)
        except Exception:  # not MIG-capable (or not supported by this driver)
            return []
        if current != getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1):
            return []
        uuids = []
        for i in range(nv.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
            except Exception:  # empty slot
                continue
            uuids.append(_text(nv.nvmlDeviceGetUUID(mig)))
        return uuids
    finally:
        _nvml_shutdown(nv)


def sharing_plan(device: DeviceInfo, mode: str, *, instances: int, share: float, runtime: str = "process"
                 ) -> SharingPlan:
    """How `instances` instances share `device` in `mode`; SharingUnavailable if the host cannot.

    runtime "process" (each instance its own process): time_slice is OS scheduling on the CPU and separate CUDA
    contexts time-sliced by the GPU; runtime "thread": threads of one process (CUDA streams on a GPU)."""
    if mode not in ("exclusive", "time_slice", "spatial"):
        raise ValueError(f"unknown sharing mode {mode!r}")
    instances = max(1, int(instances))
    if device.kind == "cpu":
        cores = _usable_cores()
        if mode == "exclusive":
            return SharingPlan(mode, "exclusive", threads_per_instance=len(cores))
        if mode == "time_slice":
            if runtime == "process":  # processes with no partition: the OS scheduler time-slices the cores
                return SharingPlan(mode, "processes")
            # Instances are threads of one process and share its torch thread pool: no isolation.
            return SharingPlan(mode, "threads")
        per = math.floor(share * len(cores) + 1e-9)
        if per < 1:
            raise SharingUnavailable(
                f"spatial sharing on cpu needs at least one whole core per instance: share {share:g} of "
                f"{len(cores)} cores is {share * len(cores):g} core")
        if per * instances > len(cores):
            raise SharingUnavailable(
                f"spatial sharing on cpu needs at least one whole core per instance: {instances} instances x "
                f"{per} core(s) need {per * instances} cores, but this process may use {len(cores)}")
        sets = [cores[i * per:(i + 1) * per] for i in range(instances)]
        return SharingPlan(mode, "cpu-core-sets", core_sets=sets, threads_per_instance=per)
    # CUDA
    if mode == "exclusive":
        return SharingPlan(mode, "exclusive")
    if mode == "time_slice":  # untested here (no GPU on CI)
        return SharingPlan(mode, "cuda-contexts" if runtime == "process" else "cuda-streams")
    migs = mig_devices(device)
    if len(migs) >= instances:
        return SharingPlan(mode, "mig", mig_devices=migs[:instances])
    if mps_available():
        pct = max(1, min(100, round(share * 100)))
        return SharingPlan(mode, "mps", mps_active_thread_percentage=pct)
    found = f"MIG is enabled with only {len(migs)} MIG devices" if migs else "MIG mode is not enabled"
    raise SharingUnavailable(
        f"spatial sharing on {device.name} ({device.description}) needs MIG mode with at least {instances} "
        f"MIG devices or a running MPS daemon (`nvidia-cuda-mps-control -d`); {found} and no MPS control "
        f"pipe was found in {mps_pipe_directory()}")


# ---- telemetry -------------------------------------------------------------------------------------
FIELDS = ("cpu_util_pct", "rss_mb", "gpu_util_pct", "gpu_mem_used_mb", "power_w", "sm_clock_mhz")
MAX_FIELDS = ("rss_mb", "gpu_mem_used_mb")


def _busy_pct(prev, cur) -> float | None:
    """Whole-host CPU utilisation between two psutil.cpu_times() readings."""
    def busy_total(t) -> float:
        # guest time is already counted in user/nice on Linux; psutil's cpu_percent subtracts it too.
        return sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    total = busy_total(cur) - busy_total(prev)
    if total <= 0:
        return None
    idle = (cur.idle - prev.idle) + (getattr(cur, "iowait", 0.0) - getattr(prev, "iowait", 0.0))
    return max(0.0, min(100.0, 100.0 * (1.0 - idle / total)))


class _RssReader:
    """RSS of this process plus its children.

    Listing children scans all of /proc, which is slow and, under a busy GIL, slower still, so the list
    is refreshed only every `refresh_s`; each sample reads the rss of the known processes.
    """

    def __init__(self, refresh_s: float = 2.0):
        self.proc = psutil.Process()
        self.refresh_s = refresh_s
        self.children: list[psutil.Process] = []
        self.listed_at = -math.inf

    def __call__(self) -> float:
        now = time.monotonic()
        if now - self.listed_at >= self.refresh_s:
            try:
                self.children = self.proc.children(recursive=True)
            except psutil.Error:
                self.children = []
            self.listed_at = now
        rss = self.proc.memory_info().rss
        for child in self.children:
            try:
                rss += child.memory_info().rss
            except psutil.Error:
                continue  # a child that exited since it was listed
        return rss / 2**20


class Telemetry:
    """Samples CPU (and, with NVML, GPU) metrics on a daemon thread every interval_s.

    Each sample's `t_s` is perf_counter() - t0: the run's clock when t0 is the run's start. CPU
    utilisation is computed from cpu_times deltas of the whole host (not psutil.cpu_percent, whose
    shared module state two samplers would disturb). rss_mb is this process plus its children.
    """

    def __init__(self, device: DeviceInfo, *, interval_s: float = 0.2, t0: float | None = None):
        self.device = device
        self.interval_s = float(interval_s)
        self.t0 = time.perf_counter() if t0 is None else float(t0)
        self._samples: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nv = None
        self._handle = None
        self._rss = _RssReader()

    # lifecycle
    def start(self) -> Telemetry:
        if self._thread is not None:
            return self
        if self.device.kind == "cuda":
            self._nv = _nvml()
            if self._nv is not None:
                self._handle = _nvml_handle(self._nv, self.device)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(2.0, 5 * self.interval_s))
            self._thread = None
        if self._nv is not None:
            _nvml_shutdown(self._nv)
            self._nv = None
            self._handle = None

    def __enter__(self) -> Telemetry:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # sampling
    def _run(self) -> None:
        prev = psutil.cpu_times()
        next_t = time.perf_counter() + self.interval_s
        while not self._stop.wait(max(0.0, next_t - time.perf_counter())):
            next_t += self.interval_s
            cur = psutil.cpu_times()
            try:
                sample = self._sample(prev, cur)
            except Exception as exc:  # a sampler must never kill a trial; keep the reason visible
                sample = {"t_s": time.perf_counter() - self.t0, "error": f"{type(exc).__name__}: {exc}"}
            if sample.get("cpu_util_pct") is not None:
                prev = cur  # else the host's CPU counters had not ticked yet: measure from prev next time
            with self._lock:
                self._samples.append(sample)

    def _sample(self, prev, cur) -> dict:
        s: dict[str, Any] = dict.fromkeys(FIELDS)
        s["t_s"] = time.perf_counter() - self.t0
        s["cpu_util_pct"] = _busy_pct(prev, cur)
        s["rss_mb"] = self._rss()
        nv, h = self._nv, self._handle
        if nv is not None and h is not None:
            for key, read in (
                ("gpu_util_pct", lambda: float(nv.nvmlDeviceGetUtilizationRates(h).gpu)),
                ("gpu_mem_used_mb", lambda: nv.nvmlDeviceGetMemoryInfo(h).used / 2**20),
                ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                ("sm_clock_mhz", lambda: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))),
            ):
                try:
                    s[key] = read()
                except Exception:  # not supported on this GPU (power on some MIG/VM setups)
                    s[key] = None
        return s

    # reading
    def samples(self) -> list[dict]:
        with self._lock:
            return list(self._samples)

    def latest(self) -> dict:
        with self._lock:
            return dict(self._samples[-1]) if self._samples else {}

    def mean_between(self, t0_s: float, t1_s: float) -> dict:
        """Mean of each field over samples with t0_s <= t_s <= t1_s (None where there is none)."""
        with self._lock:
            window = [s for s in self._samples if t0_s <= s["t_s"] <= t1_s]
        return {k: _mean([s.get(k) for s in window]) for k in FIELDS}

    def summary(self) -> dict:
        """Means over the whole run, plus maxima of the memory fields (`<field>_max`) and the count."""
        data = self.samples()
        out: dict[str, Any] = {k: _mean([s.get(k) for s in data]) for k in FIELDS}
        for k in MAX_FIELDS:
            vals = [s[k] for s in data if s.get(k) is not None]
            out[f"{k}_max"] = float(max(vals)) if vals else None
        out["samples"] = len(data)
        return out


def _mean(values: list) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
