"""A large upload through the production web server (controlplane.webserver: daphne with bounded bodies): no
process that handles it grows by the file's size (`manage.py bench upload` at a test-sized file; the figures are
printed, the assertions are relative to the file's own size), and a body over the route's bound is refused while it
streams, before it is stored."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from django.conf import settings

from controlplane.registry.bench_upload import run, web_server
from controlplane.registry.models import Model
from tests.processes import subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)


def _post_headers(port: int, path: str, headers: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
    return s


def test_a_large_upload_grows_no_process_by_its_size_and_a_body_over_the_bound_is_refused_as_it_streams(
        test_redis, media_root, tmp_path):
    size_mb = 40  # over REQUEST_MAX_BYTES (32 MiB): the upload route has its own bound
    env = subprocess_env(redis_url=test_redis.url, channels_prefix=test_redis.prefix, media_root=media_root)
    log_path = tmp_path / "server.log"
    with web_server(env, log_path) as (proc, port):
        result = run(size_mb, server=(proc, port, log_path))
        print("\n" + "\n".join(f"  {k:36} {v}" for k, v in result.items()))
        assert result["status"] == 201, result["detail"]
        assert result["file_mb"] >= size_mb
        # Holding the file in memory would add at least its size (daphne as shipped: 14x, parsing the multipart
        # body); streaming adds (nearly) nothing, in the server and in the check's child alike.
        assert result["server_added_by_upload_mib"] < size_mb / 4
        assert result["checker_added_by_upload_mib"] is not None
        assert result["checker_added_by_upload_mib"] < size_mb / 4
        assert not Model.objects.exists()  # the benchmark deletes what it stored

        # A declared length over the upload route's bound (MODEL_UPLOAD_MAX_BYTES + the envelope): 413 at once.
        s = _post_headers(port, "/api/models/", "Content-Type: multipart/form-data; boundary=x\r\n"
                                                "Content-Length: 3000000000\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 413 ")
        s.close()
        # A chunked body (no declared length) is counted as it arrives: 413 and the connection closed once it
        # passes REQUEST_MAX_BYTES, long before the client is done.
        s = _post_headers(port, "/api/experiments/", "Content-Type: application/json\r\n"
                                                     "Transfer-Encoding: chunked\r\n")
        chunk, sent, refused = b"x" * 2**20, 0, False
        limit = settings.REQUEST_MAX_BYTES
        while sent < 4 * limit:
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # the server closed the connection: what it sent first is the answer
                refused = True
                break
            sent += len(chunk)
        answer = s.recv(4096)
        s.close()
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert refused and sent < 2 * limit, sent
        time.sleep(0.2)
        assert proc.poll() is None
    incoming = Path(media_root) / "models" / "incoming"
    assert not incoming.exists() or not any(incoming.iterdir())
