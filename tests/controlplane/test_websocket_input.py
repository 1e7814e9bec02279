"""A live socket takes no input: any message closes it unread (in-process, the real ASGI app), and a huge frame is
refused by the real web server (daphne, started as the demo and deploy docs start it) from its header, before
the payload is buffered, so a socket cannot be used to push memory at the server."""

from __future__ import annotations

import base64
import os
import socket
import struct

import pytest
from django.conf import settings

from controlplane.experiments import limits
from controlplane.experiments.consumers import CLOSE_INPUT_REFUSED
from tests import processes
from tests.controlplane.test_consumers import connect, headers_for, run, running  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("message", [{"text_data": '{"kind": "hello"}'}, {"bytes_data": b"\x00" * 1000}])
def test_any_message_closes_the_socket_unread(client, running, user, test_redis, message):  # noqa: F811
    headers = headers_for(client, user)

    async def go():
        communicator, connected, _ = await connect(f"/ws/trials/{running.code}/", headers)
        assert connected
        await communicator.receive_json_from(timeout=5)  # the snapshot
        await communicator.send_to(**message)
        return await communicator.receive_output(timeout=5)

    assert run(go) == {"type": "websocket.close", "code": CLOSE_INPUT_REFUSED}


def _status_bytes(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def _handshake(port: int, path: str, cookie: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n"
                  f"Cookie: {settings.SESSION_COOKIE_NAME}={cookie}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    return sock


def _frame_header(length: int) -> bytes:
    """A client's binary frame header (FIN, opcode 2, masked) announcing `length` payload bytes."""
    return bytes([0x82, 0x80 | 127]) + struct.pack(">Q", length) + b"\x00\x00\x00\x00"  # mask 0: payload as is


def _read_close_code(sock: socket.socket) -> int | None:
    """Read server frames until a close frame; its status code (None if the connection ended without one)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            chunk = b""
        if not chunk:
            return None
        data += chunk
        while len(data) >= 2:
            opcode, n, at = data[0] & 0x0F, data[1] & 0x7F, 2
            if n == 126:
                n, at = struct.unpack(">H", data[2:4])[0], 4
            elif n == 127:
                n, at = struct.unpack(">Q", data[2:10])[0], 10
            if len(data) < at + n:
                break
            payload, data = data[at:at + n], data[at + n:]
            if opcode == 8:
                return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None


@pytest.fixture
def daphne(test_redis, tmp_path, media_root):
    port = processes.free_port()
    env = processes.subprocess_env(redis_url=test_redis.url, channels_prefix=test_redis.prefix, media_root=media_root,
                                   ALLOWED_HOSTS="127.0.0.1,localhost,testserver")
    proc = processes.start_daphne(env, port, tmp_path / "daphne.log")
    yield port, proc
    processes.stop(proc)


def _push(sock: socket.socket, size: int) -> int:
    """Announce a frame of `size` bytes and send its payload until the server stops taking it; bytes sent."""
    sock.sendall(_frame_header(size))
    sent = 0
    chunk = b"x" * 65536
    try:
        while sent < size:
            sent += sock.send(chunk[:size - sent])
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass  # the server closed the connection while the payload was still coming
    return sent


def test_a_huge_frame_is_refused_from_its_header_without_growing_the_server(client, running, user,  # noqa: F811
                                                                             daphne):
    port, proc = daphne
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    path = f"/ws/trials/{running.code}/"
    # Baseline: the same server after a socket has connected and received its snapshot (imports, app warm).
    warm = _handshake(port, path, cookie)
    warm.recv(65536)
    warm.close()
    peak_before = _status_bytes(proc.pid, "VmHWM")

    # 64 MiB: more than the kernel's socket buffers on both sides can hold, so the whole frame goes only if the
    # server keeps reading it.
    big = 64 * 2**20
    sock = _handshake(port, path, cookie)
    sent = _push(sock, big)
    code = _read_close_code(sock)
    sock.close()
    growth = _status_bytes(proc.pid, "VmHWM") - peak_before
    print(f"64 MiB frame: {sent / 2**20:.1f} MiB taken before the connection ended (close code {code}); "
          f"daphne's peak RSS grew {growth / 2**20:.2f} MiB")
    # Refused as the header announced the size: "message too big" (1009), or the reset that follows it when the
    # client is still sending (a reset discards the close frame on its way).
    assert code in (1009, None)
    assert sent < big
    # The payload was never buffered: the server's peak memory grew by far less than the frame.
    assert growth < 2**20
    # The bound is ours, not daphne's default (1 MiB): one byte over WEBSOCKET_MAX_MESSAGE_BYTES is refused by the
    # server, never seen by the application (which would close with CLOSE_INPUT_REFUSED).
    sock = _handshake(port, path, cookie)
    _push(sock, limits.WEBSOCKET_MAX_MESSAGE_BYTES + 1)
    assert _read_close_code(sock) in (1009, None)
    sock.close()
    # And a message at the limit still reaches the application, which closes the socket for any input.
    sock = _handshake(port, path, cookie)
    payload = b"y" * limits.WEBSOCKET_MAX_MESSAGE_BYTES
    sock.sendall(bytes([0x82, 0x80 | 126]) + struct.pack(">H", len(payload)) + b"\x00\x00\x00\x00" + payload)
    assert _read_close_code(sock) == CLOSE_INPUT_REFUSED
    sock.close()
