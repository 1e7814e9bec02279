"""WebSocket for a trial's live page: `ws/trials/<code>/`.

Messages to the browser (JSON):
  {"kind": "snapshot", "status": {...}, "windows": [{"index": i, "window": {...}}, ...]}  once, on connect
  {"kind": "window", "index": i, "window": {...}}                                         each second
  {"kind": "status", "status": {...}}                                                     on each change
The browser de-duplicates windows by index (see below why it may see one twice).
The socket is closed (4401) when its session logs out, its user is deleted or changes password, and (4404) when its
trial is. The page only listens: any message from it closes the socket (4400) unread, and the web server refuses
one over limits.WEBSOCKET_MAX_MESSAGE_BYTES before the application sees it.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.http import Http404

from . import events, selectors

# Close codes in the 4000-4999 range are ours to define; the page shows a message for each.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_INPUT_REFUSED = 4400  # this socket accepts no input (application codes must be 4000-4999 for daphne)


@database_sync_to_async
def _trial_for(user, code):
    try:
        return selectors.trial_get_for(user=user, code=code)
    except Http404:
        return None


@database_sync_to_async
def _snapshot(trial_id: int) -> dict:
    from .models import Trial

    trial = Trial.objects.get(id=trial_id)
    windows = [{"index": index, "window": data}
               for index, data in trial.windows.order_by("index").values_list("index", "data")]
    return {"kind": "snapshot", "status": _status_dict(events.status_event(trial)), "windows": windows}


def _status_dict(event: events.TrialStatusEvent) -> dict:
    return {k: v for k, v in event.items() if k not in ("type", "trial")}


class TrialConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        trial = await _trial_for(user, self.scope["url_route"]["kwargs"]["code"])
        if trial is None:
            # Outsiders get the same answer as for a trial that does not exist: nothing to learn from it.
            await self.close(code=CLOSE_NOT_FOUND)
            return
        # Join the group BEFORE reading the stored windows: the worker stores a window before it publishes
        # it, so every window is either in the snapshot or arrives as an event (possibly both: the page
        # de-duplicates by index). Reading first would lose the windows published in between.
        groups = [events.group_name(trial.code), events.user_group(user.pk)]
        session_key = getattr(self.scope.get("session"), "session_key", None)
        if session_key:
            groups.append(events.session_group(session_key))  # closed when this session logs out
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups.append(group)  # the base class leaves the groups on disconnect
        await self.accept()
        await self.send_json(await _snapshot(trial.id))

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        """The page only listens: a message is refused unparsed (the JSON base class would decode it) and the
        socket closed, so a socket cannot be used to push data at the server."""
        await self.close(code=CLOSE_INPUT_REFUSED)

    async def trial_window(self, event: events.TrialWindowEvent):
        await self.send_json({"kind": "window", "index": event["index"], "window": event["window"]})

    async def trial_status(self, event: events.TrialStatusEvent):
        await self.send_json({"kind": "status", "status": _status_dict(event)})

    async def socket_close(self, event: events.SocketCloseEvent):
        """Its session logged out, its user or its trial was deleted (signals.py): nothing more to show."""
        await self.close(code=event["code"])
