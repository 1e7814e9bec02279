"""Exports and share links: create, run, store, serve to the owner only.

`export_create` stores an `Export` row (of a run, or of the user's pinned trials); CSV and JSON (no charts, well under a second) are made at once, every
other format by the Celery task `reports.export` on the queue `reports` (its own worker, never a device pool),
which calls `export_run`. `export_run` reads the comparison selector once, hands its dict to the format's
renderer, reports progress on the row (the page polls it) and stores the bytes under MEDIA_ROOT/exports/ with
a generated name; the download keeps a readable name (`filename`). Only the owner ever gets the file
(`export_get_for`: anyone else's export is 404).

Share links: `share_link_create` makes a random token (secrets.token_urlsafe, 256 bits) with an expiry date;
`share_link_get` answers 404 once it has expired or been revoked.
"""

from __future__ import annotations

import datetime
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.http import Http404
from django.utils import timezone

from workers import spec as S

from .. import comparison as C
from .. import selectors
from ..models import EXPORT_FORMATS, Experiment, Export, ShareLink, Trial
from . import tabular

REPORTS_QUEUE = "reports"
INLINE_FORMATS = ("csv", "json")  # no charts, no layout: made at once, no task
# An export still queued or running this long after it was made lost its task (a worker killed, a message
# lost): it is failed with that reason rather than polled forever. Above the task's hard time limit (360 s).
STUCK_AFTER_S = 900
SHARE_DAYS_DEFAULT = 7
SHARE_DAYS_MAX = 90
CHARTS = {"csv": False}  # formats that leave out the chart series (every other reads them)


def renderers() -> dict:
    """format -> `reports.Renderer` (render(comparison, *, experiment, run, author, **options) -> bytes,
    content_type, extension), in the order of EXPORT_FORMATS."""
    from . import RENDERERS

    return {f: RENDERERS[f] for f in EXPORT_FORMATS if f in RENDERERS}


def available_formats() -> list[str]:
    return list(renderers())


def comparison_for(*, experiment: Experiment, run: int | None, baseline: str | None = None,
                   price: str | None = None, charts: bool = True) -> dict:
    """The comparison selector's dict: the one source of every figure of every format."""
    return C.experiment_comparison(experiment=experiment, run=run, baseline=baseline or None, price=price or None,
                                   charts=charts)


def render(fmt: str, data: dict, *, progress: Callable[[float, str], None] | None = None, **options) -> bytes:
    """The comparison dict as `fmt`; options: experiment, run, author (and paper for the PDF)."""
    r = renderers().get(fmt)
    if r is None:
        raise S.SpecError([S.FieldError("format", f"{fmt!r} is not available (formats: "
                                                  f"{', '.join(available_formats())})")])
    if fmt == "zip" and progress is not None:
        options["progress"] = progress
    return r.render(data, **options)


def content_type(fmt: str) -> str:
    return renderers()[fmt].content_type


def extension(fmt: str) -> str:
    return renderers()[fmt].extension.lstrip(".")


def download_name(experiment: Experiment, run: int | None, fmt: str) -> str:
    stem = tabular._safe(experiment.name)
    return f"{stem}-run{run}.{extension(fmt)}" if run is not None else f"{stem}.{extension(fmt)}"


