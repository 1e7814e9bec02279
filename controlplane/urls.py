from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("controlplane.registry.api_urls")),
    path("api/", include("controlplane.experiments.api_urls")),
    path("models/", include("controlplane.registry.urls")),
    path("", include("controlplane.experiments.urls")),
]
