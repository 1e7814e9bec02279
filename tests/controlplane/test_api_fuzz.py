"""The OpenAPI schema, fuzzed with schemathesis against a live test server (a real HTTP server thread on the
test database): every operation, generated requests, no 500, and every response conforms to the schema
(status code, content type, headers, body). The number of requests is printed.

One test drives every operation itself (`as_strategy` per operation) instead of schemathesis' pytest plugin,
whose fixture loader relies on a pytest internal that pytest 9 removed."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from rest_framework.authtoken.models import Token
from schemathesis import checks as st_checks

from controlplane.experiments import services

EXAMPLES_PER_OPERATION = 20
# What the API promises: no server error, and answers as documented. Not "every schema-valid body is accepted":
# the schema gives a spec document's shape, and the spec validator has rules (bounds across fields, names that
# must match) a JSON schema does not state; those answer 400 naming the field, which is documented.
CHECKS = [st_checks.not_a_server_error, st_checks.status_code_conformance, st_checks.content_type_conformance,
          st_checks.response_headers_conformance, st_checks.response_schema_conformance]


@pytest.mark.django_db(transaction=True)
def test_every_operation_answers_within_its_schema_and_never_500(live_server, django_user_model, spec_data,
                                                                 price_catalogue, capsys):
    user = django_user_model.objects.create_user(username="fuzz", password="fuzz-pass-123")
    experiment = services.experiment_import(owner=user, data=spec_data)  # lists have a row to serialize
    token = Token.objects.create(user=user).key
    auth = {"Authorization": f"Token {token}"}
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json", headers=auth)
    schema.config.base_url = live_server.url
    calls: dict[str, int] = {}
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20, "the schema lists every operation"
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        # Revoking the fuzzing token would turn the rest of the run into 401s: that one goes anonymous.
        headers = {} if label == "DELETE /api/token/" else auth
        try:
            fuzz_operation(operation, label, headers, str(experiment.code), calls)
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collected: one run reports them all
            failures[label] = f"{type(exc).__name__}: {str(exc)[:1500]}"
    with capsys.disabled():
        print(f"\nschemathesis: {sum(calls.values())} requests over {len(calls)} operations "
              f"(up to {EXAMPLES_PER_OPERATION} generated cases each), {len(failures)} failing")
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())


def fuzz_operation(operation, label: str, headers: dict, real_code: str, calls: dict[str, int]) -> None:
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case):
        calls[label] = calls.get(label, 0) + 1
        if "code" in (case.path_parameters or {}) and calls[label] % 3 == 0:
            case.path_parameters["code"] = real_code  # now and then, a real object
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()
