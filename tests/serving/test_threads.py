"""`flywheel serve` caps BLAS/OpenMP/torch at one thread per library (#14 item 3)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from flywheel.project import Project
from flywheel.serving import limit_native_threads
from flywheel.serving._threads import THREAD_VARIABLES


@pytest.fixture
def restored_pools(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in THREAD_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    np.ones((4, 4)) @ np.ones((4, 4))  # numpy's BLAS is loaded
    before = {lib["internal_api"]: lib["num_threads"] for lib in threadpool_info()}
    yield
    threadpool_limits(limits=before)


def test_unset_variables_are_set_and_loaded_pools_capped(restored_pools: None) -> None:
    assert limit_native_threads(1) == dict.fromkeys(THREAD_VARIABLES, "1")
    pools = threadpool_info()
    assert pools and all(lib["num_threads"] == 1 for lib in pools), pools


def test_a_variable_the_user_set_is_kept(
    restored_pools: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    got = limit_native_threads(1)
    assert got["OMP_NUM_THREADS"] == "3" and got["OPENBLAS_NUM_THREADS"] == "1"


def test_the_setting_is_validated(project: Project) -> None:
    assert project.config.serving.native_threads == 1
    with pytest.raises(ValueError, match="native_threads"):
        limit_native_threads(0)
    with pytest.raises(ValueError, match="native_threads"):
        project.config.serving.model_validate({"native_threads": 0})
