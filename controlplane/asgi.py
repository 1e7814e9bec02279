import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
django_asgi_app = get_asgi_application()  # before importing consumers: it sets up the app registry

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import reverse  # noqa: E402

from controlplane.experiments.limits import RequestSizeLimit  # noqa: E402
from controlplane.experiments.routing import websocket_urlpatterns  # noqa: E402
from controlplane.registry.uploads import max_request_bytes  # noqa: E402

application = ProtocolTypeRouter({
    # The model upload's bound is the model file's (MODEL_UPLOAD_MAX_BYTES) plus the multipart envelope.
    "http": RequestSizeLimit(django_asgi_app, per_path={reverse("api-models"): max_request_bytes}),
    "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
})
