"""Settings for the processes a test starts (a Celery worker, daphne, `manage.py demo`): the same as
controlplane.settings, but on the test database that pytest-django created (TEST_DB_NAME: the SQLite
file or the Postgres database name), so the subprocess sees the rows the test writes."""

import os

from controlplane.settings import *  # noqa: F403
from controlplane.settings import CELERY_BROKER_TRANSPORT_OPTIONS, DATABASES

if os.environ.get("TEST_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["TEST_DB_NAME"]

# Test sessions running at the same time on one machine share the test Redis DB: a key prefix per session
# keeps their queues (pool.cpu ...) and device leases apart.
if os.environ.get("TEST_KEY_PREFIX"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {**CELERY_BROKER_TRANSPORT_OPTIONS,
                                       "global_keyprefix": os.environ["TEST_KEY_PREFIX"] + ":"}
    DEVICE_LEASE_KEY_PREFIX = os.environ["TEST_KEY_PREFIX"] + ":lease"
