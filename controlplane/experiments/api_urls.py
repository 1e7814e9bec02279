urlpatterns: list = []  # REST API: filled in by the API work
