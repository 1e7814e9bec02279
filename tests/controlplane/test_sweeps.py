"""Sweeps stored, exported, run, edited and watched: the control plane's side of workers.spec sweeps."""

from __future__ import annotations

import copy
import io
import json

import pytest
import yaml
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.experiments import selectors, services, spec_io, trials
from controlplane.experiments.models import Experiment, Trial
from workers import spec as S
from workers.tasks import trial_spec

pytestmark = pytest.mark.django_db

GRID = {"batching.max_batch_size": [1, 4, 8], "keep_alive.ttl_s": [0.5, 2], "max_instances": [1, 2]}


@pytest.fixture
def sweep_data(spec_data):
    spec_data["sweep"] = {"base": "dedicated", "grid": copy.deepcopy(GRID)}
    return spec_data


@pytest.fixture
def experiment(user, sweep_data, price_catalogue):
    return services.experiment_import(owner=user, data=sweep_data)


def test_a_sweep_is_stored_as_written_and_its_variants_as_rows_marked_from_sweep(experiment):
    assert experiment.sweep == {"base": "dedicated", "grid": {"batching.max_batch_size": [1, 4, 8],
                                                              "keep_alive.ttl_s": [0.5, 2.0], "max_instances": [1, 2]}}
    rows = list(experiment.variants.all())
    assert [r.name for r in rows if not r.from_sweep] == ["dedicated", "batched"]
    generated = [r for r in rows if r.from_sweep]
    assert len(generated) == 12 and generated[0].name == "b1-ttl0.5-i1"
    b4 = next(r for r in generated if r.name == "b4-ttl2-i2")
    assert (b4.batching_mode, b4.max_batch_size, b4.keep_alive_ttl_s, b4.max_instances) == ("fixed", 4, 2.0, 2)


def test_export_spec_writes_the_sweep_not_its_expansion_and_reimporting_gives_the_same_variants(experiment, user):
    out = io.StringIO()
    call_command("export_spec", str(experiment.code), "--yaml", stdout=out)
    exported = yaml.safe_load(out.getvalue())
    assert [v["name"] for v in exported["variants"]] == ["dedicated", "batched"]
    assert exported["sweep"] == experiment.sweep
    again = services.experiment_import(owner=user, data=exported)
    assert spec_io.experiment_to_spec(again) == spec_io.experiment_to_spec(experiment)
    assert spec_io.experiment_to_dict(again) == exported


def test_a_run_queues_a_trial_per_variant_and_each_finds_its_variant_in_its_frozen_spec(experiment, user):
    queued = services.experiment_run(experiment=experiment, user=user, enqueue=False)
    assert len(queued) == 15  # batched runs twice
    trial = next(t for t in queued if t.variant_name == "b8-ttl0.5-i2")
    assert "sweep" in trial.spec and len(trial.spec["variants"]) == 2  # frozen as written
    spec = trial_spec(trial)
    assert (spec.variant.batching.max_batch_size, spec.variant.keep_alive.ttl_s, spec.variant.max_instances) == (
        8, 0.5, 2)


def test_changing_the_grid_replaces_the_generated_variants(experiment, user, sweep_data):
    sweep_data["sweep"] = {"grid": {"max_instances": [1, 4]}}
    services.experiment_import(owner=user, data=sweep_data, experiment=experiment)
    assert sorted(experiment.variants.values_list("name", flat=True)) == ["batched", "dedicated", "i1", "i4"]
    del sweep_data["sweep"]
    services.experiment_import(owner=user, data=sweep_data, experiment=experiment)
    experiment.refresh_from_db()
    assert experiment.sweep is None
    assert sorted(experiment.variants.values_list("name", flat=True)) == ["batched", "dedicated"]


def test_an_invalid_grid_value_saves_nothing_and_names_the_field_and_the_value(user, sweep_data):
    sweep_data["sweep"]["grid"]["max_instances"] = [1, 65]
    with pytest.raises(S.SpecError) as info:
        services.experiment_import(owner=user, data=sweep_data)
    assert info.value.by_path() == {"sweep.grid.max_instances[1]": ["65 is not allowed: must be between 1 and 64"]}
    assert not Experiment.objects.exists()


