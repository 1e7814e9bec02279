"""Write an experiment as a spec file (JSON by default, YAML with --yaml or a .yaml/.yml output name).

    manage.py export_spec 0b5c...-uuid -o classifier-poc.json

The output imports back (import_spec, POST /api/experiments/) as the same experiment; a trace workload
carries the trace's text inline in trace_content.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from controlplane.experiments import spec_io
from controlplane.experiments.models import Experiment


class Command(BaseCommand):
    help = "Export an experiment (by code) as a JSON or YAML spec file."

    def add_arguments(self, parser):
        parser.add_argument("code", help="the experiment's code (UUID)")
        parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
        parser.add_argument("--yaml", action="store_true", help="YAML instead of JSON")

    def handle(self, *args, code, output, yaml, **options):
        try:
            experiment = Experiment.objects.get(code=uuid.UUID(code))
        except (ValueError, Experiment.DoesNotExist):
            raise CommandError(f"no experiment with code {code!r}") from None
        as_yaml = yaml or (output is not None and output.lower().endswith(spec_io.YAML_SUFFIXES))
        text = spec_io.dump_spec(spec_io.experiment_to_dict(experiment), as_yaml=as_yaml)
        if output is None:
            self.stdout.write(text, ending="")
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {output}: {exc.strerror or exc}") from None
        self.stderr.write(f"wrote {experiment.name!r} ({experiment.code}) to {output}")
