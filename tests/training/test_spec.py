from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.training import JobSpec, JobSpecError, Resources, load_job_spec, parse_job_spec

GOOD = {
    "name": "mnist",
    "entrypoint": "pkg.train:main",
    "args": ["--epochs", 2],
    "team": "research",
    "priority": 70,
    "max_restarts": 2,
    "resources": {"nodes": 2, "procs_per_node": 2, "cpus_per_proc": 1, "memory": "2GiB"},
    "checkpoint": {"every_steps": 50, "keep_last": 2},
    "dataset": "clicks_train",
    "hyperparameters": {"lr": 0.01},
    "experiment": "mnist",
    "register": "mnist-classifier",
    "tune": {
        "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        "opt": {"type": "categorical", "choices": ["sgd", "adam"]},
    },
}


def test_parse_good_spec_round_trips() -> None:
    spec = parse_job_spec(GOOD)
    assert spec.resources == Resources(2, 2, 1, 0, 2 * 1024**3)
    assert spec.resources.procs == 4 and spec.resources.cpus == 4
    assert spec.args == ("--epochs", "2")
    assert spec.tune["lr"].log is True and spec.tune["opt"].choices == ("sgd", "adam")
    assert parse_job_spec(spec.to_dict()) == spec
    assert not spec.is_script


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        ({"priority": 101}, "priority", "between 0 and 100"),
        ({"priority": "high"}, "priority", "must be an integer"),
        ({"resources": {"gpu": 1}}, "resources.gpu", "allowed keys are: nodes, procs_per_node"),
        ({"resources": {"nodes": 0}}, "resources.nodes", "between 1 and 64"),
        ({"resources": {"memory": "2 parsecs"}}, "resources.memory", "GiB"),
        ({"checkpoint": {"every": 5}}, "checkpoint.every", "every_steps, every_seconds"),
        ({"colour": "red"}, "colour", "allowed keys are: name, entrypoint"),
        ({"entrypoint": "train"}, "entrypoint", "module:function"),
        ({"name": "bad name!"}, "name", "letters, digits"),
        ({"tune": {"lr": {"type": "normal"}}}, "tune.lr.type", "float, int, categorical"),
        ({"tune": {"lr": {"type": "float", "low": 1, "high": 0}}}, "tune.lr.low", "below high"),
        ({"preemptible": "yes"}, "preemptible", "true or false"),
    ],
)
def test_invalid_specs_name_key_and_allowed_values(
    change: dict[str, object], key: str, fragment: str
) -> None:
    with pytest.raises(JobSpecError) as err:
        parse_job_spec({**GOOD, **change})
    assert err.value.key == key
    assert fragment in str(err.value)


def test_missing_required_key() -> None:
    with pytest.raises(JobSpecError, match="entrypoint: is required"):
        parse_job_spec({"name": "x"})


def test_dataclass_validates_like_yaml() -> None:
    with pytest.raises(JobSpecError, match="priority"):
        JobSpec(name="a", entrypoint="m:f", priority=500)


def test_load_job_yaml_resolves_workdir(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("name: demo\nentrypoint: train.py\nargs: [--fast]\n")
    spec = load_job_spec(tmp_path / "job.yaml")
    assert spec.is_script and spec.workdir == str(tmp_path.resolve())
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(JobSpecError, match="not valid YAML"):
        load_job_spec(tmp_path / "bad.yaml")
    with pytest.raises(JobSpecError, match="no such file"):
        load_job_spec(tmp_path / "missing.yaml")
