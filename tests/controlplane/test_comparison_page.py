"""The comparison page with Django's client: owner only, the selector's figures in the table (median, spread,
interval, change against the baseline), the three verdict badges with their reasons, the recommendation, the
price and baseline pickers through the page's data view, the pinned basket on the same page, the links to it,
and its server time and query count for 10 variants x 3 repeats.

Trials are the selector tests' fixtures: real rows finished with hand-written summaries and stored bills.
"""

from __future__ import annotations

import html
import json
import re
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from controlplane.experiments import comparison as C
from controlplane.experiments import services
from controlplane.experiments.figures import format_usd
from controlplane.experiments.models import Trial, TrialWindow
from tests.controlplane.test_comparison import _big_run, finish, run, summary, variant
from tests.controlplane.test_comparison import prices as prices  # noqa: F401 - the fixture, re-exported

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner_client(client, user):
    client.force_login(user)
    return client


def page_url(experiment, **params) -> str:
    url = reverse("experiment-compare", args=[experiment.code])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")


def data_url(experiment, **params) -> str:
    url = reverse("experiment-compare-data", args=[experiment.code])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")


def text(s: str) -> str:
    """How a string appears in the page's HTML."""
    return html.escape(s, quote=True)


def row_html(page: str, key: str) -> str:
    """The HTML of one variant's table row (up to its repeats row)."""
    start = page.index('class="cmp-row')
    start = page.index(f'data-key="{key}"', start)
    return page[start:page.index('class="cmp-repeats"', start)]


@pytest.fixture
def decided_run(user, prices):
    """Four variants, one of each kind: an always-on baseline met in 3 repeats, a cheaper one met in 1 repeat,
    one not met, one whose repeats disagree (inconclusive)."""
    experiment, by = run(user, [variant("always-on", min_instances=1, repeats=3), variant("cheap"),
                                variant("slow"), variant("unsure", repeats=2)])
    for t, p99 in zip(by["always-on"], (30.0, 34.0, 32.0), strict=True):
        finish(t, summary(p99, busy_s=60.0))
    finish(by["cheap"][0], summary(41.5, busy_s=12.0))
    finish(by["slow"][0], summary(70.0, ci=[66.0, 74.0], verdict="not_met", busy_s=8.0,
                                  reasons=["p99 70.0 ms is above the 50 ms target"]))
    finish(by["unsure"][0], summary(45.0, busy_s=10.0))
    finish(by["unsure"][1], summary(56.0, ci=[53.0, 58.0], verdict="not_met", busy_s=10.0,
                                    reasons=["p99 56.0 ms is above the 50 ms target"]))
    return experiment


# ---- access -------------------------------------------------------------------------------------------------
def test_the_page_and_its_data_are_the_owners_only(client, user, other_user, decided_run):
    for url in (page_url(decided_run), data_url(decided_run)):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    client.force_login(other_user)
    assert client.get(page_url(decided_run)).status_code == 404
    assert client.get(data_url(decided_run)).status_code == 404
    client.force_login(user)
    assert client.get(page_url(decided_run)).status_code == 200
    assert client.post(page_url(decided_run)).status_code == 405


# ---- the table shows the selector's figures -----------------------------------------------------------------
def test_the_table_shows_the_selectors_figures_with_spread_interval_and_change(owner_client, decided_run):
    response = owner_client.get(page_url(decided_run))
    page = response.content.decode()
    data = C.experiment_comparison(experiment=decided_run)
    rows = {r["key"]: r for r in data["rows"]}
    scale = data["display"]["cost_scale"]
    assert [r["key"] for r in data["rows"]] == ["always-on", "cheap", "slow", "unsure"]
    assert data["baseline"] == "always-on"

    base = row_html(page, "always-on")
    assert "baseline" in base
    # The median across the three repeats, its min-max and the repeats interval of the SLO percentile.
    fig = rows["always-on"]["figures"]["p99_ms"]
    assert C.format_ms(fig["value"]) in base and "30.0 – 34.0 ms" in base
    assert "75 % repeats 30.0 – 34.0 ms" in base
    # Every cost column in the page's one unit, and the baseline has no change.
    for key in ("serverless_per_1k_usd", "provisioned_per_1k_usd", "serverless_per_1k_good_usd",
                "provisioned_per_1k_good_usd"):
        assert format_usd(rows["always-on"]["figures"][key]["value"] * scale["factor"]) in base
    assert "cmp-change" not in base

    cheap = row_html(page, "cheap")
    assert C.format_ms(41.5) in cheap
    # One repeat: its bootstrap interval, a visible "1 repeat" warning with the reason on hover.
    assert "95 % CI 39.5 – 43.5 ms" in cheap
    assert 'data-flag="single_repeat"' in cheap and ">1 repeat<" in cheap
    # Each change against the baseline, coloured by better or worse for that metric.
    for key, direction in (("p99_ms", "worse"), ("serverless_per_1k_usd", "better")):
        delta = rows["cheap"]["deltas"][key]
        assert delta["direction"] == direction
        change = C.format_change(delta, key, scale)
        assert f'cmp-change cmp-{direction}' in cheap and text(change) in cheap
    assert text(C.format_percent(rows["cheap"]["figures"]["violation_rate"]["value"])) in cheap
    assert f"{rows['cheap']['figures']['throughput_rps']['value']:.3g}" in cheap
    # Isolation level and the CPU label.
    assert "process" in cheap and "measured on CPU" in cheap


