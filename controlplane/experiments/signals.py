"""Live sockets end when what allowed them ends: the login session (logout), the user or their password, or the
trial watched.
Failed logins (any form, the admin, /api/token/) are counted per address for the login limit (accounts.py).

Connected in ExperimentsConfig.ready. Each sends "socket.close" to a group (events.py) after the change
commits, so a rolled-back delete closes nothing.
"""

from __future__ import annotations

import functools

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out, user_login_failed
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save

from . import accounts, events
from .consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from .models import Trial


def _on_logout(sender, request, user, **kwargs) -> None:
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:  # sent before the session is flushed: the key is still the one the sockets joined with
        events.close_sockets(events.session_group(session_key), CLOSE_UNAUTHENTICATED)


def _on_user_deleted(sender, instance, **kwargs) -> None:
    transaction.on_commit(functools.partial(events.close_sockets, events.user_group(instance.pk),
                                            CLOSE_UNAUTHENTICATED))


def _note_password_change(sender, instance, raw=False, update_fields=None, **kwargs) -> None:
    """pre_save of a user: whether this save changes the stored password hash (set_password and save, the
    password-change view, the admin, a hash written directly). Saves of other fields only are not a change."""
    instance._password_changed = False
    if raw or instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    old = sender._default_manager.filter(pk=instance.pk).values_list("password", flat=True).first()
    instance._password_changed = old is not None and old != instance.password


def _on_user_saved(sender, instance, created=False, **kwargs) -> None:
    if getattr(instance, "_password_changed", False):
        instance._password_changed = False
        transaction.on_commit(functools.partial(events.close_sockets, events.user_group(instance.pk),
                                                CLOSE_UNAUTHENTICATED))


def _on_trial_deleted(sender, instance, **kwargs) -> None:
    # Sent for each trial of a deleted experiment too (a connected receiver turns off Django's fast delete).
    transaction.on_commit(functools.partial(events.close_sockets, events.group_name(instance.code), CLOSE_NOT_FOUND))


def connect() -> None:
    user_logged_out.connect(_on_logout, dispatch_uid="slsbench-close-sockets-on-logout")
    user_login_failed.connect(accounts.on_login_failed, dispatch_uid="slsbench-count-failed-logins")
    post_delete.connect(_on_user_deleted, sender=get_user_model(), dispatch_uid="slsbench-close-sockets-user")
    pre_save.connect(_note_password_change, sender=get_user_model(), dispatch_uid="slsbench-password-change")
    post_save.connect(_on_user_saved, sender=get_user_model(), dispatch_uid="slsbench-close-sockets-password")
    post_delete.connect(_on_trial_deleted, sender=Trial, dispatch_uid="slsbench-close-sockets-trial")
