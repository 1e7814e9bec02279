"""API tokens that expire: DRF's one token per user, valid for API_TOKEN_TTL_S after it was issued.

Kept apart from the views (accounts.py): DRF imports the authentication class while it sets itself up, so
this module must not import DRF's views.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token


def token_expires_at(token: Token) -> datetime:
    return token.created + timedelta(seconds=settings.API_TOKEN_TTL_S)


def token_is_expired(token: Token) -> bool:
    return timezone.now() >= token_expires_at(token)


def token_issue(*, user) -> Token:
    """The user's live token, or a new one when there is none or it has expired."""
    token = Token.objects.filter(user=user).first()
    if token is not None and token_is_expired(token):
        token.delete()
        token = None
    return token or Token.objects.create(user=user)


def token_renew(*, user) -> Token:
    """A new token in place of the old one, which stops working at once."""
    Token.objects.filter(user=user).delete()
    return Token.objects.create(user=user)


def token_revoke(*, user) -> bool:
    deleted, _ = Token.objects.filter(user=user).delete()
    return bool(deleted)


class ExpiringTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, refusing tokens older than API_TOKEN_TTL_S (401, with the reason)."""

    def authenticate_credentials(self, key):
        user, token = super().authenticate_credentials(key)
        if token_is_expired(token):
            raise exceptions.AuthenticationFailed("Token has expired: get a new one from /api/token/.")
        return user, token


