"""`manage.py bench run-enqueue`: what pressing Run costs on an experiment with a large trace.

An experiment replaying a synthetic Azure 2019 trace of about 8 MiB (`workers.tracegen`, just under
`MAX_TRACE_BYTES`) with 16 variants x 4 repeats is imported for a throwaway user, then Run is timed as the page
and the API call it (`services.experiment_run`: read the experiment, validate its spec once, trace included, store the
frozen spec once, create the 64 trials with their run time and limits), with the trials kept for an inline runner
(no broker message: sending reads only the rows' columns), no trace parsed before in the process and DEBUG's query
log off, as in production. The database's growth is read around it (SQLite: pages in use;
PostgreSQL: the trial and frozen-spec tables with their TOAST, which compresses) and divided by the trace's size:
about one copy, not one per trial. A second Run of the unchanged experiment finds the stored spec by its hash and
adds only trial rows. Everything is deleted afterwards.

Goals: Run within 1 s; the database grows by at most 1.5 trace copies. `--short` uses a 512 KiB trace, prints the
same figures and enforces nothing.
"""

from __future__ import annotations

import time

from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import override_settings

from workers import bench, tracegen
from workers import spec as S
from workers.workload import clear_trace_cache

from . import services
from .models import RunSpec, Trial

BENCH_OWNER = "bench-run"
GOALS = {"run_s": ("<=", 1.0), "db_growth_trace_copies": ("<=", 1.5)}
VARIANTS, REPEATS = 16, 4
TRACE_BYTES = S.MAX_TRACE_BYTES - 64 * 1024  # the largest trace a spec may hold, less a row's worth of margin
SHORT_TRACE_BYTES = 512 * 1024


def trace_of_about(nbytes: int) -> str:
    """A synthetic Azure 2019 day (`tracegen.azure2019_trace`) cut to at most `nbytes` of whole rows."""
    head = tracegen.azure2019_trace(1, mean_rate_rps=0.0).split("\n")[0]
    row_of_zeros = 3 * 32 + len(",http") + 2 * 1440 + 1  # three hashes, the trigger, 1,440 counts of 0
    rows = max(1, (nbytes - len(head) - 1) // row_of_zeros)
    text = tracegen.azure2019_trace(rows, mean_rate_rps=20.0)  # 1.7 M invocations a day: under the cap
    lines = text.split("\n")[:-1]
    while len(lines) > 2 and sum(len(line) + 1 for line in lines) > nbytes:
        lines.pop()
    return "\n".join(lines) + "\n"


def experiment_spec(trace: str) -> dict:
    variants = [{"name": f"v{i:02d}", "repeats": REPEATS, "max_instances": 1 + i % 4,
                 **({"batching": {"mode": "fixed", "max_batch_size": 8, "max_queue_delay_ms": 4}} if i % 2 else {})}
                for i in range(VARIANTS)]
    return {"name": f"bench-run-{int(time.time())}", "device": "cpu", "slo": {"percentile": 99, "latency_ms": 100},
            "functions": [{"name": "fn", "model": "null"}],
            "workload": {"pattern": "trace", "trace_format": "azure2019", "trace_content": trace,
                         "trace_filename": "bench.csv", "duration_s": 60},
            "variants": variants}


def db_bytes() -> int | None:
    """Bytes the database holds now: SQLite's pages in use; on PostgreSQL the tables Run writes (trials and frozen
    specs, with their TOAST and indexes). None on another database."""
    with connection.cursor() as c:
        if connection.vendor == "sqlite":
            c.execute("PRAGMA page_count")
            pages = c.fetchone()[0]
            c.execute("PRAGMA freelist_count")
            pages -= c.fetchone()[0]
            c.execute("PRAGMA page_size")
            return pages * c.fetchone()[0]
        if connection.vendor == "postgresql":
            c.execute("SELECT pg_total_relation_size(%s) + pg_total_relation_size(%s)",
                      [Trial._meta.db_table, RunSpec._meta.db_table])
            return int(c.fetchone()[0])
    return None


def _timed_run(experiment) -> tuple[list[Trial], float, int | None]:
    clear_trace_cache()  # as in a web process that has not seen this trace: Run parses it
    before = db_bytes()
    # Without DEBUG's query log, as in production: it would copy the 8 MiB parameter into a quoted SQL string.
    with override_settings(DEBUG=False):
        started = time.perf_counter()
        trials = services.experiment_run(experiment=experiment, user=experiment.owner, enqueue=False)
        seconds = time.perf_counter() - started
    after = db_bytes()
    return trials, seconds, (after - before) if before is not None and after is not None else None


def run(*, short: bool = False) -> dict:
    trace = trace_of_about(SHORT_TRACE_BYTES if short else TRACE_BYTES)
    trace_bytes = len(trace.encode("utf-8"))
    owner, _ = get_user_model().objects.get_or_create(username=BENCH_OWNER)
    experiment = services.experiment_import(owner=owner, data=experiment_spec(trace))
    try:
        first, run_s, growth = _timed_run(experiment)
        second, second_s, second_growth = _timed_run(experiment)
        specs = RunSpec.objects.filter(experiment=experiment).count()
    finally:
        services.experiment_delete(experiment=experiment)
    result = {
        "benchmark": "run-enqueue", "short": short, "database": connection.vendor,
        "trace_bytes": trace_bytes, "variants": VARIANTS, "repeats": REPEATS, "trials": len(first),
        "run_s": run_s, "db_growth_bytes": growth,
        "db_growth_trace_copies": growth / trace_bytes if growth is not None else None,
        "second_run_trials": len(second), "second_run_s": second_s, "second_run_db_growth_bytes": second_growth,
        "stored_specs": specs,
    }
    result["goals"] = bench.verdicts(result, enforced=not short, goals=GOALS)
    return result


def format_table(result: dict) -> str:
    head = (f"benchmark: run-enqueue on {result['database']} ({result['trials']} trials, "
            f"{result['trace_bytes']:,} bytes of trace)")
    if result["short"]:
        head += "  [short run: goals computed, not enforced]"
    lines = [head]
    for key, value in result.items():
        if key in ("benchmark", "goals", "short"):
            continue
        goal = result["goals"].get(key)
        mark = f"  (goal {goal['goal']}: {'ok' if goal['met'] else 'MISSED'})" if goal else ""
        text = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
        lines.append(f"  {key:32} {text}{mark}")
    return "\n".join(lines)
