from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.config import CONFIG_ENV_VAR, FlywheelConfig, find_config_file, load_config
from flywheel.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flywheel.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_embedded_stores(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.metadata_url == f"sqlite:///{tmp_path.resolve()}/.flywheel/metadata.db"
    assert cfg.online_store_url.startswith("sqlite:///")
    assert cfg.offline_store_path == tmp_path.resolve() / ".flywheel" / "offline"
    assert cfg.artifacts_url == str(tmp_path.resolve() / ".flywheel" / "artifacts")
    assert cfg.auth.required is False


def test_server_urls_are_kept(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            "metadata: postgresql+psycopg://u@127.0.0.1/db\n"
            "online_store: redis://127.0.0.1:6379/0\nevent_log: redis://127.0.0.1:6379/1\n"
            "artifacts: memory://bucket/prefix\n",
        )
    )
    assert cfg.metadata_url == "postgresql+psycopg://u@127.0.0.1/db"
    assert cfg.online_store_url == "redis://127.0.0.1:6379/0"
    assert cfg.artifacts_url == "memory://bucket/prefix"


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("metadta: sqlite:///x.db\n", "metadta", "unknown key; allowed keys are: project"),
        ("auth:\n  requird: true\n", "auth.requird", "allowed keys are: required"),
        ("metadata: mysql://root@localhost/db\n", "metadata", "scheme 'mysql' is not supported"),
        ("online_store: memcached://x\n", "online_store", "use one of: sqlite, redis"),
        ("event_log: kafka://broker\n", "event_log", "scheme 'kafka'"),
        ("offline_store: s3://bucket\n", "offline_store", "scheme 's3'"),
        ("server:\n  port: lots\n", "server.port", "valid integer"),
        ("server:\n  port: 70000\n", "server.port", "less than or equal to 65535"),
        ("auth:\n  required: maybe\n", "auth.required", "valid boolean"),
        ("project: 'bad name!'\n", "project", "should match pattern"),
        ("auth: 3\n", "auth", "valid dictionary"),
    ],
)
def test_each_kind_of_bad_config_names_file_key_and_reason(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.file == str(path)
    assert err.key == key
    assert fragment in err.reason
    assert "\n" not in str(err)
    assert str(err).startswith(f"{path}: {key}: ")


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML: line 2: expected"):
        load_config(write(tmp_path, "server: [1, 2\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_missing_named_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file; run `flywheel init`"):
        load_config(tmp_path / "nope.yaml")


def test_env_var_points_at_another_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "elsewhere" / "custom.yaml"
    other.parent.mkdir()
    other.write_text("project: other\n", encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV_VAR, str(other))
    monkeypatch.chdir(tmp_path)
    assert find_config_file() == other
    cfg = load_config()
    assert cfg.project == "other"
    assert cfg.root == other.parent.resolve()


def test_found_in_parent_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "project: up-there\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    monkeypatch.chdir(deep)
    assert load_config().project == "up-there"


def test_root_is_not_a_yaml_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="root: unknown key"):
        load_config(write(tmp_path, "root: /etc\n"))
    assert "root" not in FlywheelConfig().model_dump()
