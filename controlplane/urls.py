from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from controlplane.experiments import accounts, metrics

urlpatterns = [
    path("admin/login/", accounts.admin_login),  # before the admin's own: the same limit on failed logins
    path("admin/", admin.site.urls),
    path("metrics", metrics.metrics_view, name="metrics"),  # Prometheus; bearer METRICS_TOKEN
    # Before Django's own auth URLs: the same login page, with a limit on failed attempts.
    path("accounts/login/", accounts.LoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("account/token/", accounts.token_page, name="account-token"),
    # The schema needs a session or a token (SPECTACULAR_SETTINGS.SERVE_PERMISSIONS); the docs page a session.
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", login_required(SpectacularSwaggerView.as_view(url_name="api-schema")), name="api-docs"),
    path("api/", include("controlplane.registry.api_urls")),
    path("api/", include("controlplane.experiments.api_urls")),
    path("models/", include("controlplane.registry.urls")),
    path("", include("controlplane.experiments.urls")),
]
