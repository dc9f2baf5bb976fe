"""What would break a CUDA graph capture, found by running the code once, eagerly, under watch.

A CUDA graph records kernel launches; it cannot record the host. Code that makes the host wait
for the device (``.item()``, ``bool(t)``, ``.tolist()``: a sync, illegal while capturing), that
builds a device tensor from Python data (``torch.tensor([...], device=...)``: a pageable
host-to-device copy), or that mixes tensors of two devices makes the capture fail (NVIDIA's "DL
CUDA Graph" checklist; PyTorch notes/cuda.rst "CUDA Graphs"). ``capture_hazards(fn)`` runs ``fn``
once and returns what it did of that kind, naming the line of our code that did it.

It works on any device: the step loop probes one step on the GPU before it captures (so a
capture is only attempted on code that can be captured), and the CPU tests run the same probe
over the same code, so a hazard fails CI instead of a user's first GPU run.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ATen ops whose result the host must wait for (the value lands in host memory)
HOST_SYNC_OPS = {
    "aten::_local_scalar_dense",  # .item(), bool(), int(), float(), .tolist()
    "aten::nonzero",  # output size depends on the data
    "aten::masked_select",
    "aten::unique",
    "aten::_unique2",
    "aten::unique_consecutive",
}


def _syncs(func, kwargs: dict) -> bool:
    """Whether the host waits for the device to run ``func`` (by ATen op)."""
    name = func._schema.name
    if name == "aten::repeat_interleave":  # counts in a tensor: the output size is its sum
        return func._overloadname != "self_int" and kwargs.get("output_size") is None
    return name in HOST_SYNC_OPS


_TORCH_DIR = str(Path(torch.__file__).parent)
_HERE = str(Path(__file__))


def _where() -> str:
    """The innermost frame of the stack outside torch and this module: the line to fix."""
    for frame in reversed(traceback.extract_stack()):
        if not frame.filename.startswith(_TORCH_DIR) and frame.filename != _HERE:
            return f"{frame.filename}:{frame.lineno} ({frame.line})"
    return "?"


def _devices(args) -> set[torch.device]:
    """Devices of the tensor arguments, a 0-dim CPU tensor excepted (a scalar PyTorch passes by
    value, legal in a capture)."""
    out = set()
    for a in args:
        if isinstance(a, torch.Tensor) and not (a.device.type == "cpu" and a.dim() == 0):
            out.add(a.device)
        elif isinstance(a, (list, tuple)):
            out |= _devices(a)
    return out


class _Watch(TorchDispatchMode):
    def __init__(self, found: list[str]):
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if _syncs(func, kwargs):
            self.found.append(f"host sync ({name}) at {_where()}")
        devices = _devices(args) | _devices(kwargs.values())
        if len(devices) > 1:
            shown = ", ".join(sorted(map(str, devices)))
            self.found.append(f"{name} on tensors of several devices ({shown}) at {_where()}")
        target = kwargs.get("device")
        if name == "aten::_to_copy" and target is not None:
            kind = torch.device(target).type
            if any(d.type != kind for d in devices) or not devices:
                self.found.append(f"copy to {kind} from another device at {_where()}")
        return func(*args, **kwargs)


@contextmanager
def _watch_python_data(found: list[str]):
    """Record ``torch.tensor`` / ``torch.as_tensor`` calls made by this thread (they copy Python
    or host data into a new tensor)."""
    thread = threading.get_ident()
    originals = {name: getattr(torch, name) for name in ("tensor", "as_tensor")}

    def wrap(name: str, original: Callable):
        def watched(*args, **kwargs):
            if threading.get_ident() == thread:
                found.append(f"torch.{name}() from host data at {_where()}")
            return original(*args, **kwargs)

        return watched

    for name, original in originals.items():
        setattr(torch, name, wrap(name, original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch, name, original)


def capture_hazards(fn: Callable[[], object]) -> list[str]:
    """Run ``fn()`` once and return what in it could not be captured in a CUDA graph (empty:
    nothing found), each with the source line that did it. ``fn``'s result is discarded."""
    found: list[str] = []
    with _watch_python_data(found), _Watch(found):
        fn()
    return list(dict.fromkeys(found))  # a loop repeats its hazards; say each once
