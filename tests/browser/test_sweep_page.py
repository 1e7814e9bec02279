"""The sweep pages in a real browser: progress by worker, refreshed while trials run; the editor's run plan."""

from __future__ import annotations

import pytest

from controlplane.experiments import services, trials
from controlplane.experiments.models import Trial

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def sweep(user, spec_data, price_catalogue):
    spec_data["sweep"] = {"grid": {"max_instances": [1, 2], "keep_alive.ttl_s": [1, 5]}}
    spec_data["variants"] = spec_data["variants"][:1]
    return services.experiment_import(owner=user, data=spec_data)


def count(page, scope: str, name: str) -> str:
    return page.locator(f"{scope} [data-count='{name}']").first.inner_text().strip()


def test_the_sweep_page_shows_done_running_and_queued_per_worker_and_follows_the_run(page, user, sweep):
    queued = services.experiment_run(experiment=sweep, user=user, enqueue=False)  # 5 trials
    first, second = queued[0], queued[1]
    trials.trial_claim(trial_id=first.id, worker="cpu-a@host", device="cpu", device_id="host:cores-0-1")
    trials.trial_finish(trial_id=first.id, status=Trial.Status.SUCCEEDED, summary={})
    trials.trial_claim(trial_id=second.id, worker="cpu-b@host", device="cpu", device_id="host:cores-2-3")

    page.goto(f"/experiments/{sweep.code}/sweep/")
    assert count(page, "#sweep-totals", "done") == "1"
    assert count(page, "#sweep-totals", "running") == "1"
    assert count(page, "#sweep-totals", "queued") == "3"
    row_a = "[data-worker='cpu-a@host']"
    row_b = "[data-worker='cpu-b@host']"
    assert (count(page, row_a, "done"), count(page, row_a, "running")) == ("1", "0")
    assert (count(page, row_b, "done"), count(page, row_b, "running")) == ("0", "1")
    assert "host:cores-2-3" in page.locator(row_b).inner_text()
    assert count(page, "[data-worker='']", "queued") == "3"
    assert page.locator("#sweep-compare").get_attribute("href").endswith(f"/compare/?run={first.run_number}")

    # The open page follows the run: worker a takes the next queued trial.
    trials.trial_claim(trial_id=queued[2].id, worker="cpu-a@host", device="cpu", device_id="host:cores-0-1")
    page.wait_for_function("() => document.querySelector(\"#sweep-totals [data-count='queued']\").textContent === '2'")
    assert count(page, row_a, "running") == "1"
    assert count(page, "#sweep-totals", "running") == "2"


def test_the_editor_says_how_many_variants_and_how_long_as_the_grid_is_typed(page, sweep):
    page.goto(f"/experiments/{sweep.code}/edit/")
    plan = page.locator("#sweep-plan")
    assert "5 variants, 5 trials, about 25 s of run time" in plan.inner_text()
    page.fill("#id_sweep-grid", "max_instances = 1, 2, 4\nbatching.max_batch_size = 1, 8")
    page.wait_for_function("() => document.getElementById('sweep-plan').textContent.includes('7 variants')")
    assert "7 variants, 7 trials, about 35 s of run time" in plan.inner_text()
    page.fill("#id_sweep-grid", "max_instances = 1, 99")
    page.wait_for_function("() => document.getElementById('sweep-plan').textContent.includes('Fix the form')")
    assert "99 is not allowed" in plan.inner_text()
