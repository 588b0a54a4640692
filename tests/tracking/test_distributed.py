"""Under a real torch.distributed process group, only rank 0 records a run."""

from __future__ import annotations

from multiprocessing import get_context
from pathlib import Path

import pytest

from flywheel.project import Project
from flywheel.tracking import Tracker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _rank_main(rank: int, config: str, rendezvous: str, out: str) -> None:
    import torch.distributed as dist

    from flywheel.config import load_config
    from flywheel.tracking import Tracker

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        project = Project(load_config(config))
        with Tracker(project).start_run("ddp", params={"world": 2}) as run:
            run.log_metric("loss", float(rank))
        Path(out, f"rank{rank}").write_text(f"{run.id} {run.active}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_only_rank_zero_logs(project: Project, tmp_path: Path) -> None:
    import torch.distributed  # noqa: F401  (a declared dependency: fail, never skip)

    # Ranks fork from a server that imported torch once, instead of importing it per rank.
    context = get_context("forkserver")
    context.set_forkserver_preload(["torch.distributed", "flywheel.tracking"])
    config = str(project.root / "flywheel.yaml")
    procs = [
        context.Process(
            target=_rank_main, args=(rank, config, str(tmp_path / "rdzv"), str(tmp_path))
        )
        for rank in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    ids = {r: (tmp_path / f"rank{r}").read_text().split() for r in range(2)}
    assert ids[0][1] == "True" and ids[1][1] == "False"
    runs = Tracker(project).list_runs("ddp")
    assert [r.id for r in runs] == [ids[0][0]]
    assert runs[0].metrics["loss"].last == 0.0
