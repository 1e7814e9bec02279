"""The GPU acceptance check: which GPU features of the platform work on this host, each proven by a short real trial.

    describe_host(device)   -> a plain dict: GPU, UUID, driver and CUDA versions, memory, MIG mode and devices,
                               MPS control binary and daemon, whether NVML is readable (no side effects)
    plan_checks(host)       -> [Check]: for each check, run it, or "not available on this host" and why
                               (pure logic over the host dict, so it is tested on the CPU with hosts as data)
    run_checks(checks, ...) -> one row per check: ok / failed / not available, the reason, key figures
    format_table(...)       -> the table `manage.py gpu_check` prints

Each applicable check is one short trial of the real engine (workers.engine.run_trial, the function Celery
runs) on mlp-small or cnn-small, run in a child process of its own (`python -m workers.gpucheck trial IN
OUT`) with a hard timeout: a trial that hangs in a CUDA call is killed with its instance processes and
reported as failed, never waited for. The child also gets a soft deadline (should_stop), so a slow trial
normally ends as "cancelled" with its figures before the hard kill. A separate process per trial also gives
every trial a fresh CUDA state: the thread runtime's CUDA context and streams do not outlive its trial.

An MPS control daemon is started only for the MPS checks, only when none is running, in a private pipe
directory (so no other process on the host becomes an MPS client), and stopped in a finally.

What runs on a GPU is untested on this project's CI machines, which have no GPU; the planning, the row
building and the trial runner are tested there on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from workers import devices
from workers.records import COLD_START_PHASES

MODELS = ("mlp-small", "cnn-small")
OK, FAILED, NOT_AVAILABLE = "ok", "failed", "not available"

# Load of the trials: light for the device, so a failure means a feature does not work, not that it is slow.
RATE_RPS = 200.0
BATCHING_RATE_RPS = 1000.0  # enough arrivals within the 5 ms queue delay to form batches
SLO_LATENCY_MS = 100.0
SHARE = 0.5  # spatial: two instances, half the device each
KEEP_ALIVE_S = 0.5  # scale to zero: an instance idle this long is evicted
# Scale to zero: how long after the last arrival its requests may still complete. The engine extends its drain
# while a cold start runs, but once the start ends it drops at once what the new instance has not yet served if
# the grace (2 s at this SLO) is over by then; a first cold start on a fresh GPU host (torch and CUDA libraries
# read from a cold disk) can take longer than the load itself, so this trial gets a generous grace instead.
SCALE_TO_ZERO_GRACE_S = 30.0
# A trial gets its load's duration plus this for starting instances (process start, torch import, CUDA
# context, weights) and draining; past it, the child is asked to stop; HARD_KILL_S later it is killed.
TRIAL_SLACK_S = 60.0
HARD_KILL_S = 20.0
MIN_TRIAL_BUDGET_S = 20.0  # a check is not started with less of the budget left than this
DEFAULT_BUDGET_S = 270.0  # the trials' share of the 5 minutes the whole check may take
MPS_TIMEOUT_S = 10.0
ADMISSION_SIDES = (256, 512, 1024)  # cnn-small input sides tried for a variant too large for the GPU
ADMISSION_BATCH = 1024

# (kind, models, label, what an ok result proves)
KINDS: tuple[tuple[str, tuple, str, str], ...] = (
    ("exclusive", MODELS, "exclusive",
     "one process instance owns the device, no batching"),
    ("time_slice_process", MODELS, "time_slice x2 process",
     "2 process instances at once, separate CUDA contexts time-sliced by the GPU"),
    ("time_slice_thread", MODELS, "time_slice x2 thread",
     "2 thread instances in one process, one CUDA stream each"),
    ("spatial_mps", MODELS, "spatial MPS 50/50",
     "2 process instances under MPS, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50 each"),
    ("spatial_mig", MODELS, "spatial MIG x2",
     "2 process instances, each on its own MIG device (CUDA_VISIBLE_DEVICES=<MIG uuid>)"),
    ("batching_fixed", MODELS, "batching fixed",
     f"fixed batching (max 16, 5 ms) at {BATCHING_RATE_RPS:,.0f} requests/s formed batches"),
    ("batching_adaptive", MODELS, "batching adaptive",
     f"adaptive batching (max 16) at {BATCHING_RATE_RPS:,.0f} requests/s"),
    ("scale_to_zero", ("mlp-small",), "scale to zero",
     f"min 0 instances, keep-alive {KEEP_ALIVE_S:g} s: cold starts during the load, CUDA context timed"),
    ("memory_admission", ("cnn-small",), "memory admission",
     "a variant that cannot fit the GPU's memory is refused before anything is loaded"),
    ("telemetry", (None,), "telemetry",
     "every trial's one-second windows carry GPU memory from NVML"),
)
LABELS = {kind: label for kind, _, label, _ in KINDS}

# The sharing mechanism each trial must report (workers.devices.SharingPlan.mechanism), per device kind. The
# cpu column is what the same trials use on a CPU, where the runner is tested.
EXPECTED_MECHANISM = {
    "exclusive": {"cuda": "exclusive", "cpu": "exclusive"},
    "time_slice_process": {"cuda": "cuda-contexts", "cpu": "processes"},
    "time_slice_thread": {"cuda": "cuda-streams", "cpu": "threads"},
    "spatial_mps": {"cuda": "mps", "cpu": "cpu-core-sets"},
    "spatial_mig": {"cuda": "mig", "cpu": "cpu-core-sets"},
    "batching_fixed": {"cuda": "exclusive", "cpu": "exclusive"},
    "batching_adaptive": {"cuda": "exclusive", "cpu": "exclusive"},
    "scale_to_zero": {"cuda": "exclusive", "cpu": "exclusive"},
}


@dataclass(frozen=True)
class Check:
    kind: str
    model: str | None
    applicable: bool
    reason: str  # applicable: what an ok result proves; else why this host cannot support the check

    @property
    def name(self) -> str:
        return f"{LABELS[self.kind]} / {self.model}" if self.model else LABELS[self.kind]


# ---- the host ---------------------------------------------------------------------------------------------
def describe_host(device: str = "cuda:0") -> dict:
    """What this host offers for the checks, as plain data. Starts nothing (no MPS daemon, no trial)."""
    import torch

    host: dict = {
        "gpu": False, "reason": None, "requested_device": device, "device": None, "name": None, "uuid": None,
        "memory_bytes": None, "sm_count": None, "compute_capability": None,
        "torch_version": torch.__version__, "torch_cuda_version": torch.version.cuda,
        "driver_version": None, "cuda_driver_version": None, "nvml_readable": False, "nvml_error": None,
        "mig_capable": None, "mig_enabled": False, "mig_devices": [],
        "mps_binary": shutil.which("nvidia-cuda-mps-control"), "mps_daemon_running": devices.mps_available(),
        "mps_pipe_directory": str(devices.mps_pipe_directory()),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "cuda_device_count": 0,
    }
    try:
        host["cuda_device_count"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver install raises here: for the check that is no CUDA device
        pass
    try:
        info = devices.resolve_device(device)
    except devices.DeviceError as exc:
        host["reason"] = str(exc).split("; use device")[0]  # the engine's advice to use the CPU does not apply here
        return host
    if info.kind != "cuda":
        host["reason"] = f"device {device!r} is not a CUDA device"
        return host
    props = torch.cuda.get_device_properties(info.index)
    host.update(gpu=True, device=info.name, name=info.description, memory_bytes=info.total_memory_bytes,
                sm_count=info.cores, compute_capability=f"{props.major}.{props.minor}")
    facts = devices.nvml_facts(info)
    facts.pop("nvml_memory_bytes", None)
    host.update(facts)
    if host["uuid"] is None and getattr(props, "uuid", None) is not None:
        host["uuid"] = f"GPU-{props.uuid}"
    return host


# ---- which checks apply -----------------------------------------------------------------------------------
def plan_checks(host: dict) -> list[Check]:
    """Every check, in the order they run, each applicable or not available on this host with the reason."""
    out = []
    for kind, models, _, proves in KINDS:
        why = _unavailable(kind, host)
        for model in models:
            out.append(Check(kind, model, why is None, proves if why is None else why))
    return out


def _unavailable(kind: str, host: dict) -> str | None:
    if not host.get("gpu"):
        return f"no GPU: {host.get('reason') or 'no CUDA device'}"
    nvml = f"NVML is not readable ({host.get('nvml_error') or 'unknown reason'})"
    if kind == "spatial_mps":
        if host.get("mig_enabled"):
            return ("MIG mode is enabled on this GPU, and the platform gives spatial instances MIG devices there "
                    "(see spatial MIG), not MPS")
        if not host.get("mps_binary") and not host.get("mps_daemon_running"):
            return (f"no MPS: nvidia-cuda-mps-control is not on PATH and no MPS daemon's control pipe is in "
                    f"{host.get('mps_pipe_directory')}")
    if kind == "spatial_mig":
        if not host.get("nvml_readable"):
            return f"{nvml}: MIG mode and MIG devices cannot be read"
        if host.get("mig_capable") is False:
            return f"{host.get('name') or 'this GPU'} does not support MIG"
        if host.get("mig_capable") is None:
            return f"MIG mode could not be read ({host.get('nvml_error') or 'no NVML handle'})"
        if not host.get("mig_enabled"):
            return ("MIG mode is disabled (an administrator enables it with `nvidia-smi -i <gpu> -mig 1` and "
                    "creates 2 GPU instances with `nvidia-smi mig -cgi <profile>,<profile> -C`)")
        n = len(host.get("mig_devices") or [])
        if n < 2:
            return f"MIG is enabled with {n} MIG device(s); the check needs 2 (`nvidia-smi mig -cgi ... -C`)"
    if kind == "telemetry" and not host.get("nvml_readable"):
        return f"{nvml}: no GPU utilisation or memory can be sampled"
    return None


# ---- trial specs ------------------------------------------------------------------------------------------
def trial_spec(check: Check, *, device: str, seconds: float, input_side: int | None = None) -> dict:
    """The experiment spec (docs/spec.md) of a check's trial: one function, one workload, one variant."""
    kind = check.kind
    one = {"min_instances": 1, "max_instances": 1, "runtime": "process"}
    two = {"min_instances": 2, "max_instances": 2}
    workload: dict = {"pattern": "poisson", "rate_rps": RATE_RPS, "duration_s": float(seconds), "seed": 7}
    function: dict = {"name": "f", "model": check.model}
    if kind == "exclusive":
        variant = {"sharing": "exclusive", "batching": {"mode": "none"}, **one}
    elif kind in ("time_slice_process", "time_slice_thread"):
        variant = {"sharing": "time_slice", "runtime": kind.rsplit("_", 1)[1], **two}
    elif kind in ("spatial_mps", "spatial_mig"):
        variant = {"sharing": "spatial", "share": SHARE, **two}
    elif kind in ("batching_fixed", "batching_adaptive"):
        variant = {"sharing": "exclusive", **one,
                   "batching": {"mode": kind.rsplit("_", 1)[1], "max_batch_size": 16, "max_queue_delay_ms": 5}}
        workload["rate_rps"] = BATCHING_RATE_RPS
    elif kind == "scale_to_zero":
        # Two bursts with an idle gap: the first request pays a cold start (no instance is kept warm), and on a
        # host whose cold start is short enough the instance is evicted in the gap and the second burst pays another.
        d = max(3.0, float(seconds))
        variant = {"sharing": "exclusive", "min_instances": 0, "max_instances": 1, "runtime": "process",
                   "keep_alive": {"policy": "fixed", "ttl_s": KEEP_ALIVE_S}}
        workload = {"pattern": "steps", "steps": [[0, 20.0], [1.0, 0.0], [d - 1.0, 20.0]], "duration_s": d,
                    "seed": 7}
    elif kind == "memory_admission":
        variant = {"sharing": "exclusive", **one,
                   "batching": {"mode": "fixed", "max_batch_size": ADMISSION_BATCH, "max_queue_delay_ms": 5}}
        function["input_shape"] = [3, int(input_side or ADMISSION_SIDES[-1]), int(input_side or ADMISSION_SIDES[-1])]
        workload["duration_s"] = 1.0
    else:
        raise ValueError(f"check {kind!r} runs no trial of its own")
    return {"name": f"gpu-check-{kind.replace('_', '-')}", "device": device,
            "slo": {"percentile": 99, "latency_ms": SLO_LATENCY_MS},
            "functions": [function], "workload": workload, "variants": [{"name": kind.replace("_", "-"), **variant}]}