def test_three_verdict_badges_with_their_reasons_on_hover_and_in_text(owner_client, decided_run):
    page = owner_client.get(page_url(decided_run)).content.decode()
    data = C.experiment_comparison(experiment=decided_run)
    rows = {r["key"]: r for r in data["rows"]}

    met = row_html(page, "always-on")
    assert 'class="cmp-badge cmp-badge-met" data-verdict="met"' in met and ">✓ met</span>" in met
    slow = row_html(page, "slow")
    assert 'cmp-badge-not-met' in slow and "✗ not met" in slow
    assert 'title="p99 70.0 ms is above the 50 ms target"' in slow
    assert "<li>p99 70.0 ms is above the 50 ms target</li>" in slow
    unsure = row_html(page, "unsure")
    assert rows["unsure"]["verdict"]["verdict"] == "inconclusive"
    assert "cmp-badge-inconclusive" in unsure and "? inconclusive" in unsure
    for reason in rows["unsure"]["verdict"]["reasons"]:
        assert f"<li>{text(reason)}</li>" in unsure
    # A click shows the repeats, each linked to its trial page.
    repeats = page[page.index('data-for="unsure"'):]
    repeats = repeats[:repeats.index("</table>")]
    for rep in rows["unsure"]["repeats"]:
        assert f'data-trial="{rep["trial"]}"' in repeats and f'href="{rep["url"]}"' in repeats


def test_the_recommendation_sentence_is_at_the_top(owner_client, decided_run):
    page = owner_client.get(page_url(decided_run)).content.decode()
    rec = C.experiment_comparison(experiment=decided_run)["recommendation"]
    assert rec["case"] == "met" and rec["variant"] == "cheap"
    assert f'<p class="cmp-rec-text" id="cmp-recommendation-text">{text(rec["text"])}</p>' in page
    assert page.index('id="cmp-recommendation"') < page.index('id="cmp-table"')
    assert "cmp-rec-met" in page


def test_a_percentile_beyond_the_run_reads_beyond_the_drain(owner_client, user, prices):
    experiment, by = run(user, [variant("a")])
    finish(by["a"][0], summary(None, unfinished=30, verdict="not_met", ci=[45.0, None], reasons=["p99 beyond"]))
    page = owner_client.get(page_url(experiment)).content.decode()
    a = row_html(page, "a")
    assert "&gt; drain (30 unfinished)" in a and "cmp-beyond" in a
    assert "95 % CI 45.0 – &gt; drain" in a


def test_several_functions_have_sub_rows(owner_client, user, prices):
    experiment, by = run(user, [variant("a"), variant("b")], functions=2)
    for t, p in zip(by["a"] + by["b"], (20.0, 30.0), strict=True):
        groups = {f"fn{i}": {"requests": 500, "latency_ms": {"p99": p + 5 * i, "unfinished": 0, "unfinished_share": 0.0},
                             "latency_completed_ms": {"p99": p + 5 * i}, "violation_rate": 0.0,
                             "throughput_rps": 8.0, "goodput_rps": 8.0, "cold_starts": 1} for i in range(2)}
        finish(t, summary(p, per_function=groups))
    page = owner_client.get(page_url(experiment)).content.decode()
    fn1 = page[page.index('data-key="b" data-function="fn1"'):]
    fn1 = fn1[:fn1.index("</tr>")]
    assert C.format_ms(35.0) in fn1 and text("+10.0 ms") in fn1


