"""What a result rests on: the list's "best result" says how it was chosen (three-way verdict), and a verdict
resting on a single repeat says "1 repeat" instead of looking as sure as three."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from controlplane.experiments import services
from controlplane.experiments.models import Trial
from controlplane.experiments.views import at_a_glance
from tests.conftest import frozen_run
from workers import spec as S

pytestmark = pytest.mark.django_db

SPEC = {
    "name": "verdicts", "device": "cpu",
    "slo": {"percentile": 99, "latency_ms": 50},
    "functions": [{"name": "f", "model": "mlp-small"}],
    "workload": {"pattern": "constant", "rate_rps": 20, "duration_s": 30},
    "variants": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
}
REASONS = {"met": [], "not_met": ["p99 latency 61.0 ms is above the 50 ms target"],
           "inconclusive": ["p99 latency 48.0 ms: its 95 % interval 44.0 ms – 53.0 ms straddles the 50 ms target"]}


def row(variant: str, verdict: str, p99: float, cost: float | None, repeat: int = 0) -> dict:
    return {"variant": variant, "repeat": repeat, "status": "succeeded", "latency_ms": {"p99": p99},
            "slo_verdict": {"verdict": verdict, "reasons": REASONS[verdict]},
            "cost": {"serverless_per_1k_usd": cost, "provisioned_per_1k_usd": None}}


SLO = S.SLOSpec(percentile=99, latency_ms=50)


def test_the_cheapest_variant_that_met_is_chosen_and_says_so():
    g = at_a_glance([row("a", "met", 30, 0.02), row("b", "met", 45, 0.01), row("c", "not_met", 20, 0.001)], SLO)
    assert (g["variant"], g["verdict"], g["chosen_by"]) == ("b", "met", "cheapest variant that met the SLO")
    assert (g["met_count"], g["variant_count"], g["repeats"]) == (2, 3, 1)


def test_when_none_met_the_fastest_is_shown_and_the_inconclusive_ones_are_counted():
    g = at_a_glance([row("a", "not_met", 61, 0.01), row("b", "inconclusive", 48, 0.02),
                     row("c", "inconclusive", 52, 0.03)], SLO)
    assert (g["variant"], g["verdict"]) == ("b", "inconclusive")
    assert g["chosen_by"] == "lowest p99: none met, 2 inconclusive"
    assert g["reasons"] == REASONS["inconclusive"]
    g = at_a_glance([row("a", "not_met", 61, 0.01), row("b", "not_met", 70, 0.001)], SLO)
    assert (g["variant"], g["verdict"], g["chosen_by"]) == ("a", "not_met", "lowest p99: none met")


def test_an_inconclusive_variant_is_never_taken_for_met_even_when_cheaper():
    g = at_a_glance([row("a", "inconclusive", 40, 0.001), row("b", "met", 45, 0.05)], SLO)
    assert g["variant"] == "b" and g["met_count"] == 1 and g["inconclusive_count"] == 1


def test_met_variants_without_cost_figures_are_ranked_by_latency_and_it_says_so():
    g = at_a_glance([row("a", "met", 40, None), row("b", "met", 30, None)], SLO)
    assert g["variant"] == "b" and g["cost_per_1k_usd"] is None
    assert g["chosen_by"] == "lowest p99 among the variants that met the SLO (no cost figures)"


def test_repeats_behind_the_chosen_variant_are_counted():
    g = at_a_glance([row("a", "met", 40, 0.01, 0), row("a", "not_met", 55, 0.01, 1), row("a", "met", 42, 0.01, 2)],
                    SLO)
    assert (g["repeats"], g["repeats_met"]) == (3, 2)


@pytest.fixture
def owner_client(client, user):
    client.force_login(user)
    return client


def store(experiment, variant: str, verdict: str, p99: float, cost: float, repeat: int = 0, run: int = 1) -> Trial:
    return Trial.objects.create(
        experiment=experiment, variant_name=variant, run_number=run, repeat=repeat, **frozen_run(experiment, SPEC),
        status="succeeded", summary={"latency_ms": {"p50": 5.0, "p99": p99},
                                     "slo_verdict": {"verdict": verdict, "reasons": REASONS[verdict]},
                                     "cost": {"serverless_per_1k_usd": cost}})


def glance_cell(html: str, name: str) -> str:
    cell = html[html.index(f">{name}</a>"):]
    return cell[:cell.index("</tr>")]


def test_the_list_says_how_the_best_result_was_chosen_with_the_three_way_badge(owner_client, user):
    e = services.experiment_import(owner=user, data=json.loads(json.dumps(SPEC)))
    store(e, "a", "not_met", 61, 0.01)
    store(e, "b", "inconclusive", 48, 0.02)
    cell = glance_cell(owner_client.get(reverse("experiment-list")).content.decode(), "verdicts")
    assert "lowest p99: none met, 1 inconclusive" in cell
    assert 'data-verdict="inconclusive"' in cell and "? inconclusive" in cell and "verdict-inconclusive" in cell
    assert "<strong>b</strong>" in cell and "straddles the 50 ms target" in cell  # the reason, on hover
    assert ">1 repeat<" in cell


def test_a_met_variant_with_three_repeats_shows_no_repeat_warning_on_the_list(owner_client, user):
    e = services.experiment_import(owner=user, data=json.loads(json.dumps(SPEC)))
    for r in range(3):
        store(e, "a", "met", 30 + r, 0.01, repeat=r)
    cell = glance_cell(owner_client.get(reverse("experiment-list")).content.decode(), "verdicts")
    assert "cheapest variant that met the SLO" in cell and "✓ met" in cell and "1 repeat" not in cell


def test_the_trials_table_flags_a_verdict_resting_on_one_repeat(owner_client, user):
    e = services.experiment_import(owner=user, data=json.loads(json.dumps(SPEC)))
    # Run 1: "a" once (missed); run 2: "a" three times (met). The single repeat is the one flagged.
    lone = store(e, "a", "not_met", 61, 0.01, run=1)
    for r in range(3):
        store(e, "a", "met", 40, 0.01, repeat=r, run=2)
    queued = Trial.objects.create(experiment=e, variant_name="b", run_number=2, **frozen_run(e, SPEC))
    html = owner_client.get(reverse("experiment-trials", args=[e.code])).content.decode()
    run2 = html[html.index('data-run="2"'):html.index('data-run="1"')]
    run1 = html[html.index('data-run="1"'):]
    assert run2.count("✓ met") == 3 and "1 repeat" not in run2  # the queued "b" has no verdict to flag
    assert "✗ missed" in run1 and run1.count(">1 repeat<") == 1
    assert str(lone.code) in run1 and str(queued.code) in run2