# ---- before running: the plan -------------------------------------------------------------------------------
def test_the_experiment_page_says_how_many_variants_and_how_long_before_running(client, user, experiment):
    client.force_login(user)
    html = client.get(experiment.get_absolute_url()).content.decode()
    # 14 variants; `batched` has 2 repeats: 15 trials of 5 s of workload each
    assert "14 variants, 15 trials, about 75 s of run time" in html
    assert 'id="sweep-summary"' in html and "b4-ttl2-i2" in html


def test_the_api_gives_the_plan_with_the_experiment(user, experiment):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    body = api.get(f"/api/experiments/{experiment.code}/").json()
    assert {k: body["plan"][k] for k in ("variants", "trials", "trial_run_s", "total_run_s")} == {
        "variants": 14, "trials": 15, "trial_run_s": 5.0, "total_run_s": 75.0}
    assert body["spec"]["sweep"]["grid"]["max_instances"] == [1, 2]


def test_the_editor_shows_the_grid_as_lines_and_saves_an_edited_one(client, user, experiment):
    client.force_login(user)
    url = f"/experiments/{experiment.code}/edit/"
    response = client.get(url)
    form = response.context["editor"]
    assert form.sweep.initial["grid"] == ("batching.max_batch_size = 1, 4, 8\nkeep_alive.ttl_s = 0.5, 2\n"
                                          "max_instances = 1, 2")
    assert "14 variants, 15 trials" in response.content.decode()

    data = _editor_post(form)
    data["sweep-grid"] = "max_instances = 1, 2, 4\nsharing = exclusive, time_slice"
    data["sweep-base"] = ""
    response = client.post(url, data)
    assert response.status_code == 302, response.context["editor"].summary
    experiment.refresh_from_db()
    assert experiment.sweep == {"grid": {"max_instances": [1, 2, 4], "sharing": ["exclusive", "time_slice"]}}
    assert experiment.variants.filter(from_sweep=True).count() == 6


def test_the_editor_refuses_a_bad_grid_value_naming_it(client, user, experiment):
    client.force_login(user)
    url = f"/experiments/{experiment.code}/edit/"
    data = _editor_post(client.get(url).context["editor"])
    data["sweep-grid"] = "batching.max_batch_size = 4, 5000"
    response = client.post(url, data)
    assert response.status_code == 400
    errors = response.context["editor"].sweep.errors["grid"]
    assert errors == ["batching.max_batch_size[1]: 5000 is not allowed: must be between 1 and 1024"]


def _editor_post(editor) -> dict:
    """The editor's form as a browser would post it, unchanged."""
    data = {}
    for form in [*editor.all_forms]:
        for name, field in form.fields.items():
            value = form.initial.get(name, field.initial)
            if value is None or value is False:
                continue
            data[form.add_prefix(name)] = "on" if value is True else (
                value if not isinstance(value, dict) else json.dumps(value))
    for formset in (editor.functions, editor.steps, editor.variants):
        mf = formset.management_form
        data.update({mf.add_prefix(k): v for k, v in mf.initial.items()})
    return data


# ---- progress by worker ---------------------------------------------------------------------------------------
def test_progress_counts_done_running_and_queued_by_worker(experiment, user):
    queued = services.experiment_run(experiment=experiment, user=user, enqueue=False)
    a, b, c = queued[:3]
    trials.trial_claim(trial_id=a.id, worker="gpu0@host", device="cuda:0", device_id="GPU-aaa")
    trials.trial_finish(trial_id=a.id, status=Trial.Status.SUCCEEDED, summary={})
    trials.trial_claim(trial_id=b.id, worker="gpu0@host", device="cuda:0", device_id="GPU-aaa")
    trials.trial_claim(trial_id=c.id, worker="gpu1@host", device="cuda:1", device_id="GPU-bbb")
    trials.trial_fail(trial_id=c.id, error="boom")

    progress = selectors.sweep_progress(experiment=experiment)
    assert progress["totals"] == {"done": 2, "running": 1, "queued": 12, "failed": 1, "total": 15}
    rows = {w["worker"]: (w["device_id"], w["done"], w["running"], w["failed"]) for w in progress["workers"]}
    assert rows == {"gpu0@host": ("GPU-aaa", 1, 1, 0), "gpu1@host": ("GPU-bbb", 1, 0, 1)}
    assert not progress["finished"]
    # time left: the 12 queued trials' run time and what the running one has left, over the one slot in use (no
    # worker of the pool is live here)
    b.refresh_from_db()
    assert b.run_s > 0
    left = progress["remaining_s"]
    assert 12 * b.run_s <= left <= 13 * b.run_s
    assert progress["remaining_text"] == S.duration_text(left)


