"""The setup pages in a real browser: the editor's JavaScript rows, conditional fields, live preview."""

from __future__ import annotations

import re

import pytest

from controlplane.experiments.models import Experiment
from tests.conftest import frozen_run

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DETAIL_URL = re.compile(r".*/experiments/[0-9a-f-]{36}/$")


def preview_points(page) -> int:
    return page.evaluate("() => { const c = Chart.getChart('preview-chart'); "
                         "return c ? c.data.datasets[0].data.length : 0; }")


def test_owner_builds_an_experiment_in_the_editor_and_lands_on_its_page(page):
    page.goto("/experiments/new/")
    page.fill("#id_name", "browser-made")
    page.select_option("#id_slo-percentile", "95")
    page.fill("#id_slo-latency_ms", "40")

    # The preview plots the workload as it is edited: a constant 20 req/s for 30 s is 600 requests.
    page.select_option("#id_workload-pattern", "constant")
    page.fill("#id_workload-rate_rps", "20")
    page.fill("#id_workload-duration_s", "30")
    page.wait_for_function("() => document.getElementById('preview-requests').textContent.includes('600')")
    assert preview_points(page) > 2
    # The gamma-only CV field stays hidden for a constant rate.
    assert page.locator("[data-field='cv']").is_hidden()

    # A second variant from the JS button; fixed batching reveals its batch fields.
    page.click("#add-variant")
    rows = page.locator(".row-variant")
    assert rows.count() == 2
    second = rows.nth(1)
    batch_size = second.locator("[name='variants-1-max_batch_size']")
    assert batch_size.is_hidden()
    second.locator("[name='variants-1-name']").fill("batched")
    second.locator("[name='variants-1-batching_mode']").select_option("fixed")
    assert batch_size.is_visible()
    assert second.locator("[name='variants-1-shed']").is_hidden()  # adaptive only
    batch_size.fill("16")
    second.locator("[name='variants-1-max_queue_delay_ms']").fill("4")

    page.click("#save-experiment")
    page.wait_for_url(DETAIL_URL)
    assert page.locator("h1").first.inner_text().startswith("browser-made")
    assert page.locator("#variants-table tbody tr").count() == 2

    experiment = Experiment.objects.get(name="browser-made")
    variants = {v.name: v for v in experiment.variants.all()}
    assert set(variants) == {"baseline", "batched"}
    assert (variants["batched"].batching_mode, variants["batched"].max_batch_size,
            variants["batched"].max_queue_delay_ms) == ("fixed", 16, 4.0)
    assert variants["baseline"].batching_mode == "none"
    assert experiment.slo.percentile == 95.0 and experiment.slo.latency_ms == 40.0
    workload = experiment.workloads.get()
    assert (workload.pattern, workload.params, workload.duration_s) == ("constant", {"rate_rps": 20.0}, 30.0)
    # The detail page draws the stored workload too.
    page.wait_for_function("() => Chart.getChart('workload-chart-0').data.datasets[0].data.length > 1")


def test_an_invalid_field_shows_its_error_next_to_it_and_keeps_the_input(page):
    page.goto("/experiments/new/")
    page.fill("#id_name", "too-many-minimum")
    page.fill("#id_variants-0-min_instances", "5")
    page.fill("#id_variants-0-max_instances", "2")
    page.select_option("#id_variants-0-batching_mode", "adaptive")
    page.click("#save-experiment")

    error = page.locator(".field.has-error[data-field='min_instances'] .field-error")
    assert error.inner_text() == "must be at most max_instances (2)"
    assert "Nothing was saved" in page.locator("#error-summary").inner_text()
    # What the user typed is still there, and the adaptive batching fields are shown for it.
    assert page.input_value("#id_name") == "too-many-minimum"
    assert page.input_value("#id_variants-0-min_instances") == "5"
    assert page.locator("#id_variants-0-shed").is_visible()
    assert not Experiment.objects.exists()


def test_the_preview_names_a_bad_workload_field_instead_of_plotting(page):
    page.goto("/experiments/new/")
    page.select_option("#id_workload-pattern", "gamma")
    page.fill("#id_workload-rate_rps", "50")
    page.fill("#id_workload-cv", "0")
    page.wait_for_function("() => document.getElementById('preview-errors').textContent.includes('Coefficient')")
    assert "must be above 0" in page.locator("#preview-errors").inner_text()


