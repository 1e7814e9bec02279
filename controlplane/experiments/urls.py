from django.urls import include, path

from . import comparison_views, pin_views, price_views, views
from .reports import views as report_views

urlpatterns = [
    path("", views.experiment_list, name="experiment-list"),
    path("experiments/new/", views.experiment_create, name="experiment-create"),
    path("experiments/import/", views.experiment_import, name="experiment-import"),
    path("experiments/preview-workload/", views.workload_preview, name="workload-preview"),
    path("experiments/<uuid:code>/", views.experiment_detail, name="experiment-detail"),
    path("experiments/<uuid:code>/edit/", views.experiment_edit, name="experiment-edit"),
    path("experiments/<uuid:code>/trials/", views.experiment_trials, name="experiment-trials"),
    path("experiments/<uuid:code>/run/", views.experiment_run, name="experiment-run"),
    path("experiments/<uuid:code>/cancel/", views.experiment_cancel, name="experiment-cancel"),
    path("experiments/<uuid:code>/delete/", views.experiment_delete, name="experiment-delete"),
    path("experiments/<uuid:code>/clone/", views.experiment_clone, name="experiment-clone"),
    path("experiments/<uuid:code>/export/", views.experiment_export, name="experiment-export"),
    path("experiments/<uuid:code>/compare/", comparison_views.experiment_compare, name="experiment-compare"),
    path("experiments/<uuid:code>/compare/data/", comparison_views.experiment_compare_data,
         name="experiment-compare-data"),
    path("experiments/<uuid:code>/variants/<int:variant_id>/clone/", views.variant_clone, name="variant-clone"),
    path("experiments/<uuid:code>/exports/", report_views.export_create, name="experiment-exports"),
    path("experiments/<uuid:code>/share/", report_views.share_links, name="experiment-share"),
    path("exports/<uuid:code>/", report_views.export_detail, name="export-detail"),
    path("exports/<uuid:code>/status/", report_views.export_status, name="export-status"),
    path("exports/<uuid:code>/download/", report_views.export_download, name="export-download"),
    path("share-links/<int:pk>/revoke/", report_views.share_link_revoke, name="share-link-revoke"),
    path("share/<str:token>/", report_views.shared_report, name="shared-report"),
    path("trials/", include("controlplane.experiments.live_urls")),
    path("trials/<uuid:code>/pin/", pin_views.trial_pin, name="trial-pin"),
    path("trials/<uuid:code>/unpin/", pin_views.trial_unpin, name="trial-unpin"),
    path("compare/pinned/", pin_views.pinned_comparison, name="compare-pinned"),
    path("compare/pinned/data/", comparison_views.pinned_compare_data, name="compare-pinned-data"),
    path("compare/pinned/clear/", pin_views.pins_clear, name="pins-clear"),
    path("prices/", price_views.price_list, name="price-list"),
    path("prices/new/", price_views.price_create, name="price-create"),
    path("prices/<int:pk>/edit/", price_views.price_edit, name="price-edit"),
]
