"""Artifact storage: byte backends below, one content-addressed layer above them.

Backends (``BlobBackend``) only move bytes under validated relative keys; ``ArtifactStore``
adds sha256 addressing and verification once for all backends. ``open_artifact_store(url)``
picks the backend from the URL: a local path (default) or any fsspec URL.
"""

from flywheel.artifacts._backends import (
    BlobBackend,
    FsspecBackend,
    LocalBackend,
    open_backend,
    validate_key,
)
from flywheel.artifacts._store import ArtifactStore, Digest, open_artifact_store

__all__ = [
    "ArtifactStore",
    "BlobBackend",
    "Digest",
    "FsspecBackend",
    "LocalBackend",
    "open_artifact_store",
    "open_backend",
    "validate_key",
]
