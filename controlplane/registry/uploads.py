"""Streaming an uploaded model to disk: never held in memory, hashed and size-capped while it streams.

`IncomingFile` writes chunks to a temporary file under MEDIA_ROOT/models/incoming (the same file system as
the final place, so storing it is a rename), hashes them with SHA-256 and stops with `TooBig` as soon as the
running total passes the cap. `ModelUploadHandler` feeds it from Django's multipart parser (installed on the
request before the body is read, see registry.api); `import_model` feeds it from a file.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile, StopUpload

CHUNK_BYTES = 1 << 20


ENVELOPE_BYTES = 1 << 20  # the multipart boundaries, headers and the name field around the file


def max_upload_bytes() -> int:
    return int(settings.MODEL_UPLOAD_MAX_BYTES)


def max_request_bytes() -> int:
    """The largest upload request: the file's cap plus its envelope (the ASGI guard's bound on this route)."""
    return max_upload_bytes() + ENVELOPE_BYTES


class TooBig(Exception):
    pass


class IncomingFile:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        folder = Path(settings.MEDIA_ROOT) / "models" / "incoming"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{uuid.uuid4().hex}.part"
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed by finish() or discard()
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.discard()
            raise TooBig(f"larger than the {self.max_bytes / 2**30:g} GiB limit")
        self._sha.update(chunk)
        self._fh.write(chunk)

    def finish(self) -> str:
        """Flush to the disk (a cold start drops the file's page cache; dirty pages would stay) and return the
        SHA-256."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        return self._sha.hexdigest()

    def discard(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self.path.unlink(missing_ok=True)


def receive_file(fh, *, max_bytes: int | None = None) -> tuple[Path, str, int]:
    """Copy an open binary file into an incoming file: (path, sha256, size). Raises TooBig."""
    incoming = IncomingFile(max_upload_bytes() if max_bytes is None else max_bytes)
    try:
        while chunk := fh.read(CHUNK_BYTES):
            incoming.write(chunk)
    except BaseException:
        incoming.discard()
        raise
    return incoming.path, incoming.finish(), incoming.size


class StreamedModelFile(UploadedFile):
    """What the handler hands the view: the file is already on disk at `path`, with its hash and size."""

    def __init__(self, path: Path, sha256: str, size: int, name: str, content_type: str | None):
        super().__init__(file=None, name=name, content_type=content_type, size=size)
        self.path = path
        self.sha256 = sha256

    def close(self) -> None:  # nothing open
        pass


class ModelUploadHandler(FileUploadHandler):
    """The only upload handler of the model upload view: the `file` field goes straight to an IncomingFile."""

    chunk_size = 256 * 1024

    def __init__(self, request=None):
        super().__init__(request)
        self.incoming: IncomingFile | None = None
        self.too_big: str | None = None

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        # A declared body far beyond the cap is refused before a byte is read.
        if content_length and content_length > max_request_bytes():
            self.too_big = f"larger than the {max_upload_bytes() / 2**30:g} GiB limit"
            raise StopUpload(connection_reset=False)
        return None

    def new_file(self, field_name, file_name, content_type, content_length, charset=None, content_type_extra=None):
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        if field_name != "file" or self.incoming is not None:
            raise SkipFile()
        self.incoming = IncomingFile(max_upload_bytes())

    def receive_data_chunk(self, raw_data, start):
        try:
            self.incoming.write(raw_data)
        except TooBig as exc:
            self.too_big = str(exc)
            raise StopUpload(connection_reset=False) from exc
        return None

    def file_complete(self, file_size):
        sha = self.incoming.finish()
        return StreamedModelFile(self.incoming.path, sha, self.incoming.size, self.file_name, self.content_type)

    def upload_interrupted(self):
        if self.incoming is not None:
            self.incoming.discard()
