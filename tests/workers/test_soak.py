"""`make soak --short`: a few trials through a real worker with a worker SIGKILL and a Redis restart in the
middle; none lost, none stuck. The command starts its own Redis and worker; it runs on the test database."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from django.conf import settings

from tests import processes
from tests.conftest import TEST_REDIS_URL

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="the soak restarts a private redis-server")
def test_the_short_soak_loses_no_trial_and_leaves_none_stuck(tmp_path):
    env = processes.subprocess_env(redis_url=TEST_REDIS_URL, channels_prefix=f"soak-{tmp_path.name}",
                                   media_root=tmp_path / "media")
    result = subprocess.run([sys.executable, "manage.py", "soak", "--short"], cwd=settings.BASE_DIR, env=env,
                            capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    print(out)

    assert result.returncode == 0, out
    assert "worker killed: yes, Redis restarted: yes" in out
    assert re.search(r"^[1-5]/6 finished in \d+ s \(about \d+ s left\)$", out, re.M), out  # progress
    assert re.search(r"^trials lost: 0$", out, re.M) and re.search(r"^trials stuck: 0$", out, re.M)
    assert re.search(r"^\s+\d+\s+succeeded$", out, re.M)
    assert "p99 across" in out
