"""Writes of the model registry. A model is stored only after its file passed `workers.onnx_models.inspect_file`.

Problems are raised as `workers.spec.SpecError` with the field named ("name", "file"), like every other write.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction

from workers import spec as S
from workers.onnx_models import OnnxModelError, inspect_file_isolated

from .models import Model

log = logging.getLogger(__name__)
# What `manage.py bench upload` reads from the web server's log: the check's child process's peak memory.
CHECK_LOG = "model check of %s (%d bytes): checker peak RSS %s bytes"


def _error(path: str, message: str) -> S.SpecError:
    return S.SpecError([S.FieldError(path, message)])


def model_register(*, owner, name: str, incoming: Path, sha256: str, size_bytes: int) -> Model:
    """Check an uploaded file (already streamed to `incoming`) and store it as `owner`'s model `name`.

    The incoming file is moved into place or deleted: it never stays behind.
    """
    try:
        return _register(owner=owner, name=name, incoming=Path(incoming), sha256=sha256, size_bytes=size_bytes)
    finally:
        Path(incoming).unlink(missing_ok=True)


def _register(*, owner, name: str, incoming: Path, sha256: str, size_bytes: int) -> Model:
    from workers.zoo import model_keys

    if not isinstance(name, str) or not S.NAME_RE.match(name):
        raise _error("name", "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if name in model_keys():
        raise _error("name", f"{name!r} is a built-in or installed model; choose another name")
    if Model.objects.filter(owner=owner, name=name).exists():
        raise _error("name", f"you already have a model named {name!r}; delete it first or choose another name")
    try:
        sig, peak_rss = inspect_file_isolated(incoming)
    except OnnxModelError as exc:
        raise _error("file", str(exc)) from exc
    log.info(CHECK_LOG, name, size_bytes, peak_rss)
    model = Model(owner=owner, name=name, sha256=sha256, size_bytes=size_bytes, inputs=sig.inputs,
                  outputs=sig.outputs, opset=sig.opset, dynamic_batch=sig.dynamic_batch)
    relative = f"models/{model.code}/model.onnx"
    final = Path(settings.MEDIA_ROOT) / relative
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(incoming, final)  # same file system (MEDIA_ROOT/models/incoming): a rename, no copy
    model.file.name = relative
    try:
        with transaction.atomic():
            model.save()
    except Exception:
        shutil.rmtree(final.parent, ignore_errors=True)
        raise
    return model


def model_delete(*, model: Model) -> None:
    """Delete a model and, once that commits, its file. Experiments naming it fail validation from then on."""
    folder = (Path(settings.MEDIA_ROOT) / model.file.name).parent
    with transaction.atomic():
        model.delete()
        transaction.on_commit(functools.partial(shutil.rmtree, folder, True))
