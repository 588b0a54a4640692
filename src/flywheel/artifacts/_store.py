"""The content-addressed layer: every blob is named by the sha256 of its bytes.

Blobs live at ``blobs/sha256/ab/abcdef...``; writing the same bytes twice is a no-op; every
read hashes what it reads and raises ``IntegrityError`` on a mismatch, naming the digest.
Named files (run logs, checkpoints) go through ``put_named``/``get_named``, whose keys are
validated so they can never leave the store's root.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flywheel.artifacts._backends import BlobBackend, open_backend, read_bytes, validate_key
from flywheel.errors import FlywheelError, IntegrityError, NotFoundError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Digest:
    """A blob's identity: its sha256 (hex) and size in bytes."""

    sha256: str
    size: int

    def __str__(self) -> str:
        return f"sha256:{self.sha256}"


def _check_sha(sha256: str) -> str:
    sha = sha256.removeprefix("sha256:")
    if not _HEX64.match(sha):
        raise FlywheelError(f"not a sha256 digest: {sha256!r}")
    return sha


class ArtifactStore:
    """Content-addressed blobs over any ``BlobBackend``."""

    def __init__(self, backend: BlobBackend) -> None:
        self.backend = backend

    @property
    def url(self) -> str:
        return self.backend.url

    @staticmethod
    def blob_key(sha256: str) -> str:
        sha = _check_sha(sha256)
        return f"blobs/sha256/{sha[:2]}/{sha}"

    def put_bytes(self, data: bytes) -> Digest:
        """Store ``data``; return its digest. Idempotent."""
        digest = Digest(hashlib.sha256(data).hexdigest(), len(data))
        key = self.blob_key(digest.sha256)
        if not self.backend.exists(key):
            self.backend.write_bytes(key, data)
        return digest

    def put_file(self, path: str | Path) -> Digest:
        """Store a file's bytes, streamed; return its digest. Idempotent."""
        h = hashlib.sha256()
        size = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
        digest = Digest(h.hexdigest(), size)
        key = self.blob_key(digest.sha256)
        if not self.backend.exists(key):
            self.backend.write_file(key, Path(path))
        return digest

    def has(self, sha256: str) -> bool:
        return self.backend.exists(self.blob_key(sha256))

    def get_bytes(self, sha256: str) -> bytes:
        """Verified bytes of a blob: ``NotFoundError`` if absent, ``IntegrityError`` if altered."""
        sha = _check_sha(sha256)
        try:
            data = read_bytes(self.backend, self.blob_key(sha))
        except FileNotFoundError:
            raise NotFoundError(f"artifact sha256:{sha} is not in the store {self.url}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise IntegrityError(
                f"artifact sha256:{sha} is corrupt: its bytes hash to sha256:{actual}"
            )
        return data

    def get_file(self, sha256: str, dest: str | Path) -> Path:
        """Copy the blob to ``dest`` (atomically), verifying its hash while streaming."""
        sha = _check_sha(sha256)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            try:
                src = self.backend.open_read(self.blob_key(sha))
            except FileNotFoundError:
                raise NotFoundError(
                    f"artifact sha256:{sha} is not in the store {self.url}"
                ) from None
            with src, open(fd, "wb") as out:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != sha:
                raise IntegrityError(
                    f"artifact sha256:{sha} is corrupt: its bytes hash to sha256:{h.hexdigest()}"
                )
            Path(tmp).replace(dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    # -- named files (logs, checkpoints, run artifacts) ----------------------------------------

    def put_named(self, key: str, data: bytes) -> Digest:
        """Write ``data`` under a validated name (atomically); return its digest."""
        validate_key(key)
        if key.startswith("blobs/"):
            raise FlywheelError(f"artifact key {key!r}: 'blobs/' is reserved for content")
        self.backend.write_bytes(key, data)
        return Digest(hashlib.sha256(data).hexdigest(), len(data))

    def put_named_file(self, key: str, path: str | Path) -> None:
        validate_key(key)
        if key.startswith("blobs/"):
            raise FlywheelError(f"artifact key {key!r}: 'blobs/' is reserved for content")
        self.backend.write_file(key, Path(path))

    def get_named(self, key: str, *, sha256: str | None = None) -> bytes:
        """Read a named file; with ``sha256`` given, verify it and raise ``IntegrityError``."""
        try:
            data = read_bytes(self.backend, validate_key(key))
        except FileNotFoundError:
            raise NotFoundError(f"artifact {key!r} is not in the store {self.url}") from None
        if sha256 is not None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != _check_sha(sha256):
                raise IntegrityError(
                    f"artifact {key!r} is corrupt: expected sha256:{sha256}, got sha256:{actual}"
                )
        return data

    def list_named(self, prefix: str) -> list[str]:
        return self.backend.list(validate_key(prefix))

    def put_tree(self, folder: str | Path) -> dict[str, str]:
        """Store every file under ``folder``; return ``{relative_path: sha256}``."""
        folder = Path(folder)
        out: dict[str, str] = {}
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                out[p.relative_to(folder).as_posix()] = self.put_file(p).sha256
        return out


def open_artifact_store(url: str) -> ArtifactStore:
    """An ``ArtifactStore`` for a local path or fsspec URL."""
    return ArtifactStore(open_backend(url))


__all__ = ["ArtifactStore", "Digest", "open_artifact_store"]