# ---- exports ------------------------------------------------------------------------------------------------
def export_create(*, owner, fmt: str, experiment: Experiment | None = None, run: int | None = None,
                  trials: list[Trial] | None = None, baseline: str | None = None, price: str | None = None,
                  inline: bool | None = None) -> Export:
    """A new export in one format of one run of `experiment` (default: the latest run) or of a pinned set of
    `trials` (the caller has checked they are the owner's). Checks the format and the parameters now
    (SpecError naming `format`, `run`, `baseline` or `price`), so a bad request fails before any task is sent.
    `inline`: make it in this process now (default: CSV and JSON only); else the `reports` task makes it."""
    if fmt not in renderers():
        raise S.SpecError([S.FieldError("format", f"must be one of {', '.join(available_formats())}")])
    codes: list[str] = []
    if trials is not None:
        codes = [str(t.code) for t in trials]
        if not codes:
            raise S.SpecError([S.FieldError("trials", "nothing pinned: nothing to export")])
        C.compare_trials(trials, baseline=baseline or None, price=price or None, charts=False)  # validates
        filename = f"pinned-trials.{extension(fmt)}"
    else:
        # The selector validates run, baseline and price (charts off: cheap), and fixes "latest" to a number.
        data = comparison_for(experiment=experiment, run=run, baseline=baseline, price=price, charts=False)
        run = data["scope"]["run"]
        if run is None:
            raise S.SpecError([S.FieldError("run", "the experiment was never run: nothing to export")])
        filename = download_name(experiment, run, fmt)
    export = Export.objects.create(owner=owner, experiment=experiment if trials is None else None,
                                   run_number=run if trials is None else None, trials=codes, format=fmt,
                                   baseline=baseline or "", price=price or "", filename=filename)
    if inline is None:
        inline = fmt in INLINE_FORMATS
    if inline:
        return export_run(export.pk)
    transaction.on_commit(lambda: _enqueue(export.pk))
    return export


def export_comparison(export: Export) -> dict:
    """The selector's dict for an export: its run, or its pinned trials that still exist, in their order."""
    charts = CHARTS.get(export.format, True)
    if export.experiment_id is not None:
        return comparison_for(experiment=export.experiment, run=export.run_number, baseline=export.baseline,
                              price=export.price, charts=charts)
    found = {str(t.code): t for t in Trial.objects.filter(code__in=export.trials, experiment__owner=export.owner)}
    trials = [found[c] for c in export.trials if c in found]
    return C.compare_trials(trials, baseline=export.baseline or None, price=export.price or None, charts=charts)


def _enqueue(export_id: int) -> None:
    from .tasks import export_report  # imported late: pulls in the Celery app

    try:
        export_report.apply_async(args=[export_id], queue=REPORTS_QUEUE)
    except Exception as exc:  # broker unreachable: say so on the row instead of leaving it queued forever
        Export.objects.filter(pk=export_id).update(status=Export.Status.FAILED, finished_at=timezone.now(),
                                                   error=f"could not queue the export: {exc}")


def _progress(export_id: int) -> Callable[[float, str], None]:
    last = [0.0]

    def say(fraction: float, stage: str) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and fraction < 1.0:
            return
        last[0] = now
        Export.objects.filter(pk=export_id).update(progress=max(0.0, min(1.0, fraction)), stage=stage[:200])

    return say


def export_run(export_id: int) -> Export:
    """Make one export: the selector's dict, the renderer, the file. Idempotent for a finished export (a
    redelivered task does nothing). Errors are stored on the row, not raised."""
    claimed = Export.objects.filter(pk=export_id, status__in=[Export.Status.QUEUED]).update(
        status=Export.Status.RUNNING, progress=0.02, stage="reading the comparison")
    export = Export.objects.select_related("experiment", "owner").get(pk=export_id)
    if not claimed:
        return export
    say = _progress(export.pk)
    try:
        data = export_comparison(export)
        say(0.3, f"writing the {export.format.upper()}")

        def sub(fraction: float, stage: str) -> None:
            say(0.3 + 0.6 * fraction, stage)

        content = render(export.format, data, progress=sub, experiment=export.experiment, run=export.run_number,
                         author=export.owner)
        say(0.95, "storing")
        name = default_storage.save(f"exports/{uuid.uuid4().hex}.{extension(export.format)}", ContentFile(content))
    except Exception as exc:
        Export.objects.filter(pk=export.pk).update(status=Export.Status.FAILED, finished_at=timezone.now(),
                                                   error=f"{type(exc).__name__}: {exc}"[:2000], stage="failed")
    else:
        Export.objects.filter(pk=export.pk).update(status=Export.Status.SUCCEEDED, progress=1.0, stage="ready",
                                                   file=name, size_bytes=len(content), finished_at=timezone.now())
    export.refresh_from_db()
    return export


