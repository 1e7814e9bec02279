urlpatterns: list = []  # pages: filled in by the pages work