def test_the_worker_command_refuses_one_device_id_for_several_devices():
    with pytest.raises(CommandError, match="a device id names one device"):
        call_command("worker", "--device", "cpu", "--device", "cpu", "--device-id", "x", "--no-reports")


def test_a_finished_run_shows_the_comparisons_answer_and_links_to_it(client, user, experiment):
    queued = services.experiment_run(experiment=experiment, user=user, enqueue=False)
    services.experiment_cancel(experiment=experiment)
    client.force_login(user)
    response = client.get(f"/experiments/{experiment.code}/sweep/")
    assert response.status_code == 200
    progress = response.context["progress"]
    assert progress["finished"] and progress["totals"]["done"] == len(queued)
    recommendation = response.context["recommendation"]
    # What the comparison itself says about this run (nothing ran, so no variant can be recommended).
    from controlplane.experiments.comparison import experiment_comparison

    assert recommendation == experiment_comparison(experiment=experiment, charts=False)["recommendation"]
    html = response.content.decode()
    assert 'id="sweep-answer"' in html and recommendation["text"] in html
    assert f"/experiments/{experiment.code}/compare/?run=1" in html


def test_someone_elses_sweep_page_is_not_found(client, other_user, experiment):
    client.force_login(other_user)
    assert client.get(f"/experiments/{experiment.code}/sweep/").status_code == 404


# ---- confirming the pick -----------------------------------------------------------------------------------------
def test_the_more_variants_a_sweep_compares_the_likelier_a_lucky_pass():
    from controlplane.experiments.sweep_views import chance_of_a_lucky_pass

    assert chance_of_a_lucky_pass(1) == pytest.approx(0.025)
    assert chance_of_a_lucky_pass(45) == pytest.approx(1 - 0.975**45) == pytest.approx(0.680, abs=1e-3)


def test_a_met_pick_of_many_variants_offers_to_run_it_again_alone(rf, user, experiment):
    from django.template.loader import render_to_string

    from controlplane.experiments.sweep_views import chance_of_a_lucky_pass

    progress = {"run": 1, "totals": {"done": 14, "running": 0, "queued": 0, "failed": 0, "total": 14},
                "workers": [], "queue": "pool.cpu", "pool_workers": [], "finished": True}
    recommendation = {"case": "met", "variant": "b4-ttl2-i2", "text": "b4-ttl2-i2 is the cheapest variant that meets "
                                                                       "the SLO"}
    request = rf.get("/")
    request.user = user
    html = render_to_string("experiments/_sweep_progress.html", {
        "experiment": experiment, "progress": progress, "recommendation": recommendation, "variants": 14,
        "lucky_pct": chance_of_a_lucky_pass(14) * 100, "confirm_repeats": 5, "max_repeats": 20, "poll_ms": 2000},
        request=request)
    assert 'id="sweep-confirm"' in html and "cheapest of 14 variants" in html and "by luck 30 %" in html
    assert 'name="variant" value="b4-ttl2-i2"' in html


def test_running_one_variant_from_the_page_queues_only_it(client, user, experiment):
    client.force_login(user)
    response = client.post(f"/experiments/{experiment.code}/run/", {"variant": "b4-ttl2-i2", "repeats": "5"})
    assert response.status_code == 302
    assert list(Trial.objects.values_list("variant_name", "repeat")) == [("b4-ttl2-i2", r) for r in range(5)]


def test_the_sweep_example_imports_into_45_variants_beside_its_base(user, price_catalogue):
    from tests.controlplane.test_spec_io import EXAMPLES

    out = io.StringIO()
    call_command("import_spec", str(EXAMPLES / "batching-sweep.json"), "--owner", user.username, stdout=out)
    experiment = Experiment.objects.get(name="batching-sweep")
    assert experiment.variants.count() == 46 and experiment.variants.filter(from_sweep=True).count() == 45
    plan = selectors.experiment_plan(spec=spec_io.experiment_to_spec(experiment))
    assert plan["text"] == "46 variants, 46 trials, about 23 min of run time"
