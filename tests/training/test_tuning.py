"""Optuna tuning: trials are scheduled jobs, the median pruner stops a bad one, the study lives in
the metadata database, and the best hyperparameters are registered."""

from __future__ import annotations

import pytest

from flywheel.project import Project
from flywheel.training import JobSpec, JobState, JobStore, Resources, TuneParam
from flywheel.training._tuning import MetadataJournalBackend, run_study
from tests.training.conftest import WORKLOADS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_journal_backend_is_dense_and_ordered(any_project: Project) -> None:
    backend = MetadataJournalBackend(any_project.db)
    backend.append_logs([{"op": 0}, {"op": 1}])
    backend.append_logs([{"op": 2}])
    assert list(backend.read_logs(0)) == [{"op": 0}, {"op": 1}, {"op": 2}]
    assert list(backend.read_logs(2)) == [{"op": 2}]


def test_tune_prunes_bad_trial_and_registers_best(project: Project) -> None:
    spec = JobSpec(
        name="quad",
        entrypoint=str(WORKLOADS / "quad.py"),
        resources=Resources(procs_per_node=1),
        register="quad-model",
        experiment="quad",
        tune={"x": TuneParam(type="float", low=-10.0, high=10.0)},
    )
    seen = []
    result = run_study(
        project,
        spec,
        trials=3,
        parallel=2,
        enqueue=[{"x": 2.0}, {"x": 2.5}, {"x": 9.0}],
        pruner_startup_trials=1,
        on_trial=seen.append,
        poll=0.2,
        timeout=300,
    )
    states = {o.params["x"]: o.state for o in result.trials}
    assert states[2.0] == "complete" and states[9.0] == "pruned"
    assert result.best_params == {"x": 2.0} and result.best_value == pytest.approx(0.25)
    assert len(seen) == 3
    store = JobStore(project.db)
    pruned = next(o for o in result.trials if o.params["x"] == 9.0)
    assert store.get(pruned.job_id).state is JobState.CANCELLED
    assert len(store.metrics(pruned.job_id, "val_loss")) < 4  # stopped early
    assert result.model_version == "quad-model/1"
    from flywheel.registry import Registry

    mv = Registry(project).get_version("quad-model", 1)
    assert mv.run_id is not None
    # The study is in the metadata database: a second tuner sees all three trials.
    import optuna

    from flywheel.training._tuning import study_storage

    loaded = optuna.load_study(study_name="quad", storage=study_storage(project))
    assert len(loaded.trials) == 3
