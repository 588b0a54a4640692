"""Fixtures for the training tests: a fake executor (no processes) and a small Parquet file."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from flywheel.training import Job, ProcessState, ProcessStatus

WORKLOADS = Path(__file__).parent / "workloads"


class FakeExecutor:
    """Records launches and signals; statuses are set by the test."""

    def __init__(self) -> None:
        self.launched: list[tuple[str, int]] = []
        self.signals: list[tuple[str, int]] = []
        self.statuses: dict[tuple[str, int], ProcessStatus] = {}
        self.envs: dict[str, dict[str, str]] = {}

    def launch(self, job: Job, env: dict[str, str]) -> int:
        key = (job.id, job.attempt)
        if key not in self.statuses:
            self.launched.append(key)
            self.statuses[key] = ProcessStatus(ProcessState.RUNNING)
            self.envs[job.id] = env
        return 4242

    def status(self, job: Job) -> ProcessStatus:
        return self.statuses.get((job.id, job.attempt), ProcessStatus(ProcessState.NOT_STARTED))

    def signal(self, job: Job, sig: int) -> None:
        self.signals.append((job.id, sig))

    def logs(self, job: Job, attempt: int | None = None) -> dict[str, str]:
        return {}

    def exit(
        self, job: Job | str, code: int, attempt: int | None = None, *, stopped: bool = False
    ) -> None:
        job_id = job if isinstance(job, str) else job.id
        if attempt is None:
            attempt = max(a for j, a in self.statuses if j == job_id)
        self.statuses[(job_id, attempt)] = ProcessStatus(
            ProcessState.EXITED, exit_code=code, signalled=bool(code), stopped=stopped
        )

    def lose(self, job_id: str, attempt: int) -> None:
        self.statuses[(job_id, attempt)] = ProcessStatus(ProcessState.LOST)

    def sigterms(self, job_id: str) -> int:
        return sum(1 for j, s in self.signals if j == job_id and s == signal.SIGTERM)


@pytest.fixture
def fake_executor() -> FakeExecutor:
    return FakeExecutor()


@pytest.fixture(scope="session")
def parquet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("data") / "train.parquet"
    rng = np.random.default_rng(0)
    n = 512
    cols = {f"f{i}": rng.normal(size=n).astype("float32") for i in range(8)}
    cols["y"] = (sum(cols[f"f{i}"] * (i + 1) for i in range(8)) / 10).astype("float32")
    cols["row"] = np.arange(n, dtype="int64")
    pq.write_table(pa.table(cols), path, row_group_size=64)
    return path
