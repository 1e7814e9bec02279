from django.apps import AppConfig


class RegistryConfig(AppConfig):
    """Users' own models: ONNX files uploaded through the browser, the API or `manage.py import_model`."""

    name = "controlplane.registry"
    label = "registry"
    default_auto_field = "django.db.models.BigAutoField"
