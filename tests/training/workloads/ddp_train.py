"""A tiny 2-process CPU DDP training script used by the fault-tolerance tests and benchmarks.

Environment knobs (all optional): DATA (a Parquet file; else the job's dataset), STEPS_EPOCHS,
BATCH, CKPT_EVERY, CRASH_AT_STEP + CRASH_RANK (SIGKILL itself there, first torchrun attempt
of the first job attempt only), STEP_SLEEP (seconds per step), OUT (where rank 0 writes the
sha256 of the final weights; a spec with ``register`` also registers the model),
STRATEGY (ddp | fsdp), CKPT_DIR (outside a scheduled job).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import torch

from flywheel.training import runtime as rt


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def weights_digest(model: torch.nn.Module) -> str:
    inner = getattr(model, "module", model)
    h = hashlib.sha256()
    for name, tensor in sorted(inner.state_dict().items()):
        if hasattr(tensor, "full_tensor"):  # FSDP shard (DTensor): gather it (collective)
            tensor = tensor.full_tensor()
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> int:
    imported = time.time()  # torch and the runtime imported (benchmarks: where a restart goes)
    torch.set_num_threads(1)
    ctx = rt.init(seed=1234)
    rt.log(f"imported t={imported:.3f} joined t={time.time():.3f}")  # process group up
    files = [os.environ["DATA"]] if os.environ.get("DATA") else ctx.dataset_files
    epochs = int(os.environ.get("EPOCHS", "3"))
    data = rt.ShardedParquetDataset(
        files,
        batch_size=int(os.environ.get("BATCH", "16")),
        columns=[*(f"f{i}" for i in range(8)), "y"],
        seed=7,
    )
    torch.manual_seed(0)  # identical initial weights on every rank
    model = rt.wrap(Net(), strategy=os.environ.get("STRATEGY", "ddp"))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    ckpt_dir = os.environ.get("CKPT_DIR")
    ckpt = rt.Checkpointer(
        ckpt_dir if ckpt_dir and not ctx.job_id else None,
        model=model,
        optimizer=opt,
        scheduler=sched,
        dataset=data,
        every_steps=int(os.environ.get("CKPT_EVERY", "5")),
    )
    step = ckpt.resume()
    rt.log(
        f"start step={step} epoch={data.epoch} position={data.position} restart={ctx.restart} "
        f"t={time.time():.3f}"
    )
    crash_at = int(os.environ.get("CRASH_AT_STEP", "0"))
    crash_rank = int(os.environ.get("CRASH_RANK", "1"))
    first_try = ctx.restart == 0 and ctx.attempt <= 1
    pause = float(os.environ.get("STEP_SLEEP", "0"))
    for epoch in range(data.epoch, epochs):
        data.set_epoch(epoch)
        for batch in data:
            x = torch.stack([batch[f"f{i}"] for i in range(8)], dim=1).float()
            y = batch["y"].float().unsqueeze(1)
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 5 == 0:
                rt.log_metrics(step, loss=loss.item())
            rt.log(f"step {step} loss {loss.item():.6f} t={time.time():.3f}")
            if first_try and crash_at and step == crash_at and ctx.rank == crash_rank:
                print(f"crashing at step {step} t={time.time():.3f}", flush=True)  # benchmarks
                os.kill(os.getpid(), signal.SIGKILL)
            if pause:
                time.sleep(pause)
            if ckpt.after_step(step):
                rt.log(f"stopping at step {step} after checkpoint (preempted)")
                rt.shutdown()
                return 0
    digest = weights_digest(model)
    rt.log(f"final step={step} weights={digest}")
    if ctx.is_main and os.environ.get("OUT"):
        Path(os.environ["OUT"]).write_text(digest)
    if ctx.spec.get("register"):  # the job spec names a model: register it (rank 0) with lineage
        example = torch.zeros(2, 8).numpy()
        rt.register(model, input_example=example, export_onnx=False)
    rt.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
