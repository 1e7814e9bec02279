"""The trial WebSocket, through the real ASGI application (origin check, session auth, URL routing) and
the real Redis channel layer."""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings

from controlplane.asgi import application
from controlplane.experiments import events, trials
from controlplane.experiments.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED

pytestmark = pytest.mark.django_db(transaction=True)  # the consumer reads the DB from other threads


def headers_for(client, user=None) -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if user is not None:
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return headers


def run(coro_fn, *args):
    return async_to_sync(coro_fn)(*args)


async def connect(path: str, headers) -> tuple[WebsocketCommunicator, bool, int | None]:
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


@pytest.fixture
def running(queued_trials):
    trial = trials.trial_claim(trial_id=queued_trials[0].id, worker="w1@host", device="cpu")
    trials.trial_store_windows(trial_id=trial.id, windows=[
        (0, {"t_s": 1.0, "p99_ms": 10.0, "offered_rps": 20.0}),
        (1, {"t_s": 2.0, "p99_ms": 11.0, "offered_rps": 20.0}),
    ])
    return trial


def test_an_anonymous_visitor_is_rejected(client, running, test_redis):
    headers = headers_for(client)

    async def go():
        communicator, connected, code = await connect(f"/ws/trials/{running.code}/", headers)
        await communicator.disconnect()
        return connected, code

    assert run(go) == (False, CLOSE_UNAUTHENTICATED)


def test_another_users_trial_is_rejected_as_not_found(client, running, other_user, test_redis):
    headers = headers_for(client, other_user)

    async def go():
        communicator, connected, code = await connect(f"/ws/trials/{running.code}/", headers)
        await communicator.disconnect()
        return connected, code

    assert run(go) == (False, CLOSE_NOT_FOUND)


def test_an_unknown_trial_is_rejected_as_not_found(client, user, test_redis):
    headers = headers_for(client, user)

    async def go():
        communicator, connected, code = await connect(f"/ws/trials/{uuid.uuid4()}/", headers)
        await communicator.disconnect()
        return connected, code

    assert run(go) == (False, CLOSE_NOT_FOUND)


def test_a_page_from_a_foreign_origin_is_refused(client, running, user, test_redis):
    headers = [h for h in headers_for(client, user) if h[0] != b"origin"] + [(b"origin", b"http://evil.example")]

    async def go():
        communicator, connected, _ = await connect(f"/ws/trials/{running.code}/", headers)
        await communicator.disconnect()
        return connected

    assert run(go) is False


def test_the_owner_gets_the_stored_windows_then_each_new_window_and_status(client, running, user, test_redis):
    headers = headers_for(client, user)

    async def go():
        communicator, connected, _ = await connect(f"/ws/trials/{running.code}/", headers)
        assert connected
        snapshot = await communicator.receive_json_from(timeout=5)
        layer = get_channel_layer()
        await layer.group_send(events.group_name(running.code),
                               events.window_event(running.code, 2, {"t_s": 3.0, "p99_ms": 12.0}))
        live_window = await communicator.receive_json_from(timeout=5)
        await layer.group_send(events.group_name(running.code), {
            "type": "trial.status", "trial": str(running.code), "status": "succeeded", "error": "",
            "device": "cpu", "cancel_requested": False})
        status = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return snapshot, live_window, status

    snapshot, live_window, status = run(go)

    assert snapshot["kind"] == "snapshot"
    assert snapshot["status"]["status"] == "running" and snapshot["status"]["device"] == "cpu"
    assert [(w["index"], w["window"]["p99_ms"]) for w in snapshot["windows"]] == [(0, 10.0), (1, 11.0)]
    assert live_window == {"kind": "window", "index": 2, "window": {"t_s": 3.0, "p99_ms": 12.0}}
    assert status["kind"] == "status" and status["status"]["status"] == "succeeded"


def test_events_published_by_a_worker_reach_the_owners_socket(client, running, user, test_redis):
    """The worker side uses events.publish (async_to_sync from plain threads); the page must receive it."""
    import asyncio

    headers = headers_for(client, user)

    async def go():
        communicator, connected, _ = await connect(f"/ws/trials/{running.code}/", headers)
        assert connected
        await communicator.receive_json_from(timeout=5)  # the snapshot
        loop = asyncio.get_running_loop()
        sent = await loop.run_in_executor(None, events.publish, running.code,
                                          events.window_event(running.code, 7, {"t_s": 8.0}))
        message = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return sent, message

    sent, message = run(go)

    assert sent is True
    assert message == {"kind": "window", "index": 7, "window": {"t_s": 8.0}}


def test_windows_of_another_trial_do_not_reach_the_socket(client, running, user, queued_trials, test_redis):
    other = queued_trials[1]
    headers = headers_for(client, user)

    async def go():
        communicator, connected, _ = await connect(f"/ws/trials/{running.code}/", headers)
        await communicator.receive_json_from(timeout=5)
        await get_channel_layer().group_send(events.group_name(other.code),
                                             events.window_event(other.code, 0, {"t_s": 1.0}))
        nothing = await communicator.receive_nothing(timeout=0.5)
        await communicator.disconnect()
        return nothing

    assert run(go) is True


