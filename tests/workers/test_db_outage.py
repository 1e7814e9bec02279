"""The database goes away while a trial runs and stays away past the end of the run: nothing measured is lost.

The worker talks to Postgres through a TCP proxy the test stops (every connection dropped, new ones refused)
and starts again. The worker writes the result file beside the Parquet artifact, retries the store for
RESULT_STORE_RETRY_S, gives up, and its reaper stores the file once the database is back. The test process
itself talks to Postgres directly, so it can see the trial still "running" during the outage.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
from django.db import connection

from controlplane.experiments.models import Trial
from controlplane.experiments.trials import result_file_for
from tests import processes
from tests.workers import faults

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]

DURATION_S, RATE_RPS = 4, 20


@pytest.fixture
def rig(tmp_path, settings, price_catalogue):
    rig = faults.Rig(tmp_path)
    rig.point_settings(settings)
    yield rig
    rig.close()


@pytest.fixture
def db_proxy():
    if connection.vendor != "postgresql":
        pytest.skip("needs Postgres (DATABASE_URL): the outage is a TCP proxy in front of it, stopped and started")
    proxy = faults.TcpProxy(int(connection.settings_dict["PORT"] or 5432),
                            connection.settings_dict["HOST"] or "127.0.0.1").start()
    yield proxy
    proxy.stop()


def proxied_database_url(proxy: faults.TcpProxy) -> str:
    s = connection.settings_dict
    user = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{user}@127.0.0.1:{proxy.port}/{s['NAME']}"


def test_a_database_outage_at_the_end_of_a_trial_loses_nothing_measured(rig, db_proxy, user):
    assert urlsplit(proxied_database_url(db_proxy)).port == db_proxy.port
    worker = rig.start_worker("db", DATABASE_URL=proxied_database_url(db_proxy), RESULT_STORE_RETRY_S=2)
    trial = faults.make_trial(user, faults.spec("db-outage", duration_s=DURATION_S, rate_rps=RATE_RPS))
    rig.send(trial)
    processes.wait_for(lambda: trial.windows.count() >= 1, 90, "the first window", worker)

    db_proxy.stop()  # the database is gone for the worker, for the rest of the run and after it
    assert not processes.port_open(db_proxy.port)
    processes.wait_for(lambda: "the database stayed unavailable; the reaper will store" in processes.log_text(worker),
                       DURATION_S + 60, "the worker to give up storing", worker)
    trial.refresh_from_db()
    assert trial.status == Trial.Status.RUNNING  # not failed, not finished: only late
    assert result_file_for(trial.code).exists()

    db_proxy.start()  # back
    faults.wait_status(trial, Trial.FINISHED, 60, worker)

    assert trial.status == Trial.Status.SUCCEEDED, trial.error
    assert trial.summary["requests"] == DURATION_S * RATE_RPS
    assert trial.summary["completed"] == DURATION_S * RATE_RPS
    assert trial.windows.count() >= DURATION_S
    assert pq.read_table(trial.artifact.path).num_rows == DURATION_S * RATE_RPS
    # The reaper removes the file after the store commits (never before: a crash in between must not lose it), so the
    # test may see the finished trial a moment before the file is gone.
    processes.wait_for(lambda: not result_file_for(trial.code).exists(), 10, "the stored result file removed", worker)
    assert "completed from the result file its worker left" in processes.log_text(worker)


def test_a_database_outage_when_the_task_starts_sends_the_message_back_and_the_trial_runs_later(rig, db_proxy, user):
    worker = rig.start_worker("db-start", DATABASE_URL=proxied_database_url(db_proxy))
    trial = faults.make_trial(user, faults.spec("db-down-at-start", duration_s=1))
    db_proxy.stop()
    assert not processes.port_open(db_proxy.port)
    rig.send(trial)
    processes.wait_for(lambda: f"trial {trial.id}: OperationalError" in processes.log_text(worker), 60,
                       "the task to find the database down", worker)
    trial.refresh_from_db()
    assert trial.status == Trial.Status.QUEUED

    db_proxy.start()
    faults.wait_status(trial, Trial.FINISHED, 90, worker)
    assert trial.status == Trial.Status.SUCCEEDED, trial.error
    assert trial.summary["requests"] == RATE_RPS
