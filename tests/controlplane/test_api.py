"""The REST API: owner / outsider / anonymous personas, token auth, one error format, the OpenAPI schema."""

import copy
import json
import re
import uuid

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.experiments import selectors, services, spec_io
from controlplane.experiments.models import Experiment, Trial, TrialWindow
from tests.controlplane.test_selectors import SUMMARY
from tests.controlplane.test_services import BAD_INPUTS, nothing_saved, trace_workload
from tests.controlplane.test_spec_io import azure_trace
from workers import spec as S

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def outsider(other_user):
    client = APIClient()
    client.force_authenticate(other_user)
    return client


@pytest.fixture
def anonymous():
    return APIClient()


@pytest.fixture
def experiment(user, spec_data):
    return services.experiment_import(owner=user, data=spec_data)


@pytest.fixture
def trial(user, experiment):
    return services.experiment_run(experiment=experiment, user=user)[0]


def post(client, url, data=None):
    return client.post(url, data=json.dumps(data) if data is not None else None, content_type="application/json")


def put(client, url, data):
    return client.put(url, data=json.dumps(data), content_type="application/json")


def error_paths(response) -> list[str]:
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["detail"] and isinstance(body["errors"], list)
    return [e["path"] for e in body["errors"]]


def experiment_urls(code) -> list[tuple[str, str]]:
    base = f"/api/experiments/{code}/"
    return [("get", base), ("put", base), ("delete", base), ("post", base + "run/"), ("post", base + "cancel/"),
            ("get", base + "spec/"), ("post", base + "clone/"), ("get", base + "results/"), ("get", base + "trials/")]


def trial_urls(code) -> list[tuple[str, str]]:
    base = f"/api/trials/{code}/"
    return [("get", base), ("get", base + "windows/"), ("post", base + "cancel/")]


def call(client, method, url, spec_data=None):
    if method == "put":
        return put(client, url, spec_data or {})
    if method == "post":
        return post(client, url, {})
    return getattr(client, method)(url)


# ---- authentication -----------------------------------------------------------------------------------------
def test_a_token_is_issued_for_a_username_and_password_and_opens_the_api(user, experiment):
    response = APIClient().post("/api/token/", {"username": "owner", "password": "owner-pass-123"})
    assert response.status_code == 200
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    listed = client.get("/api/experiments/")
    assert listed.status_code == 200 and [e["code"] for e in listed.json()["results"]] == [str(experiment.code)]


def test_a_wrong_password_gets_no_token(user):
    response = APIClient().post("/api/token/", {"username": "owner", "password": "guess"})
    assert response.status_code == 400 and "token" not in response.json()


def test_a_bad_token_is_refused(experiment):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert client.get("/api/experiments/").status_code == 401


def test_anonymous_requests_are_refused_everywhere(anonymous, experiment, trial, spec_data):
    urls = [("get", "/api/experiments/"), ("post", "/api/experiments/"), ("get", "/api/prices/"),
            ("get", "/api/models/")] + experiment_urls(experiment.code) + trial_urls(trial.code)
    for method, url in urls:
        response = call(anonymous, method, url, spec_data)
        assert response.status_code == 401, (method, url)
        assert response["WWW-Authenticate"].startswith("Token")
    assert Experiment.objects.count() == 1 and Trial.objects.filter(status="queued").count() == 3


def test_an_outsider_gets_404_for_someone_elses_experiment_and_trials_and_changes_nothing(
        outsider, experiment, trial, spec_data):
    before = spec_io.experiment_to_dict(experiment)
    for method, url in experiment_urls(experiment.code) + trial_urls(trial.code):
        response = call(outsider, method, url, spec_data)
        assert response.status_code == 404, (method, url, response.content)
    assert spec_io.experiment_to_dict(Experiment.objects.get()) == before
    assert Trial.objects.filter(status="queued").count() == 3 and Experiment.objects.count() == 1


def test_the_outsiders_404_is_the_same_as_for_a_code_that_does_not_exist(outsider, experiment):
    theirs = outsider.get(f"/api/experiments/{experiment.code}/")
    nobody = outsider.get(f"/api/experiments/{uuid.uuid4()}/")
    assert (theirs.status_code, theirs.json()) == (nobody.status_code, nobody.json())


