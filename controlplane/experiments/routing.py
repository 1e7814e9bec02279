websocket_urlpatterns: list = []  # live trial pages: filled in by the execution work
