"""The PyTorch flavor: ``torch.export`` (``.pt2``), else TorchScript, plus the ``state_dict``.

Saving tries ``torch.export`` with a dynamic batch dimension first and falls back to TorchScript
(``script``, then ``trace``). Neither format unpickles arbitrary objects on load; the
``state_dict.pt`` saved beside it is for users who rebuild the module themselves
(``torch.load(..., weights_only=True)``). Inputs are passed positionally in signature order;
one tensor out is ``output``, a tuple ``output_0``.., a dict keeps its keys. ONNX export uses
``torch.onnx.export`` (dynamo, onnxscript) with the same dynamic batch.

On a GPU (``device="cuda:N"``) a ``torch.export`` program is moved there with
``torch.export.passes.move_to_device_pass`` (parameters, buffers, constants and device arguments
in the graph), a TorchScript module is loaded with ``map_location``; each batch is copied to the
device and the outputs back to host memory.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np

from flywheel.registry._errors import RegistryError
from flywheel.registry._flavor import PlacedPredict, Predict, name_outputs


class _QuietStdout:
    """Stands in for ``sys.stdout`` while any thread is quiet: writes from quiet threads are
    dropped, every other thread's go to the stream that was there before."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.quiet: set[int] = set()

    def write(self, text: str) -> int:
        if threading.get_ident() in self.quiet:
            return len(text)
        written: int = self.target.write(text)
        return written

    def flush(self) -> None:
        if threading.get_ident() not in self.quiet:
            self.target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


_QUIET_LOCK = threading.Lock()
_EXPORT_LOAD_LOCK = threading.Lock()
# The shared state of every thread inside ``_quiet``: [active count, stdout proxy, saved filters].
_QUIET_STATE: list[Any] = [0, None, None]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' warnings and progress prints (they are not the caller's).

    Safe from several loader threads at once: ``contextlib.redirect_stdout`` and
    ``warnings.catch_warnings`` each swap process-wide state and restore what *they* saw on
    entry, so overlapping uses could leave ``sys.stdout`` on a buffer (or warnings ignored for
    good). Here the first thread in installs one proxy (and the ignore filter), only the calling
    thread's prints are dropped, and the last thread out restores both.
    """
    ident = threading.get_ident()
    with _QUIET_LOCK:
        if _QUIET_STATE[0] == 0:
            _QUIET_STATE[1] = _QuietStdout(sys.stdout)
            sys.stdout = _QUIET_STATE[1]
            _QUIET_STATE[2] = warnings.filters[:]
            warnings.simplefilter("ignore")
        _QUIET_STATE[0] += 1
        proxy: _QuietStdout = _QUIET_STATE[1]
        nested = ident in proxy.quiet
        proxy.quiet.add(ident)
    try:
        yield
    finally:
        with _QUIET_LOCK:
            if not nested:
                proxy.quiet.discard(ident)
            _QUIET_STATE[0] -= 1
            if _QUIET_STATE[0] == 0:
                if sys.stdout is proxy:  # left alone if someone replaced it meanwhile
                    sys.stdout = proxy.target
                cast(list[Any], warnings.filters)[:] = _QUIET_STATE[2]
                warnings._filters_mutated()  # type: ignore[attr-defined]
                _QUIET_STATE[1] = _QUIET_STATE[2] = None


def _to_numpy(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_numpy(v) for v in value]
    return value


def _predict_fn(module: Any, device: str = "cpu") -> Predict:
    import torch

    target = torch.device(device)
    on_host = target.type == "cpu"

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs.values()]
        if not on_host:
            args = [a.to(target) for a in args]
        with torch.inference_mode():
            result = module(*args)
        return name_outputs(_to_numpy(result))  # .cpu(): back to host memory

    if on_host:
        return predict
    return PlacedPredict(predict, str(target), {"torch_device": str(target)})


def _module_device(module: Any) -> str:
    """Where an in-memory module's weights live (the CPU when it has none)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        return str(tensor.device)
    return "cpu"


def _dynamic_batch(example: dict[str, np.ndarray]) -> tuple[dict[int, Any], ...]:
    import torch

    return tuple({0: torch.export.Dim.DYNAMIC} for _ in example)


class PytorchFlavor:
    name = "pytorch"
    runtime = "torch"

    def wrap(self, model: Any, input_names: list[str]) -> Predict:
        import torch

        if not isinstance(model, torch.nn.Module | torch.jit.ScriptModule):
            raise RegistryError(
                f"a pytorch model must be a torch.nn.Module, not {type(model).__name__}"
            )
        model.eval()
        return _predict_fn(model, _module_device(model))

    def save(self, model: Any, folder: Path, example: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        model.eval()
        args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in example.values())
        details: dict[str, Any] = {}
        if isinstance(model, torch.jit.ScriptModule):
            torch.jit.save(model, str(folder / "model.pt"))
            details.update(format="torchscript", file="model.pt")
            return details
        try:
            with _quiet():
                program = torch.export.export(model, args, dynamic_shapes=_dynamic_batch(example))
                torch.export.save(program, str(folder / "model.pt2"))
            details.update(format="torch.export", file="model.pt2")
        except Exception as export_error:
            (folder / "model.pt2").unlink(missing_ok=True)
            details["export_error"] = f"{type(export_error).__name__}: {export_error}"[:500]
            with _quiet():
                try:
                    scripted = torch.jit.script(model)
                except Exception:
                    scripted = torch.jit.trace(model, args)
                torch.jit.save(scripted, str(folder / "model.pt"))
            details.update(format="torchscript", file="model.pt")
        torch.save(model.state_dict(), folder / "state_dict.pt")
        details["state_dict"] = "state_dict.pt"
        details["module_class"] = f"{type(model).__module__}.{type(model).__qualname__}"
        return details

    def load(
        self,
        folder: Path,
        details: dict[str, Any],
        input_names: list[str],
        *,
        trusted: bool,
        device: str = "cpu",
    ) -> Predict:
        import torch

        path = folder / details["file"]
        target = torch.device(device)
        if details["format"] == "torch.export":
            # torch.export.load keeps its deserializer in a process-wide global
            # ("_CURRENT_DESERIALIZER is already set" from a second thread): one at a time.
            with _quiet(), _EXPORT_LOAD_LOCK:
                program = torch.export.load(str(path))
                if target.type != "cpu":
                    from torch.export.passes import move_to_device_pass

                    program = move_to_device_pass(program, target)
                module = program.module()
        elif details["format"] == "torchscript":
            with _quiet():
                module = torch.jit.load(str(path), map_location=target)
            module.eval()
        else:
            raise RegistryError(f"unknown pytorch artifact format {details['format']!r}")
        return _predict_fn(module, str(target))

    def export_onnx(
        self, model: Any, path: Path, example: dict[str, np.ndarray], details: dict[str, Any]
    ) -> None:
        import torch

        args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in example.values())
        with _quiet():
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=True,
                dynamic_shapes=_dynamic_batch(example),
                external_data=False,  # one self-contained file (weights inside)
                verbose=False,
            )


__all__ = ["PytorchFlavor"]
