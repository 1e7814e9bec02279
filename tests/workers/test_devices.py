"""Devices, sharing plans and telemetry on a CPU-only host (the CUDA paths are guarded)."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from workers.devices import (
    DeviceError,
    DeviceInfo,
    SharingUnavailable,
    Telemetry,
    hardware_info,
    resolve_device,
    sharing_plan,
)

CORES = len(os.sched_getaffinity(0))
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA device")


@needs_no_cuda
def test_auto_resolves_to_cpu_here():
    d = resolve_device("auto")
    assert (d.name, d.kind, d.index) == ("cpu", "cpu", None)
    assert d.cores == CORES and d.total_memory_bytes > 0 and d.description


@needs_no_cuda
@pytest.mark.parametrize("req", ["cuda", "cuda:1"])
def test_cuda_without_gpu_raises_clear_error(req):
    with pytest.raises(DeviceError, match=r"cuda:\d requested but this host has 0 CUDA devices"):
        resolve_device(req)


def test_unknown_device_string():
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu:0")


def test_hardware_info_on_cpu():
    info = hardware_info(resolve_device("cpu"), "threads")
    assert info["on_cpu"] is True and info["device"] == "cpu"
    assert info["torch_version"] == torch.__version__
    assert info["driver_version"] is None and info["cuda_version"] is None
    assert info["sharing_mechanism"] == "threads" and info["cores"] == CORES
    assert info["cpu_model"] and info["python_version"] and "host" in info


def test_cpu_exclusive_and_time_slice_plans():
    cpu = resolve_device("cpu")
    assert sharing_plan(cpu, "exclusive", instances=1, share=1.0).mechanism == "exclusive"
    ts = sharing_plan(cpu, "time_slice", instances=4, share=1.0)
    assert ts.mechanism == "processes" and ts.core_sets is None  # instance processes, scheduled by the OS
    threads = sharing_plan(cpu, "time_slice", instances=4, share=1.0, runtime="thread")
    assert threads.mechanism == "threads" and threads.core_sets is None


@pytest.mark.skipif(CORES < 2, reason="needs at least 2 usable cores")
def test_cpu_spatial_gives_disjoint_core_sets():
    cpu = resolve_device("cpu")
    plan = sharing_plan(cpu, "spatial", instances=2, share=0.5)
    assert plan.mechanism == "cpu-core-sets"
    assert len(plan.core_sets) == 2 and all(len(s) == CORES // 2 for s in plan.core_sets)
    assert not set(plan.core_sets[0]) & set(plan.core_sets[1])
    assert set().union(*plan.core_sets) <= os.sched_getaffinity(0)
    assert plan.threads_per_instance == CORES // 2


def test_cpu_spatial_share_too_small():
    cpu = DeviceInfo("cpu", "cpu", None, "test", 1, cores=CORES)
    share = 0.5 / CORES  # half a core
    with pytest.raises(SharingUnavailable, match=f"share {share:g} of {CORES} cores is 0.5 core"):
        sharing_plan(cpu, "spatial", instances=1, share=share)
    with pytest.raises(SharingUnavailable, match="at least one whole core per instance"):
        sharing_plan(cpu, "spatial", instances=CORES + 1, share=1.0 / CORES)


def test_cuda_spatial_without_mig_or_mps_says_what_is_missing(monkeypatch, tmp_path):
    # A CUDA DeviceInfo on this host: NVML is absent or reports no MIG, and the MPS pipe dir is empty.
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    gpu = DeviceInfo("cuda:0", "cuda", 0, "Some GPU", 1 << 30, cores=100)
    assert sharing_plan(gpu, "time_slice", instances=2, share=1.0).mechanism == "cuda-contexts"
    assert sharing_plan(gpu, "time_slice", instances=2, share=1.0, runtime="thread").mechanism == "cuda-streams"
    with pytest.raises(SharingUnavailable, match=r"MIG mode .* or a running MPS daemon \(`nvidia-cuda-mps-control -d`\)"):
        sharing_plan(gpu, "spatial", instances=2, share=0.5)
    (tmp_path / "control").touch()  # what a running MPS control daemon leaves in its pipe directory
    plan = sharing_plan(gpu, "spatial", instances=2, share=0.5)
    assert plan.mechanism == "mps" and plan.mps_active_thread_percentage == 50


def test_telemetry_samples_cpu():
    stop = threading.Event()

    def spin():  # real CPU work (torch releases the GIL) so utilisation is visibly above zero
        a = torch.randn(256, 256)
        while not stop.is_set():
            a = torch.tanh(a @ a)

    worker = threading.Thread(target=spin, daemon=True)
    worker.start()
    try:
        with Telemetry(resolve_device("cpu"), interval_s=0.05) as tel:
            deadline = time.perf_counter() + 0.5
            while time.perf_counter() < deadline and len(tel.samples()) < 4:
                time.sleep(0.02)  # waiting for the sampler thread, not standing in for work
    finally:
        stop.set()
        worker.join()
    samples = tel.samples()
    assert len(samples) >= 4
    cpu = [x["cpu_util_pct"] for x in samples if x["cpu_util_pct"] is not None]
    assert cpu and all(0.0 < v <= 100.0 for v in cpu)
    latest = tel.latest()
    assert latest == samples[-1] and latest["rss_mb"] > 10 and latest["gpu_util_pct"] is None
    s = tel.summary()
    assert s["samples"] == len(samples) and s["rss_mb_max"] >= s["rss_mb"] > 0
    assert s["cpu_util_pct"] == pytest.approx(sum(cpu) / len(cpu)) and s["gpu_mem_used_mb_max"] is None
    window = tel.mean_between(samples[0]["t_s"], samples[-1]["t_s"])
    assert window["cpu_util_pct"] == pytest.approx(s["cpu_util_pct"])
    assert tel.mean_between(1e6, 2e6)["cpu_util_pct"] is None
    n = len(tel.samples())
    time.sleep(0.15)  # stopped: no further samples arrive
    assert len(tel.samples()) == n
