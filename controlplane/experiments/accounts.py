"""Getting in: the login form with a limit on failed attempts, API tokens that expire and can be revoked.

- Login: after `LOGIN_RATE` failed attempts from one client address within the window (counted from Django's
  `user_login_failed`, so the login form, the admin login and /api/token/ share one count), the login forms
  answer 429 until the window has passed (a cache counter: no table, no lockout anyone can make permanent).
- `/api/token/`: POST username + password -> the user's token and its expiry (a token past its expiry is
  replaced); DELETE (authenticated by the token itself or a session) revokes it. Throttled per client address
  with DRF's throttle at the same rate as the login form.
- The Tokens page (`/account/token/`) shows the token's state, issues a new one and revokes it. Expiry itself
  is checked by `tokens.ExpiringTokenAuthentication`.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle
from rest_framework.views import APIView

from .tokens import token_expires_at, token_is_expired, token_issue, token_renew, token_revoke


def parse_rate(rate: str) -> tuple[int, int]:
    """"10/min" -> (10 attempts, 60 s): the format DRF's throttles read."""
    count, period = rate.split("/")
    return int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]


class LoginRateThrottle(SimpleRateThrottle):
    """Per client address, every request counted (a guessing client cannot tell success from failure early)."""

    scope = "login"

    def get_rate(self):
        return settings.LOGIN_RATE  # read per request, so the setting can be changed (and tested) at run time

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


TOKEN_BODY = inline_serializer("TokenResponse", {"token": serializers.CharField(),
                                                 "expires_at": serializers.DateTimeField()})


class TokenView(APIView):
    """POST username + password for an API token (`Authorization: Token <key>`); DELETE revokes yours."""

    throttle_classes = [LoginRateThrottle]

    def get_permissions(self):
        return [AllowAny()] if self.request.method == "POST" else super().get_permissions()

    @extend_schema(summary="Get your API token (a new one when it has expired)", request=AuthTokenSerializer,
                   responses={200: TOKEN_BODY, 400: OpenApiResponse(description="Wrong username or password."),
                              429: OpenApiResponse(description="Too many attempts from this address.")},
                   auth=[])
    def post(self, request: Request) -> Response:
        form = AuthTokenSerializer(data=request.data, context={"request": request})
        form.is_valid(raise_exception=True)
        token = token_issue(user=form.validated_data["user"])
        return Response({"token": token.key, "expires_at": token_expires_at(token)})

    @extend_schema(summary="Revoke your API token (it stops working at once)", request=None,
                   responses={204: None, 401: OpenApiResponse(description="No token or session given."),
                              429: OpenApiResponse(description="Too many attempts from this address.")})
    def delete(self, request: Request) -> Response:
        token_revoke(user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


@login_required
@require_http_methods(["GET", "POST"])
def token_page(request: HttpRequest) -> HttpResponse:
    new_key = None
    if request.method == "POST":
        if request.POST.get("action") == "revoke":
            if token_revoke(user=request.user):
                messages.success(request, "Token revoked: it no longer opens the API.")
            return redirect("account-token")
        new_key = token_renew(user=request.user).key  # shown once, on this response only
    token = Token.objects.filter(user=request.user).first()
    return render(request, "registration/token.html", {
        "token": token, "new_key": new_key, "expires_at": token_expires_at(token) if token else None,
        "expired": token is not None and token_is_expired(token), "ttl_days": settings.API_TOKEN_TTL_S / 86400})


# ---- the login forms ------------------------------------------------------------------------------------------
def _failures_key(request) -> str:
    # REMOTE_ADDR, or X-Forwarded-For behind NUM_PROXIES proxies; works on Django's and DRF's requests alike.
    return f"login-failures:{BaseThrottle().get_ident(request)}"


def login_failure_count(request) -> int:
    return cache.get(_failures_key(request), 0)


def login_held_back(request) -> str | None:
    """The message to show when this address has used up its failed attempts for the window, else None."""
    limit, window_s = parse_rate(settings.LOGIN_RATE)
    if login_failure_count(request) >= limit:
        return f"Too many failed attempts from your address: try again in {window_s} s."
    return None


def on_login_failed(sender, credentials, request=None, **kwargs) -> None:
    """user_login_failed: every failed password check with a request (login form, admin, /api/token/) counts."""
    if request is None:
        return
    _, window_s = parse_rate(settings.LOGIN_RATE)
    key = _failures_key(request)
    if not cache.add(key, 1, timeout=window_s):  # the window starts at the first failure
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=window_s)


class LoginView(auth_views.LoginView):
    """Django's login view; after LOGIN_RATE failed attempts from one address it answers 429 for the window."""

    def post(self, request, *args, **kwargs):
        held = login_held_back(request)
        if held:
            # An unbound form: the password is not even checked while the address is held back.
            context = self.get_context_data(form=self.form_class(request), throttled=held)
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)


def admin_login(request: HttpRequest, **kwargs) -> HttpResponse:
    """The admin's login page under the same limit (mounted before the admin's URLs)."""
    from django.contrib import admin

    held = login_held_back(request) if request.method == "POST" else None
    if held:
        return HttpResponse(held, status=429, content_type="text/plain; charset=utf-8")
    return admin.site.login(request, **kwargs)