def test_a_run_without_results_and_an_experiment_never_run(owner_client, user, prices):
    experiment, by = run(user, [variant("a")])
    page = owner_client.get(page_url(experiment)).content.decode()
    assert "No results yet" in page and 'data-status="queued"' in page and 'data-live="1"' in page
    never = services.experiment_import(owner=user, data=json.loads(json.dumps(
        {"name": "never", "device": "cpu", "functions": [{"name": "f", "model": "mlp-small"}],
         "workload": {"pattern": "constant", "rate_rps": 5, "duration_s": 5}, "variants": [{"name": "v"}]})))
    page = owner_client.get(page_url(never)).content.decode()
    assert "Nothing to compare yet" in page and "comparison-data" not in page


def test_a_running_trials_row_shows_its_latest_second_until_its_figures_come(owner_client, user, prices):
    experiment, by = run(user, [variant("a", min_instances=1), variant("b")])
    finish(by["a"][0], summary(30.0))
    Trial.objects.filter(pk=by["b"][0].pk).update(status="running")
    TrialWindow.objects.bulk_create([
        TrialWindow(trial=by["b"][0], index=i, t_s=i + 1.0,
                    data={"t_s": i + 1.0, "p99_ms": 40.0 + i, "instances_starting": 0, "instances_idle": 1,
                          "instances_busy": 1, "cold_starts": int(i == 0)}) for i in range(5)])
    page = owner_client.get(page_url(experiment)).content.decode()
    b = row_html(page, "b")
    assert 'data-status="running"' in b and "second 5 of repeat 0: p99 44.0 ms, 2 instances" in b
    assert 'data-live="1"' in page and "still queued or measuring" in page
    assert "second " not in row_html(page, "a")


# ---- pickers: run, baseline, price ------------------------------------------------------------------------
def test_a_price_reprices_every_cost_cell_and_says_which_entry_and_date(owner_client, decided_run):
    before = owner_client.get(data_url(decided_run)).json()
    after = owner_client.get(data_url(decided_run, price="test-gpu")).json()
    expected = C.experiment_comparison(experiment=decided_run, price="test-gpu")
    assert after["comparison"]["rows"] == expected["rows"] and after["errors"] == []
    assert after["server_ms"] > 0
    # The swapped-in table is the page's own block: pin buttons keep their CSRF token and come back to the page.
    assert re.search(r'name="csrfmiddlewaretoken" value="\w{20,}"', after["html"])
    assert f'name="next" value="{page_url(decided_run, price="test-gpu")}"' in after["html"]
    cheap_before, cheap_after = row_html(before["html"], "cheap"), row_html(after["html"], "cheap")
    scale = expected["display"]["cost_scale"]
    value = next(r for r in expected["rows"] if r["key"] == "cheap")["figures"]["serverless_per_1k_usd"]["value"]
    assert format_usd(value * scale["factor"]) in cheap_after and cheap_after != cheap_before
    assert "test-gpu, prices as of 2026-10-01" in after["html"]
    assert "with test-gpu, as of 2026-10-01" in after["html"]
    # Measured on the CPU, priced as a GPU: said beside the figure.
    assert "CPU run, GPU price" in cheap_after and "CPU run, GPU price" not in cheap_before
    assert "measured on CPU, priced as NVIDIA Test 10GB" in cheap_after
    # The full page with the same parameter selects the entry.
    page = owner_client.get(page_url(decided_run, price="test-gpu")).content.decode()
    assert '<option value="test-gpu" selected>' in page


def test_the_baseline_picker_changes_every_change(owner_client, decided_run):
    answer = owner_client.get(data_url(decided_run, baseline="slow")).json()
    assert answer["comparison"]["baseline"] == "slow"
    assert "cmp-change" not in row_html(answer["html"], "slow")
    assert "cmp-change cmp-better" in row_html(answer["html"], "cheap")
    page = owner_client.get(page_url(decided_run, baseline="slow")).content.decode()
    assert '<option value="slow" selected>' in page


