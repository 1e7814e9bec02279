"""A user model's `options.weights_path` names a file under USER_WEIGHTS_DIR or the spec is refused, with the
field named, on every way in (API, spec file); the zoo's own rules are in tests/workers/test_zoo.py."""

import pytest
from rest_framework.test import APIClient

from controlplane.experiments.models import Experiment
from tests.workers.test_zoo import user_model  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def spec_with_weights(spec_data, value):
    spec_data["functions"] = [{"name": "classify", "model": "tiny-user", "options": {"weights_path": value}}]
    return spec_data


def test_weights_outside_the_folder_are_refused_naming_the_field(api, spec_data, user_model, tmp_path,  # noqa: F811
                                                                 monkeypatch):
    monkeypatch.setenv("USER_WEIGHTS_DIR", str(tmp_path))
    response = api.post("/api/experiments/", spec_with_weights(spec_data, "/etc/passwd"), format="json")
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["path"] == "functions[0].options.weights_path" and str(tmp_path) in error["message"]
    assert not Experiment.objects.exists()


def test_weights_under_the_folder_are_accepted(api, spec_data, user_model, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("USER_WEIGHTS_DIR", str(tmp_path))
    response = api.post("/api/experiments/", spec_with_weights(spec_data, "team/model.pt"), format="json")
    assert response.status_code == 201, response.json()


def test_without_a_folder_no_weights_path_is_accepted(api, spec_data, user_model, monkeypatch):  # noqa: F811
    monkeypatch.delenv("USER_WEIGHTS_DIR", raising=False)
    response = api.post("/api/experiments/", spec_with_weights(spec_data, "model.pt"), format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "functions[0].options.weights_path"
