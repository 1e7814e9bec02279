"""A user's uploaded model: an ONNX file checked before it was stored, and the signature read from it."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


def model_upload_to(instance: Model, filename: str) -> str:
    return f"models/{instance.code}/model.onnx"


class Model(models.Model):
    """An ONNX model owned by one user. Only its owner can name it in a spec (`"model": "<name>"`)."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploaded_models")
    name = models.CharField(max_length=64)
    file = models.FileField(upload_to=model_upload_to, max_length=200)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()
    runtime = models.CharField(max_length=16, default="onnxruntime")
    inputs = models.JSONField(default=list, help_text='[{"name", "shape", "dtype"}]; a string dimension is symbolic')
    outputs = models.JSONField(default=list)
    opset = models.PositiveSmallIntegerField(default=0)
    dynamic_batch = models.BooleanField(default=False, help_text="False: the model runs at batch 1 only")
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="model_name_unique_per_owner"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def input_shape(self) -> list:
        """The first input's per-sample shape (the batch dimension dropped when it is dynamic)."""
        shape = list(self.inputs[0]["shape"]) if self.inputs else []
        return shape[1:] if self.dynamic_batch else shape
