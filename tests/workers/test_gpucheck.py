"""The GPU acceptance check (workers.gpucheck) on a CPU host.

Which checks apply is decided from a host description, so it is tested here with host descriptions as data
(no GPU; an H100 with MPS and without MIG; MIG with 2 devices; NVML unreadable; MPS missing). The rows are
built from real trial summaries of the real engine on the CPU, so a renamed summary key fails here and not on
the one GPU run a session gets. The trial runner (a child process with a hard timeout) and the MPS daemon's
start and stop are exercised for real; the daemon is a stand-in script, since this host has no NVIDIA driver.
"""

from __future__ import annotations

import copy
import json
import stat
import textwrap
from pathlib import Path

import psutil
import pytest

from workers import devices, gpucheck, zoo
from workers.engine import run_trial
from workers.spec import TrialSpec, parse_experiment

GIB = 2**30
H100 = {
    "gpu": True, "reason": None, "device": "cuda:0", "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-5d1e0f4c",
    "memory_bytes": 80 * GIB, "sm_count": 132, "compute_capability": "9.0", "torch_version": "2.13.0+cu126",
    "torch_cuda_version": "12.6", "driver_version": "560.35.03", "cuda_driver_version": "12.6",
    "nvml_readable": True, "nvml_error": None, "mig_capable": True, "mig_enabled": False, "mig_devices": [],
    "mps_binary": "/usr/bin/nvidia-cuda-mps-control", "mps_daemon_running": False,
    "mps_pipe_directory": "/tmp/nvidia-mps", "cuda_visible_devices": None,
}
NO_GPU = {"gpu": False, "reason": "cuda:0 requested but this host has 0 CUDA devices (torch was built without CUDA)"}
ALWAYS = {"exclusive", "time_slice_process", "time_slice_thread", "batching_fixed", "batching_adaptive",
          "scale_to_zero", "memory_admission"}


def host(**changes) -> dict:
    return {**copy.deepcopy(H100), **changes}


def plan(h: dict) -> dict[str, gpucheck.Check]:
    return {c.name: c for c in gpucheck.plan_checks(h)}


def kinds(h: dict, applicable: bool) -> set[str]:
    return {c.kind for c in gpucheck.plan_checks(h) if c.applicable == applicable}


def check(kind: str, model: str | None = "mlp-small") -> gpucheck.Check:
    return next(c for c in gpucheck.plan_checks(H100) if c.kind == kind and c.model in (model, None))


# ---- which checks apply to which host ---------------------------------------------------------------------
def test_every_check_is_planned_on_both_models_where_the_issue_asks():
    names = set(plan(H100))
    for kind in ("exclusive", "time_slice_process", "time_slice_thread", "spatial_mps", "spatial_mig",
                 "batching_fixed", "batching_adaptive"):
        assert {f"{gpucheck.LABELS[kind]} / mlp-small", f"{gpucheck.LABELS[kind]} / cnn-small"} <= names
    assert {"scale to zero / mlp-small", "memory admission / cnn-small", "telemetry"} <= names


def test_a_host_without_a_gpu_has_every_check_not_available_with_the_reason():
    checks = gpucheck.plan_checks(NO_GPU)
    assert checks and not any(c.applicable for c in checks)
    assert all(c.reason == f"no GPU: {NO_GPU['reason']}" for c in checks)


def test_an_h100_with_mps_and_without_mig_runs_everything_but_mig():
    assert kinds(H100, True) == ALWAYS | {"spatial_mps", "telemetry"}
    mig = plan(H100)["spatial MIG x2 / mlp-small"]
    assert not mig.applicable and mig.reason.startswith("MIG mode is disabled") and "nvidia-smi" in mig.reason


def test_mig_enabled_with_two_devices_runs_mig_and_not_mps():
    h = host(mig_enabled=True, mig_devices=["MIG-aaaa", "MIG-bbbb"])
    assert kinds(h, True) == ALWAYS | {"spatial_mig", "telemetry"}
    assert "MIG mode is enabled" in plan(h)["spatial MPS 50/50 / cnn-small"].reason


