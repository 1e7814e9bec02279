"""The GPU acceptance check: which GPU features work on this host, and why not where they do not.

    manage.py gpu_check [--device cuda:0] [--seconds 5] [--json OUT] [--budget-s 270]

A thin wrapper over workers.gpucheck (plain Python; see it for what each check proves). Describes the host,
runs one short real trial per applicable check (progress on stderr), prints one table and its own elapsed
time. Exit status 1 when a check that applies to this host failed (or an MPS daemon it started could not be
stopped); 0 otherwise. On a host without a GPU it says so in one line and exits 0; a device this GPU host does
not have is an error.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from workers import gpucheck


class Command(BaseCommand):
    help = "Check every GPU path of the platform on this host with short real trials; one table, ok/failed/not available."

    def add_arguments(self, parser):
        parser.add_argument("--device", default="cuda:0", help="the CUDA device to check (default cuda:0)")
        parser.add_argument("--seconds", type=float, default=5.0,
                            help="load duration of each trial, 1-60 s (default 5)")
        parser.add_argument("--json", dest="json_out", metavar="OUT", help="also write the host and rows to this file")
        parser.add_argument("--budget-s", type=float, default=gpucheck.DEFAULT_BUDGET_S,
                            help="seconds the trials may take in all; a check not started in time fails "
                                 f"(default {gpucheck.DEFAULT_BUDGET_S:g})")

    def handle(self, *args, device, seconds, json_out, budget_s, **options):
        if not 1.0 <= seconds <= 60.0:
            raise CommandError("--seconds must be between 1 and 60")
        t0 = time.monotonic()
        host = gpucheck.describe_host(device)
        if not host["gpu"] and host["cuda_device_count"]:  # a GPU host, but not the device asked for
            raise CommandError(f"gpu_check: {host['reason']}")
        if not host["gpu"]:
            self.stdout.write(gpucheck.no_gpu_line(host))
            if json_out:  # written quietly: on such a host the command's whole output is that one line
                self._write(json_out, gpucheck.document(host, [], seconds=seconds, elapsed_s=time.monotonic() - t0),
                            announce=False)
            return
        checks = gpucheck.plan_checks(host)
        self._progress(f"gpu_check on {host['device']} ({host['name']}): {sum(c.applicable for c in checks)} of "
                       f"{len(checks)} checks apply, {seconds:g} s of load each")
        model_dir = Path(settings.MODEL_DIR)
        # SIGTERM ends the check like Ctrl-C: the finally blocks stop a started MPS daemon and kill a running trial.
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            rows = gpucheck.run_checks(checks, host, seconds=seconds, model_dir=model_dir, budget_s=budget_s,
                                       on_row=lambda r: self._progress(f"  {r['check']}: {r['result']}"))
        finally:
            signal.signal(signal.SIGTERM, previous)
        elapsed = time.monotonic() - t0
        self.stdout.write(gpucheck.format_table(rows, host, elapsed))
        if json_out:
            self._write(json_out, gpucheck.document(host, rows, seconds=seconds, elapsed_s=elapsed))
        if gpucheck.failed(rows, host):
            raise CommandError("a GPU check that applies to this host failed (see the table)")

    def _progress(self, line: str) -> None:
        self.stderr.write(line, style_func=str)  # progress, not an error: no error colour on a terminal

    def _write(self, path: str, doc: dict, *, announce: bool = True) -> None:
        Path(path).write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        if announce:
            self.stdout.write(f"wrote {path}")
