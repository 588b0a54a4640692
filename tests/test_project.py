"""The project: objects attached to it, and the cached default project of the module helpers,
which never migrates the schema on a read and prepares once for writing."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.config import DEFAULT_CONFIG_TEXT
from flywheel.project import Project, default_project


def test_attached_creates_once_and_detach_forgets(project: Project) -> None:
    made: list[int] = []
    first = project.attached("k", lambda: made.append(1) or object())
    assert project.attached("k", lambda: made.append(2) or object()) is first
    assert made == [1]
    assert project.detach("k") is first and project.detach("k") is None


def test_default_project_reads_without_migrating_and_prepares_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "flywheel.yaml"
    config.write_text(DEFAULT_CONFIG_TEXT.format(project="p"))
    monkeypatch.chdir(tmp_path)
    reader = default_project(config)
    assert default_project(config) is reader  # cached
    assert not (tmp_path / ".flywheel" / "metadata.db").exists()  # a read touched nothing
    calls: list[int] = []
    original = reader.prepare
    monkeypatch.setattr(reader, "prepare", lambda: (calls.append(1), original())[1])
    assert default_project(config, for_writing=True) is reader
    assert default_project(config, for_writing=True) is reader
    assert calls == [1]
    assert (tmp_path / ".flywheel" / "metadata.db").exists()
    reader.close()
