"""Bounds on every body before it is parsed: size (while it arrives), nesting depth, YAML aliases, and the
number of values once parsed. Each refusal is a 400 (413 for size) naming the problem, never a 500."""

import json

import pytest
import yaml
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import load_handler
from django.test import RequestFactory
from django.urls import reverse
from rest_framework.test import APIClient

from controlplane.experiments import limits, spec_io
from controlplane.experiments.models import Experiment
from workers import spec as S

pytestmark = pytest.mark.django_db

DEEP_JSON = "[" * 100_000 + "]" * 100_000
# Twelve levels of nine aliases each: 9**12 values once expanded, a few hundred bytes of text.
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(12))


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def page(client, user):
    client.force_login(user)
    return client


def api_post(api, path, raw: str | bytes):
    return api.generic("POST", path, raw, content_type="application/json")


# ---- the API ------------------------------------------------------------------------------------------------
def test_json_nested_100000_deep_on_the_api_is_a_400_naming_the_problem(api):
    response = api_post(api, "/api/experiments/", DEEP_JSON)
    assert response.status_code == 400
    assert "nested more than 32 levels" in response.json()["detail"]
    assert not Experiment.objects.exists()


def test_brackets_inside_strings_do_not_count_as_nesting(api, spec_data):
    spec_data["description"] = "[[[[" * 100 + "{" * 100
    assert api_post(api, "/api/experiments/", json.dumps(spec_data)).status_code == 201


def test_an_api_body_over_the_limit_is_a_413_read_no_further(api, settings, spec_data):
    body = json.dumps(spec_data)
    settings.REQUEST_MAX_BYTES = len(body) - 1
    response = api_post(api, "/api/experiments/", body)
    assert response.status_code == 413 and "larger than" in response.json()["detail"]
    settings.REQUEST_MAX_BYTES = len(body)
    assert api_post(api, "/api/experiments/", body).status_code == 201


def test_every_api_view_takes_the_limited_parser(api):
    # Views without their own parser_classes (reports, pins) get it from the settings.
    response = api_post(api, "/api/pins/", DEEP_JSON)
    assert response.status_code == 400 and "nested more than 32 levels" in response.json()["detail"]


# ---- the import page ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, problem", [
    (DEEP_JSON, "nested more than 32 levels"),
    ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 200)), "nested more than 32 levels"),  # block YAML
    ("x: " + "[" * 100_000, "nested more than 32 levels"),  # flow YAML, not even closed
    (LAUGHS, "more than 100 YAML aliases"),
])
def test_deep_or_aliased_pasted_documents_are_refused_with_the_reason(page, text, problem):
    response = page.post(reverse("experiment-import"), {"spec_text": text})
    assert response.status_code == 400
    assert problem in response.content.decode()
    assert not Experiment.objects.exists()


def test_an_uploaded_yaml_file_gets_the_same_bounds(page):
    response = page.post(reverse("experiment-import"),
                         {"spec_file": SimpleUploadedFile("laughs.yaml", LAUGHS.encode())})
    assert response.status_code == 400 and "more than 100 YAML aliases" in response.content.decode()


def test_pasted_text_is_limited_like_an_upload(page, spec_data):
    spec_data["description"] = "x" * spec_io.MAX_SPEC_FILE_BYTES
    response = page.post(reverse("experiment-import"), {"spec_text": json.dumps(spec_data)})
    assert response.status_code == 400
    assert "the pasted text is larger than 2 MiB" in response.content.decode()


def test_aliases_under_the_alias_limit_still_count_every_value_they_expand_to():
    # 40 aliases, each to a list of 9 lists of 9 aliases... kept under 100 aliases but huge once expanded.
    text = "a: &a [" + ", ".join(["x"] * 1000) + "]\nb: &b [" + ", ".join(["*a"] * 50) + "]\n" \
           "c: [" + ", ".join(["*b"] * 40) + "]\n"
    with pytest.raises(S.SpecError, match="more than 200,000 values"):
        spec_io.parse_spec_text(text, yaml_first=True)


def test_a_normal_spec_passes_every_bound(spec_data):
    assert spec_io.parse_spec_text(yaml.safe_dump(spec_data), yaml_first=True) == spec_data
    assert spec_io.parse_spec_text(json.dumps(spec_data)) == spec_data


