"""Profiles in the control plane: `manage.py profile SPEC --short` end to end (real instance processes), reuse
through find_profile, the JSON download round-tripping through validate_profile, who may see what, and the
experiment page's Profile button. (The button's task on a real Celery worker and the charts: tests/browser.)"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from controlplane.experiments import services
from controlplane.experiments.models import Profile
from controlplane.experiments.profiles import services as profile_services
from controlplane.experiments.profiles.selectors import find_profile
from workers import profiling, zoo


def profile_data(model: str = "mlp-small", device: str = "cpu", *, options: dict | None = None,
                 service_ms: float = 1.0) -> dict:
    """A valid version-1 profile dict for selector and page tests (the figures are the test's own choice:
    nothing here is measured)."""
    opts, shape = profiling.canonical(model, options, None)
    return {"version": 1, "model": model, "options": opts, "input_shape": shape, "device": device,
            "hardware": "test host, 2 cores, torch test", "runtime": "process",
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "batch_sizes": [1, 2],
            "sharing_levels": [1], "service_ms": {"1": {"1": [service_ms] * 3, "2": [2 * service_ms] * 3}},
            "overhead_us": {"p50": 50.0, "p99": 90.0},
            "cold_start_ms": {p: [10.0] for p in profiling.PHASES if p != "total"} | {"total": [100.0]},
            "memory_bytes": 1, "samples": 3}


def stored(owner=None, **kwargs) -> Profile:
    d = profile_data(**kwargs)
    p = profile_services.profile_request(owner=owner, model=d["model"], options=d["options"], input_shape=None,
                                         device=d["device"], enqueue=False)
    return profile_services.profile_finish(profile_id=p.id, data=d)


# ---- the command ------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_profile_command_measures_each_distinct_model_once_stores_it_shared_and_writes_json(
        spec_data, tmp_path, test_redis):
    spec_data["functions"] = [{"name": "a", "model": "mlp-small"}, {"name": "b", "model": "mlp-small",
                                                                    "options": {"hidden": 512}}]
    spec_data.pop("workload")
    spec_data["workloads"] = [{"function": "a", "pattern": "constant", "rate_rps": 5, "duration_s": 2},
                              {"function": "b", "pattern": "constant", "rate_rps": 5, "duration_s": 2}]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_data))
    out = io.StringIO()

    call_command("profile", str(spec), "--short", "--json", str(tmp_path / "p.json"), stdout=out, stderr=io.StringIO())

    text = out.getvalue()
    print(text)
    assert "functions a, b" in text  # same model and (default) options: one profile for both
    assert "cold start 1/1" in text and "level 1, batch 4" in text  # progress lines
    assert "level  batch     p50 ms     p99 ms   thr req/s" in text
    (profile,) = Profile.objects.all()
    assert profile.status == Profile.Status.SUCCEEDED and profile.owner is None and profile.device == "cpu"
    assert profile.data["batch_sizes"] == [1, 2, 4] and profile.data["samples"] == profiling.SHORT["samples"]
    written = json.loads((tmp_path / "p.json").read_text())
    assert [profiling.validate_profile(d) for d in written["profiles"]] == [profile.data]
    assert find_profile("mlp-small", {}, None, "cpu") == profile


@pytest.mark.django_db
def test_the_profile_command_refuses_an_unknown_function(spec_data, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_data))
    with pytest.raises(CommandError, match="no function nope"):
        call_command("profile", str(spec), "--function", "nope", stdout=io.StringIO())


# ---- reuse ------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_find_profile_returns_the_newest_finished_profile_of_that_model_options_and_device():
    old = stored(service_ms=1.0)
    new = stored(service_ms=2.0)
    Profile.objects.filter(id=old.id).update(finished_at=timezone.now() - timedelta(hours=1))
    stored(model="cnn-small")
    stored(device="cuda:0")
    queued = profile_services.profile_request(owner=None, model="mlp-small", options={}, input_shape=None,
                                              device="cpu", enqueue=False)

    found = find_profile("mlp-small", {"hidden": 512}, [256], "cpu")

    assert found == new and found != queued
    assert find_profile("mlp-small", {"hidden": 64}, None, "cpu") is None
    assert find_profile("transformer-small", {}, None, "cpu") is None


@pytest.mark.django_db
def test_find_profile_for_a_user_sees_shared_profiles_and_their_own_only(user, other_user):
    theirs = stored(owner=other_user)
    assert find_profile("mlp-small", {}, None, "cpu", user=user) is None
    assert find_profile("mlp-small", {}, None, "cpu") == theirs
    shared = stored()
    assert find_profile("mlp-small", {}, None, "cpu", user=user) == shared


# ---- pages ------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_json_download_is_the_profile_and_round_trips_through_validation(client, user):
    profile = stored(owner=user)
    client.force_login(user)
    response = client.get(reverse("profile-json", kwargs={"code": profile.code}))
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    assert profiling.validate_profile(json.loads(response.content)) == profile.data


@pytest.mark.django_db
def test_another_users_profile_is_a_404_on_every_page(client, user, other_user):
    theirs = stored(owner=other_user)
    client.force_login(user)
    for name in ("profile-detail", "profile-json"):
        assert client.get(reverse(name, kwargs={"code": theirs.code})).status_code == 404
    listing = client.get(reverse("profile-list")).content.decode()
    assert str(theirs.code) not in listing


@pytest.mark.django_db
def test_shared_and_own_profiles_are_listed_and_shown(client, user):
    shared, mine = stored(), stored(owner=user, model="cnn-small")
    client.force_login(user)
    listing = client.get(reverse("profile-list")).content.decode()
    assert str(shared.code) in listing and str(mine.code) in listing
    page = client.get(reverse("profile-detail", kwargs={"code": mine.code})).content.decode()
    assert 'id="chart-latency"' in page and 'id="chart-throughput"' in page and 'id="cold-start-table"' in page
    assert "test host, 2 cores" in page


@pytest.mark.django_db
def test_profile_pages_need_a_login(client):
    profile = stored()
    for url in (reverse("profile-list"), reverse("profile-detail", kwargs={"code": profile.code}),
                reverse("profile-json", kwargs={"code": profile.code})):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@pytest.mark.django_db
def test_the_profile_button_queues_one_profile_per_distinct_model_on_the_experiments_pool(client, user, spec_data):
    spec_data["functions"] = [{"name": "a", "model": "mlp-small"}, {"name": "b", "model": "mlp-small"},
                              {"name": "c", "model": "cnn-small"}]
    spec_data.pop("workload")
    spec_data["workloads"] = [{"function": n, "pattern": "constant", "rate_rps": 5, "duration_s": 2} for n in "abc"]
    experiment = services.experiment_import(owner=user, data=spec_data)
    client.force_login(user)

    response = client.post(reverse("experiment-profile", kwargs={"code": experiment.code}), {"short": "1"})

    assert response.status_code == 302 and response["Location"] == reverse("profile-list")
    profiles = list(Profile.objects.order_by("model"))
    assert [p.model for p in profiles] == ["cnn-small", "mlp-small"]
    assert {(p.owner, p.experiment, p.queue, p.status) for p in profiles} == {
        (user, experiment, "pool.cpu", Profile.Status.QUEUED)}
    assert all(p.asked["short"] and p.asked["max_batch_size"] == 4 for p in profiles)
    assert profiles[1].options == zoo.BUILTIN_OPTIONS["mlp-small"]


@pytest.mark.django_db
def test_the_profile_button_on_another_users_experiment_is_a_404(client, user, other_user, spec_data):
    experiment = services.experiment_import(owner=other_user, data=spec_data)
    client.force_login(user)
    assert client.post(reverse("experiment-profile", kwargs={"code": experiment.code})).status_code == 404
    assert not Profile.objects.exists()


@pytest.mark.django_db
def test_a_profile_still_running_past_the_task_time_limit_is_failed_as_abandoned():
    p = profile_services.profile_request(owner=None, model="mlp-small", options={}, input_shape=None, device="cpu",
                                         enqueue=False)
    fresh = profile_services.profile_request(owner=None, model="cnn-small", options={}, input_shape=None,
                                             device="cpu", enqueue=False)
    for q in (p, fresh):
        assert profile_services.profile_claim(profile_id=q.id, worker="gone@host") is not None
    Profile.objects.filter(id=p.id).update(
        started_at=timezone.now() - timedelta(seconds=profile_services.TIME_LIMIT_S + 1))

    assert profile_services.profile_fail_stale() == 1

    p.refresh_from_db()
    fresh.refresh_from_db()
    assert p.status == Profile.Status.FAILED and "abandoned" in p.error
    assert fresh.status == Profile.Status.RUNNING


@pytest.mark.django_db
def test_a_profile_is_claimed_once():
    p = profile_services.profile_request(owner=None, model="mlp-small", options={}, input_shape=None, device="cpu",
                                         enqueue=False)
    assert profile_services.profile_claim(profile_id=p.id, worker="a@host") is not None
    assert profile_services.profile_claim(profile_id=p.id, worker="b@host") is None
    p.refresh_from_db()
    assert p.worker == "a@host"


# ---- API --------------------------------------------------------------------------------------------------
def api_client(user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.django_db
def test_the_api_lists_shared_and_own_profiles_and_serves_one_with_its_data(user, other_user):
    shared, mine, theirs = stored(), stored(owner=user, model="cnn-small"), stored(owner=other_user)
    client = api_client(user)

    listed = client.get("/api/profiles/").json()
    assert {p["code"] for p in listed} == {str(shared.code), str(mine.code)}
    assert [p["code"] for p in client.get("/api/profiles/?model=cnn-small").json()] == [str(mine.code)]
    one = client.get(f"/api/profiles/{mine.code}/").json()
    assert one["shared"] is False and profiling.validate_profile(one["data"]) == mine.data
    assert one["json_url"] == reverse("profile-json", kwargs={"code": mine.code})
    assert client.get(f"/api/profiles/{theirs.code}/").status_code == 404


@pytest.mark.django_db
def test_the_api_queues_profiles_of_an_experiment_and_refuses_anyone_elses(user, other_user, spec_data):
    experiment = services.experiment_import(owner=user, data=spec_data)
    response = api_client(user).post(f"/api/experiments/{experiment.code}/profile/", {"short": True}, format="json")
    assert response.status_code == 202
    (row,) = response.json()
    assert row["status"] == "queued" and row["asked"]["short"] is True and row["model"] == "mlp-small"
    assert api_client(other_user).post(f"/api/experiments/{experiment.code}/profile/", {},
                                       format="json").status_code == 404
    assert Profile.objects.count() == 1


@pytest.mark.django_db
def test_the_experiment_page_links_each_function_to_the_profile_it_reuses(client, user, spec_data):
    spec_data["functions"] = [{"name": "a", "model": "mlp-small"}, {"name": "b", "model": "cnn-small"}]
    spec_data.pop("workload")
    spec_data["workloads"] = [{"function": n, "pattern": "constant", "rate_rps": 5, "duration_s": 2} for n in "ab"]
    experiment = services.experiment_import(owner=user, data=spec_data)
    shared = stored(options={"hidden": 512})  # the same model as function a, defaults spelled out
    client.force_login(user)

    page = client.get(experiment.get_absolute_url()).content.decode()

    assert f'data-function-profile="a"><a href="{shared.get_absolute_url()}">' in page
    assert 'data-function-profile="b"><span class="muted">none yet' in page


# ---- running one --------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_profile_whose_device_is_leased_stays_queued_until_the_lease_is_free(test_redis):
    import socket

    from controlplane.experiments.lease import DeviceLease, LeaseBusy
    from workers.tasks import run_profile_by_id

    p = profile_services.profile_request(owner=None, model="mlp-small", options={}, input_shape=None, device="cpu",
                                         enqueue=False)
    lease = DeviceLease(test_redis.client, "cpu", owner="a-trial@host")
    assert lease.acquire()
    try:
        with pytest.raises(LeaseBusy):
            run_profile_by_id(p.id, worker=f"test@{socket.gethostname()}", redis_conn=test_redis.client)
        p.refresh_from_db()
        assert p.status == Profile.Status.QUEUED
    finally:
        lease.release()


@pytest.mark.django_db
def test_a_profile_on_a_device_this_host_lacks_fails_with_the_reason(test_redis):
    from workers.tasks import run_profile_by_id

    p = profile_services.profile_request(owner=None, model="mlp-small", options={}, input_shape=None,
                                         device="cuda:7", enqueue=False)
    assert run_profile_by_id(p.id, worker="test@host", redis_conn=test_redis.client) == "failed"
    p.refresh_from_db()
    assert p.status == Profile.Status.FAILED and "cuda:7 requested" in p.error
    assert run_profile_by_id(p.id, worker="test@host", redis_conn=test_redis.client) == "skipped"
