from django.urls import path

from .consumers import TrialConsumer

websocket_urlpatterns = [
    path("ws/trials/<uuid:code>/", TrialConsumer.as_asgi(), name="ws-trial"),
]
