"""Trial pages (included at /trials/ by the pages' urls.py); the WebSocket route is in routing.py."""

from django.urls import path

from . import live_views

urlpatterns = [
    path("<uuid:code>/", live_views.trial_detail, name="trial-detail"),
    path("<uuid:code>/cancel/", live_views.trial_cancel, name="trial-cancel"),
    path("<uuid:code>/artifact/", live_views.trial_artifact, name="trial-artifact"),
]