def test_mig_enabled_with_one_device_says_the_check_needs_two():
    reason = plan(host(mig_enabled=True, mig_devices=["MIG-aaaa"]))["spatial MIG x2 / mlp-small"].reason
    assert reason.startswith("MIG is enabled with 1 MIG device(s); the check needs 2")


def test_a_gpu_without_mig_says_so():
    h = host(name="NVIDIA L4", mig_capable=False)
    assert plan(h)["spatial MIG x2 / mlp-small"].reason == "NVIDIA L4 does not support MIG"


def test_nvml_unreadable_makes_telemetry_and_mig_not_available_with_nvml_s_error():
    h = host(nvml_readable=False, nvml_error="nvmlInit failed: Driver Not Loaded", mig_capable=None)
    assert kinds(h, False) == {"spatial_mig", "telemetry"}
    for name in ("telemetry", "spatial MIG x2 / cnn-small"):
        assert "NVML is not readable (nvmlInit failed: Driver Not Loaded)" in plan(h)[name].reason


def test_mps_needs_the_control_binary_or_a_running_daemon():
    missing = host(mps_binary=None)
    assert "spatial_mps" in kinds(missing, False)
    assert "nvidia-cuda-mps-control is not on PATH" in plan(missing)["spatial MPS 50/50 / mlp-small"].reason
    assert "spatial_mps" in kinds(host(mps_binary=None, mps_daemon_running=True), True)


def test_describe_host_on_this_cpu_host_says_there_is_no_gpu_and_why():
    h = gpucheck.describe_host("cuda:0")
    assert h["gpu"] is False and "cuda:0" in h["reason"] and "use device" not in h["reason"]
    assert json.loads(json.dumps(h)) == h  # plain data
    assert not any(c.applicable for c in gpucheck.plan_checks(h))


# ---- trial specs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(gpucheck.EXPECTED_MECHANISM) + ["memory_admission"])
def test_every_check_s_trial_is_a_valid_spec(kind):
    c = check(kind, "cnn-small" if kind == "memory_admission" else "mlp-small")
    exp = parse_experiment(gpucheck.trial_spec(c, device="cuda:0", seconds=5, input_side=256))
    v = exp.variants[0]
    assert exp.device == "cuda:0" and len(exp.variants) == 1
    if kind.startswith(("time_slice", "spatial")):
        assert v.min_instances == v.max_instances == 2
    if kind == "time_slice_thread":
        assert v.runtime == "thread"
    if kind.startswith("spatial"):
        assert v.share == gpucheck.SHARE
    if kind == "scale_to_zero":
        assert v.min_instances == 0 and v.keep_alive.ttl_s == gpucheck.KEEP_ALIVE_S


def test_the_admission_input_is_the_smallest_that_does_not_fit():
    side = gpucheck.admission_side(80 * GIB)
    need = zoo.estimate_memory_bytes("cnn-small", input_shape=(3, side, side), batch_size=gpucheck.ADMISSION_BATCH)
    assert need > 80 * GIB
    smaller = [s for s in gpucheck.ADMISSION_SIDES if s < side]
    for s in smaller:
        assert zoo.estimate_memory_bytes("cnn-small", input_shape=(3, s, s),
                                         batch_size=gpucheck.ADMISSION_BATCH) <= 80 * GIB
    assert gpucheck.admission_side(10**15) is None


# ---- rows from real trial summaries -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def cpu_outcome(model_dir):
    """A real ~1 s trial of the exclusive check's spec on the CPU, through the engine, as the child writes it."""
    spec = gpucheck.trial_spec(check("exclusive"), device="cpu", seconds=1.0)
    exp = parse_experiment(spec)
    result = run_trial(TrialSpec(exp, exp.variants[0]), model_dir=model_dir)
    return json.loads(json.dumps({"status": result.status, "summary": result.summary, "windows": result.windows}))


