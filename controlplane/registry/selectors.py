"""Reads of the model registry: a user's models, as pages, the API and the spec validator need them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from django.conf import settings
from django.db.models import QuerySet

from workers import profiling
from workers import spec as S

from .models import Model


def models_of(owner) -> QuerySet:
    return Model.objects.filter(owner=owner).order_by("name")


def uploaded_models_for(owner) -> dict[str, S.UploadedModel]:
    """What `workers.spec.parse_experiment(uploaded_models=...)` needs: the owner's models by name. An anonymous or
    missing owner has none."""
    if owner is None or not getattr(owner, "pk", None):
        return {}
    return {m.name: S.UploadedModel(name=m.name, dynamic_batch=m.dynamic_batch, input_shape=tuple(m.input_shape))
            for m in models_of(owner)}


def resolve_uploaded_functions(owner, functions: tuple[S.FunctionSpec, ...]) -> tuple[S.FunctionSpec, ...]:
    """Functions naming one of `owner`'s uploaded models, with the stored file and its SHA-256 filled in (when a
    trial runs). Raises LookupError when a named model was deleted since the spec was validated."""
    mine = {m.name: m for m in models_of(owner)} if owner is not None else {}
    out = []
    for f in functions:
        if f.model_runtime == "onnxruntime" and f.model in mine:
            m = mine[f.model]
            f = dataclasses.replace(f, model_file=str(Path(settings.MEDIA_ROOT) / m.file.name), model_sha256=m.sha256)
        out.append(f)
    return tuple(out)


def upload_for_profile(sha256: str, owner=None) -> profiling.Upload | None:
    """The stored file to profile for a profile named by an upload's SHA-256 (profiling.upload_options): the
    owner's model with those bytes (any user's when the profile has no owner: the same bytes behave the same).
    None when no such model is stored any more."""
    qs = Model.objects.filter(sha256=sha256)
    if owner is not None:
        qs = qs.filter(owner=owner)
    m = qs.order_by("id").first()
    if m is None:
        return None
    return profiling.Upload(file=str(Path(settings.MEDIA_ROOT) / m.file.name), sha256=m.sha256,
                            dynamic_batch=m.dynamic_batch)


def catalogue_for(owner) -> list[dict]:
    """Every model a function of `owner` may name: zoo and installed models, then the owner's uploads."""
    from controlplane.experiments.selectors import model_list

    out = [{**e, "source": "zoo"} for e in model_list()]
    for m in models_of(owner) if owner is not None else ():
        out.append({"key": m.name, "default_input_shape": None, "source": "upload", "code": str(m.code),
                    "runtime": m.runtime, "input_shape": m.input_shape, "inputs": m.inputs, "outputs": m.outputs,
                    "opset": m.opset, "dynamic_batch": m.dynamic_batch, "size_bytes": m.size_bytes,
                    "sha256": m.sha256, "uploaded_at": m.uploaded_at.isoformat()})
    return out
