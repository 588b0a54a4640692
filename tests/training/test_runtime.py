"""The runtime library in one process: sharded data loading and crash-safe checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from flywheel.training import CheckpointError
from flywheel.training import runtime as rt


def rows(ds: rt.ShardedParquetDataset, *, workers: int = 0) -> list[list[int]]:
    return [b["row"].tolist() for b in ds.loader(num_workers=workers)]


def test_shards_are_disjoint_equal_and_deterministic(parquet_file: Path) -> None:
    seen: list[int] = []
    per_rank = []
    for rank in range(3):
        ds = rt.ShardedParquetDataset([parquet_file], 10, rank=rank, world_size=3, seed=1)
        batches = rows(ds)
        per_rank.append(len(batches))
        seen += [r for b in batches for r in b]
        assert batches == rows(rt.ShardedParquetDataset([parquet_file], 10, rank=rank,
                                                        world_size=3, seed=1))  # fmt: skip
    assert per_rank == [17, 17, 17]  # 512 rows -> 51 full batches of 10 -> 17 per rank
    assert len(seen) == len(set(seen)) == 510
    ds = rt.ShardedParquetDataset([parquet_file], 10, rank=0, world_size=3, seed=1)
    epoch0 = rows(ds)
    ds.set_epoch(1)
    assert rows(ds) != epoch0  # reshuffled per epoch


def test_worker_split_preserves_order_and_resume_position(parquet_file: Path) -> None:
    ds = rt.ShardedParquetDataset([parquet_file], 16, rank=1, world_size=2, seed=3)
    ds.set_epoch(2)
    plain = rows(ds)
    ds.load_state_dict({"epoch": 2, "position": 0})
    assert rows(ds, workers=2) == plain
    assert ds.state_dict()["position"] == len(plain) == len(ds)
    # Stop after 5 batches, then resume from the saved state in a fresh dataset.
    ds.load_state_dict({"epoch": 2, "position": 0})
    it = iter(ds)
    head = [next(it)["row"].tolist() for _ in range(5)]
    state = ds.state_dict()
    fresh = rt.ShardedParquetDataset([parquet_file], 16, rank=1, world_size=2, seed=3)
    fresh.load_state_dict(state)
    assert head + rows(fresh, workers=2) == plain


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.numpy().tobytes())
    return h.hexdigest()


def _train(
    parquet_file: Path, ckdir: Path, stop_at: int | None, *, corrupt: bool = False
) -> tuple[str, int | None, dict[int, str]]:
    """Train 20 steps (dropout, momentum, LR schedule, shuffled data); optionally stop at
    ``stop_at`` and continue in fresh objects from the checkpoints, as a restarted process would.

    Returns the final digest, the step ``resume()`` reported (None without a restart) and the
    model digest after every step of the first process and right after the restart's resume
    (key ``-1``), so a test can tell which checkpoint's state was loaded."""
    seen: dict[int, str] = {}

    def build() -> tuple[
        torch.nn.Module, torch.optim.Optimizer, object, rt.ShardedParquetDataset, rt.Checkpointer
    ]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(8, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1)
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, 4, 0.5)
        ds = rt.ShardedParquetDataset([parquet_file], 32, seed=5, rank=0, world_size=1)
        ck = rt.Checkpointer(
            ckdir,
            model=model,
            optimizer=opt,
            scheduler=sched,
            dataset=ds,
            every_steps=3,
            keep_last=2,
        )
        return model, opt, sched, ds, ck  # fmt: skip

    def loop(model, opt, sched, ds, ck, step: int, until: int) -> int:  # type: ignore[no-untyped-def]
        for epoch in range(ds.epoch, 3):
            ds.set_epoch(epoch)
            for batch in ds:
                x = torch.stack([batch[f"f{i}"] for i in range(8)], 1)
                loss = torch.nn.functional.mse_loss(model(x).squeeze(1), batch["y"])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                seen.setdefault(step, _digest(model))
                ck.after_step(step)
                if step == until:
                    return step
        return step

    rt.seed_everything(42)
    model, *rest = build()
    loop(model, *rest, step=0, until=stop_at or 20)
    if stop_at is None:
        return _digest(model), None, seen
    if corrupt:
        newest = ckdir / f"ckpt-{rest[3].steps()[-1]:010d}.pt"
        data = bytearray(newest.read_bytes())
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    rt.seed_everything(999)  # a restarted process starts with other RNG state
    model, *rest = build()
    resumed = rest[3].resume()
    seen[-1] = _digest(model)
    return _digest_after(model, rest, loop, resumed), resumed, seen


def _digest_after(model, rest, loop, step):  # type: ignore[no-untyped-def]
    loop(model, *rest, step=step, until=20)
    return _digest(model)


def test_resume_is_bit_identical_and_skips_corrupt_newest(
    parquet_file: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    rt.init()
    reference, _, _ = _train(parquet_file, tmp_path / "a", None)
    # Checkpoints every 3 steps; stopped at step 10, so the newest is step 9.
    final, resumed, seen = _train(parquet_file, tmp_path / "b", 10)
    assert resumed == 9
    assert seen[-1] == seen[9] != seen[10]  # the model holds step 9's state, not a fresh one
    assert final == reference
    assert "skipping checkpoint" not in capfd.readouterr().err
    # The newest (step 9) corrupted: the previous checkpoint (step 6) is loaded instead.
    final, resumed, seen = _train(parquet_file, tmp_path / "c", 10, corrupt=True)
    assert resumed == 6
    assert seen[-1] == seen[6] != seen[9]
    assert final == reference
    assert "skipping checkpoint" in capfd.readouterr().err
    kept = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert kept == ["ckpt-0000000015.json", "ckpt-0000000015.pt", "ckpt-0000000018.json",
                    "ckpt-0000000018.pt"]  # fmt: skip


def test_torn_or_missing_checkpoints(tmp_path: Path) -> None:
    rt.init()
    model = torch.nn.Linear(2, 1)
    ck = rt.Checkpointer(tmp_path, model=model, every_steps=1)
    assert ck.resume() == 0  # nothing yet
    ck.save(1)
    (tmp_path / "ckpt-0000000002.pt.tmp").write_bytes(b"half a checkpoint")  # crash mid-write
    (tmp_path / "ckpt-0000000003.pt").write_bytes(b"no manifest yet")  # crash before manifest
    assert ck.steps() == [1]
    assert ck.resume() == 1
    (tmp_path / "ckpt-0000000001.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="fails its checksum"):
        ck.verify(1)
    assert ck.resume() == 0
