"""Where a loaded model computes: the CPU, or a GPU when the version's config asks for one.

A version's ``config["device"]`` (set at registration, or overridden by ``Registry.load(...,
device=...)``) is one of:

* ``"cpu"`` (the default): the CPU, whatever the machine has;
* ``"auto"``: the first GPU when this runtime can use one on this machine, else the CPU;
* ``"cuda"`` / ``"cuda:N"``: that GPU, required. When the runtime cannot use it here,
  ``DeviceUnavailable`` (HTTP 409) says why and names ``config.device``.

Which runtimes can use a GPU: torch (``torch.cuda``), onnxruntime (its
``CUDAExecutionProvider``, present in the ``onnxruntime-gpu`` build) and TensorFlow (a visible
``GPU`` device). scikit-learn and LightGBM have no GPU runtime here; their ONNX export can run on
onnxruntime's CUDA provider (``prefer_onnx``). ``place`` decides before anything is loaded; the
loaders then report what the model really runs on (onnxruntime, for instance, falls back to the
CPU on its own when its CUDA libraries do not load, and that is checked after the session opens).
"""

from __future__ import annotations

import re
from typing import Any

from flywheel.registry._errors import DeviceUnavailable, RegistryError

DEVICE_RE = re.compile(r"^(cpu|auto|cuda(:[0-9]{1,2})?)$")
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def check_device(value: Any, where: str) -> str:
    """``value`` as a device request, or ``RegistryError`` naming ``config.device``."""
    if isinstance(value, str) and DEVICE_RE.match(value.strip().lower()):
        return value.strip().lower()
    raise RegistryError(
        f"{where}: config.device {value!r} must be 'cpu', 'auto', 'cuda' or 'cuda:N' (a GPU index)"
    )


def requested_device(config: dict[str, Any] | None, where: str) -> str:
    """The device a version's config asks for (``"cpu"`` when it says nothing)."""
    return check_device((config or {}).get("device", "cpu"), where)


def _gpu_index(wanted: str) -> int:
    return int(wanted.partition(":")[2] or 0)


def _gpus(runtime: str) -> tuple[int, str]:
    """(GPUs this runtime can use here, why none when 0). ``-1``: some, count unknown."""
    if runtime == "torch":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return count, "torch sees no CUDA device on this machine"
    if runtime == "onnxruntime":
        import onnxruntime as ort

        if CUDA_PROVIDER in ort.get_available_providers():
            return -1, ""
        return 0, (
            f"this onnxruntime build has no {CUDA_PROVIDER} (install onnxruntime-gpu on a "
            "machine with a GPU)"
        )
    if runtime == "tensorflow":
        from flywheel.registry._tensorflow import visible_gpus

        return visible_gpus(), "TensorFlow sees no GPU on this machine"
    return 0, f"the {runtime} runtime has no GPU support"


def place(runtime: str, wanted: str, where: str) -> str:
    """The device a ``runtime`` model should be loaded on: ``"cpu"`` or ``"cuda:N"``.

    Raises:
        DeviceUnavailable: ``wanted`` is an explicit ``cuda[:N]`` this runtime cannot use here.
    """
    if wanted == "cpu":
        return "cpu"
    index = _gpu_index(wanted)
    count, why = _gpus(runtime)
    if count == -1 or index < count:
        return f"cuda:{index}"
    if wanted == "auto":
        return "cpu"
    if count > 0:
        why = f"{runtime} sees {count} GPU(s), so there is no {wanted}"
    raise DeviceUnavailable(
        f"{where}: config.device is {wanted!r} but {why}; set it to 'auto' to fall back to the "
        "CPU, or to 'cpu'"
    )


def onnx_providers(device: str) -> list[Any]:
    """onnxruntime execution providers for ``device`` (``"cpu"`` or ``"cuda:N"``), in order."""
    if device.startswith("cuda"):
        return [(CUDA_PROVIDER, {"device_id": _gpu_index(device)}), CPU_PROVIDER]
    return [CPU_PROVIDER]


__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "check_device",
    "onnx_providers",
    "place",
    "requested_device",
]
