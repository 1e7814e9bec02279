"""A NUL character in any query parameter or url-encoded form field is a 400 naming it, before any view
(limits.RejectNulMiddleware): PostgreSQL refuses NUL in text, so it used to be a 500 wherever a value reached a
query. Run on SQLite by default; `DATABASE_URL=postgres://... pytest tests/controlplane/test_nul_characters.py` runs
the same routes on PostgreSQL, where each of them without the middleware reaches the database with the NUL."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(client, user):
    client.force_login(user)
    return client


# (path, the parameter named in the answer): pages and API, lists and filters, a parameter's name holding the NUL.
QUERIES = [
    ("/?page=1%00", "page"),
    ("/profiles/?model=mlp%00small", "model"),
    ("/prices/?x=1&y=%00", "y"),
    ("/api/experiments/?limit=5&offset=%00", "offset"),
    ("/api/profiles/?device=cpu&model=mlp%00small", "model"),
    ("/api/models/?a%00b=1", "a\\x00b"),
]


@pytest.mark.parametrize(("path", "name"), QUERIES)
def test_a_nul_in_a_query_parameter_is_a_400_naming_it(owner, path, name):
    clean = owner.get(path.replace("%00", ""))
    assert clean.status_code == 200, path  # the same request without the NUL is served

    r = owner.get(path)

    assert r.status_code == 400
    message = f"NUL character in query parameter {name}"
    if path.startswith("/api/"):
        assert r.json() == {"detail": message, "errors": [{"path": name, "message": "NUL character"}]}
    else:
        assert r["Content-Type"].startswith("text/plain") and r.content.decode() == message


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_a_nul_in_a_form_field_is_a_400_before_the_view(client, user, encoding):
    # The login form looks the user up by name: PostgreSQL would refuse the NUL in that query.
    if encoding == "urlencoded":
        r = client.post("/accounts/login/", "username=own%00er&password=owner-pass-123",
                        content_type="application/x-www-form-urlencoded")
    else:
        r = client.post("/accounts/login/", {"username": "own\x00er", "password": "owner-pass-123"})
    assert r.status_code == 400 and r.content.decode() == "NUL character in form field username"
    r = client.post("/accounts/login/", {"username": "owner", "password": "owner-pass-123"})
    assert r.status_code == 302  # the same form without the NUL logs in


def test_anonymous_requests_are_checked_too(client):
    r = client.get("/accounts/login/?next=/%00")
    assert r.status_code == 400 and r.content.decode() == "NUL character in query parameter next"


def test_a_json_body_is_left_to_the_api(owner):
    """Only query strings and url-encoded forms are read here; a JSON body's strings are the validator's."""
    r = owner.post("/api/experiments/", data='{"name": "a\\u0000b"}', content_type="application/json")
    assert r.status_code == 400 and "NUL character" not in r.content.decode()
