"""The live page of a trial whose worker is killed: it says "worker lost" and stops listening, instead of waiting
forever. A real worker (SIGKILLed), daphne, Redis and headless Chromium."""

from __future__ import annotations

import os
import signal

import pytest

from controlplane.experiments.models import Trial
from tests import processes
from tests.workers import faults

pytestmark = [pytest.mark.browser, pytest.mark.celery, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def rig(tmp_path, settings, price_catalogue):
    rig = faults.Rig(tmp_path)
    rig.point_settings(settings)
    yield rig
    rig.close()


def test_the_live_page_of_a_trial_whose_worker_is_killed_says_worker_lost_and_stops(rig, authed_page, user):
    port = processes.free_port()
    daphne = processes.start_daphne(rig.env(), port, rig.tmp / "daphne.log")
    rig.workers.append(daphne)  # stopped with the workers
    worker = rig.start_worker("page", DEVICE_LEASE_TTL_S=60)
    trial = faults.make_trial(user, faults.spec("page-worker-lost", duration_s=120))

    class Server:
        url = f"http://127.0.0.1:{port}"

    page = authed_page(Server, user)
    page.goto(f"/trials/{trial.code}/")
    page.wait_for_selector("body[data-live-socket='open']")
    rig.send(trial)
    page.wait_for_function("document.getElementById('trial-status').textContent.trim() === 'running'",
                           timeout=90_000)
    processes.wait_for(lambda: trial.windows.count() >= 1, 60, "a window", worker)
    trial.refresh_from_db()

    os.kill(faults.lease_pid(trial), signal.SIGKILL)

    # The finished status arrives over the socket; the page reloads and shows the reason, with no socket left.
    page.wait_for_selector("#trial-error", timeout=60_000)
    page.wait_for_selector("body[data-live-ready='1']")
    assert page.inner_text("#trial-status").strip().lower() == "failed"
    assert page.inner_text("#trial-error").startswith("worker lost:")
    assert page.evaluate("document.body.dataset.liveSocket") is None  # a finished trial opens no socket
    trial.refresh_from_db()
    assert trial.status == Trial.Status.FAILED
