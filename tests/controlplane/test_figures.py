"""Money on the pages: three significant figures, per 1 M requests when tiny, one implementation everywhere."""

from __future__ import annotations

import json
import math

import pytest
from django.template import Context, Template
from django.urls import reverse

from controlplane.experiments import services
from controlplane.experiments.figures import format_usd, format_usd_per_1k, per_requests
from controlplane.experiments.models import Trial
from tests.conftest import frozen_run

SPEC = {
    "name": "tiny costs", "device": "cpu", "accelerator": "cpu",
    "slo": {"percentile": 99, "latency_ms": 50},
    "functions": [{"name": "f", "model": "mlp-small"}],
    "workload": {"pattern": "constant", "rate_rps": 20, "duration_s": 30},
    "variants": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
}
# What a new user saw: three different costs per 1,000 requests that all read "$0.0002".
TINY = {"a": 0.000153, "b": 0.000212, "c": 0.000249}


@pytest.mark.parametrize("value, text", [
    (0.000234, "$0.000234"), (0.00021, "$0.000210"), (0.007, "$0.00700"), (0.0123, "$0.0123"), (0.1, "$0.100"),
    (0.9996, "$1.00"), (0.0009996, "$0.00100"), (1.234, "$1.23"), (12.3, "$12.30"), (1234.4, "$1,234"),
    (-0.0031, "-$0.00310"), (0, "$0"), (None, "—"), (math.nan, "—"), (math.inf, "—"), ("n/a", "—"), (True, "—"),
])
def test_dollars_keep_three_significant_figures_under_one_dollar(value, text):
    assert format_usd(value) == text


@pytest.mark.parametrize("per_1k, long, short", [
    (0.0123, "$0.0123 per 1,000 requests", "$0.0123/1k"),
    (0.001, "$0.00100 per 1,000 requests", "$0.00100/1k"),
    (0.000234, "$0.234 per 1 M requests", "$0.234/1M"),
    (0.0000012, "$0.00120 per 1 M requests", "$0.00120/1M"),
    (0, "$0 per 1,000 requests", "$0/1k"),
    (None, "—", "—"),
])
def test_a_cost_per_1000_requests_under_a_tenth_of_a_cent_is_written_per_million(per_1k, long, short):
    assert format_usd_per_1k(per_1k) == long
    assert format_usd_per_1k(per_1k, short=True) == short


def test_the_per_million_amount_is_the_same_cost():
    amount, unit = per_requests(0.000234)
    assert unit == "1 M" and amount == pytest.approx(0.234)


def test_the_template_filters_are_the_same_functions():
    html = Template('{% load figures %}{{ a|usd_sig }} | {{ b|usd_per_1k }} | {{ b|usd_per_1k:"short" }} | '
                    '{{ none|usd_sig }}').render(Context({"a": 0.000234, "b": 0.000234, "none": None}))
    assert html == "$0.000234 | $0.234 per 1 M requests | $0.234/1M | —"


@pytest.fixture
def tiny_run(db, user, price_catalogue):
    experiment = services.experiment_import(owner=user, data=json.loads(json.dumps(SPEC)))
    data = json.loads(json.dumps(SPEC))
    trials = {}
    for name, cost in TINY.items():
        summary = {"latency_ms": {"p50": 5.0, "p99": 20.0}, "slo_verdict": {"verdict": "met", "reasons": []},
                   "cost": {"serverless_usd": cost * 0.6, "provisioned_usd": cost * 3.0,
                            "serverless_per_1k_usd": cost, "provisioned_per_1k_usd": cost * 3,
                            "serverless_per_1k_good_usd": cost * 1.01, "provisioned_per_1k_good_usd": cost * 5.05,
                            "monthly_serverless_usd": cost * 52_000, "monthly_provisioned_usd": 1234.5}}
        trials[name] = Trial.objects.create(experiment=experiment, variant_name=name, run_number=1,
                                            **frozen_run(experiment, data),
                                            status="succeeded", summary=summary)
    return experiment, trials


def test_different_tiny_costs_look_different_on_the_trials_table(client, user, tiny_run):
    experiment, _ = tiny_run
    client.force_login(user)
    for html in (client.get(reverse("experiment-trials", args=[experiment.code])).content.decode(),
                 client.get(experiment.get_absolute_url()).content.decode()):
        assert "$0.0002<" not in html
        for text in ("$0.153/1M", "$0.212/1M", "$0.249/1M", "$0.459/1M", "$0.636/1M", "$0.747/1M"):
            assert text in html


def test_the_list_shows_the_best_cost_with_its_unit(client, user, tiny_run):
    client.force_login(user)
    html = client.get(reverse("experiment-list")).content.decode()
    assert "$0.153/1M" in html  # the cheapest of three that met


def test_the_trial_page_cost_table_says_per_1_m_requests(client, user, tiny_run):
    _, trials = tiny_run
    client.force_login(user)
    html = client.get(reverse("trial-detail", args=[trials["b"].code])).content.decode()
    table = html[html.index('id="cost-table"'):]
    table = table[:table.index("</table>")]
    assert "$0.212 per 1 M requests" in table and "$0.636 per 1 M requests" in table  # serverless, provisioned
    assert "$0.214 per 1 M requests" in table  # within the SLO
    assert "$0.00107 per 1,000 requests" in table  # provisioned within the SLO: not tiny, so per 1,000
    assert "$0.000127" in table and "$0.000636" in table  # this trial's totals
    assert "$11.02" in table and "$1,234" in table  # monthly


def test_the_experiment_page_writes_the_price_entry_with_its_significant_figures(client, user, tiny_run):
    experiment, _ = tiny_run
    client.force_login(user)
    html = client.get(experiment.get_absolute_url()).content.decode()
    assert "$0.120/h provisioned" in html and "$0.0000333/s serverless" in html  # the seeded cpu entry
