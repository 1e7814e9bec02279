"""The web server: daphne, with request bodies bounded while they stream and never held in memory.

`python -m controlplane.webserver` takes daphne's own arguments (`-b HOST -p PORT controlplane.asgi:application`).
Two things differ from the `daphne` command, both about request bodies:

- daphne 4 (through Twisted) receives a whole body before the application sees the request, so the ASGI guard
  (`limits.RequestSizeLimit`) could only refuse it afterwards. Here each request's body is counted as it arrives
  against the guard's bound for its path: a declared length over it is answered 413 before a byte of the body
  is read, and a chunked body that grows past it is answered 413 and the connection closed at that point.
- daphne then queues the whole body, in memory, as ASGI messages before the application reads the first one
  (a 500 MB upload held 500 MB in the server). Here the body Twisted spooled (to a temporary file beyond
  100 kB) is handed to the application as the scope extension `slsbench.body_file` instead, and
  `RequestSizeLimit` reads it in 256 kB messages as the application asks.

Everything else (pages, WebSockets, static files, options) is daphne's.
"""

from __future__ import annotations

import io
import json

from daphne import server as daphne_server
from daphne.cli import CommandLineInterface
from daphne.http_protocol import HTTPFactory, WebRequest


def _limit_for(application, path: bytes) -> int | None:
    """The ASGI guard's bound for `path` (None when the application has no guard)."""
    from controlplane.experiments.limits import RequestSizeLimit  # once the application has set Django up

    http_app = getattr(application, "application_mapping", {}).get("http")
    if not isinstance(http_app, RequestSizeLimit):
        return None
    return http_app.limit_for(path.split(b"?", 1)[0].decode("latin-1"))


class BoundedRequest(WebRequest):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Twisted parses a multipart POST body into request.args, reading all of it into memory and then some (a
        # 200 MB upload took 2.9 GB); daphne never uses request.args.
        self._parsePOSTFormSubmission = False

    def gotLength(self, length):
        path = getattr(self.channel, "_path", b"") or b""
        self.body_limit = _limit_for(self.server.application, path)
        self.body_received = 0
        self.refused = False
        if self.body_limit is not None and length is not None and length > self.body_limit:
            return self._refuse()
        return super().gotLength(length)

    def handleContentChunk(self, data):
        if self.refused:
            return None
        self.body_received += len(data)
        if self.body_limit is not None and self.body_received > self.body_limit:
            return self._refuse()
        return super().handleContentChunk(data)

    def _refuse(self) -> None:
        """413 at once, then close: the rest of the body is never read."""
        self.refused = True
        body = json.dumps({"detail": f"the request body is larger than {self.body_limit // 2**20} MiB"}).encode()
        self.channel.transport.write(b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        self.channel.transport.loseConnection()

    def requestReceived(self, command, path, version):
        if self.refused:
            return None
        return super().requestReceived(command, path, version)

    def process(self):
        # daphne would read the whole body into ASGI messages at once: give it an empty body and the application
        # the spooled file (see BoundedServer.create_application). A WebSocket upgrade has no body to move.
        if not self.requestHeaders.hasHeader(b"Upgrade") and self.content is not None:
            self.spooled_body, self.content = self.content, io.BytesIO()
            self.spooled_body.seek(0)
        return super().process()


class BoundedHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = BoundedRequest
        return protocol


class BoundedServer(daphne_server.Server):
    def run(self):
        daphne_server.HTTPFactory = BoundedHTTPFactory  # Server.run builds its factory from this name
        return super().run()

    def create_application(self, protocol, scope):
        from controlplane.experiments.limits import BODY_FILE

        body = getattr(protocol, "spooled_body", None)
        if body is not None and scope.get("type") == "http":
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), BODY_FILE: body}}
        return super().create_application(protocol, scope)


class BoundedCommandLine(CommandLineInterface):
    server_class = BoundedServer


if __name__ == "__main__":
    BoundedCommandLine.entrypoint()
