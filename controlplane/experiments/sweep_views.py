"""The sweep page: one run's progress by worker (done / running / queued), and once it has finished, the
comparison's answer (the cheapest variant that meets the SLO, from `comparison`, not worked out again here)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from workers import spec as S

from . import comparison, selectors

POLL_MS = 2000  # how often an open page re-fetches its progress while trials are queued or running


def _context(request: HttpRequest, code) -> dict:
    experiment = selectors.experiment_get_for(user=request.user, code=code)
    try:
        run = int(request.GET.get("run") or 0) or None
    except ValueError:
        run = None
    progress = selectors.sweep_progress(experiment=experiment, run_number=run)
    recommendation = None
    if progress["finished"]:
        try:
            recommendation = comparison.experiment_comparison(experiment=experiment, run=progress["run"],
                                                              charts=False)["recommendation"]
        except S.SpecError:
            recommendation = None
    variants = len({v for v in experiment.trials.filter(run_number=progress["run"]).values_list("variant_name", flat=True)})
    return {"experiment": experiment, "progress": progress, "recommendation": recommendation, "poll_ms": POLL_MS,
            "variants": variants, "lucky_pct": chance_of_a_lucky_pass(variants) * 100,
            "confirm_repeats": CONFIRM_REPEATS, "max_repeats": S.MAX_REPEATS}


# One-sided tail of the 95 % interval: a variant whose SLO percentile sits right at the target is called met at
# most this often (docs/method.md, Sweeps).
MET_BY_CHANCE = 0.025
CONFIRM_REPEATS = 5


def chance_of_a_lucky_pass(variants: int) -> float:
    """If every one of `variants` sat right at the SLO target, the chance that at least one is called met by luck
    (independent verdicts): the more variants a sweep compares, the likelier its cheapest "met" is such a one."""
    return 1.0 - (1.0 - MET_BY_CHANCE) ** max(0, variants)


@login_required
@require_GET
def experiment_sweep(request: HttpRequest, code) -> HttpResponse:
    """/experiments/<code>/sweep/?run=N: the run's trials by worker; `?partial=1` is the page's own refresh."""
    context = _context(request, code)
    if request.GET.get("partial"):
        return render(request, "experiments/_sweep_progress.html", context)
    return render(request, "experiments/sweep.html", context)