def test_a_session_login_works_but_unsafe_requests_need_the_csrf_token(user, spec_data):
    client = APIClient(enforce_csrf_checks=True)
    client.login(username="owner", password="owner-pass-123")
    assert client.get("/api/experiments/").status_code == 200
    assert post(client, "/api/experiments/", spec_data).status_code == 403
    assert nothing_saved()


# ---- experiments --------------------------------------------------------------------------------------------
def test_posting_a_spec_creates_an_experiment(owner, spec_data):
    response = post(owner, "/api/experiments/", spec_data)
    assert response.status_code == 201, response.content
    body = response.json()
    experiment = Experiment.objects.get(code=body["code"])
    assert body["status"] == "draft" and body["latest_run"] is None and body["runs"] == []
    assert body["url"] == f"http://testserver/api/experiments/{experiment.code}/" == response["Location"]
    assert body["html_url"] == f"http://testserver{experiment.get_absolute_url()}"
    assert body["spec"] == spec_io.experiment_to_dict(experiment) == S.parse_experiment(spec_data).to_dict()
    assert body["accelerator"] == "cpu"


def test_the_list_holds_only_your_experiments_with_their_run_status(owner, user, other_user, spec_data):
    mine = services.experiment_import(owner=user, data=spec_data)
    services.experiment_import(owner=other_user, data=spec_data)
    services.experiment_run(experiment=mine, user=user)
    body = owner.get("/api/experiments/").json()
    assert body["count"] == 1
    row = body["results"][0]
    assert (row["code"], row["status"], row["latest_run"], row["queued_count"], row["trial_count"]) == (
        str(mine.code), "queued", 1, 3, 3)
    assert "spec" not in row  # the list stays small: specs may inline megabytes of trace


def test_the_list_is_paginated(owner, user, spec_data):
    for _ in range(3):
        services.experiment_import(owner=user, data=spec_data)
    body = owner.get("/api/experiments/?limit=2").json()
    assert body["count"] == 3 and len(body["results"]) == 2 and body["next"]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_spec_is_refused_with_field_paths_and_saves_nothing(owner, spec_data, case):
    change, path = BAD_INPUTS[case]
    change(spec_data)
    assert path in error_paths(post(owner, "/api/experiments/", spec_data))
    assert nothing_saved()


def test_every_problem_is_reported_at_once(owner, spec_data):
    spec_data["workload"]["rate_rps"] = -1
    spec_data["variants"][1]["batching"]["max_batch_size"] = 0
    spec_data["slo"]["percentile"] = 42
    response = post(owner, "/api/experiments/", spec_data)
    assert set(error_paths(response)) == {"workload.rate_rps", "variants[1].batching.max_batch_size",
                                          "slo.percentile"}
    assert response.json()["detail"].startswith("3 problems: ")


def test_a_malformed_trace_is_refused_naming_its_line(owner, spec_data, media_root):
    lines = azure_trace([1, 2]).splitlines() + ["o,a,f,http,1,-4" + ",0" * 1438]
    spec_data["workload"] = trace_workload("\n".join(lines))
    response = post(owner, "/api/experiments/", spec_data)
    assert error_paths(response) == ["workload.trace_content"]
    assert response.json()["errors"][0]["message"] == "line 3: minute 2 has a negative count (-4)"
    assert nothing_saved()