def test_unknown_parameters_are_reported_and_the_defaults_shown(owner_client, decided_run):
    page = owner_client.get(page_url(decided_run, run=9, baseline="nope", price="nope")).content.decode()
    for path in ("run", "baseline", "price"):
        assert f'data-path="{path}"' in page
    assert "no run 9 (runs: 1)" in page and '<option value="1" selected>' in page
    assert row_html(page, "always-on").count("baseline") >= 1
    page = owner_client.get(page_url(decided_run, run="x")).content.decode()
    assert "is not a run number" in page and "Compare run 1" in page


def test_the_page_carries_the_selectors_dict_for_the_charts(owner_client, decided_run):
    response = owner_client.get(page_url(decided_run))
    page = response.content.decode()
    start = page.index('<script id="comparison-data" type="application/json">') + len(
        '<script id="comparison-data" type="application/json">')
    data = json.loads(page[start:page.index("</script>", start)])
    assert data["rows"] == C.experiment_comparison(experiment=decided_run)["rows"]
    assert set(data["charts"]) >= {"cdf", "p99_over_time", "instances", "breakdown"}
    for canvas in ("chart-cdf", "chart-pareto", "chart-breakdown", "chart-p99-time", "chart-instances"):
        assert f'id="{canvas}"' in page
    assert "js/comparison.js" in page and "vendor/chart.umd.min.js" in page
    assert response["Server-Timing"].startswith("compare;dur=")


# ---- links -------------------------------------------------------------------------------------------------
def test_the_experiment_and_trial_pages_link_to_the_comparison(owner_client, decided_run):
    url = reverse("experiment-compare", args=[decided_run.code])
    assert f'href="{url}"' in owner_client.get(decided_run.get_absolute_url()).content.decode()
    trial = decided_run.trials.get(variant_name="slow")
    assert f'href="{url}?run=1"' in owner_client.get(trial.get_absolute_url()).content.decode()


# ---- pinned trials on the same page ------------------------------------------------------------------------
def test_pinned_trials_from_two_experiments_are_compared_with_experiment_and_run_labels(owner_client, user, prices):
    first, by1 = run(user, [variant("a")])
    second, by2 = run(user, [variant("a")])
    finish(by1["a"][0], summary(30.0, busy_s=20.0))
    finish(by2["a"][0], summary(40.0, busy_s=10.0))
    services.pin_add(user=user, trial=by1["a"][0])
    services.pin_add(user=user, trial=by2["a"][0])
    page = owner_client.get(reverse("compare-pinned")).content.decode()
    data = C.compare_trials([by1["a"][0], by2["a"][0]])
    assert "2 trials from 2 experiments" in page and "Pinned trials" in page
    for r in data["rows"]:
        row = row_html(page, r["key"])
        assert f'href="{reverse("experiment-detail", args=[r["experiment"]["code"]])}"' in row
        assert f"· run {r['run']} · <strong>a</strong>" in row
        assert C.format_ms(r["figures"]["p99_ms"]["value"]) in row
    assert text(data["recommendation"]["text"]) in page
    assert 'id="pins-clear"' in page and 'id="pick-run"' not in page
    answer = owner_client.get(reverse("compare-pinned-data") + "?price=test-gpu").json()
    assert "test-gpu" in answer["comparison"]["pricing"]["note"] and "cmp-table" in answer["html"]


# ---- speed ------------------------------------------------------------------------------------------------------
def test_page_queries_do_not_grow_with_the_trials_and_ten_variants_render_within_300_ms(owner_client, user, prices,
                                                                                         media_root):
    small = _big_run(user, media_root, 1)
    large = _big_run(user, media_root, 10)
    counts = []
    for experiment in (small, large):
        owner_client.get(page_url(experiment))  # caches filled, session read
        with CaptureQueriesContext(connection) as ctx:
            response = owner_client.get(page_url(experiment, price="test-gpu"))
        assert response.status_code == 200
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1], counts

    times, data_times = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        owner_client.get(page_url(large, price="test-gpu"))
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        owner_client.get(data_url(large, price="test-gpu"))
        data_times.append(time.perf_counter() - t0)
    print(f"comparison page, 10 variants x 3 repeats: {counts[1]} queries; page best {min(times) * 1000:.0f} ms, "
          f"median {sorted(times)[2] * 1000:.0f} ms; data view best {min(data_times) * 1000:.0f} ms, "
          f"median {sorted(data_times)[2] * 1000:.0f} ms")
    # The 300 ms goal is printed above, not asserted: an absolute time fails on a busy machine (the queries above
    # are what keeps the page fast as trials grow).
