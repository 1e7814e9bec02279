"""Synthetic traces in the public formats, for tests, demos and simulations when no real trace is at hand.

azure2019_trace writes the Azure Functions 2019 per-minute layout (HashOwner,HashApp,HashFunction,Trigger,1..1440):
one row per function, counts per minute drawn from a Poisson process whose rate follows a day (trough at minute 0,
peak at noon) times each function's popularity (Zipf, as in the published trace: a few functions take most
invocations). The result is a SYNTHETIC trace: it has the layout of the real one, not its data. A real trace file
in the same layout (one day of the dataset) works the same way wherever a trace is accepted.
"""

from __future__ import annotations

import hashlib

import numpy as np

from workers.workload import AZURE2019_HEAD, AZURE2019_MINUTES


def function_hash(i: int, seed: int = 0) -> str:
    return hashlib.sha256(f"slsbench-synthetic-{seed}-{i}".encode()).hexdigest()[:32]


def azure2019_trace(functions: int, *, mean_rate_rps: float, seed: int = 0, zipf: float = 1.1,
                    peak_to_trough: float = 4.0, minutes: int = AZURE2019_MINUTES) -> str:
    """A day of per-minute invocation counts for `functions` functions whose rates add up to mean_rate_rps on
    average. Minutes past `minutes` are zero (a short trace for tests)."""
    if functions < 1:
        raise ValueError("functions must be at least 1")
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, functions + 1) ** zipf
    weights /= weights.sum()
    m = np.arange(AZURE2019_MINUTES)
    a = (peak_to_trough - 1.0) / (peak_to_trough + 1.0)
    shape = 1.0 + a * np.sin(2.0 * np.pi * (m + 0.5) / AZURE2019_MINUTES - np.pi / 2.0)
    lines = [",".join([*AZURE2019_HEAD, *(str(k) for k in range(1, AZURE2019_MINUTES + 1))])]
    for i in range(functions):
        lam = mean_rate_rps * 60.0 * weights[i] * shape
        counts = rng.poisson(lam)
        counts[minutes:] = 0
        owner = hashlib.sha256(f"owner-{seed}-{i % 7}".encode()).hexdigest()[:32]
        app = hashlib.sha256(f"app-{seed}-{i % 13}".encode()).hexdigest()[:32]
        lines.append(",".join([owner, app, function_hash(i, seed), "http", *(str(int(c)) for c in counts)]))
    return "\n".join(lines) + "\n"


def azure2019_experiment(functions: int, *, mean_rate_rps: float, duration_s: float, model: str = "mlp-small",
                         seed: int = 0, variants: list[dict] | None = None, slo_ms: float = 100.0,
                         device: str = "cpu") -> dict:
    """An experiment spec replaying a synthetic Azure 2019 trace: one function and one workload per trace row."""
    trace = azure2019_trace(functions, mean_rate_rps=mean_rate_rps, seed=seed,
                            minutes=max(1, int(np.ceil(duration_s / 60.0))))
    return {
        "name": f"azure2019-{functions}fn", "device": device,
        "slo": {"percentile": 99, "latency_ms": slo_ms},
        "functions": [{"name": f"fn{i:03d}", "model": model} for i in range(functions)],
        "workloads": [{"pattern": "trace", "trace_format": "azure2019", "trace_content": trace,
                      "function_hash": function_hash(i, seed), "function": f"fn{i:03d}", "duration_s": duration_s}
                     for i in range(functions)],
        "variants": variants or [{"name": "scale-to-zero", "sharing": "time_slice", "min_instances": 0,
                                  "max_instances": 2, "keep_alive": {"policy": "fixed", "ttl_s": 60}}],
    }
