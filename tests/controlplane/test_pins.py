"""The "compare" basket: pins per user, from the trial page and the trials table, the pinned page, the API."""

from __future__ import annotations

import json

import pytest
from django.db import IntegrityError, transaction
from django.http import Http404
from django.urls import reverse
from rest_framework.test import APIClient

from controlplane.experiments import selectors, services
from controlplane.experiments.models import Pin, Trial
from tests.conftest import frozen_run
from workers import spec as S

pytestmark = pytest.mark.django_db

SPEC = {
    "name": "pinned poc", "device": "cpu",
    "slo": {"percentile": 99, "latency_ms": 50},
    "functions": [{"name": "f", "model": "mlp-small"}],
    "workload": {"pattern": "constant", "rate_rps": 20, "duration_s": 30},
    "variants": [{"name": "dedicated"}, {"name": "batched"}],
}


def make_trials(owner, name: str, run_number: int = 1) -> list[Trial]:
    experiment = services.experiment_import(owner=owner, data=json.loads(json.dumps(dict(SPEC, name=name))))
    data = json.loads(json.dumps(SPEC))
    return [Trial.objects.create(experiment=experiment, variant_name=v, run_number=run_number,
                                 **frozen_run(experiment, data),
                                 status="succeeded", summary={"latency_ms": {"p50": 4.0, "p99": 21.5},
                                                              "slo_verdict": {"verdict": "met", "reasons": []},
                                                              "cost": {"serverless_per_1k_usd": 0.0123}})
            for v in ("dedicated", "batched")]


@pytest.fixture
def trials(user):
    return make_trials(user, "last week") + make_trials(user, "today", run_number=3)


@pytest.fixture
def owner_client(client, user):
    client.force_login(user)
    return client


# ---- model, services, selectors -----------------------------------------------------------------------------
def test_a_trial_is_pinned_once_per_user(user, trials):
    pin, created = services.pin_add(user=user, trial=trials[0])
    again, created_again = services.pin_add(user=user, trial=trials[0])
    assert created and not created_again and again == pin
    with pytest.raises(IntegrityError), transaction.atomic():
        Pin.objects.create(user=user, trial=trials[0])


def test_pinned_trials_come_in_pin_order_from_any_experiment_and_run(user, trials):
    for t in (trials[3], trials[0], trials[2]):
        services.pin_add(user=user, trial=t)
    pinned = list(selectors.pinned_trials(user=user))
    assert pinned == [trials[3], trials[0], trials[2]]
    assert {t.experiment.name for t in pinned} == {"last week", "today"}
    assert selectors.pinned_trial_codes(user=user) == {str(t.code) for t in pinned}


def test_unpin_and_clear(user, trials):
    for t in trials:
        services.pin_add(user=user, trial=t)
    assert services.pin_remove(user=user, trial=trials[1]) is True
    assert services.pin_remove(user=user, trial=trials[1]) is False
    assert services.pins_clear(user=user) == 3
    assert not selectors.pinned_trials(user=user).exists()


def test_baskets_are_per_user_and_no_one_pins_anothers_trial(user, other_user, trials):
    mine = make_trials(other_user, "theirs")
    services.pin_add(user=other_user, trial=mine[0])
    services.pin_add(user=user, trial=trials[0])
    assert list(selectors.pinned_trials(user=user)) == [trials[0]]
    assert list(selectors.pinned_trials(user=other_user)) == [mine[0]]
    with pytest.raises(Http404):
        services.pin_add(user=user, trial=mine[1])


def test_the_basket_has_a_limit(user, trials, monkeypatch):
    monkeypatch.setattr(services, "PIN_LIMIT", 2)
    services.pin_add(user=user, trial=trials[0])
    services.pin_add(user=user, trial=trials[1])
    with pytest.raises(S.SpecError, match="at most 2 trials"):
        services.pin_add(user=user, trial=trials[2])
    services.pin_add(user=user, trial=trials[0])  # pinning again is not a new pin


def test_deleting_a_trial_or_experiment_drops_its_pins(user, trials):
    services.pin_add(user=user, trial=trials[0])
    services.pin_add(user=user, trial=trials[2])
    services.experiment_delete(experiment=trials[0].experiment)
    assert list(selectors.pinned_trials(user=user)) == [trials[2]]


# ---- pages ----------------------------------------------------------------------------------------------------
def test_pin_and_unpin_from_the_trial_page(owner_client, user, trials):
    page = reverse("trial-detail", args=[trials[0].code])
    html = owner_client.get(page).content.decode()
    assert f'data-pin="{trials[0].code}"' in html and reverse("trial-pin", args=[trials[0].code]) in html

    response = owner_client.post(reverse("trial-pin", args=[trials[0].code]), {"next": page})
    assert response.status_code == 302 and response["Location"] == page
    html = owner_client.get(page).content.decode()
    assert f'data-unpin="{trials[0].code}"' in html and "1 pinned" in html

    owner_client.post(reverse("trial-unpin", args=[trials[0].code]), {"next": page})
    assert not Pin.objects.exists()


