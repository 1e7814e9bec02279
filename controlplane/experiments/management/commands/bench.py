"""Benchmark our runtime against a raw baseline measured in the same run.

    manage.py bench overhead|batching|loadgen [--json] [--duration S]

A thin wrapper over workers.bench (plain Python); see that module for what each benchmark measures and
its goals. Figures are printed even when they miss a goal; misses are marked. Exit status 0 either way
(a miss is a finding, not a crash).
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
        parser.add_argument("name", choices=bench.NAMES)
        parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        parser.add_argument("--duration", type=float, default=None,
                            help="seconds per measurement (defaults: overhead 10, batching 4 per round, loadgen 10)")

    def handle(self, *args, **opts):
        duration = opts["duration"]
        if duration is not None and not 0.5 <= duration <= 600:
            raise CommandError("--duration must be between 0.5 and 600 seconds")
        model_dir = Path(settings.MODEL_DIR) if getattr(settings, "MODEL_DIR", None) else None
        result = bench.run(opts["name"], duration, model_dir=model_dir)
        if opts["json"]:
            self.stdout.write(json.dumps(result, allow_nan=False))
        else:
            self.stdout.write(bench.format_table(result))