def test_an_oversized_trace_is_refused(owner, spec_data):
    spec_data["workload"] = trace_workload("1\n" * (S.MAX_TRACE_BYTES // 2 + 1))
    assert error_paths(post(owner, "/api/experiments/", spec_data)) == ["workload.trace_content"]
    assert nothing_saved()


def test_a_trace_path_is_refused_so_the_server_never_reads_its_own_files(owner, spec_data):
    spec_data["workload"] = {"pattern": "trace", "trace_format": "timestamps", "trace_path": "/etc/hostname",
                             "duration_s": 60}
    assert error_paths(post(owner, "/api/experiments/", spec_data)) == ["workload.trace_path"]
    assert nothing_saved()


def test_a_trace_experiment_is_created_and_exported_with_its_text(owner, spec_data, media_root):
    spec_data["workload"] = trace_workload(azure_trace([5, 5, 5]), trace_filename="sample.csv")
    body = post(owner, "/api/experiments/", spec_data).json()
    exported = owner.get(f"/api/experiments/{body['code']}/spec/").json()
    assert exported["workload"]["trace_content"] == azure_trace([5, 5, 5])
    assert exported == body["spec"]


@pytest.mark.parametrize("raw,path", [("{not json", ""), ('["a", "list"]', ""), ("null", "")])
def test_a_body_that_is_not_a_json_object_is_refused_in_the_same_format(owner, raw, path):
    response = owner.post("/api/experiments/", data=raw, content_type="application/json")
    assert path in error_paths(response)
    assert nothing_saved()


def test_an_unknown_accelerator_is_refused(owner, spec_data):
    spec_data["accelerator"] = "TPU-v9"
    response = post(owner, "/api/experiments/", spec_data)
    assert error_paths(response) == ["accelerator"]
    assert "unknown price entry 'TPU-v9'" in response.json()["detail"]


def test_get_returns_the_experiment_with_its_spec(owner, experiment):
    body = owner.get(f"/api/experiments/{experiment.code}/").json()
    assert body["name"] == "classifier-poc" and body["spec"] == spec_io.experiment_to_dict(experiment)


def test_put_replaces_the_spec_and_keeps_code_and_trials(owner, experiment, trial, spec_data):
    spec_data["name"] = "v2"
    spec_data["variants"] = spec_data["variants"][:1]
    response = put(owner, f"/api/experiments/{experiment.code}/", spec_data)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["code"] == str(experiment.code) and body["name"] == "v2" and body["status"] == "queued"
    assert [v["name"] for v in body["spec"]["variants"]] == ["dedicated"]
    assert experiment.trials.count() == 3


def test_a_bad_put_changes_nothing(owner, experiment, spec_data):
    before = spec_io.experiment_to_dict(experiment)
    bad = copy.deepcopy(spec_data)
    bad["name"] = "v2"
    bad["functions"][0]["model"] = "gpt-17"
    assert error_paths(put(owner, f"/api/experiments/{experiment.code}/", bad)) == ["functions[0].model"]
    assert spec_io.experiment_to_dict(Experiment.objects.get()) == before


def test_delete_removes_the_experiment(owner, experiment, trial):
    assert owner.delete(f"/api/experiments/{experiment.code}/").status_code == 204
    assert owner.get(f"/api/experiments/{experiment.code}/").status_code == 404
    assert nothing_saved()


def test_an_exported_spec_imports_as_the_same_experiment(owner, experiment):
    exported = owner.get(f"/api/experiments/{experiment.code}/spec/").json()
    again = post(owner, "/api/experiments/", exported).json()
    assert again["spec"] == exported and again["code"] != str(experiment.code)


def test_clone_copies_the_settings_under_a_new_code(owner, experiment, trial):
    response = post(owner, f"/api/experiments/{experiment.code}/clone/")
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "classifier-poc (copy)" and body["status"] == "draft"
    named = post(owner, f"/api/experiments/{experiment.code}/clone/", {"name": "take two"}).json()
    assert named["name"] == "take two"
    assert error_paths(post(owner, f"/api/experiments/{experiment.code}/clone/", {"name": ""})) == ["name"]
    assert error_paths(post(owner, f"/api/experiments/{experiment.code}/clone/", {"nmae": "typo"})) == ["nmae"]
    assert Experiment.objects.count() == 3


# ---- running ------------------------------------------------------------------------------------------------
def test_run_queues_the_trials_and_enqueues_them_on_commit(owner, experiment, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post(owner, f"/api/experiments/{experiment.code}/run/")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["run_number"] == 1
    assert [(t["variant"], t["repeat"], t["status"]) for t in body["trials"]] == [
        ("dedicated", 0, "queued"), ("batched", 0, "queued"), ("batched", 1, "queued")]
    ids = list(Trial.objects.order_by("id").values_list("id", flat=True))
    assert [i for cb in callbacks for i in cb.keywords["trial_ids"]] == ids
    assert body["trials"][0]["url"].endswith(f"/api/trials/{body['trials'][0]['trial']}/")


def test_run_can_pick_variants_and_repeats(owner, experiment, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        body = post(owner, f"/api/experiments/{experiment.code}/run/", {"repeats": 2, "variants": ["batched"]}).json()
    assert [(t["variant"], t["repeat"]) for t in body["trials"]] == [("batched", 0), ("batched", 1)]
    assert len([i for cb in callbacks for i in cb.keywords["trial_ids"]]) == 2


def test_run_can_be_simulated(owner, experiment, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        body = post(owner, f"/api/experiments/{experiment.code}/run/",
                    {"variants": ["batched"], "simulate": {"devices": 4, "placement": "load_pack"}}).json()
    assert all(t["simulated"] is True and t["simulation"]["devices"] == 4 for t in body["trials"])
    assert len([i for cb in callbacks for i in cb.keywords["trial_ids"]]) == len(body["trials"])
    assert Trial.objects.filter(queue="sim").count() == len(body["trials"])


@pytest.mark.parametrize("data,path", [({"repeats": 0}, "repeats"), ({"repeats": "3"}, "repeats"),
                                       ({"variants": ["nope"]}, "variants"), ({"variants": "batched"}, "variants"),
                                       ({"speed": "fast"}, "speed"), ([1, 2], ""),
                                       ({"simulate": {"devices": 0}}, "simulate.devices"),
                                       ({"simulate": {"placement": "x"}}, "simulate.placement"),
                                       ({"simulate": "yes"}, "simulate")])
def test_a_bad_run_request_is_refused_and_queues_nothing(owner, experiment, data, path,
                                                         django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert path in error_paths(post(owner, f"/api/experiments/{experiment.code}/run/", data))
    assert callbacks == [] and not Trial.objects.exists()


def test_cancel_cancels_the_unfinished_trials(owner, experiment, trial):
    body = post(owner, f"/api/experiments/{experiment.code}/cancel/").json()
    assert body == {"cancelled": 3}
    assert set(Trial.objects.values_list("status", flat=True)) == {"cancelled"}
    assert owner.get(f"/api/experiments/{experiment.code}/").json()["status"] == "cancelled"


# ---- results and trials -------------------------------------------------------------------------------------
def finish(trial, **fields):
    Trial.objects.filter(pk=trial.pk).update(status="succeeded", summary=SUMMARY, device="cpu", **fields)
    trial.refresh_from_db()
    return trial


def test_results_show_the_same_rows_as_the_selector(owner, user, experiment, trial):
    finish(trial)
    body = owner.get(f"/api/experiments/{experiment.code}/results/").json()
    assert (body["run_number"], body["runs"]) == (1, [1])
    expected = selectors.experiment_results(experiment=experiment)
    assert [{k: v for k, v in r.items() if k != "url"} for r in body["results"]] == json.loads(json.dumps(expected))
    assert body["results"][0]["latency_ms"]["p99"] == 20.0 and body["results"][1]["latency_ms"]["p99"] is None


def test_results_of_an_earlier_run_and_of_a_run_that_does_not_exist(owner, user, experiment, trial):
    services.experiment_run(experiment=experiment, user=user, variant_names=["dedicated"])
    assert len(owner.get(f"/api/experiments/{experiment.code}/results/").json()["results"]) == 1
    assert len(owner.get(f"/api/experiments/{experiment.code}/results/?run=1").json()["results"]) == 3
    assert owner.get(f"/api/experiments/{experiment.code}/results/?run=7").json()["results"] == []
    assert error_paths(owner.get(f"/api/experiments/{experiment.code}/results/?run=abc")) == ["run"]


def test_a_draft_has_no_results(owner, experiment):
    assert owner.get(f"/api/experiments/{experiment.code}/results/").json() == {
        "run_number": None, "runs": [], "results": []}


def test_the_trials_list_pages_through_every_run(owner, user, experiment, trial):
    services.experiment_run(experiment=experiment, user=user)
    body = owner.get(f"/api/experiments/{experiment.code}/trials/?limit=4").json()
    assert body["count"] == 6 and len(body["results"]) == 4
    assert body["results"][0]["run_number"] == 2
    only_first = owner.get(f"/api/experiments/{experiment.code}/trials/?run=1").json()
    assert {t["run_number"] for t in only_first["results"]} == {1}


def test_a_trial_shows_its_row_and_full_summary(owner, trial):
    finish(trial)
    body = owner.get(f"/api/trials/{trial.code}/").json()
    assert body["summary"] == SUMMARY and body["cost"]["monthly_serverless_usd"] == 12.0
    assert body["experiment"] == str(trial.experiment.code) and body["queue"] == "pool.cpu"
    assert body["html_url"] == f"http://testserver{trial.get_absolute_url()}"


def test_windows_come_in_order_and_can_be_polled_for_new_ones(owner, trial):
    for i in range(3):
        TrialWindow.objects.create(trial=trial, index=i, t_s=i + 1.0, data={"offered_rps": 20.0, "p99_ms": None,
                                                                            "queue_depth": i})
    body = owner.get(f"/api/trials/{trial.code}/windows/").json()
    assert body["status"] == "queued"
    assert [(w["index"], w["t_s"], w["queue_depth"], w["p99_ms"]) for w in body["windows"]] == [
        (0, 1.0, 0, None), (1, 2.0, 1, None), (2, 3.0, 2, None)]
    newer = owner.get(f"/api/trials/{trial.code}/windows/?after=1").json()["windows"]
    assert [w["index"] for w in newer] == [2]


def test_cancelling_a_trial(owner, trial):
    body = post(owner, f"/api/trials/{trial.code}/cancel/").json()
    assert body["status"] == "cancelled"
    Trial.objects.filter(pk=trial.pk).update(status="succeeded")
    assert post(owner, f"/api/trials/{trial.code}/cancel/").json()["status"] == "succeeded"


# ---- catalogues and schema ----------------------------------------------------------------------------------
def test_prices_list_the_catalogue_with_dates_and_sources(owner):
    prices = {p["name"]: p for p in owner.get("/api/prices/").json()}
    assert prices["H100-80GB"]["on_demand_usd_per_h"] == 6.88 and prices["H100-80GB"]["as_of"] == "2026-11-01"
    assert prices["cpu"]["source"]


def test_prices_are_read_only(owner):
    assert post(owner, "/api/prices/", {"name": "free"}).status_code == 405


def test_models_list_the_zoo(owner):
    models = {m["key"]: m["default_input_shape"] for m in owner.get("/api/models/").json()}
    assert models["mlp-small"] == [256] and "cnn-small" in models


def test_the_openapi_schema_generates_without_warnings(tmp_path):
    out = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    for path in ("/api/experiments/{code}/run/", "/api/trials/{code}/windows/", "/api/token/"):
        assert path in text


def test_the_schema_and_swagger_ui_are_served(owner, client, user):
    assert owner.get("/api/schema/").status_code == 200
    client.force_login(user)  # the docs are a page: a session, like the other pages (tests/.../test_accounts.py)
    docs = client.get("/api/docs/")
    assert docs.status_code == 200


def test_swagger_ui_loads_its_assets_locally_not_from_a_cdn(owner, client, user):
    client.force_login(user)
    html = client.get("/api/docs/").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    assert all(a.startswith("/") for a in assets), assets  # no external host: works offline
    bundle = next(a for a in assets if a.endswith("swagger-ui-bundle.js"))
    assert owner.get(bundle).status_code == 200


def test_a_row_with_a_bound_beyond_the_run_and_a_verdict_serializes(owner, experiment, trial):
    summary = dict(SUMMARY, slo_percentile_ci_ms=[18.0, None], slo_met=False,
                   slo_verdict={"verdict": "inconclusive", "reasons": ["p99 interval straddles the target"]},
                   drain_s=0.4, completed_in_drain=2)
    Trial.objects.filter(pk=trial.pk).update(status="succeeded", summary=summary, device="cpu")
    body = owner.get(f"/api/trials/{trial.code}/").json()
    assert body["slo_percentile_ci_ms"] == [18.0, None]
    assert body["slo_verdict"] == {"verdict": "inconclusive", "reasons": ["p99 interval straddles the target"]}
    assert (body["drain_s"], body["completed_in_drain"], body["unfinished"]) == (0.4, 2, None)
    assert body["latency_completed_ms"] == SUMMARY["latency_ms"]


def test_an_enormous_limit_and_a_nul_in_a_filter_are_answered_not_500(owner, experiment):
    """Found by the schema fuzzer on PostgreSQL: a limit past bigint and a NUL character in a query reached the
    database and gave 500s."""
    r = owner.get("/api/experiments/?offset=-5345&limit=15774925544942897468631154688")
    assert r.status_code == 200 and len(r.json()["results"]) <= 1000
    r = owner.get("/api/profiles/?device=cpu&model=mlp%00small")  # refused before the view (limits.RejectNulMiddleware)
    assert r.status_code == 400 and r.json()["detail"] == "NUL character in query parameter model"