# ---- uploads while they stream ------------------------------------------------------------------------------
def multipart_request(settings, size: int):
    request = RequestFactory().post("/", {"spec_file": SimpleUploadedFile("big.json", b"x" * size)})
    request.upload_handlers = [load_handler(h, request) for h in settings.FILE_UPLOAD_HANDLERS]
    return request


def test_an_upload_past_the_cap_keeps_its_size_but_none_of_its_content(settings):
    settings.UPLOAD_MAX_BYTES = 64 * 1024
    upload = multipart_request(settings, 300 * 1024).FILES["spec_file"]
    assert isinstance(upload, limits.TooLargeUpload) and upload.size == 300 * 1024
    with pytest.raises(ValueError, match="exceeded the upload limit"):
        upload.read()


def test_an_upload_under_the_cap_arrives_whole(settings):
    settings.UPLOAD_MAX_BYTES = 64 * 1024
    upload = multipart_request(settings, 60 * 1024).FILES["spec_file"]
    assert not isinstance(upload, limits.TooLargeUpload) and upload.read() == b"x" * (60 * 1024)


def test_the_import_page_refuses_an_upload_past_the_cap_by_its_size(page, settings):
    settings.UPLOAD_MAX_BYTES = 3 * 1024 * 1024
    response = page.post(reverse("experiment-import"),
                         {"spec_file": SimpleUploadedFile("big.json", b" " * (5 * 1024 * 1024))})
    assert response.status_code == 400 and "larger than 2 MiB" in response.content.decode()


def test_the_upload_cap_covers_every_file_a_form_accepts(settings):
    assert settings.UPLOAD_MAX_BYTES >= max(S.MAX_TRACE_BYTES, spec_io.MAX_SPEC_FILE_BYTES)
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE <= settings.REQUEST_MAX_BYTES


# ---- the whole request under ASGI ------------------------------------------------------------------------------
def asgi_post(app, headers, chunks):
    async def go():
        comm = ApplicationCommunicator(app, {"type": "http", "method": "POST", "path": "/api/experiments/",
                                             "headers": headers, "query_string": b""})
        for i, chunk in enumerate(chunks):
            await comm.send_input({"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1})
        start = await comm.receive_output(timeout=10)
        body = await comm.receive_output(timeout=10)
        await comm.wait(timeout=10)
        return start, body
    return async_to_sync(go)()


def test_a_declared_length_over_the_limit_gets_413_before_the_body_is_read(settings):
    seen = []

    async def app(scope, receive, send):  # the app behind the guard must not be called at all
        seen.append(scope)

    settings.REQUEST_MAX_BYTES = 1000
    start, body = asgi_post(limits.RequestSizeLimit(app), [(b"content-length", b"1001")], [b""])
    assert start["status"] == 413 and b"larger than" in body["body"] and seen == []


def test_a_body_that_streams_past_the_limit_is_cut_off():
    received = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            received.append(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    from django.conf import settings as live
    limit = live.REQUEST_MAX_BYTES
    chunk = b"x" * (limit // 4 + 1)
    asgi_post(limits.RequestSizeLimit(app), [], [chunk] * 5)
    assert received == ["http.request"] * 3 + ["http.disconnect"]


def test_a_route_with_its_own_bound_takes_bodies_up_to_it(settings):
    called = []

    async def app(scope, receive, send):
        called.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    settings.REQUEST_MAX_BYTES = 1000
    guard = limits.RequestSizeLimit(app, per_path={"/api/experiments/": lambda: 5000})
    start, _ = asgi_post(guard, [(b"content-length", b"5000")], [b""])
    assert start["status"] == 200 and called == ["/api/experiments/"]
    start, _ = asgi_post(guard, [(b"content-length", b"5001")], [b""])
    assert start["status"] == 413 and len(called) == 1
    assert guard.limit_for("/api/other/") == 1000


def test_the_real_asgi_application_has_the_guard(settings):
    from controlplane.asgi import application
    from controlplane.registry.uploads import max_request_bytes

    http_app = application.application_mapping["http"]
    assert isinstance(http_app, limits.RequestSizeLimit)
    settings.MODEL_UPLOAD_MAX_BYTES = 3 * 2**30
    assert http_app.limit_for("/api/models/") == max_request_bytes() > 3 * 2**30
    assert http_app.limit_for("/api/experiments/") == settings.REQUEST_MAX_BYTES
