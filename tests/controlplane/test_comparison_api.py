"""GET /api/experiments/<code>/comparison/: the selector's dict, unchanged, through serializers that the OpenAPI
schema documents (every response is validated against the generated schema); owner-only; one error format."""

from __future__ import annotations

import json

import jsonschema
import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.experiments import comparison as C
from controlplane.experiments import services
from tests.controlplane.test_comparison import finish, run, summary, variant

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def finished_run(user, price_catalogue, media_root):
    """A run of three variants with known figures: one met (2 repeats), one inconclusive, one beyond the run."""
    experiment, by = run(user, [variant("always-on", min_instances=1, repeats=2), variant("scale-to-zero"),
                                variant("shed")])
    finish(by["always-on"][0], summary(20.0, busy_s=60.0), windows=30, media_root=media_root, artifact_n=500)
    finish(by["always-on"][1], summary(22.0, busy_s=58.0, behind=True), windows=30, media_root=media_root,
           artifact_n=500)
    finish(by["scale-to-zero"][0], summary(45.0, ci=[40.0, 55.0], busy_s=20.0, verdict="inconclusive",
                                            reasons=["straddles the target"]), windows=30)
    finish(by["shed"][0], summary(None, unfinished=40, busy_s=10.0, verdict="not_met", reasons=["beyond"]),
           media_root=media_root, artifact_n=500)
    return experiment


def _json_schema(node):
    """OpenAPI 3.0 -> JSON Schema: `nullable: true` becomes "or null", and objects allow only their properties."""
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if k != "nullable"}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


@pytest.fixture(scope="module")
def response_schema():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    operation = schema["paths"]["/api/experiments/{code}/comparison/"]["get"]
    body = operation["responses"]["200"]["content"]["application/json"]["schema"]
    errors = operation["responses"]["400"]["content"]["application/json"]["schema"]
    components = _json_schema(schema["components"])
    return ({**_json_schema(body), "components": components}, {**_json_schema(errors), "components": components},
            operation)


def validate(schema: dict, body) -> None:
    jsonschema.Draft202012Validator(schema).validate(body)


def url(experiment, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"/api/experiments/{experiment.code}/comparison/" + (f"?{query}" if query else "")


def test_the_api_returns_the_selectors_comparison_and_it_matches_the_schema(owner, finished_run, response_schema):
    response = owner.get(url(finished_run))
    assert response.status_code == 200, response.content
    body = response.json()
    validate(response_schema[0], body)
    # One source of numbers: exactly what the selector builds (and the selector's dict fits the schema too).
    expected = json.loads(json.dumps(C.experiment_comparison(experiment=finished_run), allow_nan=False))
    validate(response_schema[0], expected)
    assert body == expected
    assert [r["key"] for r in body["rows"]] == ["always-on", "scale-to-zero", "shed"]
    assert body["baseline"] == "always-on" and body["scope"]["run"] == 1 and body["scope"]["runs"] == [1]
    assert body["recommendation"]["case"] == "met" and body["recommendation"]["variant"] == "always-on"
    assert body["rows"][0]["figures"]["p99_ms"] == {"value": 21.0, "low": 20.0, "high": 22.0, "n": 2,
                                                    "beyond_run": 0}
    assert body["rows"][2]["figures"]["p99_ms"]["value"] is None
    assert len(body["charts"]["cdf"]["series"]) == 3


def test_the_schema_check_catches_a_wrong_type_a_missing_field_and_an_undocumented_one(owner, finished_run,
                                                                                        response_schema):
    body = owner.get(url(finished_run)).json()
    for change in (lambda b: b["rows"][0]["figures"]["p99_ms"].update(n=None),
                   lambda b: b["rows"][0]["verdict"].pop("counts"),
                   lambda b: b["rows"][0]["repeats"][0].update(secret=1)):
        broken = json.loads(json.dumps(body))
        change(broken)
        with pytest.raises(jsonschema.ValidationError):
            validate(response_schema[0], broken)


def test_baseline_price_run_and_charts_parameters(owner, user, finished_run, response_schema):
    body = owner.get(url(finished_run, baseline="scale-to-zero", price="H100-80GB", charts="false")).json()
    validate(response_schema[0], body)
    assert body["baseline"] == "scale-to-zero" and body["rows"][1]["deltas"] is None
    assert body["rows"][0]["deltas"]["p99_ms"]["direction"] == "better"
    assert body["pricing"]["repriced"] is True and body["pricing"]["entry"]["name"] == "H100-80GB"
    assert body["rows"][0]["cpu_label"] == "measured on CPU, priced as NVIDIA H100 80GB"
    assert body["charts"] is None
    # a second run: the default is the latest; run=1 picks the first
    services.experiment_run(experiment=finished_run, user=user, enqueue=False)
    latest = owner.get(url(finished_run)).json()
    validate(response_schema[0], latest)
    assert latest["scope"]["run"] == 2 and latest["scope"]["runs"] == [2, 1] and latest["live"]
    assert latest["recommendation"]["case"] == "no_results"
    assert owner.get(url(finished_run, run=1)).json()["scope"]["run"] == 1


@pytest.mark.parametrize("params, path", [
    ({"run": 7}, "run"), ({"run": "abc"}, "run"), ({"run": 0}, "run"), ({"baseline": "nope"}, "baseline"),
    ({"price": "no-such-gpu"}, "price"), ({"charts": "maybe"}, "charts"),
])
def test_bad_parameters_answer_400_naming_the_parameter(owner, finished_run, response_schema, params, path):
    response = owner.get(url(finished_run, **params))
    assert response.status_code == 400, response.content
    body = response.json()
    validate(response_schema[1], body)
    assert [e["path"] for e in body["errors"]] == [path] and body["errors"][0]["message"]


def test_an_experiment_never_run_compares_nothing(owner, user, price_catalogue, response_schema):
    experiment = services.experiment_import(owner=user, data={
        "name": "empty", "functions": [{"name": "f", "model": "mlp-small"}],
        "workload": {"pattern": "constant", "rate_rps": 1, "duration_s": 5}, "variants": [{"name": "v"}]})
    body = owner.get(url(experiment)).json()
    validate(response_schema[0], body)
    assert body["rows"] == [] and body["scope"]["run"] is None and body["recommendation"]["case"] == "no_results"


def test_only_the_owner_may_compare(other_user, finished_run):
    outsider = APIClient()
    outsider.force_authenticate(other_user)
    assert outsider.get(url(finished_run)).status_code == 404
    assert APIClient().get(url(finished_run)).status_code == 401


def test_the_schema_documents_the_endpoint_and_its_parameters(response_schema):
    operation = response_schema[2]
    assert {p["name"] for p in operation["parameters"]} >= {"code", "run", "baseline", "price", "charts"}
    assert set(operation["responses"]) >= {"200", "400", "404"}
