"""Typed payloads sent over the channel layer to a trial's live page, and the one helper that sends them.

One group per trial (`trial.<code>`), never a global broadcast. The worker publishes; `TrialConsumer`
has one handler per event type ("trial.window" -> `trial_window`, "trial.status" -> `trial_status`).
Payloads are JSON-safe dicts (the Redis channel layer serializes with msgpack).
"""

from __future__ import annotations

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


TrialEvent = TrialWindowEvent | TrialStatusEvent


def group_name(code) -> str:
    return f"trial.{code}"


def window_event(code, index: int, window: dict) -> TrialWindowEvent:
    return {"type": "trial.window", "trial": str(code), "index": int(index), "window": window}


def status_event(trial) -> TrialStatusEvent:
    return {"type": "trial.status", "trial": str(trial.code), "status": trial.status, "error": trial.error or "",
            "device": trial.device or "", "cancel_requested": bool(trial.cancel_requested)}


def publish(code, event: TrialEvent) -> bool:
    """Send one event to the trial's group. Best effort: a page that misses an update reloads stored data,
    so a Redis hiccup here must never fail the trial itself. Returns False if it could not be sent."""
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        async_to_sync(layer.group_send)(group_name(code), event)
        return True
    except Exception as exc:  # noqa: BLE001 - see docstring: live updates are advisory
        log.warning("could not publish %s for trial %s: %s: %s", event.get("type"), code, type(exc).__name__, exc)
        log.debug("publish failure", exc_info=True)
        return False
