import os

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])


# Each worker reports the devices it serves (controlplane.experiments.worker_registry) and warms up its pool
# processes. Imported when the signal fires: Django is set up by then.
@worker_ready.connect
def _report_devices(sender, **kwargs):
    from controlplane.experiments.worker_registry import on_worker_ready

    on_worker_ready(sender, **kwargs)


@worker_ready.connect
def _start_reaper(sender, **kwargs):
    from controlplane.experiments import reaper

    reaper.on_worker_ready(sender, **kwargs)


@worker_shutdown.connect
def _stop_reporting(sender=None, **kwargs):
    from controlplane.experiments.worker_registry import on_worker_shutdown

    on_worker_shutdown(sender, **kwargs)


@worker_shutdown.connect
def _stop_reaper(sender=None, **kwargs):
    from controlplane.experiments import reaper

    reaper.on_worker_shutdown(sender, **kwargs)


@worker_process_init.connect
def _warm_up(**kwargs):
    from controlplane.experiments.worker_registry import on_worker_process_init

    on_worker_process_init(**kwargs)
