"""The API for exports: `POST /api/experiments/<code>/exports/` starts one (format, run, baseline, price),
`GET /api/exports/<code>/` reports its status and, once ready, its download URL
(`GET /api/exports/<code>/download/`). Owner only: anyone else's export is 404."""

from __future__ import annotations

from django.http import FileResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from ..api import ERRORS, NOT_FOUND, SpecAPIView
from ..models import EXPORT_FORMATS
from . import exports


class ExportCreateSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=list(EXPORT_FORMATS))
    run = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                   help_text="Run number (default: the latest run).")
    baseline = serializers.CharField(required=False, allow_blank=True, help_text="Row key to compare against.")
    price = serializers.CharField(required=False, allow_blank=True,
                                  help_text="Price entry name: re-bill every trial from its stored spans.")


class ExportSerializer(serializers.Serializer):
    code = serializers.UUIDField()
    format = serializers.ChoiceField(choices=list(EXPORT_FORMATS))
    experiment = serializers.UUIDField(allow_null=True, help_text="The experiment's code (None: pinned trials).")
    run = serializers.IntegerField(allow_null=True)
    status = serializers.CharField(help_text="queued, running, succeeded or failed.")
    progress = serializers.FloatField(help_text="0 to 1.")
    stage = serializers.CharField(help_text="What the export is doing now.")
    error = serializers.CharField(help_text="Why it failed (empty otherwise).")
    filename = serializers.CharField(help_text="The name the download is saved as.")
    size_bytes = serializers.IntegerField(allow_null=True)
    created = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    download_url = serializers.CharField(allow_null=True, help_text="Set once the export succeeded.")
    url = serializers.CharField(help_text="This status.")


def _status(export) -> dict:
    data = exports.export_status(export, download_url=reverse("api-export-download", kwargs={"code": export.code}))
    data["url"] = reverse("api-export-detail", kwargs={"code": export.code})
    return data


class ExperimentExportView(SpecAPIView):
    """Export the comparison of one run: CSV and JSON are made at once; PDF, HTML, slides and zip by the
    background task (poll the export's URL)."""

    @extend_schema(summary="Export a run's comparison", request=ExportCreateSerializer,
                   responses={201: ExportSerializer, 400: ERRORS, 404: NOT_FOUND})
    def post(self, request: Request, code) -> Response:
        from .. import selectors
        from ..api import S

        experiment = selectors.experiment_get_for(user=request.user, code=code)
        body = ExportCreateSerializer(data=request.data)
        if not body.is_valid():
            raise S.SpecError([S.FieldError(k, " ".join(map(str, v))) for k, v in body.errors.items()])
        v = body.validated_data
        export = exports.export_create(owner=request.user, experiment=experiment, fmt=v["format"], run=v.get("run"),
                                       baseline=v.get("baseline") or None, price=v.get("price") or None)
        return Response(ExportSerializer(_status(export)).data, status=status.HTTP_201_CREATED)


class ExportDetailView(SpecAPIView):
    @extend_schema(summary="An export's status and download URL",
                   responses={200: ExportSerializer, 404: NOT_FOUND})
    def get(self, request: Request, code) -> Response:
        export = exports.export_get_for(user=request.user, code=code)
        return Response(ExportSerializer(_status(export)).data)


class ExportDownloadView(SpecAPIView):
    @extend_schema(summary="Download an export's file",
                   responses={(200, "application/octet-stream"): OpenApiTypes.BINARY,
                              404: OpenApiResponse(description="Not yours, not ready, or no such export.")})
    def get(self, request: Request, code):
        export = exports.export_get_for(user=request.user, code=code)
        response = FileResponse(exports.export_file(export), as_attachment=True, filename=export.filename,
                                content_type=exports.content_type(export.format))
        response["Cache-Control"] = "private, no-store"
        return response
