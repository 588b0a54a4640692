"""The PyTorch flavor's quiet export/load from several threads (issue #17 item 17)."""

from __future__ import annotations

import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from flywheel.project import Project
from flywheel.registry._pytorch import _quiet


def test_overlapping_quiet_sections_restore_stdout_and_warnings() -> None:
    """A enters, B enters, A leaves, B leaves: the order that left ``sys.stdout`` on a StringIO
    with ``redirect_stdout`` (B restored what it saw on entry: A's buffer)."""
    stdout, filters = sys.stdout, list(warnings.filters)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    printed: list[str] = []

    def first() -> None:
        with _quiet():
            print("hidden A")
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def second() -> None:
        a_in.wait(5)
        with _quiet():
            b_in.set()
            a_out.wait(5)
            print("hidden B")
            printed.append("B ran")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert printed == ["B ran"]
    assert sys.stdout is stdout
    assert list(warnings.filters) == filters


def test_other_threads_keep_printing_while_one_is_quiet(capsys: object) -> None:
    entered, done = threading.Event(), threading.Event()

    def quiet_thread() -> None:
        with _quiet():
            print("exporter noise")
            entered.set()
            done.wait(5)

    t = threading.Thread(target=quiet_thread)
    t.start()
    entered.wait(5)
    print("the caller's line")
    done.set()
    t.join(5)
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "the caller's line" in out and "exporter noise" not in out


def test_overlapping_pytorch_loads_in_threads(project: Project) -> None:
    import torch

    from flywheel.registry import Registry

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    registry = Registry(project)
    mv = registry.register_model("tiny", model, flavor="pytorch", input_example=x)
    stdout, filters = sys.stdout, list(warnings.filters)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: registry.load(mv).predict({"input": x}), range(8)))
    assert sys.stdout is stdout
    assert list(warnings.filters) == filters
    first = next(iter(outs[0].values()))
    assert all(np.array_equal(next(iter(o.values())), first) for o in outs)