def test_a_real_trial_summary_makes_an_ok_row_with_its_figures(cpu_outcome):
    row = gpucheck.trial_row(check("exclusive"), cpu_outcome, device_kind="cpu")
    assert row["result"] == "ok", row["reason"]
    f = row["figures"]
    summary = cpu_outcome["summary"]
    assert f["p50_ms"] == summary["latency_ms"]["p50"] and f["p99_ms"] == summary["latency_ms"]["p99"]
    assert f["throughput_rps"] == summary["throughput_rps"] > 0
    assert f["mechanism"] == "exclusive" and f["completed"] == f["requests"] > 0
    assert f["windows"] == len(cpu_outcome["windows"]) >= 1
    assert f["gpu_windows"] == 0  # no NVML on the CPU: the telemetry check would say so
    assert set(f["cold_start_ms"]) <= set(summary["cold_start_phases_ms"])


def test_the_same_summary_fails_a_check_whose_mechanism_and_instances_it_did_not_have(cpu_outcome):
    row = gpucheck.trial_row(check("time_slice_process"), cpu_outcome, device_kind="cpu")
    assert row["result"] == "failed"
    assert "mechanism 'exclusive', not 'processes'" in row["reason"]
    assert "1 instance(s) were started before the load; the check needs 2 at once" in row["reason"]


def test_errored_and_missing_requests_fail_the_row(cpu_outcome):
    bad = copy.deepcopy(cpu_outcome)
    bad["summary"]["errors"] = 2
    bad["summary"]["completed"] -= 2
    row = gpucheck.trial_row(check("exclusive"), bad, device_kind="cpu")
    assert row["result"] == "failed" and "2 request(s) failed with an error" in row["reason"]
    assert f"{bad['summary']['completed']} of {bad['summary']['requests']} requests completed" in row["reason"]


def as_mps_trial(outcome: dict, gpu_processes: dict | None) -> dict:
    """A real CPU outcome dressed as the spatial MPS trial would report it on a GPU."""
    o = copy.deepcopy(outcome)
    o["summary"]["hardware"].update(sharing_mechanism="mps", mps_active_thread_percentage=50)
    o["summary"]["prestarts"] = 2
    o["gpu_processes"] = gpu_processes
    return o


def test_mps_is_ok_only_when_nvml_does_not_show_the_instances_as_ordinary_cuda_processes(cpu_outcome):
    mps = check("spatial_mps")
    ok = gpucheck.trial_row(mps, as_mps_trial(cpu_outcome, {"compute": 1, "mps": 2}))
    assert ok["result"] == "ok", ok["reason"]
    assert ok["reason"].endswith("NVML lists 1 CUDA process(es), 2 MPS client(s)")
    not_mps = gpucheck.trial_row(mps, as_mps_trial(cpu_outcome, {"compute": 2, "mps": 0}))
    assert not_mps["result"] == "failed" and "the instances did not run under MPS" in not_mps["reason"]
    unknown = gpucheck.trial_row(mps, as_mps_trial(cpu_outcome, {"compute": None, "mps": None}))
    assert unknown["result"] == "ok" and "not verified from the driver's side" in unknown["reason"]


def test_a_trial_that_failed_to_start_is_a_failed_row_with_the_engine_s_message():
    outcome = {"error": "spatial sharing on cuda:0 needs MIG mode ...", "error_type": "TrialFailed"}
    row = gpucheck.trial_row(check("spatial_mps"), outcome)
    assert row == {**row, "result": "failed", "reason": outcome["error"]}


def test_telemetry_is_ok_only_when_every_trial_that_ran_had_gpu_windows():
    def r(name, windows, gpu):
        return {"check": name, "result": "ok", "reason": "", "figures": {"windows": windows, "gpu_windows": gpu,
                                                                         "gpu_util_pct": 40.0, "gpu_mem_used_mb_max": 900.0}}
    tel = check("telemetry", None)
    assert gpucheck.telemetry_row(tel, [r("a", 5, 5), r("b", 6, 4)])["result"] == "ok"
    lacking = gpucheck.telemetry_row(tel, [r("a", 5, 5), r("b", 6, 0)])
    assert lacking["result"] == "failed" and lacking["reason"].endswith("windows of: b")
    assert gpucheck.telemetry_row(tel, [])["result"] == "failed"


