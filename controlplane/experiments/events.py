"""Typed payloads sent over the channel layer to a trial's live page, and the one helper that sends them.

One group per trial (`trial.<code>`), never a global broadcast. The worker publishes; `TrialConsumer`
has one handler per event type ("trial.window" -> `trial_window`, "trial.status" -> `trial_status`).
Payloads are JSON-safe dicts (the Redis channel layer serializes with msgpack).

A socket also joins the group of its login session and of its user, so "socket.close" can end it when the
session logs out, the user is deleted, or the trial it watches is deleted (signals.py).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Literal, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


class TrialWindowEvent(TypedDict):
    type: Literal["trial.window"]
    trial: str  # the trial's code
    index: int  # 0-based second of the run
    window: dict  # one per-second window (workers.recorder), values may be None


class TrialStatusEvent(TypedDict):
    type: Literal["trial.status"]
    trial: str
    status: str  # Trial.Status value
    error: str
    device: str
    cancel_requested: bool


class SocketCloseEvent(TypedDict):
    type: Literal["socket.close"]
    code: int  # the WebSocket close code the page shows a message for (consumers.CLOSE_*)


TrialEvent = TrialWindowEvent | TrialStatusEvent


def group_name(code) -> str:
    return f"trial.{code}"


def session_group(session_key: str) -> str:
    # A digest: the session key is a credential and group names are stored in Redis.
    return "session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def close_sockets(group: str, code: int) -> bool:
    """Close every socket in `group` with `code`. Best effort, like publish."""
    return _send(group, {"type": "socket.close", "code": int(code)})


def window_event(code, index: int, window: dict) -> TrialWindowEvent:
    return {"type": "trial.window", "trial": str(code), "index": int(index), "window": window}


def status_event(trial) -> TrialStatusEvent:
    return {"type": "trial.status", "trial": str(trial.code), "status": trial.status, "error": trial.error or "",
            "device": trial.device or "", "cancel_requested": bool(trial.cancel_requested)}


def publish(code, event: TrialEvent) -> bool:
    """Send one event to the trial's group. Best effort: a page that misses an update reloads stored data,
    so a Redis hiccup here must never fail the trial itself. Returns False if it could not be sent."""
    return _send(group_name(code), event)


def _send(group: str, event: dict) -> bool:
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        async_to_sync(layer.group_send)(group, event)
        return True
    except Exception as exc:  # noqa: BLE001 - see publish: live updates are advisory
        log.warning("could not send %s to %s: %s: %s", event.get("type"), group, type(exc).__name__, exc)
        log.debug("publish failure", exc_info=True)
        return False
