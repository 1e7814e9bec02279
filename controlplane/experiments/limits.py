"""Bounds on what a request may make the server do before anything is validated.

Every body is bounded in bytes while it arrives (`RequestSizeLimit` for the whole request under ASGI,
`CappedUploadHandler` for each uploaded file), then in nesting depth before it is parsed (JSON: a scan of
the brackets; YAML: its event stream), then in nodes after it is parsed (a YAML alias counts its target
again, so a "billion laughs" document is refused before anything walks it). Each refusal is a SpecError
naming the problem, which the API and the pages show as a 400 like any other invalid input. A NUL character in
a query parameter or a url-encoded form field is refused with a 400 before any view (`RejectNulMiddleware`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import yaml
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpResponseBadRequest, JsonResponse
from rest_framework.exceptions import APIException
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser

from workers import spec as S

MAX_DEPTH = 32  # a spec is about 5 levels deep; 32 leaves room and stays far below Python's recursion limit
MAX_NODES = 200_000  # values in one document, aliases expanded; a 64-variant spec has a few thousand
MAX_YAML_ALIASES = 100
# WebSockets: the live pages only listen, so the web server (daphne) refuses any incoming message or frame over
# this size as it reads the frame's header (close 1009, the payload never buffered), and the consumer closes a
# socket on any message at all (consumers.CLOSE_INPUT_REFUSED). Every daphne command line uses daphne_argv.
WEBSOCKET_MAX_MESSAGE_BYTES = 4096
# The C parser when PyYAML was built with libyaml: the same safe constructors, about 10x faster.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_DELTA = np.zeros(256, dtype=np.int8)
_DELTA[[ord("["), ord("{")]] = 1
_DELTA[[ord("]"), ord("}")]] = -1


def daphne_argv(host: str, port: int) -> list[str]:
    """The web server's command line (the demo, the tests, docs/deploy.md): daphne with request bodies bounded while
    they stream (controlplane.webserver, which takes daphne's arguments) and the WebSocket bounds."""
    size = str(WEBSOCKET_MAX_MESSAGE_BYTES)
    return [sys.executable, "-m", "controlplane.webserver", "-b", host, "-p", str(port),
            "--websocket-max-message-size", size, "--websocket-max-frame-size", size, "controlplane.asgi:application"]


def too_deep() -> S.SpecError:
    return S.SpecError([S.FieldError("", f"the document is nested more than {MAX_DEPTH} levels deep")])


def check_json_depth(raw: bytes | str) -> None:
    """Refuse JSON nested deeper than MAX_DEPTH, without parsing it (brackets inside strings do not count)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    brackets = np.frombuffer(_JSON_STRING.sub(b"", raw), dtype=np.uint8)
    if brackets.size and int(np.cumsum(_DELTA[brackets], dtype=np.int64).max(initial=0)) > MAX_DEPTH:
        raise too_deep()


def check_yaml_shape(text: str) -> None:
    """Refuse YAML nested deeper than MAX_DEPTH or with more than MAX_YAML_ALIASES aliases, from its event
    stream (the parser keeps no Python stack per level; the composer that builds objects does)."""
    depth = aliases = 0
    for event in yaml.parse(text, Loader=SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise too_deep()
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise S.SpecError([S.FieldError("", f"the document uses more than {MAX_YAML_ALIASES} YAML aliases")])


def check_document(data: Any) -> None:
    """Refuse a parsed document deeper than MAX_DEPTH or with more than MAX_NODES values, counting a value
    reached twice (a YAML alias) twice. Iterative, and stops at the bound: never walks a huge expansion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise S.SpecError([S.FieldError("", f"the document has more than {MAX_NODES:,} values")])
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth >= MAX_DEPTH and children:
            raise too_deep()
        stack.extend((child, depth + 1) for child in children)


# ---- the API's JSON bodies --------------------------------------------------------------------------------
class BodyTooLarge(APIException):
    status_code = 413
    default_detail = "request body too large"
    default_code = "body_too_large"


class LimitedJSONParser(JSONParser):
    """DRF's JSON parser, reading at most REQUEST_MAX_BYTES and refusing deep nesting before json.loads."""

    def parse(self, stream, media_type=None, parser_context=None):
        from rest_framework.exceptions import ParseError

        limit = settings.REQUEST_MAX_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise BodyTooLarge(f"the request body is larger than {limit // (1024 * 1024)} MiB")
        try:
            check_json_depth(raw)
        except S.SpecError as exc:
            raise ParseError(exc.errors[0].message) from None
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            data = json.loads(raw.decode(encoding))
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        except RecursionError:  # the scan above should have refused it; never a 500 if it did not
            raise ParseError(too_deep().errors[0].message) from None
        try:
            check_document(data)
        except S.SpecError as exc:
            raise ParseError(exc.errors[0].message) from None
        return data


# ---- uploads ------------------------------------------------------------------------------------------------
class TooLargeUpload(UploadedFile):
    """Stands for a file that went past UPLOAD_MAX_BYTES: its real size, and no content kept. The forms
    refuse it by its size; reading it is an error, so no code can mistake the kept prefix for the file."""

    def __init__(self, *, name: str, size: int, content_type: str | None, charset: str | None):
        super().__init__(file=None, name=name, content_type=content_type, size=size, charset=charset)

    def open(self, mode=None):
        raise ValueError(f"{self.name!r} exceeded the upload limit and was not stored")

    def read(self, *args, **kwargs):
        return self.open()

    def chunks(self, chunk_size=None):
        return self.open()


class CappedUploadHandler(FileUploadHandler):
    """First upload handler: passes a file's chunks on to Django's memory / temporary-file handlers until the
    file passes UPLOAD_MAX_BYTES, then swallows the rest (counting it) so at most the cap is ever stored."""

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        return None if self.received > settings.UPLOAD_MAX_BYTES else raw_data

    def file_complete(self, file_size):
        if self.received > settings.UPLOAD_MAX_BYTES:
            return TooLargeUpload(name=self.file_name, size=self.received, content_type=self.content_type,
                                  charset=self.charset)
        return None  # the next handler completes it


# ---- NUL characters -------------------------------------------------------------------------------------------
NUL_MESSAGE = "NUL character in {where} {name}"


def nul_in_request(request) -> tuple[str, str] | None:
    """(where, name) of the first query parameter or form field whose name or value holds a NUL character, else
    None. Form fields: url-encoded bodies everywhere, multipart bodies on the pages (whose CSRF check parses them
    before the view anyway); an API view parses its own multipart body, with its own upload handlers."""
    sources = [("query parameter", request.GET)]
    form = request.content_type == "application/x-www-form-urlencoded" or (
        request.content_type == "multipart/form-data" and not request.path.startswith("/api/"))
    if form and request.method not in ("GET", "HEAD", "OPTIONS"):
        sources.append(("form field", request.POST))
    for where, params in sources:
        for name, values in params.lists():
            if "\x00" in name or any("\x00" in v for v in values):
                return where, name.replace("\x00", "\\x00")
    return None


class RejectNulMiddleware:
    """400 for a request whose query string or form fields decode to a NUL character, before any view:
    PostgreSQL refuses NUL in text, so a filter or a stored field holding one was a 500 (SQLite takes it). The
    API answers {"detail": ...}, the pages plain text."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        found = nul_in_request(request)
        if found is None:
            return self.get_response(request)
        where, name = found
        refusal = NUL_MESSAGE.format(where=where, name=name)
        if request.path.startswith("/api/"):  # the API's error shape (api.py), the parameter as the field path
            return JsonResponse({"detail": refusal, "errors": [{"path": name, "message": "NUL character"}]},
                                status=400)
        return HttpResponseBadRequest(refusal, content_type="text/plain; charset=utf-8")


def document_bad_request(result, generator, request, public):
    """drf-spectacular postprocessing hook: every operation may answer 400 (RejectNulMiddleware refuses a NUL in any
    query parameter or form field), so every operation documents it."""
    bad_request = {"description": "Bad request (e.g. " + NUL_MESSAGE.format(where="query parameter", name="X") + ").",
                   "content": {"application/json": {"schema": {
                       "type": "object", "required": ["detail", "errors"], "properties": {
                           "detail": {"type": "string"},
                           "errors": {"type": "array", "items": {
                               "type": "object", "required": ["path", "message"],
                               "properties": {"path": {"type": "string"}, "message": {"type": "string"}}}}}}}}}
    for methods in result.get("paths", {}).values():
        for operation in methods.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("400", bad_request)
    return result


# ---- the whole request, under ASGI ------------------------------------------------------------------------
BODY_FILE = "slsbench.body_file"  # scope extension: the body, already spooled by the server (controlplane.webserver)
BODY_MESSAGE_BYTES = 256 * 1024


class RequestSizeLimit:
    """ASGI middleware: 413 for a declared Content-Length over the bound before reading any of it; a body that
    turns out longer while it streams is cut off (the app sees a disconnect). Django's ASGI handler would
    otherwise spool any body, however large, to disk before a view or a limit sees it.

    The bound is REQUEST_MAX_BYTES, or a route's own (`per_path`: a callable read at each request, so settings
    changes apply): the model upload takes files far larger than any other body. `limit_for` is what the web
    server (controlplane.webserver) applies while the body arrives; a body the server spooled itself comes as
    the scope extension BODY_FILE and is read from it in BODY_MESSAGE_BYTES messages as the app asks."""

    def __init__(self, app, per_path: dict[str, Callable[[], int]] | None = None):
        self.app = app
        self.per_path = dict(per_path or {})

    def limit_for(self, path: str) -> int:
        route = self.per_path.get(path)
        return route() if route is not None else settings.REQUEST_MAX_BYTES

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope.get("path", ""))
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            body = json.dumps({"detail": f"the request body is larger than {limit // (1024 * 1024)} MiB"}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return None
        received = 0
        spooled = (scope.get("extensions") or {}).get(BODY_FILE)
        if spooled is not None:
            receive = _spooled_receive(spooled, receive)

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    return {"type": "http.disconnect"}
            return message

        return await self.app(scope, limited_receive, send)


def _spooled_receive(body, receive):
    """`receive` for a body the server spooled to a file: the server's own (empty, final) body message is taken
    first, then the file's content in messages, then the server's messages again (a disconnect)."""
    state = {"started": False, "done": False}

    async def spooled_receive():
        if not state["started"]:
            state["started"] = True
            first = await receive()
            if first["type"] != "http.request":
                state["done"] = True
                return first
        if state["done"]:
            return await receive()
        chunk = body.read(BODY_MESSAGE_BYTES)
        more = len(chunk) == BODY_MESSAGE_BYTES
        if not more:
            state["done"] = True
            body.close()
        return {"type": "http.request", "body": chunk, "more_body": more}

    return spooled_receive


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """The API's pagination with a bounded `limit`: an unbounded one reached the database as an integer it cannot
    hold (PostgreSQL: bigint out of range, a 500)."""

    max_limit = 1000