def export_get_for(*, user, code: Any) -> Export:
    """The user's export with this code; Http404 for unknown codes and for anyone else's."""
    if not getattr(user, "is_authenticated", False):
        raise Http404("No such export.")
    try:
        code = uuid.UUID(str(code))
        export = Export.objects.select_related("experiment").get(code=code, owner=user)
    except (ValueError, Export.DoesNotExist):
        raise Http404("No such export.") from None
    if not export.is_finished and export.created < timezone.now() - datetime.timedelta(seconds=STUCK_AFTER_S):
        Export.objects.filter(pk=export.pk, status__in=[Export.Status.QUEUED, Export.Status.RUNNING]).update(
            status=Export.Status.FAILED, finished_at=timezone.now(), stage="failed",
            error=f"not finished after {STUCK_AFTER_S // 60} minutes: the reports worker stopped or never got it "
                  "(is `manage.py worker` running?)")
        export.refresh_from_db()
    return export


def export_file(export: Export):
    """The stored file, open for reading; Http404 when it is not ready or is gone."""
    if export.status != Export.Status.SUCCEEDED or not export.file:
        raise Http404("The export is not ready.")
    try:
        return default_storage.open(export.file.name, "rb")
    except FileNotFoundError:
        raise Http404("The export's file is gone.") from None


def export_status(export: Export, *, download_url: str | None) -> dict:
    return {"code": str(export.code), "format": export.format,
            "experiment": str(export.experiment.code) if export.experiment_id else None,
            "run": export.run_number, "status": export.status, "progress": round(export.progress, 3),
            "stage": export.stage, "error": export.error, "filename": export.filename,
            "size_bytes": export.size_bytes, "created": export.created.isoformat(),
            "finished_at": export.finished_at.isoformat() if export.finished_at else None,
            "download_url": download_url if export.status == Export.Status.SUCCEEDED else None}


# ---- share links --------------------------------------------------------------------------------------------
def share_link_create(*, owner, experiment: Experiment, run: int | None = None,
                      days: int = SHARE_DAYS_DEFAULT) -> ShareLink:
    """A read-only link to the HTML report of one run (default: the latest), valid for `days` days."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= SHARE_DAYS_MAX:
        raise S.SpecError([S.FieldError("days", f"must be a whole number of days from 1 to {SHARE_DAYS_MAX}")])
    runs = selectors.experiment_runs(experiment=experiment)
    if not runs:
        raise S.SpecError([S.FieldError("run", "the experiment was never run: nothing to share")])
    if run is None:
        run = runs[0]
    elif run not in runs:
        raise S.SpecError([S.FieldError("run", f"no run {run} (runs: {', '.join(map(str, runs))})")])
    return ShareLink.objects.create(token=secrets.token_urlsafe(32), owner=owner, experiment=experiment,
                                    run_number=run, expires_at=timezone.now() + datetime.timedelta(days=days))


def share_link_revoke(*, link: ShareLink) -> ShareLink:
    if link.revoked_at is None:
        link.revoked_at = timezone.now()
        link.save(update_fields=["revoked_at"])
    return link


def share_link_is_live(link: ShareLink) -> bool:
    return link.revoked_at is None and link.expires_at > timezone.now()


def share_link_get(token: str) -> ShareLink:
    """The live link with this token; Http404 when unknown, expired or revoked (no difference shown)."""
    link = ShareLink.objects.select_related("experiment").filter(token=str(token)[:64]).first()
    if link is None or not share_link_is_live(link):
        raise Http404("No such report.")
    return link


def share_links_for(*, user, experiment: Experiment):
    return ShareLink.objects.filter(owner=user, experiment=experiment)


def share_link_html(link: ShareLink) -> bytes:
    """The shared run's HTML report, from the selector now (the figures the owner's page shows)."""
    if "html" not in renderers():
        raise Http404("Reports cannot be shown on this installation.")
    return render("html", comparison_for(experiment=link.experiment, run=link.run_number),
                  experiment=link.experiment, run=link.run_number, author=link.owner)