def test_steps_rows_are_added_in_the_browser_and_saved_in_order(page):
    page.goto("/experiments/new/")
    page.fill("#id_name", "stepped")
    page.select_option("#id_workload-pattern", "steps")
    page.fill("#id_workload-duration_s", "90")
    page.click("#steps-editor [data-add-row]")
    page.fill("#id_steps-2-start_s", "60")
    page.fill("#id_steps-2-rate_rps", "5")
    # 10 req/s x 30 s + 50 x 30 + 5 x 30
    page.wait_for_function("() => document.getElementById('preview-requests').textContent.includes('1,950')")
    page.click("#save-experiment")
    page.wait_for_url(DETAIL_URL)
    workload = Experiment.objects.get(name="stepped").workloads.get()
    assert workload.params == {"steps": [[0.0, 10.0], [30.0, 50.0], [60.0, 5.0]]}


def test_login_page_signs_in_and_logout_signs_out(anonymous_page, user):
    page = anonymous_page
    page.goto("/")
    page.wait_for_url(re.compile(r".*/accounts/login/\?next=/$"))
    page.fill("#id_username", "owner")
    page.fill("#id_password", "owner-pass-123")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))
    assert page.locator(".user-name").inner_text() == "owner"
    page.click("#logout-button")
    page.wait_for_url(re.compile(r".*/accounts/login/$"))


def test_cloned_and_removed_variant_rows_are_renumbered_and_saved(page):
    page.goto("/experiments/new/")
    page.fill("#id_name", "cloned rows")
    page.select_option("#id_variants-0-batching_mode", "adaptive")
    page.fill("#id_variants-0-max_batch_size", "12")
    page.check("#id_variants-0-shed")
    page.click(".row-variant [data-clone-row]")
    copy = page.locator(".row-variant").nth(1)
    # The copy carries what was typed and picked, and shows the fields that go with it.
    assert copy.locator("[name='variants-1-name']").input_value() == "baseline-copy"
    assert copy.locator("[name='variants-1-batching_mode']").input_value() == "adaptive"
    assert copy.locator("[name='variants-1-max_batch_size']").input_value() == "12"
    assert copy.locator("[name='variants-1-shed']").is_checked() and copy.locator("[name='variants-1-shed']").is_visible()
    # Remove the original: the copy becomes row 0 and the formset count follows.
    page.locator(".row-variant").nth(0).locator("[data-remove-row]").click()
    assert page.locator(".row-variant").count() == 1
    assert page.input_value("[name='variants-TOTAL_FORMS']") == "1"
    assert page.input_value("#id_variants-0-name") == "baseline-copy"
    assert page.locator(".row-variant [data-remove-row]").is_disabled()  # the last variant stays
    page.click("#save-experiment")
    page.wait_for_url(DETAIL_URL)
    variant = Experiment.objects.get(name="cloned rows").variants.get()
    assert (variant.name, variant.batching_mode, variant.max_batch_size, variant.shed) == (
        "baseline-copy", "adaptive", 12, True)


def test_an_uploaded_trace_is_previewed_and_saved(page, tmp_path):
    trace = tmp_path / "arrivals.txt"
    trace.write_text("".join(f"{i * 0.25}\n" for i in range(40)))  # 4 req/s for 10 s
    page.goto("/experiments/new/")
    page.fill("#id_name", "traced")
    page.select_option("#id_workload-pattern", "trace")
    page.select_option("#id_workload-trace_format", "timestamps")
    page.fill("#id_workload-duration_s", "10")
    page.set_input_files("#id_workload-trace_file", str(trace))
    page.wait_for_function("() => document.getElementById('preview-requests').textContent.includes('40')")
    page.click("#save-experiment")
    page.wait_for_url(DETAIL_URL)
    workload = Experiment.objects.get(name="traced").workloads.get()
    assert (workload.trace_filename, workload.trace_content()) == ("arrivals.txt", trace.read_text())


def test_the_detail_page_refreshes_its_trials_while_one_is_active(page, user):
    from controlplane.experiments import services
    from controlplane.experiments.models import Trial

    experiment = services.experiment_import(owner=user, data={
        "name": "watched", "functions": [{"name": "f", "model": "null"}],
        "workload": {"pattern": "constant", "rate_rps": 5, "duration_s": 5}, "variants": [{"name": "only"}]})
    trial = Trial.objects.create(experiment=experiment, variant_name="only", run_number=1,
                                 **frozen_run(experiment), status="running", device="cpu")
    page.goto(experiment.get_absolute_url())
    assert page.locator("#trials .badge-running").count() >= 1
    Trial.objects.filter(pk=trial.pk).update(status="succeeded", summary={
        "latency_ms": {"p50": 3.0, "p99": 7.5}, "slo_met": True, "cost": {}})
    # No reload: the 2 s poll swaps in the new table and stops once nothing is active.
    page.wait_for_selector("#trials[data-active='0'] .badge-succeeded", timeout=8_000)
    assert "7.5 ms" in page.locator("#trials").inner_text()
    assert page.locator("#cancel-form").is_hidden()
