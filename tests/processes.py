"""Starting and stopping the real processes execution tests need: a Celery worker and daphne.

They run on the test database (tests/subprocess_settings.py) and the test Redis DB with the test's key
prefix, so nothing they do reaches a developer's own database, queues or live pages.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connection

BIN = Path(sys.executable).parent
ROOT = Path(settings.BASE_DIR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(*, redis_url: str, channels_prefix: str, media_root: Path | str | None = None, **extra) -> dict:
    """Environment for a child on the test database (call after the test database exists). The channel
    prefix also prefixes its broker keys and device leases (tests/subprocess_settings.py)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.subprocess_settings",
           "TEST_DB_NAME": str(connection.settings_dict["NAME"]), "REDIS_URL": redis_url,
           "CELERY_BROKER_URL": redis_url, "CHANNELS_PREFIX": channels_prefix, "TEST_KEY_PREFIX": channels_prefix,
           "PYTHONUNBUFFERED": "1", "DJANGO_ALLOW_ASYNC_UNSAFE": ""}
    if media_root is not None:
        env["MEDIA_ROOT"] = str(media_root)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start(argv: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_file = log
    proc.log_path = log_path
    return proc


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    try:  # its own session: the group includes anything it forked (Celery's pool process)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(10)
    proc.log_file.close()


def log_text(proc: subprocess.Popen) -> str:
    proc.log_file.flush()
    return Path(proc.log_path).read_text(errors="replace")


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}:\n{log_text(proc)[-4000:]}")
        time.sleep(interval_s)
    tail = f"\n{log_text(proc)[-4000:]}" if proc is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{tail}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_celery_worker(env: dict, queues: list[str], log_path: Path, *, name: str) -> subprocess.Popen:
    argv = [str(BIN / "celery"), "-A", "controlplane", "worker", "-Q", ",".join(queues), "--concurrency", "1",
            "--prefetch-multiplier", "1", "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "--loglevel", "INFO"]
    proc = start(argv, env, log_path)
    wait_for(lambda: " ready." in log_text(proc), 90, "the Celery worker to be ready", proc)
    return proc


def start_daphne(env: dict, port: int, log_path: Path) -> subprocess.Popen:
    """The web server as production runs it: daphne with bounded request bodies (controlplane.webserver) and
    WebSocket bounds."""
    from controlplane.experiments.limits import daphne_argv

    proc = start(daphne_argv("127.0.0.1", port), env, log_path)
    wait_for(lambda: port_open(port), 60, "daphne to listen", proc)
    return proc
