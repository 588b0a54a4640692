"""A tuning trial: val_loss = (x - 2)^2 + 1/step for steps 1..4; registers a tiny model when the
spec asks for it. Stops early on SIGTERM (a pruned trial)."""

from __future__ import annotations

import time

import numpy as np
import torch

from flywheel.training import runtime as rt


def main() -> int:
    ctx = rt.init(seed=0)
    x = float(ctx.hyperparameters["x"])
    for step in range(1, 5):
        rt.log_metrics(step, val_loss=(x - 2.0) ** 2 + 1.0 / step)
        time.sleep(0.3)
        if rt.should_stop():
            return 0
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(x)
    rt.register(model, input_example=np.ones((2, 2), dtype=np.float32), export_onnx=False)
    rt.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
