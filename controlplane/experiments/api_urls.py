"""REST API routes (mounted at /api/ by controlplane/urls.py). Objects are addressed by their UUID code."""

from django.urls import path

from . import accounts, api
from .profiles import api as profiles_api
from .reports import api as reports_api

urlpatterns = [
    path("token/", accounts.TokenView.as_view(), name="api-token"),
    path("experiments/", api.ExperimentListView.as_view(), name="api-experiment-list"),
    path("experiments/<uuid:code>/", api.ExperimentDetailView.as_view(), name="api-experiment-detail"),
    path("experiments/<uuid:code>/run/", api.ExperimentRunView.as_view(), name="api-experiment-run"),
    path("experiments/<uuid:code>/cancel/", api.ExperimentCancelView.as_view(), name="api-experiment-cancel"),
    path("experiments/<uuid:code>/spec/", api.ExperimentSpecView.as_view(), name="api-experiment-spec"),
    path("experiments/<uuid:code>/clone/", api.ExperimentCloneView.as_view(), name="api-experiment-clone"),
    path("experiments/<uuid:code>/results/", api.ExperimentResultsView.as_view(), name="api-experiment-results"),
    path("experiments/<uuid:code>/trials/", api.ExperimentTrialsView.as_view(), name="api-experiment-trials"),
    path("experiments/<uuid:code>/comparison/", api.ExperimentComparisonView.as_view(),
         name="api-experiment-comparison"),
    path("experiments/<uuid:code>/exports/", reports_api.ExperimentExportView.as_view(), name="api-experiment-exports"),
    path("exports/<uuid:code>/", reports_api.ExportDetailView.as_view(), name="api-export-detail"),
    path("exports/<uuid:code>/download/", reports_api.ExportDownloadView.as_view(), name="api-export-download"),
    path("trials/<uuid:code>/", api.TrialDetailView.as_view(), name="api-trial-detail"),
    path("trials/<uuid:code>/windows/", api.TrialWindowsView.as_view(), name="api-trial-windows"),
    path("trials/<uuid:code>/cancel/", api.TrialCancelView.as_view(), name="api-trial-cancel"),
    path("experiments/<uuid:code>/profile/", profiles_api.ExperimentProfileView.as_view(),
         name="api-experiment-profile"),
    path("profiles/", profiles_api.ProfileListView.as_view(), name="api-profile-list"),
    path("profiles/<uuid:code>/", profiles_api.ProfileDetailView.as_view(), name="api-profile-detail"),
    path("experiments/<uuid:code>/capacity/", api.ExperimentCapacityView.as_view(), name="api-experiment-capacity"),
    path("capacity/<uuid:code>/", api.CapacityDetailView.as_view(), name="api-capacity-detail"),
    path("capacity/<uuid:code>/cancel/", api.CapacityCancelView.as_view(), name="api-capacity-cancel"),
    path("prices/", api.PriceListView.as_view(), name="api-prices"),
    path("pins/", api.PinListView.as_view(), name="api-pins"),
]
