"""Getting in: failed logins and token requests are throttled per address, API tokens expire and can be
revoked (by the API and on the Tokens page), and the API schema and docs need a login."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def token_client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


# ---- the login form ----------------------------------------------------------------------------------------
def test_failed_logins_beyond_the_rate_are_refused_even_with_the_right_password(settings, user):
    settings.LOGIN_RATE = "3/min"
    client = Client()
    for _ in range(3):
        assert client.post("/accounts/login/", {"username": "owner", "password": "wrong"}).status_code == 200
    held = client.post("/accounts/login/", {"username": "owner", "password": "owner-pass-123"})
    assert held.status_code == 429 and b"Too many failed attempts" in held.content
    assert "_auth_user_id" not in client.session


def test_successful_logins_are_not_counted(settings, user):
    settings.LOGIN_RATE = "2/min"
    for _ in range(4):
        client = Client()
        assert client.post("/accounts/login/", {"username": "owner", "password": "owner-pass-123"}).status_code == 302


def test_the_failure_count_is_per_client_address(settings, user):
    settings.LOGIN_RATE = "2/min"
    for _ in range(2):
        Client(REMOTE_ADDR="10.0.0.1").post("/accounts/login/", {"username": "owner", "password": "wrong"})
    assert Client(REMOTE_ADDR="10.0.0.1").post(
        "/accounts/login/", {"username": "owner", "password": "owner-pass-123"}).status_code == 429
    assert Client(REMOTE_ADDR="10.0.0.2").post(
        "/accounts/login/", {"username": "owner", "password": "owner-pass-123"}).status_code == 302


def test_the_admin_login_has_the_same_limit(settings, user):
    settings.LOGIN_RATE = "2/min"
    user.is_staff = True
    user.save()
    client = Client()
    for _ in range(2):
        assert client.post("/admin/login/", {"username": "owner", "password": "wrong"}).status_code == 200
    held = client.post("/admin/login/", {"username": "owner", "password": "owner-pass-123"})
    assert held.status_code == 429 and "_auth_user_id" not in client.session
    assert Client().get("/admin/login/").status_code == 200  # the page itself still shows


def test_failed_token_requests_count_against_the_login_form_too(settings, user):
    settings.LOGIN_RATE = "2/min"
    for _ in range(2):
        APIClient().post("/api/token/", {"username": "owner", "password": "wrong"})
    assert Client().post("/accounts/login/", {"username": "owner", "password": "owner-pass-123"}).status_code == 429


# ---- /api/token/ ---------------------------------------------------------------------------------------------
def test_token_requests_beyond_the_rate_get_429(settings, user):
    settings.LOGIN_RATE = "3/min"
    client = APIClient()
    codes = [client.post("/api/token/", {"username": "owner", "password": "wrong"}).status_code for _ in range(4)]
    assert codes == [400, 400, 400, 429]
    assert client.post("/api/token/", {"username": "owner", "password": "owner-pass-123"}).status_code == 429


def test_a_token_comes_with_its_expiry_and_the_same_token_until_then(settings, user):
    settings.API_TOKEN_TTL_S = 3600
    first = APIClient().post("/api/token/", {"username": "owner", "password": "owner-pass-123"}).json()
    again = APIClient().post("/api/token/", {"username": "owner", "password": "owner-pass-123"}).json()
    assert first["token"] == again["token"]
    created = Token.objects.get(key=first["token"]).created
    assert first["expires_at"].startswith((created + timedelta(seconds=3600)).strftime("%Y-%m-%dT%H:%M:%S"))
    assert token_client(first["token"]).get("/api/experiments/").status_code == 200


def test_an_expired_token_gets_401_and_asking_again_issues_a_new_one(settings, user):
    settings.API_TOKEN_TTL_S = 3600
    old = Token.objects.create(user=user)
    Token.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(seconds=3601))
    refused = token_client(old.key).get("/api/experiments/")
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]
    new = APIClient().post("/api/token/", {"username": "owner", "password": "owner-pass-123"}).json()["token"]
    assert new != old.key and token_client(new).get("/api/experiments/").status_code == 200


def test_a_token_still_inside_its_lifetime_works(settings, user):
    settings.API_TOKEN_TTL_S = 3600
    token = Token.objects.create(user=user)
    Token.objects.filter(pk=token.pk).update(created=timezone.now() - timedelta(seconds=3500))
    assert token_client(token.key).get("/api/experiments/").status_code == 200


def test_delete_revokes_the_token_at_once(user):
    key = Token.objects.create(user=user).key
    client = token_client(key)
    assert client.delete("/api/token/").status_code == 204
    assert client.get("/api/experiments/").status_code == 401
    assert not Token.objects.filter(user=user).exists()


def test_revoking_needs_authentication():
    assert APIClient().delete("/api/token/").status_code == 401


# ---- the Tokens page -------------------------------------------------------------------------------------------
def test_the_tokens_page_issues_shows_once_and_revokes(client, user):
    client.force_login(user)
    assert b"You have no API token" in client.get("/account/token/").content
    issued = client.post("/account/token/", {"action": "new"})
    key = Token.objects.get(user=user).key
    assert key.encode() in issued.content
    assert key.encode() not in client.get("/account/token/").content  # shown only when issued
    assert token_client(key).get("/api/experiments/").status_code == 200
    client.post("/account/token/", {"action": "revoke"})
    assert token_client(key).get("/api/experiments/").status_code == 401


def test_the_tokens_page_needs_a_login(client):
    response = client.get("/account/token/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


# ---- schema and docs ---------------------------------------------------------------------------------------
def test_the_api_schema_and_docs_need_a_login(client, user):
    assert APIClient().get("/api/schema/").status_code == 401
    docs = client.get("/api/docs/")
    assert docs.status_code == 302 and "/accounts/login/" in docs["Location"]
    assert token_client(Token.objects.create(user=user).key).get("/api/schema/").status_code == 200
    client.force_login(user)
    assert client.get("/api/docs/").status_code == 200 and client.get("/api/schema/").status_code == 200
