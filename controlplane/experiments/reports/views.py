"""Pages for exports and share links.

- POST /experiments/<code>/exports/ (format, run, baseline, price), POST /compare/pinned/exports/ (format,
  baseline, price: the user's pinned trials): start an export of the comparison as the page shows it. With `Accept: application/json` (the comparison page's script) the answer is the export's
  status as JSON; without script, a redirect to the export's page.
- /exports/<code>/ the export's page (refreshes itself until ready), /exports/<code>/status/ its status as JSON
  (what the comparison page polls), /exports/<code>/download/ the file. Owner only: anyone else gets 404.
- /experiments/<code>/share/ the owner's share links of an experiment (GET lists, POST makes one);
  /share-links/<id>/revoke/ (POST) revokes one.
- /share/<token>/ the shared run's HTML report, for anyone with the link, until it expires or is revoked; it
  shows that report and nothing else (no navigation, no other page, links and scripts blocked by its CSP).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from workers import spec as S

from .. import selectors
from ..models import ShareLink
from . import exports

SHARE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; base-uri 'none'; "
             "form-action 'none'; frame-ancestors 'none'")


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _int_or_none(raw: str | None, name: str) -> int | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise S.SpecError([S.FieldError(name, f"{raw!r} is not a whole number")]) from None


def status_dict(request: HttpRequest, export) -> dict:
    data = exports.export_status(export, download_url=reverse("export-download", kwargs={"code": export.code}))
    data["status_url"] = reverse("export-status", kwargs={"code": export.code})
    data["page_url"] = reverse("export-detail", kwargs={"code": export.code})
    return data


def _start(request: HttpRequest, back, target) -> HttpResponse:
    """Start an export of `target()` (the keyword arguments naming a run or the pinned trials)."""
    p = request.POST
    try:
        export = exports.export_create(owner=request.user, fmt=(p.get("format") or "").strip(),
                                       baseline=p.get("baseline") or None, price=p.get("price") or None, **target())
    except S.SpecError as exc:
        errors = [{"path": e.path, "message": e.message} for e in exc.errors]
        if _wants_json(request):
            return JsonResponse({"detail": str(exc.errors[0]), "errors": errors}, status=400)
        for e in exc.errors:
            messages.error(request, str(e))
        return back
    if _wants_json(request):
        return JsonResponse(status_dict(request, export), status=201)
    return redirect("export-detail", code=export.code)


@login_required
@require_POST
def export_create(request: HttpRequest, code) -> HttpResponse:
    experiment = selectors.experiment_get_for(user=request.user, code=code)
    return _start(request, redirect("experiment-compare", code=experiment.code),
                  lambda: {"experiment": experiment, "run": _int_or_none(request.POST.get("run"), "run")})


@login_required
@require_POST
def pinned_export_create(request: HttpRequest) -> HttpResponse:
    """POST /compare/pinned/exports/: export the user's pinned trials as the basket page shows them."""
    return _start(request, redirect("compare-pinned"),
                  lambda: {"trials": list(selectors.pinned_trials(user=request.user))})


@login_required
@require_GET
def export_detail(request: HttpRequest, code) -> HttpResponse:
    export = exports.export_get_for(user=request.user, code=code)
    return render(request, "reports/export.html", {"export": export, "status": status_dict(request, export)})


@login_required
@require_GET
def export_status(request: HttpRequest, code) -> HttpResponse:
    export = exports.export_get_for(user=request.user, code=code)
    response = JsonResponse(status_dict(request, export))
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
def export_download(request: HttpRequest, code) -> HttpResponse:
    export = exports.export_get_for(user=request.user, code=code)
    response = FileResponse(exports.export_file(export), as_attachment=True, filename=export.filename,
                            content_type=exports.content_type(export.format))
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


# ---- share links --------------------------------------------------------------------------------------------
@login_required
@require_http_methods(["GET", "POST"])
def share_links(request: HttpRequest, code) -> HttpResponse:
    experiment = selectors.experiment_get_for(user=request.user, code=code)
    if request.method == "POST":
        try:
            link = exports.share_link_create(owner=request.user, experiment=experiment,
                                             run=_int_or_none(request.POST.get("run"), "run"),
                                             days=_int_or_none(request.POST.get("days"), "days")
                                             or exports.SHARE_DAYS_DEFAULT)
        except S.SpecError as exc:
            for e in exc.errors:
                messages.error(request, str(e))
        else:
            messages.success(request, f"Share link to run {link.run_number} made; it works until "
                                      f"{link.expires_at:%Y-%m-%d %H:%M} UTC unless you revoke it.")
        return redirect("experiment-share", code=experiment.code)
    links = [{"link": link, "live": exports.share_link_is_live(link),
              "url": request.build_absolute_uri(reverse("shared-report", kwargs={"token": link.token}))}
             for link in exports.share_links_for(user=request.user, experiment=experiment)]
    return render(request, "reports/share_links.html", {
        "experiment": experiment, "links": links, "runs": selectors.experiment_runs(experiment=experiment),
        "days_default": exports.SHARE_DAYS_DEFAULT, "days_max": exports.SHARE_DAYS_MAX})


@login_required
@require_POST
def share_link_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    link = get_object_or_404(ShareLink, pk=pk, owner=request.user)
    exports.share_link_revoke(link=link)
    messages.success(request, "Share link revoked: it no longer opens the report.")
    return redirect("experiment-share", code=link.experiment.code)


@require_GET
def shared_report(request: HttpRequest, token: str) -> HttpResponse:
    link = exports.share_link_get(token)
    try:
        html = exports.share_link_html(link)
    except S.SpecError:  # the run is gone
        raise Http404("No such report.") from None
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = SHARE_CSP
    response["Cache-Control"] = "private, no-store"
    response["Referrer-Policy"] = "no-referrer"  # the token never leaks through a Referer header
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["X-Content-Type-Options"] = "nosniff"
    return response
