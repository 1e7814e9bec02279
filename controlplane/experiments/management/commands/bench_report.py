"""Time every export format of a comparison: the goal is each within 10 s for an experiment of 10 variants.

    manage.py bench_report                       # a throwaway 10-variant experiment, deleted afterwards
    manage.py bench_report --variants 3 --json
    manage.py bench_report --experiment CODE [--run N]
    manage.py bench report                       # the same, through the bench command

The throwaway experiment is real data: one trial is measured by the engine in this process (a short Poisson
load on the CPU with `mlp-small`), and its summary, per-second windows and Parquet artifact are stored for
every other variant's trial as well, so the selector, the charts and the zip read as much as a real run of
that many variants. Each format is timed as an export makes it (the comparison selector's dict, then the
renderer) with the latency-CDF cache cleared first, so every figure is a first read.
Exit status 1 when a format missed the goal.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from controlplane.experiments import comparison as C
from controlplane.experiments import services
from controlplane.experiments.models import Experiment, Trial, TrialWindow
from controlplane.experiments.reports import exports

GOAL_S = 10.0
BENCH_OWNER = "bench"


def _spec(n: int, repeats: int, duration_s: float) -> dict:
    variants = []
    for i in range(n):
        v = {"name": f"variant-{i:02d}", "repeats": repeats, "min_instances": 1 if i == 0 else 0,
             "max_instances": 2}
        if i % 2:
            v["batching"] = {"mode": "fixed", "max_batch_size": 8, "max_queue_delay_ms": 4}
        variants.append(v)
    return {"name": f"bench-report-{int(time.time())}", "device": "cpu", "accelerator": "cpu",
            "slo": {"percentile": 99, "latency_ms": 50},
            "functions": [{"name": "classify", "model": "mlp-small"}],
            "workload": {"pattern": "poisson", "rate_rps": 40, "duration_s": duration_s, "seed": 7},
            "variants": variants}


def make_experiment(n: int, repeats: int, duration_s: float, stdout=None) -> Experiment:
    from workers.tasks import run_trial_by_id  # imports torch

    owner, _ = get_user_model().objects.get_or_create(username=BENCH_OWNER)
    experiment = services.experiment_import(owner=owner, data=_spec(n, repeats, duration_s))
    trials = services.experiment_run(experiment=experiment, user=owner, enqueue=False)
    first = trials[0]
    run_trial_by_id(first.id, worker="bench-report", redis_conn=None, publish=False)
    first.refresh_from_db()
    if first.status != Trial.Status.SUCCEEDED:
        raise CommandError(f"the measured trial {first.status}: {first.error}")
    windows = list(TrialWindow.objects.filter(trial=first).values("index", "t_s", "data"))
    source = Path(settings.MEDIA_ROOT) / first.artifact.name
    for t in trials[1:]:
        name = f"artifacts/{t.code}.parquet"
        shutil.copyfile(source, Path(settings.MEDIA_ROOT) / name)
        Trial.objects.filter(pk=t.pk).update(status=first.status, summary=first.summary, device=first.device,
                                             started_at=first.started_at, finished_at=first.finished_at,
                                             artifact=name)
        TrialWindow.objects.bulk_create([TrialWindow(trial=t, **w) for w in windows])
    if stdout is not None:
        stdout.write(f"measured 1 trial, stored {len(trials)} ({n} variants x {repeats} repeats)")
    return experiment


def time_formats(experiment: Experiment, run: int | None, formats: list[str]) -> list[dict]:
    logging.getLogger("weasyprint.progress").setLevel(logging.WARNING)  # its per-page steps would drown the table
    results = []
    for fmt in formats:
        C.clear_cdf_cache()
        started = time.perf_counter()
        data = exports.comparison_for(experiment=experiment, run=run, charts=exports.CHARTS.get(fmt, True))
        read = time.perf_counter()
        content = exports.render(fmt, data, experiment=experiment, run=run, author=experiment.owner)
        done = time.perf_counter()
        results.append({"format": fmt, "seconds": done - started, "selector_s": read - started,
                        "render_s": done - read, "bytes": len(content), "met": done - started <= GOAL_S})
    return results


def format_table(result: dict) -> str:
    lines = [f"report of {result['experiment']} run {result['run']}: {result['variants']} variants, "
             f"{result['trials']} trials (goal: each format within {GOAL_S:g} s)",
             f"{'format':<7}{'total s':>9}{'selector s':>12}{'render s':>10}{'size':>12}  goal"]
    for r in result["formats"]:
        lines.append(f"{r['format']:<7}{r['seconds']:>9.2f}{r['selector_s']:>12.2f}{r['render_s']:>10.2f}"
                     f"{r['bytes']:>12,}  {'ok' if r['met'] else 'MISSED'}")
    return "\n".join(lines)


def bench_report(*, experiment_code=None, run=None, variants=10, repeats=1, duration_s=1.5, keep=False,
                 formats=None, stdout=None) -> dict:
    formats = formats or exports.available_formats()
    made = None
    if experiment_code:
        experiment = Experiment.objects.filter(code=experiment_code).first()
        if experiment is None:
            raise CommandError(f"no experiment {experiment_code}")
    else:
        experiment = made = make_experiment(variants, repeats, duration_s, stdout)
    try:
        data = exports.comparison_for(experiment=experiment, run=run, charts=False)
        timings = time_formats(experiment, data["scope"]["run"], formats)
        return {"experiment": experiment.name, "run": data["scope"]["run"], "variants": len(data["rows"]),
                "trials": sum(r["trials"] for r in data["rows"]), "goal_s": GOAL_S, "formats": timings}
    finally:
        if made is not None and not keep:
            services.experiment_delete(experiment=made)


class Command(BaseCommand):
    help = "Time every export format (comparison read + render) for a 10-variant experiment; goal 10 s each."

    def add_arguments(self, parser):
        add_arguments(parser)

    def handle(self, *args, **opts):
        run_command(self, opts)


def add_arguments(parser) -> None:
    parser.add_argument("--experiment", help="an existing experiment's code (default: a throwaway one)")
    parser.add_argument("--run", type=int, default=None, help="its run (default: the latest)")
    parser.add_argument("--variants", type=int, default=10, help="variants of the throwaway experiment")
    parser.add_argument("--repeats", type=int, default=1, help="repeats of each variant (stored, not measured)")
    parser.add_argument("--load-duration", type=float, default=1.5, help="seconds of load of the measured trial")
    parser.add_argument("--format", action="append", dest="formats", help="only this format (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway experiment")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--short", action="store_true",
                        help="the goal is printed, not enforced (exit 0 even when a format missed it)")


def run_command(command: BaseCommand, opts: dict) -> None:
    if not 1 <= opts["variants"] <= 50 or not 1 <= opts["repeats"] <= 10:
        raise CommandError("--variants must be 1-50 and --repeats 1-10")
    unknown = [f for f in opts.get("formats") or [] if f not in exports.available_formats()]
    if unknown:
        raise CommandError(f"unknown format(s) {', '.join(unknown)} (available: "
                           f"{', '.join(exports.available_formats())})")
    result = bench_report(experiment_code=opts.get("experiment"), run=opts.get("run"), variants=opts["variants"],
                          repeats=opts["repeats"], duration_s=opts["load_duration"], keep=opts["keep"],
                          formats=opts.get("formats"), stdout=None if opts["json"] else command.stdout)
    command.stdout.write(json.dumps(result) if opts["json"] else format_table(result))
    missed = [r["format"] for r in result["formats"] if not r["met"]]
    if missed and not opts.get("short"):
        raise CommandError(f"missed the {GOAL_S:g} s goal: {', '.join(missed)}")
