"""API routes of the model registry (mounted at /api/ by controlplane/urls.py, before the experiments' routes)."""

from django.urls import path

from . import api

urlpatterns = [
    path("models/", api.ModelListView.as_view(), name="api-models"),
    path("models/<uuid:code>/", api.ModelDetailView.as_view(), name="api-model-detail"),
]
