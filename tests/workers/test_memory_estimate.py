"""zoo.estimate_memory_bytes against what the real instance process measures: for each built-in model, at batch 1
and at a larger batch, the peak resident set (VmHWM) of a ProcessRunner instance over its own RSS after
`import torch` (reported by the child before it loads anything) is within 25 % of the measured figure plus
HOST_SLACK_BYTES (numpy.isclose's rule: a relative and an absolute tolerance)."""

from __future__ import annotations

import threading

import pytest

from workers import zoo
from workers.instance import ProcessRunner, peak_rss_bytes
from workers.spec import FunctionSpec

TOLERANCE = 0.25
# What a small model's peak RSS rise is varies by a few MiB between runs and hosts: the code torch pages in for a
# load (the null model, which is nothing but that, measured 3.9 MiB on the CI host and 5.4-6.1 MiB here against a
# fixed 5 MiB estimate) and where the allocator's heap happens to stand (transformer-small at batch 64 measured 13.8
# and 15.5 MiB in two runs on this host). That much is the host, not the estimate: it matters for the smallest
# models only (transformer-base is held to 25 % + 4 MiB of 832 MiB).
HOST_SLACK_BYTES = 4 * 2**20
# The larger batch of each built-in: big enough that its activations show, small enough for a few seconds on one core.
LARGER_BATCH = {"null": 256, "mlp-small": 256, "cnn-small": 64, "transformer-small": 64, "transformer-base": 8}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    for key in LARGER_BATCH:
        zoo.ensure_weights(key, model_dir=folder)  # before any measurement, as the engine does before its clock
    return folder


def measure(key: str, batches: tuple[int, ...], model_dir) -> dict[int, int]:
    """Bytes the instance's peak RSS rose above its RSS after `import torch`, after the load and one batch of each size
    (the load's warm-up runs batch 1, so batch 1's figure covers the load too)."""
    runner = ProcessRunner(FunctionSpec(name="f", model=key), "cpu", model_dir, threads=1)
    try:
        base = runner.start()["baseline_rss_bytes"]
        out = {}
        for b in batches:
            runner.run(b)
            out[b] = peak_rss_bytes(runner.proc.pid) - base
        return out
    finally:
        runner.close()


@pytest.fixture(scope="module")
def comparison(weights) -> dict[tuple[str, int], tuple[int, int]]:
    """(model, batch) -> (estimate, measured), one instance process per model, all at once."""
    measured: dict[str, dict[int, int]] = {}
    errors: list[BaseException] = []

    def one(key):
        try:
            measured[key] = measure(key, (1, LARGER_BATCH[key]), weights)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(key,)) for key in LARGER_BATCH]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    out = {}
    for key, by_batch in measured.items():
        for b, peak in by_batch.items():
            est = zoo.estimate_memory_bytes(key, batch_size=b)
            out[(key, b)] = (est, peak)
            print(f"{key:18s} batch {b:3d}: estimate {est / 2**20:8.2f} MiB, peak RSS rise {peak / 2**20:8.2f} MiB, "
                  f"estimate/measured {est / peak:.2f}")
    return out


def off_by_more_than_the_tolerance(comparison) -> list[str]:
    return [f"{key} batch {b}: estimate {est / 2**20:.2f} MiB, measured {peak / 2**20:.2f} MiB"
            for (key, b), (est, peak) in comparison.items() if abs(est - peak) > TOLERANCE * peak + HOST_SLACK_BYTES]


def test_the_memory_estimate_of_each_builtin_holds_within_25_percent_of_its_peak_rss(comparison):
    assert set(LARGER_BATCH) == set(zoo.BUILTIN_SHAPES)  # every built-in is measured
    assert len(comparison) == 2 * len(LARGER_BATCH)
    assert not off_by_more_than_the_tolerance(comparison)
