"""manage.py import_model FILE --name NAME --owner USER: register an ONNX file as USER's model NAME.

The same checks as an upload from the browser or the API (registry.services.model_register); the file is
streamed into MEDIA_ROOT (never read whole into memory) and hashed on the way.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from workers import spec as S

from ...services import model_register
from ...uploads import TooBig, receive_file


class Command(BaseCommand):
    help = "Register an ONNX model file for a user (checked like an upload)."

    def add_arguments(self, parser):
        parser.add_argument("file", help="path of the .onnx file")
        parser.add_argument("--name", required=True, help="what a function's `model` will name")
        parser.add_argument("--owner", required=True, help="username of the model's owner")

    def handle(self, *args, **opts):
        owner = get_user_model().objects.filter(username=opts["owner"]).first()
        if owner is None:
            raise CommandError(f"no user named {opts['owner']!r}")
        try:
            with open(opts["file"], "rb") as fh:
                incoming, sha256, size = receive_file(fh)
        except OSError as exc:
            raise CommandError(f"cannot read {opts['file']}: {exc.strerror or exc}") from exc
        except TooBig as exc:
            raise CommandError(f"file: {exc}") from exc
        try:
            model = model_register(owner=owner, name=opts["name"], incoming=incoming, sha256=sha256, size_bytes=size)
        except S.SpecError as exc:
            raise CommandError(str(exc)) from exc
        batch = "dynamic batch" if model.dynamic_batch else "batch 1 only"
        self.stdout.write(f"registered {model.name} for {owner.get_username()}: {model.size_bytes} bytes, "
                          f"sha256 {model.sha256}, opset {model.opset}, {batch}, code {model.code}")