# ---- the runner: a child process per trial, a hard timeout --------------------------------------------------
def test_a_check_s_trial_runs_in_a_child_process_of_the_real_engine(model_dir):
    spec = gpucheck.trial_spec(check("time_slice_thread"), device="cpu", seconds=1.0)
    outcome = gpucheck.run_isolated(spec, model_dir=model_dir, timeout_s=60)
    assert outcome.get("status") == "succeeded", outcome.get("error")
    row = gpucheck.trial_row(check("time_slice_thread"), outcome, device_kind="cpu")
    assert row["result"] == "ok", row["reason"]
    assert row["figures"]["mechanism"] == "threads" and row["figures"]["prestarts"] == 2


def test_a_trial_past_its_hard_limit_is_killed_and_reported(model_dir, monkeypatch):
    monkeypatch.setattr(gpucheck, "HARD_KILL_S", 0.2)  # killed while the child still imports torch
    outcome = gpucheck.run_isolated(gpucheck.trial_spec(check("exclusive"), device="cpu", seconds=1.0),
                                    model_dir=model_dir, timeout_s=0.1)
    assert outcome["error_type"] == "Timeout" and "killed" in outcome["error"]
    row = gpucheck.trial_row(check("exclusive"), outcome, device_kind="cpu")
    assert row["result"] == "failed" and "killed" in row["reason"]


def test_run_checks_on_a_cpu_host_description_end_to_end(model_dir):
    """The orchestration, as on a GPU host, with a host description that points it at the CPU."""
    cpu = devices.resolve_device("cpu")
    h = host(device="cpu", memory_bytes=cpu.total_memory_bytes, nvml_readable=False, nvml_error="a CPU has no NVML",
             mps_binary=None)
    wanted = {"scale to zero / mlp-small", "memory admission / cnn-small", "telemetry", "spatial MPS 50/50 / mlp-small"}
    checks = [c for c in gpucheck.plan_checks(h) if c.name in wanted]
    seen: list[str] = []
    rows = gpucheck.run_checks(checks, h, seconds=1.0, model_dir=model_dir, on_row=lambda r: seen.append(r["check"]))
    by = {r["check"]: r for r in rows}
    assert seen == [c.name for c in checks]
    s2z = by["scale to zero / mlp-small"]
    assert s2z["result"] == "ok", s2z["reason"]
    assert s2z["figures"]["cold_starts"] >= 1 and "device_context" in s2z["figures"]["cold_start_ms"]
    admission = by["memory admission / cnn-small"]
    assert admission["result"] == "ok" and "needs about" in admission["reason"], admission["reason"]
    assert by["telemetry"]["result"] == "not available" and "a CPU has no NVML" in by["telemetry"]["reason"]
    assert by["spatial MPS 50/50 / mlp-small"]["result"] == "not available"


def test_checks_not_started_within_the_budget_fail_without_running(model_dir):
    checks = [check("exclusive"), check("telemetry", None)]
    rows = gpucheck.run_checks(checks, host(device="cpu"), seconds=1.0, model_dir=model_dir, budget_s=0)
    assert rows[0]["result"] == "failed" and "time budget of 0 s was spent" in rows[0]["reason"]
    assert rows[1]["result"] == "failed"  # telemetry: no trial ran
    assert gpucheck.failed(rows, {})


