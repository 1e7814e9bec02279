"""The "compare" basket: pin trials from any run or experiment, then open them together.

Pins are stored per user (`Pin`), so the basket and its page outlive the session. Pin and unpin are
POSTs from the trial page and the experiment's trials table; they return to the page they came from.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from workers import spec as S

from . import comparison_views, selectors, services


def _back(request: HttpRequest, default: str) -> HttpResponse:
    """Back to `next` when it is a page of this site, else to `default`."""
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = default
    return redirect(target)


@login_required
@require_POST
def trial_pin(request: HttpRequest, code) -> HttpResponse:
    trial = selectors.trial_get_for(user=request.user, code=code)
    try:
        _, created = services.pin_add(user=request.user, trial=trial)
    except S.SpecError as exc:
        messages.error(request, f"Not pinned: {exc.errors[0].message}")
    else:
        if created:
            messages.success(request, f"Pinned {trial.variant_name} #{trial.repeat} (run {trial.run_number}) "
                                      "for comparison.")
    return _back(request, trial.get_absolute_url())


@login_required
@require_POST
def trial_unpin(request: HttpRequest, code) -> HttpResponse:
    trial = selectors.trial_get_for(user=request.user, code=code)
    if services.pin_remove(user=request.user, trial=trial):
        messages.info(request, f"Unpinned {trial.variant_name} #{trial.repeat} (run {trial.run_number}).")
    return _back(request, trial.get_absolute_url())


@login_required
@require_POST
def pins_clear(request: HttpRequest) -> HttpResponse:
    n = services.pins_clear(user=request.user)
    messages.info(request, f"Unpinned {n} trial{'s' if n != 1 else ''}." if n else "Nothing was pinned.")
    return redirect("compare-pinned")


@login_required
@require_GET
def pinned_comparison(request: HttpRequest) -> HttpResponse:
    """The user's pinned trials on the comparison page, from any runs and experiments, each row labelled with
    its experiment and run: `comparison.compare_trials(selectors.pinned_trials(user=...))`, rendered by
    `comparison_views`."""
    return comparison_views.pinned_page(request)
