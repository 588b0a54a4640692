from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.artifacts import ArtifactStore, LocalBackend, open_artifact_store, validate_key
from flywheel.artifacts._backends import InvalidKeyError
from flywheel.errors import IntegrityError, NotFoundError


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return open_artifact_store(str(tmp_path / "artifacts"))
    return open_artifact_store(f"memory://fw-{uuid.uuid4().hex}")


def test_content_addressed_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    digest = store.put_bytes(data)
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    assert digest.size == len(data)
    assert store.get_bytes(digest.sha256) == data
    assert store.put_bytes(data) == digest  # idempotent
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    assert store.put_file(src) == digest
    out = store.get_file(digest.sha256, tmp_path / "out" / "copy.bin")
    assert out.read_bytes() == data


def test_missing_blob_is_not_found(store: ArtifactStore) -> None:
    with pytest.raises(NotFoundError, match="is not in the store"):
        store.get_bytes("0" * 64)


def test_tampered_blob_raises_integrity_error(tmp_path: Path) -> None:
    store = open_artifact_store(str(tmp_path / "a"))
    digest = store.put_bytes(b"model weights" * 1000)
    path = tmp_path / "a" / store.blob_key(digest.sha256)
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=f"sha256:{digest.sha256} is corrupt"):
        store.get_bytes(digest.sha256)
    with pytest.raises(IntegrityError):
        store.get_file(digest.sha256, tmp_path / "dest.bin")
    assert not (tmp_path / "dest.bin").exists()  # nothing half-written


def test_named_file_verification(store: ArtifactStore) -> None:
    digest = store.put_named("runs/r1/log.txt", b"hello")
    assert store.get_named("runs/r1/log.txt", sha256=digest.sha256) == b"hello"
    with pytest.raises(IntegrityError, match="expected sha256"):
        store.get_named("runs/r1/log.txt", sha256="1" * 64)
    assert store.list_named("runs") == ["runs/r1/log.txt"]


@pytest.mark.parametrize(
    "key",
    [
        "../escape",
        "a/../../escape",
        "/etc/passwd",
        "a/./b",
        "a//b",
        "..",
        "a\\..\\b",
        "ok/\x00nul",
        "C:/windows",
        "",
        "a/b/",
    ],
)
def test_keys_cannot_escape_the_root(store: ArtifactStore, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.put_named(key, b"x")
    with pytest.raises(InvalidKeyError):
        store.get_named(key)


def test_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    backend = LocalBackend(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(InvalidKeyError, match="outside the store"):
        backend.write_bytes("link/file", b"x")
    assert not (outside / "file").exists()


def test_blobs_prefix_is_reserved(store: ArtifactStore) -> None:
    with pytest.raises(Exception, match="reserved"):
        store.put_named("blobs/sha256/aa/forged", b"x")


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "r")
    for i in range(5):
        backend.write_bytes("a/b.bin", bytes([i]) * 100)
    assert backend.list() == ["a/b.bin"]
    assert [p.name for p in (tmp_path / "r" / "a").iterdir()] == ["b.bin"]


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_any_accepted_key_stays_inside_root(
    tmp_path_factory: pytest.TempPathFactory, key: str
) -> None:
    root = tmp_path_factory.getbasetemp() / "prop-root"
    backend = LocalBackend(root)
    try:
        validate_key(key)
    except InvalidKeyError:
        return
    path = backend.local_path(key)
    assert root.resolve() in path.parents


def test_backend_is_chosen_by_url_scheme(tmp_path: Path) -> None:
    """A plain path and ``file://`` are the local folder (the same one); other schemes, fsspec."""
    from flywheel.artifacts._backends import ARTIFACT_BACKENDS, FsspecBackend, open_backend

    plain = open_backend(str(tmp_path / "a"))
    as_url = open_backend(f"file://{tmp_path / 'a'}")
    assert isinstance(plain, LocalBackend) and isinstance(as_url, LocalBackend)
    plain.write_bytes("k", b"v")
    with as_url.open_read("k") as fh:
        assert fh.read() == b"v"
    assert isinstance(open_backend(f"memory://fw-{uuid.uuid4().hex}"), FsspecBackend)
    assert set(ARTIFACT_BACKENDS) == {"", "file"}