# ---- the MPS daemon: started only when needed, always stopped ----------------------------------------------
def fake_mps_control(tmp_path: Path, *, quits: bool = True) -> str:
    """A stand-in for nvidia-cuda-mps-control: `-d` creates the control pipe and leaves a daemon process behind
    (the script itself, serving until the pipe is gone); `quit` on stdin removes the pipe."""
    script = tmp_path / "nvidia-cuda-mps-control"
    quit_action = 'rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"' if quits else ":"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$1" in
          -d) mkfifo "$CUDA_MPS_PIPE_DIRECTORY/control"; "$0" serve </dev/null >/dev/null 2>&1 & exit 0 ;;
          serve) while [ -e "$CUDA_MPS_PIPE_DIRECTORY/control" ]; do sleep 0.05; done; exit 0 ;;
          *) read cmd; [ "$cmd" = "quit" ] && {quit_action}; exit 0 ;;
        esac
        """))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_an_mps_daemon_it_started_is_stopped_even_when_the_check_raises(tmp_path):
    h = host(mps_binary=fake_mps_control(tmp_path))
    with pytest.raises(RuntimeError, match="trial blew up"), gpucheck.mps_daemon(h) as env:
        pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
        assert (pipe / "control").exists() and env["CUDA_MPS_LOG_DIRECTORY"].startswith(str(pipe))
        daemon = psutil.Process(h["mps_daemon_pid"])
        assert daemon.is_running()
        raise RuntimeError("trial blew up")
    assert h["mps_daemon_started"] and h["mps_daemon_stopped"] and h["mps_stop_error"] is None
    assert gpucheck._exited(daemon, 0) and not pipe.exists()
    assert gpucheck.host_lines(h)[-1].endswith("MPS daemon started by this check and stopped")


def test_a_daemon_that_does_not_quit_is_terminated_by_its_pid(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "MPS_TIMEOUT_S", 1.0)
    h = host(mps_binary=fake_mps_control(tmp_path, quits=False))
    with gpucheck.mps_daemon(h):
        daemon = psutil.Process(h["mps_daemon_pid"])
    assert h["mps_daemon_stopped"] and gpucheck._exited(daemon, 0)
    assert f"pid {daemon.pid}) did not quit within 1 s and was terminated" in h["mps_stop_error"]
    assert not gpucheck.failed([], h) and "terminated" in gpucheck.host_lines(h)[-1]


def test_a_daemon_left_running_fails_the_check_and_says_how_to_stop_it():
    h = host(mps_daemon_started=True, mps_daemon_stopped=False,
             mps_stop_error="stop it with `echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/x nvidia-cuda-mps-control`")
    assert gpucheck.failed([], h) and "NOT stopped: stop it with `echo quit" in gpucheck.host_lines(h)[-1]


def test_a_running_daemon_is_used_and_left_alone():
    h = host(mps_binary=None, mps_daemon_running=True)
    with gpucheck.mps_daemon(h) as env:
        assert env == {}
    assert "mps_daemon_started" not in h


def test_an_mps_daemon_that_cannot_start_is_not_available():
    with pytest.raises(gpucheck.MpsUnavailable, match="not on PATH"), gpucheck.mps_daemon(host(mps_binary=None)):
        pass


# ---- the table --------------------------------------------------------------------------------------------
def test_the_table_has_a_row_and_a_reason_line_per_check_and_the_counts():
    rows = [
        {"check": "exclusive / mlp-small", "result": "ok", "reason": "one process instance owns the device",
         "figures": {"p50_ms": 0.412, "p99_ms": 1.234, "throughput_rps": 199.8, "gpu_util_pct": 12.0,
                     "gpu_mem_used_mb_max": 1024.0}, "elapsed_s": 9.5},
        {"check": "spatial MIG x2 / mlp-small", "result": "not available", "reason": "not available on this host: "
         "MIG mode is disabled", "figures": {}},
        {"check": "batching fixed / cnn-small", "result": "failed", "reason": "0 of 5000 requests completed",
         "figures": {}},
    ]
    text = gpucheck.format_table(rows, H100, 123.45)
    lines = text.splitlines()
    assert lines[0].startswith("cuda:0: NVIDIA H100 80GB HBM3 (GPU-5d1e0f4c), 80.0 GiB")
    assert "driver 560.35.03, CUDA driver 12.6" in lines[1] and lines[2].startswith("NVML readable; MIG disabled")
    row = next(ln for ln in lines if ln.startswith("exclusive / mlp-small"))
    assert row.split()[3:] == ["ok", "0.41", "1.23", "199.8", "12", "1024", "10"]
    assert "    MIG mode is disabled" in text.replace("not available on this host: ", "")
    assert lines[-1] == "3 checks: 1 ok, 1 failed, 1 not available on this host; 123.5 s"
    assert gpucheck.failed(rows, H100) and not gpucheck.failed(rows[:2], H100)


def test_nvml_facts_on_a_host_without_nvidia_s_driver_say_why_nvml_is_not_readable():
    facts = devices.nvml_facts(devices.resolve_device("cpu"))
    assert facts["nvml_readable"] is False and facts["nvml_error"]
    assert facts["mig_enabled"] is False and facts["mig_devices"] == []
