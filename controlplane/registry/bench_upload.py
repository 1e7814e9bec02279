"""`manage.py bench upload`: the web process's peak memory while it takes a large ONNX upload.

A fresh Python process (the "server") sets Django up and hands one multipart POST /api/models/ to Django's WSGI
handler, with the request body streamed from a file on disk (the whole stack runs: middleware, authentication,
the upload handler that streams to MEDIA_ROOT and hashes, the isolated check, the rename, the row). Its peak
RSS (VmHWM) is read after the request; the baseline is the same process taking a tiny upload first, so the
difference is what the large file cost. The check of the file runs in its own child process (see
workers.onnx_models.inspect_file_isolated); its peak RSS is reported too, as the host's memory it needed.
"""

from __future__ import annotations

import io
import json
import os
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


def _peak_rss_bytes() -> int:
    from workers.onnx_models import _peak_rss_bytes as peak

    value = peak()
    if value is None:
        raise RuntimeError("this host does not report VmHWM (/proc/self/status): peak RSS cannot be measured")
    return value


def _post(handler, token: str, path: Path, name: str) -> tuple[int, dict, float]:
    body = MultipartBody(path, name)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/models/", "SERVER_NAME": "localhost",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": io.BufferedReader(body, 1 << 16), "HTTP_HOST": "localhost",
               "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}", "CONTENT_LENGTH": str(body.length),
               "HTTP_AUTHORIZATION": f"Token {token}", "wsgi.errors": sys.stderr}
    status: list[str] = []
    started = time.perf_counter()
    chunks = handler(environ, lambda s, h, *a: status.append(s))
    payload = b"".join(chunks)
    return int(status[0].split()[0]), json.loads(payload or b"{}"), time.perf_counter() - started


def child(small: str, big: str) -> int:
    """The "server": Django set up, one tiny upload (baseline), one large upload; prints one JSON line."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.handlers.wsgi import WSGIHandler
    from rest_framework.authtoken.models import Token

    from controlplane.registry.models import Model
    from controlplane.registry.services import model_delete

    user, _ = get_user_model().objects.get_or_create(username=BENCH_USER)
    token, _ = Token.objects.get_or_create(user=user)
    handler = WSGIHandler()
    out: dict = {"rss_after_setup_bytes": _peak_rss_bytes()}
    tag = uuid.uuid4().hex[:8]
    code, body, _ = _post(handler, token.key, Path(small), f"bench-small-{tag}")
    out["baseline_status"] = code
    out["baseline_peak_rss_bytes"] = _peak_rss_bytes()
    code, body, elapsed = _post(handler, token.key, Path(big), f"bench-big-{tag}")
    out.update(status=code, elapsed_s=elapsed, peak_rss_bytes=_peak_rss_bytes(), detail=body.get("detail"),
               sha256=body.get("sha256"), size_bytes=body.get("size_bytes"))
    for m in Model.objects.filter(owner=user, name__startswith="bench-"):
        model_delete(model=m)
    print(json.dumps(out))
    return 0


def run(size_mb: int = 500, *, env: dict | None = None) -> dict:
    """`env`: the server process's environment (default: this one's, with its import path)."""
    from workers import onnx_models

    with tempfile.TemporaryDirectory() as tmp:
        small = build_onnx(Path(tmp) / "small.onnx", 1)
        big = build_onnx(Path(tmp) / "big.onnx", size_mb)
        env = {**(env if env is not None else os.environ), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = subprocess.run([sys.executable, "-m", "controlplane.registry.bench_upload", str(small), str(big)],
                              capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0 or not proc.stdout.strip():
            raise RuntimeError(f"the server process failed: {proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        _sig, checker_peak = onnx_models.inspect_file_isolated(big)  # the same check, to report what it needed
        file_bytes = big.stat().st_size
    mib = 2**20
    return {
        "benchmark": "upload",
        "file_mb": round(file_bytes / 1e6, 1),
        "status": result["status"],
        "detail": result.get("detail"),
        "elapsed_s": round(result["elapsed_s"], 2),
        "server_rss_after_setup_mib": round(result["rss_after_setup_bytes"] / mib, 1),
        "server_peak_rss_baseline_mib": round(result["baseline_peak_rss_bytes"] / mib, 1),
        "server_peak_rss_mib": round(result["peak_rss_bytes"] / mib, 1),
        "server_added_by_upload_mib": round((result["peak_rss_bytes"] - result["baseline_peak_rss_bytes"]) / mib, 1),
        "checker_child_peak_rss_mib": round(checker_peak / mib, 1) if checker_peak else None,
        "goal": "server memory added by the upload under 100 MiB",
        "goal_met": (result["peak_rss_bytes"] - result["baseline_peak_rss_bytes"]) < 100 * mib,
    }


if __name__ == "__main__" and len(sys.argv) == 3:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    raise SystemExit(child(sys.argv[1], sys.argv[2]))
