"""The Celery task that makes an export in the background, on the queue `reports` of its own: a report never
waits behind a trial on a device pool, and a trial never waits behind a report. `manage.py worker` and
`manage.py demo` start a worker for it (`--include` this module, so the project's app registers it)."""

from __future__ import annotations

from controlplane.celery import app

from .exports import export_run

# A 10-variant report takes seconds; a stuck renderer is stopped well before the trials' hour-long limits.
SOFT_TIME_LIMIT_S = 300
TIME_LIMIT_S = 360


# Routed to REPORTS_QUEUE by settings.CELERY_TASK_ROUTES (a task-level queue attribute is deprecated in Celery).
@app.task(name="reports.export", soft_time_limit=SOFT_TIME_LIMIT_S, time_limit=TIME_LIMIT_S)
def export_report(export_id: int) -> str:
    """Make the export (idempotent: a redelivered message finds it finished and does nothing)."""
    return export_run(export_id).status