def admission_side(memory_bytes: int) -> int | None:
    """The smallest cnn-small input side whose instance at batch ADMISSION_BATCH needs more than the whole
    device's memory (the engine's own estimate), or None when even the largest fits."""
    from workers import zoo

    for side in ADMISSION_SIDES:
        need = zoo.estimate_memory_bytes("cnn-small", input_shape=(3, side, side), batch_size=ADMISSION_BATCH)
        if need > memory_bytes:
            return side
    return None


# ---- running one trial in a child process -----------------------------------------------------------------
def run_isolated(spec: dict, *, model_dir: Path, timeout_s: float, env: dict[str, str] | None = None,
                 drain_grace_s: float | None = None) -> dict:
    """Run a spec's first variant through the engine in a child process; its outcome as a plain dict:
    {"status", "summary", "windows"} or {"error", "error_type"}. The child is asked to stop after timeout_s and
    is killed, with every process it started, HARD_KILL_S later."""
    with tempfile.TemporaryDirectory(prefix="slsbench-gpucheck-") as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "outcome.json"
        job.write_text(json.dumps({"spec": spec, "model_dir": str(model_dir), "stop_after_s": float(timeout_s),
                                   "drain_grace_s": drain_grace_s}))
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        # A session of its own: the child and its instance processes form one process group, killed together.
        proc = subprocess.Popen([sys.executable, "-m", "workers.gpucheck", "trial", str(job), str(out)],
                                env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=float(timeout_s) + HARD_KILL_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return {"error": f"no result within {timeout_s + HARD_KILL_S:.0f} s: the trial process and its "
                             "instances were killed", "error_type": "Timeout"}
        except BaseException:  # Ctrl-C or SIGTERM of the check itself: take the trial down with it
            _kill_group(proc)
            raise
        finally:
            _kill_group(proc)  # instance processes a finished child may have left behind
        if out.exists():
            return json.loads(out.read_text())
        tail = (output or b"").decode("utf-8", "replace").strip().splitlines()[-5:]
        return {"error": f"the trial process exited with code {proc.returncode} without a result"
                         + (": " + " | ".join(tail) if tail else ""), "error_type": "ChildExited"}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _child_main(job_path: str, out_path: str) -> int:
    """Entry point of a trial's child process: run the trial, write its outcome as JSON."""
    from workers.engine import TrialFailed, run_trial
    from workers.spec import SpecError, TrialSpec, parse_experiment

    job = json.loads(Path(job_path).read_text())
    deadline = time.monotonic() + float(job["stop_after_s"])
    seen: dict = {"windows": 0, "compute": None, "mps": None}

    def count_gpu_processes(_window: dict) -> None:
        # The instances are up from the first window on (min instances start before the load): ask NVML how many
        # processes and MPS clients the device has, in the first few windows, and keep the largest counts.
        seen["windows"] += 1
        if device is None or device.kind != "cuda" or seen["windows"] > 3:
            return
        for key, n in (devices.gpu_process_counts(device) or {}).items():
            if n is not None:
                seen[key] = max(n, seen[key] or 0)

    device = None
    try:
        exp = parse_experiment(job["spec"])
        with contextlib.suppress(devices.DeviceError):
            device = devices.resolve_device(exp.device)
        result = run_trial(TrialSpec(exp, exp.variants[0]), model_dir=Path(job["model_dir"]),
                           should_stop=lambda: time.monotonic() > deadline, on_window=count_gpu_processes,
                           drain_grace_s=job.get("drain_grace_s"))
        outcome = {"status": result.status, "summary": result.summary, "windows": result.windows,
                   "gpu_processes": {"compute": seen["compute"], "mps": seen["mps"]}
                   if device is not None and device.kind == "cuda" else None}
        if result.status == "cancelled":
            outcome["error"] = f"stopped after {job['stop_after_s']:.0f} s (the check's time limit for this trial)"
            outcome["error_type"] = "Deadline"
    except (TrialFailed, SpecError) as exc:
        outcome = {"error": str(exc), "error_type": type(exc).__name__}
    except Exception as exc:  # noqa: BLE001 - any failure of the engine is this check's result
        outcome = {"error": f"{type(exc).__name__}: {exc}", "error_type": type(exc).__name__}
    Path(out_path).write_text(json.dumps(outcome, allow_nan=False))
    return 0


# ---- from an outcome to a row -----------------------------------------------------------------------------
def trial_figures(summary: dict, windows: list[dict]) -> dict:
    """The key figures of a trial summary (workers.engine.run_trial) for the check's row."""
    latency = summary.get("latency_ms") or {}
    telemetry = summary.get("telemetry") or {}
    hardware = summary.get("hardware") or {}
    phases = summary.get("cold_start_phases_ms") or {}
    return {
        "p50_ms": latency.get("p50"), "p99_ms": latency.get("p99"),
        "throughput_rps": summary.get("throughput_rps"),
        "requests": summary.get("requests"), "completed": summary.get("completed"),
        "dropped": summary.get("dropped"), "errors": summary.get("errors"),
        "mean_batch_size": summary.get("mean_batch_size"),
        "device_name": hardware.get("device_name"), "mechanism": hardware.get("sharing_mechanism"),
        "isolation": summary.get("isolation"),
        "mps_active_thread_percentage": hardware.get("mps_active_thread_percentage"),
        "mig_devices": hardware.get("mig_devices"),
        "prestarts": summary.get("prestarts"), "cold_starts": phases.get("count"),
        "cold_start_ms": {p: phases[p] for p in COLD_START_PHASES if phases.get(p) is not None},
        "gpu_util_pct": telemetry.get("gpu_util_pct"), "gpu_mem_used_mb_max": telemetry.get("gpu_mem_used_mb_max"),
        "power_w": telemetry.get("power_w"),
        "windows": len(windows),
        "gpu_windows": sum(1 for w in windows if w.get("gpu_mem_used_mb") is not None),
        "notes": list(summary.get("notes") or []),
    }


def _row(check: Check, result: str, reason: str, figures: dict | None = None) -> dict:
    return {"check": check.name, "kind": check.kind, "model": check.model, "result": result, "reason": reason,
            "figures": figures or {}}


def not_available_row(check: Check) -> dict:
    return _row(check, NOT_AVAILABLE, f"not available on this host: {check.reason}")


def trial_row(check: Check, outcome: dict, *, device_kind: str = "cuda") -> dict:
    """Judge a check's trial outcome: ok when the trial ran on the expected mechanism, every request completed
    without error, and what the check is about really happened; else failed, with every problem found."""
    if check.kind == "memory_admission":
        return _admission_row(check, outcome)
    if "summary" not in outcome:
        return _row(check, FAILED, outcome.get("error") or "the trial gave no result")
    figures = trial_figures(outcome["summary"], outcome.get("windows") or [])
    figures["gpu_processes"] = outcome.get("gpu_processes")
    problems = [outcome["error"]] if outcome.get("error") else \
        [f"trial {outcome['status']}"] if outcome.get("status") not in (None, "succeeded") else []
    n, done, errors = figures["requests"] or 0, figures["completed"] or 0, figures["errors"] or 0
    if errors:
        first = next((x for x in figures["notes"] if "error event" in x), "")
        problems.append(f"{errors} request(s) failed with an error" + (f" ({first})" if first else ""))
    if n == 0 or done < n:
        problems.append(f"{done} of {n} requests completed ({figures['dropped'] or 0} dropped)")
    expected = EXPECTED_MECHANISM[check.kind][device_kind]
    if figures["mechanism"] != expected:
        problems.append(f"the trial used sharing mechanism {figures['mechanism']!r}, not {expected!r}")
    problems += _kind_problems(check.kind, figures, device_kind)
    if problems:
        return _row(check, FAILED, "; ".join(problems), figures)
    return _row(check, OK, _ok_reason(check, figures), figures)


def _kind_problems(kind: str, f: dict, device_kind: str) -> list[str]:
    out = []
    if kind in ("time_slice_process", "time_slice_thread", "spatial_mps", "spatial_mig") and (f["prestarts"] or 0) < 2:
        out.append(f"{f['prestarts'] or 0} instance(s) were started before the load; the check needs 2 at once")
    if kind == "spatial_mps" and device_kind == "cuda" and f["mps_active_thread_percentage"] != round(SHARE * 100):
        out.append(f"MPS active thread percentage {f['mps_active_thread_percentage']}, not {round(SHARE * 100)}")
    procs = f.get("gpu_processes") or {}
    if kind == "spatial_mps" and device_kind == "cuda" and (procs.get("mps") or 0) < 2 and (procs.get("compute") or 0) >= 2:
        out.append(f"NVML lists {procs.get('compute')} ordinary CUDA process(es) and {procs.get('mps') or 0} MPS "
                   "client(s): the instances did not run under MPS")
    if kind == "spatial_mig" and device_kind == "cuda" and len(f["mig_devices"] or []) != 2:
        out.append(f"the instances got {len(f['mig_devices'] or [])} MIG device(s), not 2")
    if kind == "batching_fixed" and not (f["mean_batch_size"] or 0) > 1.0:
        out.append(f"mean batch size {f['mean_batch_size']}: the fixed batcher formed no batch of more than one")
    if kind == "scale_to_zero":
        ctx = f["cold_start_ms"].get("device_context")
        if not f["cold_starts"]:
            out.append("no cold start happened during the load (min 0 instances should start one)")
        elif ctx is None or ctx <= 0:
            out.append("the cold starts have no device_context phase")
    return out


def _ok_reason(check: Check, f: dict) -> str:
    text = check.reason
    if f["mechanism"]:
        text += f" [mechanism {f['mechanism']}]"
    if check.kind.startswith("batching") and f["mean_batch_size"] is not None:
        text += f"; mean batch {f['mean_batch_size']:.2f}"
    procs = f.get("gpu_processes") or {}
    if check.kind in ("time_slice_process", "spatial_mps") and procs:
        if procs.get("compute") is None and procs.get("mps") is None:
            text += "; NVML could not list the device's processes (not verified from the driver's side)"
        else:
            text += f"; NVML lists {procs.get('compute') or 0} CUDA process(es), {procs.get('mps') or 0} MPS client(s)"
    if check.kind == "scale_to_zero":
        phases = ", ".join(f"{p} {v:.0f}" for p, v in f["cold_start_ms"].items() if p != "total")
        text += f"; {f['cold_starts']} cold start(s), p50 ms: {phases}, total {f['cold_start_ms'].get('total', 0):.0f}"
    if f["notes"]:
        text += "; notes: " + "; ".join(f["notes"])
    return text


def _admission_row(check: Check, outcome: dict) -> dict:
    if outcome.get("error_type") == "TrialFailed" and "needs about" in (outcome.get("error") or ""):
        return _row(check, OK, f"refused before loading: {outcome['error']}")
    if "summary" in outcome:
        return _row(check, FAILED, "a variant needing more than the GPU's memory was admitted and ran",
                    trial_figures(outcome["summary"], outcome.get("windows") or []))
    return _row(check, FAILED, f"refused for another reason than memory: {outcome.get('error')}")


def telemetry_row(check: Check, rows: list[dict]) -> dict:
    """Every trial that ran must have at least one one-second window with NVML's GPU memory in it."""
    ran = [r for r in rows if r["figures"].get("windows")]
    if not ran:
        return _row(check, FAILED, "no trial ran long enough to produce a window")
    lacking = [r["check"] for r in ran if not r["figures"].get("gpu_windows")]
    total = sum(r["figures"]["windows"] for r in ran)
    with_gpu = sum(r["figures"]["gpu_windows"] for r in ran)
    util = [r["figures"]["gpu_util_pct"] for r in ran if r["figures"].get("gpu_util_pct") is not None]
    figures = {"windows": total, "gpu_windows": with_gpu,
               "gpu_util_pct": max(util) if util else None,
               "gpu_mem_used_mb_max": max((r["figures"].get("gpu_mem_used_mb_max") or 0 for r in ran), default=None)}
    if lacking:
        return _row(check, FAILED, f"no GPU figures in the windows of: {', '.join(lacking)}", figures)
    extra = "" if util else " (utilisation not reported by this GPU, e.g. under MIG)"
    return _row(check, OK, f"{with_gpu} of {total} windows over {len(ran)} trials carry GPU memory{extra}", figures)


# ---- MPS daemon -------------------------------------------------------------------------------------------
class MpsUnavailable(RuntimeError):
    """An MPS control daemon could not be started; the message says what happened."""


@contextlib.contextmanager
def mps_daemon(host: dict) -> Iterator[dict[str, str]]:
    """Yields the environment a trial needs to be an MPS client. Uses a running daemon when there is one;
    otherwise starts one in a private pipe directory and stops it on exit, recording what happened in host
    ("mps_daemon_started", "mps_daemon_stopped", "mps_stop_error")."""
    if host.get("mps_daemon_running"):
        yield {}
        return
    binary = host.get("mps_binary")
    if not binary:
        raise MpsUnavailable("nvidia-cuda-mps-control is not on PATH")
    pipe = Path(tempfile.mkdtemp(prefix="slsbench-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(pipe / "log")}
    (pipe / "log").mkdir()
    full = {**os.environ, **env}
    try:
        done = subprocess.run([binary, "-d"], env=full, capture_output=True, text=True, timeout=MPS_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(pipe, ignore_errors=True)
        raise MpsUnavailable(f"`nvidia-cuda-mps-control -d` did not start: {exc}") from exc
    if done.returncode != 0:
        shutil.rmtree(pipe, ignore_errors=True)
        raise MpsUnavailable(f"`nvidia-cuda-mps-control -d` exited with code {done.returncode}: "
                             f"{(done.stderr or done.stdout).strip()[:300]}")
    host["mps_daemon_started"] = True
    daemon = None
    try:
        if not _wait_for(lambda: (pipe / "control").exists(), MPS_TIMEOUT_S):
            raise MpsUnavailable(f"the MPS daemon started but its control pipe did not appear in {pipe} within "
                                 f"{MPS_TIMEOUT_S:g} s")
        daemon = _find_daemon(pipe)
        host["mps_daemon_pid"] = daemon.pid if daemon is not None else None
        yield env
    finally:
        host["mps_daemon_stopped"], host["mps_stop_error"] = _stop_mps(binary, full, pipe, daemon or _find_daemon(pipe))
        if host["mps_daemon_stopped"]:
            shutil.rmtree(pipe, ignore_errors=True)


def _find_daemon(pipe: Path):
    """The control daemon serving this pipe directory: a process of nvidia-cuda-mps-control whose environment
    names it (the daemon forks away from the `-d` call, so its pid is not the call's)."""
    import psutil

    for proc in psutil.process_iter(["cmdline", "environ"]):
        cmdline = proc.info.get("cmdline") or []
        environ = proc.info.get("environ") or {}  # None for other users' processes
        if any("nvidia-cuda-mps-control" in part for part in cmdline[:2]) and \
                environ.get("CUDA_MPS_PIPE_DIRECTORY") == str(pipe):
            return proc
    return None


def _stop_mps(binary: str, env: dict, pipe: Path, daemon) -> tuple[bool, str | None]:
    """`echo quit | nvidia-cuda-mps-control`, then wait for the daemon to exit; one that does not quit in time
    is terminated by its pid. (True, None) when it is gone; else (False, how to stop it by hand)."""
    import psutil

    note = None
    try:
        subprocess.run([binary], input="quit\n", env=env, capture_output=True, text=True, timeout=MPS_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        note = f"`echo quit | nvidia-cuda-mps-control` failed ({exc})"
    if daemon is None:  # not found by its environment: the control pipe is the only sign of life left
        if _wait_for(lambda: not (pipe / "control").exists(), MPS_TIMEOUT_S):
            return True, note
        return False, (f"the MPS daemon's control pipe is still in {pipe}; stop it with `echo quit | "
                       f"CUDA_MPS_PIPE_DIRECTORY={pipe} nvidia-cuda-mps-control`")
    if _exited(daemon, MPS_TIMEOUT_S):
        return True, note
    try:
        daemon.terminate()
    except psutil.NoSuchProcess:
        return True, note
    except psutil.AccessDenied:
        pass
    if _exited(daemon, MPS_TIMEOUT_S):
        return True, f"the MPS daemon (pid {daemon.pid}) did not quit within {MPS_TIMEOUT_S:g} s and was terminated"
    return False, (f"the MPS daemon (pid {daemon.pid}) is still running; stop it with `echo quit | "
                   f"CUDA_MPS_PIPE_DIRECTORY={pipe} nvidia-cuda-mps-control`")


def _exited(proc, timeout_s: float) -> bool:
    """The process ended within timeout_s. A zombie has ended: a daemon is re-parented to whatever reaps orphans
    on this host (in some containers nothing does)."""
    import psutil

    def gone() -> bool:
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return _wait_for(gone, timeout_s)


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# ---- running the plan -------------------------------------------------------------------------------------
def run_checks(checks: list[Check], host: dict, *, seconds: float = 5.0, model_dir: Path,
               budget_s: float = DEFAULT_BUDGET_S, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the applicable checks in order (the others become "not available" rows); one row per check.

    A check not started because the budget was spent is failed (it proved nothing). The MPS daemon, if this
    started one, lives from the first MPS check to the next other check, and is stopped on any exit."""
    from workers import zoo

    device = host.get("device") or "cpu"
    device_kind = "cuda" if device.startswith("cuda") else "cpu"
    deadline = time.monotonic() + float(budget_s)
    for model in {c.model for c in checks if c.applicable and c.model in MODELS}:
        zoo.weights_file(model, model_dir=model_dir)  # building the models is a preparation, done once here
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        mps_env: dict[str, str] | None = None
        mps_error: str | None = None
        for check in checks:
            if check.kind != "spatial_mps" and mps_env is not None:
                stack.close()  # the MPS checks are over: stop the daemon now, not at the end
                mps_env = None
            if not check.applicable:
                row = not_available_row(check)
            elif check.kind == "telemetry":
                row = telemetry_row(check, rows)
            elif time.monotonic() > deadline - MIN_TRIAL_BUDGET_S:
                row = _row(check, FAILED, f"not run: the check's time budget of {budget_s:g} s was spent")
            else:
                if check.kind == "spatial_mps" and device_kind == "cuda" and mps_env is None and mps_error is None:
                    try:
                        mps_env = stack.enter_context(mps_daemon(host))
                    except MpsUnavailable as exc:
                        mps_error = host["mps_start_error"] = str(exc)
                row = _run_trial_check(check, host, device, device_kind, seconds, model_dir, deadline,
                                       mps_env, mps_error)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def _run_trial_check(check: Check, host: dict, device: str, device_kind: str, seconds: float, model_dir: Path,
                     deadline: float, mps_env: dict | None, mps_error: str | None) -> dict:
    if check.kind == "spatial_mps" and mps_error is not None:
        return _row(check, NOT_AVAILABLE, f"not available on this host: {mps_error}")
    side = None
    if check.kind == "memory_admission":
        side = admission_side(int(host.get("memory_bytes") or 0))
        if side is None:
            return _row(check, NOT_AVAILABLE, "not available on this host: the largest input the spec allows still "
                                              "fits in this GPU's memory")
    spec = trial_spec(check, device=device, seconds=seconds, input_side=side)
    run_s = float(spec["workload"]["duration_s"])
    timeout = min(run_s + TRIAL_SLACK_S, max(1.0, deadline - time.monotonic()))
    t = time.monotonic()
    outcome = run_isolated(spec, model_dir=model_dir, timeout_s=timeout,
                           env=mps_env if check.kind == "spatial_mps" else None,
                           drain_grace_s=SCALE_TO_ZERO_GRACE_S if check.kind == "scale_to_zero" else None)
    row = trial_row(check, outcome, device_kind=device_kind)
    row["elapsed_s"] = round(time.monotonic() - t, 1)
    return row


# ---- output -----------------------------------------------------------------------------------------------
COLUMNS = (("check", 34, "<"), ("result", 13, "<"), ("p50 ms", 8, ">"), ("p99 ms", 8, ">"), ("thr rps", 8, ">"),
           ("GPU %", 6, ">"), ("GPU MB", 8, ">"), ("s", 5, ">"))


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def host_lines(host: dict) -> list[str]:
    if not host.get("gpu"):
        return [no_gpu_line(host)]
    gib = (host.get("memory_bytes") or 0) / 2**30
    lines = [f"{host['device']}: {host.get('name')} ({host.get('uuid') or 'uuid unknown'}), {gib:.1f} GiB, "
             f"compute capability {host.get('compute_capability')}, {host.get('sm_count')} SMs",
             f"driver {host.get('driver_version') or '?'}, CUDA driver {host.get('cuda_driver_version') or '?'}, "
             f"torch {host.get('torch_version')} (CUDA {host.get('torch_cuda_version')})"
             + (f", CUDA_VISIBLE_DEVICES={host['cuda_visible_devices']}" if host.get("cuda_visible_devices") else "")]
    nvml = "readable" if host.get("nvml_readable") else f"NOT readable ({host.get('nvml_error')})"
    mig = ("not supported" if host.get("mig_capable") is False else "unknown" if host.get("mig_capable") is None
           else f"enabled, {len(host.get('mig_devices') or [])} MIG device(s)" if host.get("mig_enabled")
           else "disabled")
    if host.get("mps_daemon_running"):
        mps = f"a daemon was already running (pipe {host.get('mps_pipe_directory')}): every CUDA process is its client"
    elif host.get("mps_start_error"):
        mps = f"daemon could not be started: {host['mps_start_error']}"
    elif host.get("mps_daemon_started"):
        note = host.get("mps_stop_error")
        mps = (f"daemon started by this check and stopped{f' ({note})' if note else ''}" if host.get("mps_daemon_stopped")
               else f"daemon started by this check and NOT stopped: {note}")
    elif host.get("mps_binary"):
        mps = f"{host['mps_binary']} present (daemon not started)"
    else:
        mps = "nvidia-cuda-mps-control not found"
    lines.append(f"NVML {nvml}; MIG {mig}; MPS {mps}")
    return lines


def no_gpu_line(host: dict) -> str:
    return (f"gpu_check: no GPU on this host ({host.get('reason') or 'no CUDA device'}); nothing to check here, the "
            "CPU test suite covers the CPU paths")


def format_table(rows: list[dict], host: dict, elapsed_s: float) -> str:
    lines = host_lines(host) + [""]
    lines.append("  ".join(f"{name:{align}{width}}" for name, width, align in COLUMNS))
    for r in rows:
        f = r.get("figures") or {}
        values = (r["check"], r["result"], _num(f.get("p50_ms"), 2), _num(f.get("p99_ms"), 2),
                  _num(f.get("throughput_rps"), 1), _num(f.get("gpu_util_pct"), 0),
                  _num(f.get("gpu_mem_used_mb_max"), 0), _num(r.get("elapsed_s"), 0))
        lines.append("  ".join(f"{v:{align}{width}}" for v, (_, width, align) in zip(values, COLUMNS, strict=True)))
        lines.append(f"    {r['reason']}")
    lines.append(summary_line(rows, elapsed_s))
    return "\n".join(lines)


def summary_line(rows: list[dict], elapsed_s: float) -> str:
    count = {k: sum(1 for r in rows if r["result"] == k) for k in (OK, FAILED, NOT_AVAILABLE)}
    return (f"{len(rows)} checks: {count[OK]} ok, {count[FAILED]} failed, {count[NOT_AVAILABLE]} not available on "
            f"this host; {elapsed_s:.1f} s")


def failed(rows: list[dict], host: dict) -> bool:
    """Exit non-zero: a check that applied failed, or an MPS daemon this check started is still running."""
    return any(r["result"] == FAILED for r in rows) or \
        bool(host.get("mps_daemon_started") and not host.get("mps_daemon_stopped"))


def document(host: dict, rows: list[dict], *, seconds: float, elapsed_s: float) -> dict:
    """The --json document."""
    return {"gpu": bool(host.get("gpu")), "host": host, "seconds": seconds, "elapsed_s": round(elapsed_s, 2),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows,
            "failed": failed(rows, host)}


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "trial":
    raise SystemExit(_child_main(sys.argv[2], sys.argv[3]))
