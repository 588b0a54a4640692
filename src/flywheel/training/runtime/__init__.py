"""The library training code imports inside a job (needs torch; imported only by workers).

```python
from flywheel.training import runtime as rt

ctx = rt.init(seed=0)                      # gloo on CPU, nccl on GPU; rank/world from torchrun
model = rt.wrap(Net(), strategy="ddp")     # or "fsdp"
data = rt.ShardedParquetDataset(ctx.dataset_files, batch_size=64, seed=0)
ckpt = rt.Checkpointer(model=model, optimizer=opt, dataset=data)
step = ckpt.resume()                       # newest valid checkpoint, or 0
for epoch in range(data.epoch, epochs):
    data.set_epoch(epoch)
    for batch in data:
        ...; step += 1
        rt.log_metrics(step, loss=loss.item())
        if ckpt.after_step(step):          # saves by policy; True after SIGTERM (preemption)
            raise SystemExit(0)
rt.register(model, input_example=example)  # rank 0: registry + lineage to dataset and run
```
"""

from flywheel.training.runtime._checkpoint import Checkpointer, rng_state, set_rng_state
from flywheel.training.runtime._context import (
    JobContext,
    current,
    init,
    log,
    seed_everything,
    should_stop,
    shutdown,
    wrap,
)
from flywheel.training.runtime._data import ShardedParquetDataset
from flywheel.training.runtime._report import finish, log_metrics, register, tracking_run

__all__ = [
    "Checkpointer",
    "JobContext",
    "ShardedParquetDataset",
    "current",
    "finish",
    "init",
    "log",
    "log_metrics",
    "register",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "should_stop",
    "shutdown",
    "tracking_run",
    "wrap",
]