# ---- sockets end when what allowed them ends ---------------------------------------------------------------
def test_logging_out_closes_that_sessions_sockets(client, running, user, test_redis):
    headers = headers_for(client, user)

    async def go():
        communicator, connected, _ = await connect(f"/ws/trials/{running.code}/", headers)
        assert connected
        await communicator.receive_json_from(timeout=5)
        from asgiref.sync import sync_to_async
        await sync_to_async(client.post)("/accounts/logout/")
        return await communicator.receive_output(timeout=5)

    assert run(go) == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}


def test_another_session_of_the_same_user_stays_connected_after_one_logs_out(client, running, user, test_redis):
    from django.test import Client

    headers = headers_for(client, user)
    other_browser = Client()
    other_browser.force_login(user)

    async def go():
        communicator, connected, _ = await connect(f"/ws/trials/{running.code}/", headers)
        await communicator.receive_json_from(timeout=5)
        from asgiref.sync import sync_to_async
        await sync_to_async(other_browser.post)("/accounts/logout/")
        nothing = await communicator.receive_nothing(timeout=0.5)
        await communicator.disconnect()
        return connected, nothing

    assert run(go) == (True, True)


def test_deleting_the_experiment_closes_the_sockets_on_its_trials(client, running, user, test_redis):
    from controlplane.experiments import services

    headers = headers_for(client, user)

    async def go():
        communicator, connected, _ = await connect(f"/ws/trials/{running.code}/", headers)
        assert connected
        await communicator.receive_json_from(timeout=5)
        from asgiref.sync import sync_to_async

        from controlplane.experiments.models import Experiment
        experiment = await sync_to_async(Experiment.objects.get)(pk=running.experiment_id)
        await sync_to_async(services.experiment_delete)(experiment=experiment)
        return await communicator.receive_output(timeout=5)

    assert run(go) == {"type": "websocket.close", "code": CLOSE_NOT_FOUND}


def test_deleting_the_user_closes_their_sockets(client, running, user, test_redis):
    headers = headers_for(client, user)

    async def go():
        communicator, connected, _ = await connect(f"/ws/trials/{running.code}/", headers)
        assert connected
        await communicator.receive_json_from(timeout=5)
        from asgiref.sync import sync_to_async
        await sync_to_async(user.delete)()
        return await communicator.receive_output(timeout=5)

    # Its trials go with it, so the trial's group may close the socket first (4404): closed either way.
    assert run(go) in ({"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED},
                       {"type": "websocket.close", "code": CLOSE_NOT_FOUND})


def _closed_by(client, running, user, change) -> dict | bool:
    """Connect the owner's socket, apply `change(user)` from a thread, and return what the socket got next (its close)
    or True when nothing came within half a second."""
    from asgiref.sync import sync_to_async

    headers = headers_for(client, user)

    async def go():
        communicator, connected, _ = await connect(f"/ws/trials/{running.code}/", headers)
        assert connected
        await communicator.receive_json_from(timeout=5)
        await sync_to_async(change)(user)
        if await communicator.receive_nothing(timeout=0.5):
            await communicator.disconnect()
            return True
        return await communicator.receive_output(timeout=5)

    return run(go)


def _set_password(user) -> None:
    user.set_password("a new password 42")
    user.save()


def test_changing_the_password_closes_the_users_sockets(client, running, user, test_redis):
    assert _closed_by(client, running, user, _set_password) == {"type": "websocket.close",
                                                                "code": CLOSE_UNAUTHENTICATED}


def test_the_password_change_page_closes_the_users_sockets(client, running, user, test_redis):
    from django.test import Client

    def change(u):
        browser = Client()
        browser.force_login(u)
        page = browser.post("/accounts/password_change/", {
            "old_password": "owner-pass-123", "new_password1": "Another-passw0rd-9", "new_password2": "Another-passw0rd-9"})
        assert page.status_code == 302, page.content[:500]

    assert _closed_by(client, running, user, change) == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}


def test_a_password_set_in_the_admin_closes_the_users_sockets(client, running, user, django_user_model, test_redis):
    from django.test import Client

    admin = django_user_model.objects.create_superuser(username="root", password="root-pass-123")

    def change(u):
        browser = Client()
        browser.force_login(admin)
        page = browser.post(f"/admin/auth/user/{u.pk}/password/", {
            "password1": "Another-passw0rd-9", "password2": "Another-passw0rd-9"})
        assert page.status_code == 302, page.content[:500]

    assert _closed_by(client, running, user, change) == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}


def test_saving_other_fields_of_the_user_leaves_their_sockets_open(client, running, user, test_redis):
    def change(u):
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import update_last_login

        fresh = get_user_model().objects.get(pk=u.pk)
        fresh.first_name = "Renamed"
        fresh.save()  # every field written, the password unchanged
        update_last_login(None, fresh)  # what each login does: save(update_fields=["last_login"])

    assert _closed_by(client, running, user, change) is True
