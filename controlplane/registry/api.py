"""REST API of the model registry: list the models a function may name, upload an ONNX model, delete one.

`POST /api/models/` is multipart with `name` and `file`. The file streams to disk through `ModelUploadHandler`
(never into memory), capped at settings.MODEL_UPLOAD_MAX_BYTES while it streams and hashed on the way.
Anyone else's model is 404, like every other object.
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.experiments.api import ERRORS, NOT_FOUND, SpecAPIView, error_response
from workers import spec as S

from . import selectors, services
from .models import Model
from .uploads import ModelUploadHandler, StreamedModelFile


class ModelEntrySerializer(serializers.Serializer):
    key = serializers.CharField(help_text="What a function's `model` names.")
    default_input_shape = serializers.ListField(child=serializers.IntegerField(), allow_null=True)
    source = serializers.ChoiceField(choices=["zoo", "upload"])
    code = serializers.UUIDField(required=False)
    input_shape = serializers.ListField(required=False)
    dynamic_batch = serializers.BooleanField(required=False)
    size_bytes = serializers.IntegerField(required=False)
    sha256 = serializers.CharField(required=False)


class ModelDetailSerializer(serializers.ModelSerializer):
    class Meta:
        model = Model
        fields = ["code", "name", "runtime", "sha256", "size_bytes", "inputs", "outputs", "opset", "dynamic_batch",
                  "input_shape", "uploaded_at"]
        read_only_fields = fields


class ModelUploadSerializer(serializers.Serializer):
    name = serializers.CharField()
    file = serializers.FileField(help_text="An ONNX file with its weights inside (no external data).")


class ModelListView(SpecAPIView):
    """The models a function may name (zoo, installed and your uploads); POST multipart `name` + `file` to upload."""

    parser_classes = [MultiPartParser]

    def initialize_request(self, request, *args, **kwargs):
        # Before anything reads the body (CSRF checks read request.POST): the file must stream to disk.
        if request.method == "POST":
            request.upload_handlers = [ModelUploadHandler(request)]
        return super().initialize_request(request, *args, **kwargs)

    @extend_schema(summary="Models a function may name", responses=ModelEntrySerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(ModelEntrySerializer(selectors.catalogue_for(request.user), many=True).data)

    @extend_schema(summary="Upload an ONNX model", request={"multipart/form-data": ModelUploadSerializer},
                   responses={201: ModelDetailSerializer, 400: ERRORS, 413: ERRORS})
    def post(self, request: Request) -> Response:
        handler = request._request.upload_handlers[0]
        upload = request.FILES.get("file")  # reading FILES runs the handler over the whole body
        if isinstance(handler, ModelUploadHandler) and handler.too_big:
            return error_response([S.FieldError("file", handler.too_big)], status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        if not isinstance(upload, StreamedModelFile):
            return error_response([S.FieldError("file", "is required (multipart form field 'file')")])
        model = services.model_register(owner=request.user, name=request.data.get("name", ""), incoming=upload.path,
                                        sha256=upload.sha256, size_bytes=upload.size)
        return Response(ModelDetailSerializer(model).data, status=status.HTTP_201_CREATED)


class ModelDetailView(SpecAPIView):
    """One of your uploaded models; DELETE removes it and its file."""

    @extend_schema(summary="One of your uploaded models", responses={200: ModelDetailSerializer, 404: NOT_FOUND})
    def get(self, request: Request, code) -> Response:
        return Response(ModelDetailSerializer(get_object_or_404(Model, code=code, owner=request.user)).data)

    @extend_schema(summary="Delete one of your uploaded models", responses={204: OpenApiResponse(), 404: NOT_FOUND})
    def delete(self, request: Request, code) -> Response:
        services.model_delete(model=get_object_or_404(Model, code=code, owner=request.user))
        return Response(status=status.HTTP_204_NO_CONTENT)