def test_pin_from_the_trials_table_returns_to_the_experiment(owner_client, trials):
    experiment = trials[0].experiment
    html = owner_client.get(reverse("experiment-trials", args=[experiment.code])).content.decode()
    assert html.count("data-pin=") == 2
    response = owner_client.post(reverse("trial-pin", args=[trials[1].code]), {"next": experiment.get_absolute_url()})
    assert response["Location"] == experiment.get_absolute_url()
    html = owner_client.get(reverse("experiment-trials", args=[experiment.code])).content.decode()
    assert f'data-unpin="{trials[1].code}"' in html and html.count("data-pin=") == 1


def test_next_never_leads_off_the_site(owner_client, trials):
    response = owner_client.post(reverse("trial-pin", args=[trials[0].code]), {"next": "https://evil.example/"})
    assert response["Location"] == trials[0].get_absolute_url()


def test_the_pinned_page_lists_trials_with_their_experiment_and_run(owner_client, user, trials):
    services.pin_add(user=user, trial=trials[0])
    services.pin_add(user=user, trial=trials[3])
    html = owner_client.get(reverse("compare-pinned")).content.decode()
    assert "2 trials from 2 experiments" in html
    for t in (trials[0], trials[3]):
        assert f'data-trial="{t.code}"' in html and t.get_absolute_url() in html
        assert t.experiment.get_absolute_url() in html and f">{t.experiment.name}</a>" in html
    assert f'data-trial="{trials[1].code}"' not in html
    row = html[html.index(f'data-trial="{trials[3].code}"'):]
    assert '<td class="num">3</td>' in row[:400]  # its run number
    assert "$0.0123/1k" in row and "✓ met" in row


def test_the_pinned_page_is_empty_until_something_is_pinned_and_can_be_cleared(owner_client, user, trials):
    html = owner_client.get(reverse("compare-pinned")).content.decode()
    assert "Nothing pinned yet" in html
    services.pin_add(user=user, trial=trials[0])
    nav = owner_client.get(reverse("experiment-list")).content.decode()
    assert 'id="nav-pinned"' in nav and 'title="1 trial pinned">1</span>' in nav
    response = owner_client.post(reverse("pins-clear"))
    assert response["Location"] == reverse("compare-pinned") and not Pin.objects.exists()


def test_outsiders_and_anonymous_users_cannot_pin(client, other_user, trials):
    response = client.post(reverse("trial-pin", args=[trials[0].code]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    client.force_login(other_user)
    assert client.post(reverse("trial-pin", args=[trials[0].code])).status_code == 404
    assert client.get(reverse("trial-pin", args=[trials[0].code])).status_code == 405
    assert not Pin.objects.exists()


# ---- API ------------------------------------------------------------------------------------------------------
@pytest.fixture
def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_the_api_pins_lists_and_unpins(api, trials):
    empty = api.get("/api/pins/").json()
    assert empty["count"] == 0 and empty["pins"] == [] and empty["html_url"].endswith(reverse("compare-pinned"))

    created = api.post("/api/pins/", {"trial": str(trials[3].code)}, format="json")
    again = api.post("/api/pins/", {"trial": str(trials[3].code)}, format="json")
    api.post("/api/pins/", {"trial": str(trials[0].code)}, format="json")
    assert (created.status_code, again.status_code) == (201, 200)

    body = api.get("/api/pins/").json()
    assert body["count"] == 2
    first = body["pins"][0]
    assert first["trial"] == str(trials[3].code) and first["experiment"] == str(trials[3].experiment.code)
    assert (first["experiment_name"], first["run_number"], first["variant"], first["repeat"]) == ("today", 3,
                                                                                                 "batched", 0)
    assert first["html_url"].endswith(trials[3].get_absolute_url()) and first["url"].endswith(
        f"/api/trials/{trials[3].code}/")

    assert api.delete(f"/api/pins/?trial={trials[3].code}").json() == {"unpinned": 1}
    assert api.delete(f"/api/pins/?trial={trials[3].code}").json() == {"unpinned": 0}
    assert api.delete("/api/pins/").json() == {"unpinned": 1}
    assert not Pin.objects.exists()


def test_the_api_refuses_bad_pins_in_its_one_error_format(api, other_user, trials):
    theirs = make_trials(other_user, "theirs")[0]
    assert api.post("/api/pins/", {}, format="json").json()["errors"][0]["path"] == "trial"
    assert api.post("/api/pins/", {"trial": "x", "extra": 1}, format="json").json()["errors"][0]["path"] == "extra"
    assert api.post("/api/pins/", {"trial": str(theirs.code)}, format="json").status_code == 404
    assert api.delete(f"/api/pins/?trial={theirs.code}").status_code == 404
    assert APIClient().get("/api/pins/").status_code in (401, 403)
    assert not Pin.objects.exists()


def test_the_pins_endpoint_is_in_the_openapi_schema(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operations = schema["paths"]["/api/pins/"]
    assert set(operations) >= {"get", "post", "delete"}
    assert any(p["name"] == "trial" for p in operations["delete"]["parameters"])
    pin = schema["components"]["schemas"]["Pin"]["properties"]
    assert {"trial", "experiment", "experiment_name", "run_number", "variant", "repeat", "pinned_at"} <= set(pin)
