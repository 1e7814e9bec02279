"""`manage.py demo` (what `make demo` runs): it serves the product and leaves no process behind on Ctrl-C."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import psutil
from django.conf import settings

from tests.processes import free_port

START_TIMEOUT_S = 150


def read_until(proc: subprocess.Popen, pattern: str, timeout_s: float) -> tuple[re.Match, str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match, "".join(seen)
    raise AssertionError(f"no line matching {pattern!r}; output so far:\n{''.join(seen)}")


def log_in(base_url: str, username: str, password: str) -> tuple[int, str]:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login_url = f"{base_url}accounts/login/"
    page = opener.open(login_url, timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    body = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password})
    request = urllib.request.Request(login_url, data=body.encode(), headers={"Referer": login_url})
    response = opener.open(request, timeout=10)
    return response.status, response.read().decode()


def test_demo_serves_the_product_with_the_printed_credentials_and_stops_every_child_on_ctrl_c(tmp_path):
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(VAR_DIR=str(var_dir), PORT=str(port), PYTHONUNBUFFERED="1",
               MODEL_DIR=str(settings.MODEL_DIR),  # share the weights cache; the database is the demo's own
               REDIS_URL="redis://127.0.0.1:1/0")  # nothing answers there: the demo starts its own Redis
    proc = subprocess.Popen([sys.executable, "manage.py", "demo"], cwd=settings.BASE_DIR, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    children: list[psutil.Process] = []
    try:
        match, output = read_until(proc, rf"slsbench demo is running at (http://127\.0\.0\.1:{port}/)",
                                   START_TIMEOUT_S)
        base_url = match.group(1)
        password = read_until(proc, r"password:\s+(\S+)", 5)[0].group(1)

        assert "started a private one" in output and "started redis-server" in output
        assert "started web server (daphne)" in output and "started celery worker" in output
        assert urllib.request.urlopen(f"{base_url}accounts/login/", timeout=10).status == 200
        status, page = log_in(base_url, "demo", password)
        assert status == 200 and "classifier-poc" in page  # landed on the experiment list
        # redis-server, daphne, the celery worker and, once it is up, its pool process
        deadline = time.monotonic() + 60
        while len(children) < 4 and time.monotonic() < deadline:
            children = psutil.Process(proc.pid).children(recursive=True)
            time.sleep(0.2)

        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    assert proc.returncode == 0, proc.stdout.read()
    assert len(children) >= 4, children
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"left running: {[(c.pid, c.name()) for c in alive]}"
