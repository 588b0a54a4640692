"""Train a small click-through model with 2 processes (DDP on CPU) under Flywheel.

Reads the job's Parquet dataset with ``ShardedParquetDataset`` (each rank its own shard),
checkpoints every ``checkpoint.every_steps`` steps (and on SIGTERM, for preemption), resumes
from the newest valid checkpoint after a crash, logs ``train_loss``/``val_loss`` to the job and
to tracking from rank 0, and registers the model on success. The validation split is the
``val.parquet`` beside the training file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from flywheel.training import runtime as rt

FEATURES = [f"x{i}" for i in range(8)]


class CTRModel(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(len(FEATURES), width), torch.nn.ReLU(), torch.nn.Linear(width, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def features(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([batch[c] for c in FEATURES], dim=1).float()


def main() -> int:
    torch.set_num_threads(1)
    ctx = rt.init(seed=0)
    hp = {"lr": 0.05, "batch_size": 64, "epochs": 3, "width": 16, **ctx.hyperparameters}
    data = rt.ShardedParquetDataset(ctx.dataset_files, int(hp["batch_size"]), seed=0)
    val = pq.read_table(Path(ctx.dataset_files[0]).with_name("val.parquet")).to_pandas()
    val_x = torch.tensor(val[FEATURES].to_numpy(), dtype=torch.float32)
    val_y = torch.tensor(val["clicked"].to_numpy(), dtype=torch.float32)

    torch.manual_seed(0)
    model = rt.wrap(CTRModel(int(hp["width"])))
    opt = torch.optim.Adam(model.parameters(), lr=float(hp["lr"]))
    ckpt = rt.Checkpointer(model=model, optimizer=opt, dataset=data)
    step = ckpt.resume()
    rt.log(f"rank 0 of {ctx.world_size}: starting at step {step}, epoch {data.epoch}")
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for epoch in range(data.epoch, int(hp["epochs"])):
        data.set_epoch(epoch)
        for batch in data:
            loss = loss_fn(model(features(batch)), batch["clicked"].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 10 == 0:
                with torch.no_grad():
                    val_loss = loss_fn(model(val_x), val_y).item()
                rt.log_metrics(step, train_loss=loss.item(), val_loss=val_loss)
                rt.log(f"step {step} train_loss {loss.item():.4f} val_loss {val_loss:.4f}")
            if ckpt.after_step(step):
                rt.log(f"stopping at step {step}: checkpoint saved, will resume")
                return 0
    with torch.no_grad():
        val_loss = loss_fn(model(val_x), val_y).item()
    example = val_x[:4].numpy().astype(np.float32)
    mv = rt.register(model, input_example=example, metrics={"val_loss": val_loss})
    if mv is not None:
        rt.log(f"registered {mv.uri} (val_loss {val_loss:.4f})")
    rt.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
