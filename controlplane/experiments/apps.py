from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    name = "controlplane.experiments"
    label = "experiments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Users' own torch models must be known to the web process (spec validation) and to workers alike, so
        # both register them here: installed packages' `slsbench.models` entry points, then settings.USER_MODELS.
        from django.conf import settings

        from workers import zoo

        zoo.discover_entry_points()
        if settings.USER_MODELS:
            zoo.register_user_models(settings.USER_MODELS)

        from . import signals

        signals.connect()
