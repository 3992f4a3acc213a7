"""Drawing and marching the training rays on a side CUDA stream (`--ray_stream`).

A training march reads its sample count on the host, to size the sample buffer. On the single stream of a training
step that read waits for everything queued before it, i.e. the previous iteration's backward and optimiser step
(about 8 ms on an H100), and afterwards the GPU idles while the host prepares the next launches. An iteration's
rays depend only on its cameras, the input image and the occupancy grid, never on the weights being updated, so
they can be drawn and marched on a second stream that waits only for the grid's last update: the count read then
waits for the march alone, and the field's work queues behind the backward without a gap. Same kernels, same random
draws in the same order, so the same samples.

A call waits for the main stream only when it must: at the first call (the grid, the input image and the cameras
so far were made there), after a grid update (only for that), and when a tensor argument is not (a view of) a
tensor that an earlier call returned. Besides its arguments a function may read only tensors made before the first
call and the occupancy grid. Every tensor a call returns is recorded for the main stream, so that the caching
allocator does not hand its memory back to the side stream while main-stream kernels still read it.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


def tensors_in(value: Any) -> Iterator[Tensor]:
    """The tensors of a (nested) result: tensors, tuples, lists, dict values and dataclass fields."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from tensors_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from tensors_in(getattr(value, field.name))


def _indexed(device: torch.device) -> torch.device:
    """"cuda" as the "cuda:N" it means now, so that both name one stream."""
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


class RayStream:
    """Runs functions that draw or march training rays on a side stream of their CUDA device, when `enabled`;
    anywhere else (disabled, on the CPU) it simply calls them."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._grid_changed: dict[torch.device, torch.cuda.Event] = {}
        self._drawn: dict[int, weakref.ref] = {}  # storage address -> a live tensor returned by a call

    def grid_changed(self, device: torch.device) -> None:
        """Mark the point of the current stream after which the occupancy grid is new: the next call waits for it."""
        if self.enabled and device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            self._grid_changed[_indexed(device)] = event

    def drew(self, tensor: Tensor) -> bool:
        """Whether `tensor` is, or is a view of, a live tensor that a call returned (made on the side stream)."""
        ref = self._drawn.get(tensor.untyped_storage().data_ptr())
        return ref is not None and ref() is not None

    def undrawn(self, value: Any) -> list[Tensor]:
        """The tensors of `value` that no call returned: as call arguments, they make the call wait for the main
        stream."""
        return [tensor for tensor in tensors_in(value) if not self.drew(tensor)]

    def run(self, device: torch.device, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the side stream of `device`, ordered after what it needs (see the module)."""
        if not self.enabled or device.type != "cuda":
            return fn(*args, **kwargs)
        device = _indexed(device)
        main = torch.cuda.current_stream(device)
        side = self._streams.get(device)
        grid_changed = self._grid_changed.pop(device, None)
        if side is None:
            side = self._streams[device] = torch.cuda.Stream(device, priority=-1)
            side.wait_stream(main)
        elif any(tensor.is_cuda for tensor in self.undrawn((args, kwargs))):
            side.wait_stream(main)  # which includes any grid update
        elif grid_changed is not None:
            side.wait_event(grid_changed)
        with torch.cuda.stream(side):
            out = fn(*args, **kwargs)
        main.wait_stream(side)
        for tensor in tensors_in(out):
            if tensor.is_cuda:
                tensor.record_stream(main)
        self.remember(out)
        return out

    def remember(self, value: Any) -> None:
        """Count the tensors of `value` as drawn (while they live)."""
        for tensor in tensors_in(value):
            key = tensor.untyped_storage().data_ptr()
            self._drawn[key] = weakref.ref(tensor, functools.partial(self._forget, key))

    def _forget(self, key: int, ref: weakref.ref) -> None:
        if self._drawn.get(key) is ref:
            del self._drawn[key]
