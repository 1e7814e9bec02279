"""The API for profiles: `GET /api/profiles/` (shared ones and yours, newest first; `?model=` / `?device=`
filter), `GET /api/profiles/<code>/` (one, with the profile dict in `data` once measured) and
`POST /api/experiments/<code>/profile/` (queue a profile of each distinct function model of your experiment
on its device's worker). Anyone else's profile or experiment is 404."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from .. import selectors as experiment_selectors
from ..api import NOT_FOUND, SpecAPIView
from . import selectors, services


class ProfileSerializer(serializers.Serializer):
    code = serializers.UUIDField()
    model = serializers.CharField()
    options = serializers.DictField(help_text="The model's options, a built-in's defaults filled in.")
    input_shape = serializers.ListField(child=serializers.IntegerField(), allow_null=True)
    device = serializers.CharField(help_text="The device measured (cpu, cuda:N), or the one asked for until then.")
    hardware = serializers.CharField(help_text="One line: device, cores, memory, torch.")
    status = serializers.CharField(help_text="queued, running, succeeded or failed.")
    stage = serializers.CharField(help_text="The last progress line while it runs.")
    error = serializers.CharField(help_text="Why it failed (empty otherwise).")
    shared = serializers.BooleanField(help_text="True: measured by `manage.py profile`, visible to everyone.")
    experiment = serializers.UUIDField(allow_null=True, help_text="The experiment whose Profile button asked for it.")
    asked = serializers.DictField(help_text="What was asked: samples, max_batch_size, cold_starts, short.")
    created = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    url = serializers.CharField(help_text="This profile in the API.")
    json_url = serializers.CharField(allow_null=True, help_text="The profile dict as a download, once measured.")


class ProfileDetailSerializer(ProfileSerializer):
    data = serializers.DictField(allow_null=True, help_text="The profile (format version 1, docs/method.md).")


class ProfileRequestSerializer(serializers.Serializer):
    short = serializers.BooleanField(default=False, help_text="Batch sizes up to 4, few samples, one cold start.")


def _row(p) -> dict:
    done = p.status == p.Status.SUCCEEDED
    return {"code": p.code, "model": p.model, "options": p.options, "input_shape": p.input_shape, "device": p.device,
            "hardware": p.hardware, "status": p.status, "stage": p.stage, "error": p.error,
            "shared": p.owner_id is None, "experiment": p.experiment.code if p.experiment_id else None,
            "asked": p.asked, "created": p.created, "finished_at": p.finished_at,
            "url": reverse("api-profile-detail", kwargs={"code": p.code}),
            "json_url": reverse("profile-json", kwargs={"code": p.code}) if done else None}


class ProfileListView(SpecAPIView):
    """Profiles you can see: shared ones and yours, newest first."""

    @extend_schema(summary="Profiles", responses=ProfileSerializer(many=True), parameters=[
        OpenApiParameter("model", str, description="Only this model."),
        OpenApiParameter("device", str, description="Only this device (cpu, cuda:N).")])
    def get(self, request: Request) -> Response:
        qs = selectors.profiles_visible_to(user=request.user)
        for field in ("model", "device"):
            if request.query_params.get(field):
                qs = qs.filter(**{field: request.query_params[field]})
        return Response(ProfileSerializer([_row(p) for p in qs[:500]], many=True).data)


class ProfileDetailView(SpecAPIView):
    @extend_schema(summary="One profile, with its figures once measured",
                   responses={200: ProfileDetailSerializer, 404: NOT_FOUND})
    def get(self, request: Request, code) -> Response:
        p = selectors.profile_get_for(user=request.user, code=code)
        return Response(ProfileDetailSerializer({**_row(p), "data": p.data}).data)


class ExperimentProfileView(SpecAPIView):
    """Queue a profile of each distinct function model of the experiment on its device's worker."""

    @extend_schema(summary="Profile an experiment's models", request=ProfileRequestSerializer,
                   responses={202: ProfileSerializer(many=True), 404: NOT_FOUND})
    def post(self, request: Request, code) -> Response:
        experiment = experiment_selectors.experiment_get_for(user=request.user, code=code)
        body = ProfileRequestSerializer(data=request.data or {})
        body.is_valid(raise_exception=True)
        profiles = services.experiment_profile(experiment=experiment, user=request.user,
                                               short=body.validated_data["short"])
        return Response(ProfileSerializer([_row(p) for p in profiles], many=True).data, status=status.HTTP_202_ACCEPTED)


