"""Byte backends for the artifact store.

Contract of every ``BlobBackend``:

* keys are relative POSIX paths checked by ``validate_key``: no absolute paths, no ``..``, no
  backslashes or NUL, no empty segments; a key can never name anything outside the root;
* ``write_bytes``/``write_file`` are atomic: a reader sees the old object, the new one, or
  nothing, never a partial write (temp file + rename on local disks);
* ``read_bytes``/``open_read`` of a missing key raise ``FileNotFoundError``;
* ``list(prefix)`` returns the keys under a prefix, sorted; ``exists`` never raises for a
  missing key.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import urlsplit

from flywheel._plugins import load_target
from flywheel.errors import FlywheelError

_SEGMENT = re.compile(r"^[A-Za-z0-9_.@+=,-][A-Za-z0-9_.@+=, -]*$")


class InvalidKeyError(FlywheelError):
    """An artifact key that is not a plain relative path inside the store."""


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe relative key, else raise ``InvalidKeyError``."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("artifact key must be a non-empty string")
    if "\x00" in key or "\\" in key:
        raise InvalidKeyError(f"artifact key {key!r} contains a NUL or backslash")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise InvalidKeyError(f"artifact key {key!r} must be relative")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidKeyError(f"artifact key {key!r} has an empty, '.' or '..' segment")
        if not _SEGMENT.match(part):
            raise InvalidKeyError(f"artifact key {key!r} has unsupported characters in {part!r}")
    return key


@runtime_checkable
class BlobBackend(Protocol):
    """Where artifact bytes live. See the module docstring for the contract."""

    url: str

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def write_file(self, key: str, source: Path) -> None: ...

    def open_read(self, key: str) -> BinaryIO: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...


def read_bytes(backend: BlobBackend, key: str) -> bytes:
    """All bytes under ``key`` (``FileNotFoundError`` if missing)."""
    with backend.open_read(key) as fh:
        return fh.read()


class LocalBackend:
    """A folder on a local disk. Writes go to a temp file in the same folder, fsync, rename."""

    def __init__(self, root: str | Path) -> None:
        root = str(root)
        if root.startswith("file://"):
            root = root[len("file://") :]
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        # Symlinks inside the root could still point out of it; refuse those too.
        if path != self.root and self.root not in path.parents:
            raise InvalidKeyError(f"artifact key {key!r} resolves outside the store")
        return path

    def write_bytes(self, key: str, data: bytes) -> None:
        self._write_atomically(key, lambda out: out.write(data))

    def write_file(self, key: str, source: Path) -> None:
        def copy(out: BinaryIO) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1024 * 1024)

        self._write_atomically(key, copy)

    def _write_atomically(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        """``write`` into a temp file beside the key's path, fsync, rename over it."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def open_read(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        keys = [
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        ]
        return sorted(keys)

    def local_path(self, key: str) -> Path:
        """The file behind ``key`` (local backend only; used to memory-map large blobs)."""
        return self._path(key)


class FsspecBackend:
    """Any fsspec filesystem (``s3://``, ``gs://``, ``memory://``, ...).

    Writes go to a unique temporary key and are moved into place, which is atomic on file-like
    stores and a single PUT on object stores (where an object is never visible half-written).
    """

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.root = root.rstrip("/")

    def _path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}"

    def write_bytes(self, key: str, data: bytes) -> None:
        self._write_via_temp(key, lambda tmp: self.fs.pipe_file(tmp, data))

    def write_file(self, key: str, source: Path) -> None:
        self._write_via_temp(key, lambda tmp: self.fs.put_file(str(source), tmp))

    def _write_via_temp(self, key: str, put: Callable[[str], object]) -> None:
        """``put`` the object at a unique temporary key beside ``key``, then move it there."""
        path = self._path(key)
        parent = str(PurePosixPath(path).parent)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        self.fs.makedirs(parent, exist_ok=True)
        put(tmp)
        try:
            self.fs.mv(tmp, path)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        if not self.fs.isfile(path):
            raise FileNotFoundError(key)
        fh: BinaryIO = self.fs.open(path, "rb")
        return fh

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._path(key)))

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not self.fs.exists(base):
            return []
        start = len(self.root) + 1
        found = [str(p)[start:] for p in self.fs.find(base)]
        return sorted(k for k in found if not PurePosixPath(k).name.startswith(".tmp-"))


# The artifact backends by URL scheme ("" is a plain path); every other scheme goes to fsspec,
# whose own registry knows s3, gs, memory, ... (one registry per role, as for event logs).
ARTIFACT_BACKENDS: dict[str, str] = {
    "": "flywheel.artifacts._backends:LocalBackend",
    "file": "flywheel.artifacts._backends:LocalBackend",
}
OTHER_SCHEMES = "flywheel.artifacts._backends:FsspecBackend"


def open_backend(url: str) -> BlobBackend:
    """The backend for a URL: a plain path or ``file://`` is local, anything else is fsspec."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    backend: BlobBackend = load_target(ARTIFACT_BACKENDS.get(scheme, OTHER_SCHEMES))(url)
    return backend
