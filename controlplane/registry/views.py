"""The Models page: your uploaded ONNX models beside the zoo; uploads go to the API (progress shown by the page)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from . import selectors


@login_required
@require_GET
def model_list(request: HttpRequest) -> HttpResponse:
    catalogue = selectors.catalogue_for(request.user)
    return render(request, "registry/models.html", {
        "uploads": [m for m in catalogue if m["source"] == "upload"],
        "zoo": [m for m in catalogue if m["source"] == "zoo"],
        "max_upload_bytes": settings.MODEL_UPLOAD_MAX_BYTES,
    })
