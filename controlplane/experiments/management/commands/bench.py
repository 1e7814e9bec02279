"""Benchmark our runtime against a raw baseline measured in the same run.

    manage.py bench overhead|batching|loadgen [--json] [--duration S] [--short] [--runtime process|thread]
    manage.py bench overhead --runtime onnxruntime   # the null model under ONNX Runtime (model runtime)
    manage.py bench report [--json]   # every export format of a 10-variant experiment (bench_report)
    manage.py bench upload [--size-mb 500] [--json]   # the web process's peak memory taking an ONNX upload
    manage.py bench run-enqueue [--short] [--json]   # Run on 64 trials of an 8 MiB trace: seconds, database growth

A thin wrapper over workers.bench (plain Python); see that module for what each benchmark measures and
its goals. Every figure is printed, misses marked. A full run then exits with status 1 if a goal was
missed; a --short run (a second or two per benchmark) computes and prints the goals but enforces none,
and exits 0: it shows the benchmark runs end to end, not that the goals hold.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from workers import bench


class Command(BaseCommand):
    help = "Measure the runtime's overhead, batching efficiency or load generator against a raw baseline."

    def add_arguments(self, parser):
        parser.add_argument("name", choices=(*bench.NAMES, "report", "upload", "run-enqueue"))
        parser.add_argument("--size-mb", type=int, default=500, help="upload: size of the ONNX file (default 500)")
        parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        parser.add_argument("--duration", type=float, default=None,
                            help="seconds per measurement (defaults: overhead 10, batching 4 per round, loadgen 10; "
                                 "with --short: 1, 1 (one round), 2); simulate: simulated seconds (default a day, "
                                 "86400; --short 600)")
        parser.add_argument("--short", action="store_true",
                            help="a second or two per benchmark; goals computed and printed, not enforced")
        parser.add_argument("--runtime", choices=bench.RUNTIMES + bench.MODEL_RUNTIMES, default=None,
                            help="overhead and batching: run the instances in worker processes or threads "
                                 "(default: the platform's default); overhead also: torch or onnxruntime, what "
                                 "runs the model")

    def handle(self, *args, **opts):
        if opts["name"] == "report":  # Django-side: the reports read the database (see bench_report)
            from .bench_report import run_command

            return run_command(self, {"variants": 10, "repeats": 1, "load_duration": opts["duration"] or 1.5,
                                      "formats": None, "keep": False, "json": opts["json"], "experiment": None,
                                      "run": None, "short": opts["short"]})
        if opts["name"] == "upload":  # Django-side: a fresh server process takes the upload (registry.bench_upload)
            from controlplane.registry.bench_upload import run as run_upload

            result = run_upload(opts["size_mb"])
            if opts["json"]:
                self.stdout.write(json.dumps(result))
            else:
                self.stdout.write("\n".join(f"  {k:36} {v}" for k, v in result.items()))
            return
        if opts["name"] == "run-enqueue":  # Django-side: Run itself, against the database (bench_run)
            from controlplane.experiments import bench_run

            result = bench_run.run(short=opts["short"])
            self.stdout.write(json.dumps(result) if opts["json"] else bench_run.format_table(result))
            missed = bench.missed_goals(result)
            if missed:
                raise CommandError("missed goal(s): " + "; ".join(missed))
            return
        duration = opts["duration"]
        longest = 7 * 86_400 if opts["name"] == "simulate" else 600
        if duration is not None and not 0.5 <= duration <= longest:
            raise CommandError(f"--duration must be between 0.5 and {longest} seconds")
        model_dir = Path(settings.MODEL_DIR) if getattr(settings, "MODEL_DIR", None) else None
        try:
            result = bench.run(opts["name"], duration, model_dir=model_dir, short=opts["short"],
                               runtime=opts["runtime"])
        except bench.BenchError as exc:
            raise CommandError(str(exc)) from exc
        if opts["json"]:
            self.stdout.write(json.dumps(result, allow_nan=False))
        else:
            self.stdout.write(bench.format_table(result))
        missed = bench.missed_goals(result)
        if missed:
            raise CommandError("missed goal(s): " + "; ".join(missed))
