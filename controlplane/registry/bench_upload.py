"""`manage.py bench upload`: the memory of every process that handles a large ONNX upload.

The web server runs as in production (`python -m controlplane.webserver`: daphne with bounded request bodies) in a
process of its own; this process uploads a tiny model (the baseline) and then the large one with a streamed
multipart POST /api/models/ (the whole stack runs: daphne, the ASGI guard, middleware, authentication, the upload
handler that streams to MEDIA_ROOT and hashes, the isolated check, the rename, the row). Two processes handle an
upload: the server, whose peak RSS (VmHWM in /proc/<pid>/status) is read after each upload, and the check's child
process, which reports its own peak (the server logs it, `services.CHECK_LOG`). The figure of the goal is the
larger of the two growths over the tiny upload, and each process's peak is printed.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BOUNDARY = "slsbench-bench-boundary"
BENCH_USER = "bench-upload"


def build_onnx(path: Path, size_mb: int) -> Path:
    """A valid ONNX model of about `size_mb` MB: y = x @ W with one large weight, written without holding it twice."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    features = 1024
    hidden = max(1, size_mb * 2**20 // (4 * features))
    w = numpy_helper.from_array(np.ones((features, hidden), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", hidden])], [w])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


class MultipartBody(io.RawIOBase):
    """A multipart/form-data body (`name`, `file`) read from the file on disk as the handler asks for it."""

    def __init__(self, path: Path, name: str):
        super().__init__()
        self.head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n"
                     f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n").encode()
        self.tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.fh = open(path, "rb")  # noqa: SIM115 - closed when the tail has been read
        self.length = len(self.head) + path.stat().st_size + len(self.tail)
        self.stage = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _read(self, n: int) -> bytes:
        out = b""
        while (n < 0 or len(out) < n) and self.stage < 3:
            want = -1 if n < 0 else n - len(out)
            if self.stage == 0:
                out += self.head
                self.stage = 1
            elif self.stage == 1:
                chunk = self.fh.read(want if want > 0 else 1 << 20)
                if chunk:
                    out += chunk
                else:
                    self.fh.close()
                    self.stage = 2
            else:
                out += self.tail
                self.stage = 3
        return out


def peak_rss_bytes(pid: int) -> int:
    from workers.procstat import peak_rss_bytes as peak

    value = peak(pid)
    if value is None:
        raise RuntimeError("this host does not report VmHWM (/proc/<pid>/status): peak RSS cannot be measured")
    return value


@contextlib.contextmanager
def web_server(env: dict, log_path: Path, timeout_s: float = 90.0):
    """The production web server (controlplane.webserver) on a free port: yields (process, port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "controlplane.webserver", "-b", "127.0.0.1", "-p", str(port),
                                 "controlplane.asgi:application"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the web server did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)
            yield proc, port
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def upload(port: int, token: str, path: Path, name: str) -> tuple[int, dict, float]:
    """POST a model to the server, the body streamed from the disk: (status, JSON body, seconds)."""
    body = MultipartBody(path, name)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600, blocksize=1 << 20)
    started = time.perf_counter()
    try:
        conn.request("POST", "/api/models/", body=body, headers={
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": str(body.length),
            "Authorization": f"Token {token}"})
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    return response.status, json.loads(payload or b"{}"), time.perf_counter() - started


def _checker_peaks(log_path: Path) -> dict[str, int]:
    """{model name: the check's child peak RSS} from the server's log lines (services.CHECK_LOG)."""
    from .services import CHECK_LOG

    pattern = re.escape(CHECK_LOG).replace("%s", "(\\S+)").replace("%d", "\\d+")
    return {m.group(1): int(m.group(2)) for m in re.finditer(pattern, log_path.read_text(errors="replace"))
            if m.group(2).isdigit()}


def run(size_mb: int = 500, *, env: dict | None = None, server: tuple | None = None) -> dict:
    """`env`: the server process's environment (default: this one's); `server`: (process, port, log path) of a
    server already started with `web_server`, else one is started. Uses this process's database for the user and
    its token, so the server must share it."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from .models import Model
    from .services import model_delete

    user, _ = get_user_model().objects.get_or_create(username=BENCH_USER)
    token, _ = Token.objects.get_or_create(user=user)
    tag = uuid.uuid4().hex[:8]
    small_name, big_name = f"bench-small-{tag}", f"bench-big-{tag}"
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        small = build_onnx(Path(tmp) / "small.onnx", 1)
        big = build_onnx(Path(tmp) / "big.onnx", size_mb)
        if server is None:
            log_path = Path(tmp) / "server.log"
            proc, port = stack.enter_context(web_server(dict(env if env is not None else os.environ), log_path))
        else:
            proc, port, log_path = server
        try:
            setup_peak = peak_rss_bytes(proc.pid)
            baseline_status, _body, _s = upload(port, token.key, small, small_name)
            baseline_peak = peak_rss_bytes(proc.pid)
            status, body, elapsed = upload(port, token.key, big, big_name)
            server_peak = peak_rss_bytes(proc.pid)
            checkers = _checker_peaks(Path(log_path))
        finally:
            for m in Model.objects.filter(owner=user, name__in=[small_name, big_name]):
                model_delete(model=m)
        file_bytes = big.stat().st_size
    mib = 2**20
    server_added = server_peak - baseline_peak
    checker_added = (checkers[big_name] - checkers[small_name]) if {big_name, small_name} <= checkers.keys() else None
    added = max(server_added, checker_added if checker_added is not None else 0)
    return {
        "benchmark": "upload",
        "file_mb": round(file_bytes / 1e6, 1),
        "status": status,
        "baseline_status": baseline_status,
        "detail": body.get("detail"),
        "elapsed_s": round(elapsed, 2),
        "server": "python -m controlplane.webserver (daphne)",
        "server_peak_rss_before_mib": round(setup_peak / mib, 1),
        "server_peak_rss_baseline_mib": round(baseline_peak / mib, 1),
        "server_peak_rss_mib": round(server_peak / mib, 1),
        "server_added_by_upload_mib": round(server_added / mib, 1),
        "checker_peak_rss_baseline_mib": round(checkers[small_name] / mib, 1) if small_name in checkers else None,
        "checker_peak_rss_mib": round(checkers[big_name] / mib, 1) if big_name in checkers else None,
        "checker_added_by_upload_mib": round(checker_added / mib, 1) if checker_added is not None else None,
        "goal": "every process's memory added by the upload (server, checker) under 100 MiB",
        "goal_met": status == 201 and checker_added is not None and added < 100 * mib,
    }
