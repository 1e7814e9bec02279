"""Write a report of one run of an experiment.

    manage.py export_report 0b5c...-uuid --run 2 --format pdf --out run2.pdf [--paper Letter]

EXPERIMENT is the experiment's code (UUID) or its name when only one experiment has it. The formats are
the keys of `controlplane.experiments.reports.RENDERERS`; every figure comes from the comparison selector.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from controlplane.experiments import comparison as C
from controlplane.experiments.models import Experiment
from controlplane.experiments.reports import RENDERERS, render_report
from workers import spec as S


def find_experiment(ref: str) -> Experiment:
    try:
        return Experiment.objects.get(code=uuid.UUID(ref))
    except ValueError:
        pass
    except Experiment.DoesNotExist:
        raise CommandError(f"no experiment with code {ref!r}") from None
    found = list(Experiment.objects.filter(name=ref)[:2])
    if not found:
        raise CommandError(f"no experiment with code or name {ref!r}")
    if len(found) > 1:
        raise CommandError(f"several experiments are named {ref!r}: give its code")
    return found[0]


class Command(BaseCommand):
    help = "Export a report of one run of an experiment (the comparison page's figures) as a file."

    def add_arguments(self, parser):
        parser.add_argument("experiment", help="the experiment's code (UUID) or its unique name")
        parser.add_argument("--run", type=int, default=None, help="the run number (default: the latest)")
        parser.add_argument("--format", dest="fmt", choices=sorted(RENDERERS), required=True)
        parser.add_argument("--out", required=True, metavar="FILE", help="where to write the report")
        parser.add_argument("--baseline", default=None, help="the baseline variant (default: the page's)")
        parser.add_argument("--price", default=None, help="re-price with this price entry (name or id)")
        parser.add_argument("--paper", default="A4", choices=["A4", "Letter", "a4", "letter"],
                            help="paper size of the PDF and of the HTML's print stylesheet")
        parser.add_argument("--author", default=None, help="the author on the title (default: the owner)")

    def handle(self, *args, experiment, run, fmt, out, baseline, price, paper, author, **options):
        exp = find_experiment(experiment)
        started = time.perf_counter()
        try:
            data = C.experiment_comparison(experiment=exp, run=run, baseline=baseline, price=price)
        except S.SpecError as exc:
            raise CommandError("; ".join(f"{e.path}: {e.message}" for e in exc.errors)) from None
        if not data["rows"]:
            raise CommandError(f"experiment {exp.name!r} has no run to report on")
        body = render_report(data, experiment=exp, run=data["scope"]["run"], author=author or exp.owner, fmt=fmt,
                             paper=paper)
        try:
            Path(out).write_bytes(body)
        except OSError as exc:
            raise CommandError(f"cannot write {out}: {exc.strerror or exc}") from None
        elapsed = time.perf_counter() - started
        self.stderr.write(f"wrote the {fmt} report of {exp.name!r} run {data['scope']['run']} to {out} "
                          f"({len(body):,} bytes, {elapsed:.1f} s)")
