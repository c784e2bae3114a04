"""Pickling one alias group: cloudpickle first, dill second, protocol 5 with out-of-band buffers.

The group is pickled as one dict so objects shared between its names come back shared. Large
contiguous buffers (numpy arrays, and pandas through numpy) are handed out of band by the
`buffer_callback`, so they are never copied into the stream; the store then chunks them.
Non-contiguous ones are copied in band by the pickler. dill, the fallback, reduces numpy arrays
itself (in band), so a group that needs dill is one stream, rewritten whole when it changes.

A numpy view of an array that is itself in the group is pickled as a view (its base, offset,
shape and strides), not as a copy of its elements: after a restore, writing through `b = a[2:5]`
must still change `a`, as it did before the crash. torch tensors keep their gradients.
"""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import cloudpickle
import dill

from .errors import SerializationError

PROTOCOL = 5
# Buffers below this go in-band: thousands of tiny arrays would otherwise become thousands of
# tiny blobs, each a file and an fsync, to save copying a few KiB.
INBAND_BELOW = 64 * 1024


def view_of(base: Any, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], dtype: Any) -> Any:
    """Rebuild a numpy view on its (unpickled) base array; named by pickles, so keep its name."""
    import numpy as np

    return np.ndarray(shape, dtype, buffer=base, offset=offset, strides=strides)


def with_grad(tensor: Any, grad: Any) -> Any:
    """Give an unpickled torch tensor back its gradient; named by pickles, so keep its name."""
    tensor.grad = grad
    return tensor


def _without_grad(tensor: Any, torch: Any) -> Any:
    """The same data as a new tensor of the same kind, whose pickle torch writes without the gradient."""
    bare = tensor.detach()
    if type(tensor) is torch.nn.Parameter:
        return torch.nn.Parameter(bare, requires_grad=tensor.requires_grad)
    return bare.requires_grad_(tensor.requires_grad)


def _root(array: Any) -> Any:
    while getattr(array, "base", None) is not None:
        array = array.base
    return array


def _shared_bases(objs: Mapping[str, Any]) -> dict[int, Any]:
    """The arrays whose memory two or more of the group's top-level arrays share, by id.

    Views of them are pickled as views. A lone view is pickled as a copy, as before: nothing else
    sees its memory, and its base may be far bigger than the view.
    """
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return {}
    users: dict[int, list[Any]] = {}
    for value in objs.values():
        if type(value) is numpy.ndarray and not value.dtype.hasobject:
            root = _root(value)
            if type(root) is numpy.ndarray:
                users.setdefault(id(root), []).append(root)
    return {key: roots[0] for key, roots in users.items() if len(roots) > 1}


class _ViewKeepingPickler(cloudpickle.Pickler):
    """cloudpickle, except that a view of an array in the group is reduced to a view of it, and a
    torch tensor keeps its gradient (torch pickles a Parameter without `.grad`: a model restored
    after `loss.backward()` would have none)."""

    def __init__(self, file: Any, bases: dict[int, Any], **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._bases = bases
        self._torch = sys.modules.get("torch")  # looked up once: reducer_override runs for every object

    def reducer_override(self, obj: Any) -> Any:
        if self._bases and type(obj).__name__ == "ndarray" and getattr(obj, "base", None) is not None:
            base = _root(obj)
            if id(base) in self._bases and type(obj) is type(base):
                offset = obj.__array_interface__["data"][0] - base.__array_interface__["data"][0]
                return view_of, (base, offset, obj.shape, obj.strides, obj.dtype)
        torch = self._torch
        if (torch is not None and type(obj) in (torch.Tensor, torch.nn.Parameter) and obj.is_leaf
                and obj.grad is not None):
            return with_grad, (_without_grad(obj, torch), obj.grad)
        return super().reducer_override(obj)


def _cloudpickle_keeping_views(obj: Any, protocol: int, buffer_callback: Any) -> bytes:
    """cloudpickle.dumps, keeping the views among a group's values (`obj` is one value when
    `_explain_failure` pickles the names one by one)."""
    bases = _shared_bases(obj) if isinstance(obj, Mapping) else {}
    out = io.BytesIO()
    _ViewKeepingPickler(out, bases, protocol=protocol, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


_DUMPERS: dict[str, Callable[..., bytes]] = {"cloudpickle": _cloudpickle_keeping_views, "dill": dill.dumps}
_LOADERS: dict[str, Callable[..., Any]] = {"cloudpickle": pickle.loads, "dill": dill.loads}


@dataclass
class Pickled:
    pickler: str
    stream: bytes
    buffers: list[memoryview]  # 1-D, format "B", views of the objects' own memory


def pickle_group(objs: Mapping[str, Any], inband_below: int = INBAND_BELOW) -> Pickled:
    group = dict(objs)
    reasons: dict[str, str] = {}
    for pickler, dumps in _DUMPERS.items():
        buffers: list[memoryview] = []

        def keep_out_of_band(buffer: pickle.PickleBuffer, buffers: list[memoryview] = buffers) -> bool:
            try:
                raw = buffer.raw()
            except BufferError:  # not contiguous: let the pickler copy it in-band
                return True
            if raw.nbytes < inband_below:
                return True
            buffers.append(raw)
            return False

        try:
            stream = dumps(group, protocol=PROTOCOL, buffer_callback=keep_out_of_band)
        except Exception as exc:
            reasons[pickler] = _describe(exc)
            continue
        return Pickled(pickler, stream, buffers)
    raise _explain_failure(group, reasons)


def unpickle_group(pickler: str, stream: bytes, buffers: list[Any]) -> dict[str, Any]:
    loads = _LOADERS.get(pickler)
    if loads is None:
        raise SerializationError(f"unknown pickler {pickler!r}")
    try:
        group = loads(stream, buffers=buffers)
    except Exception as exc:
        raise SerializationError(f"cannot unpickle ({pickler}): {_describe(exc)}") from exc
    if not isinstance(group, dict):
        raise SerializationError(f"unpickled a {type(group).__name__}, expected the group's dict")
    return group


def _explain_failure(group: dict[str, Any], group_reasons: dict[str, str]) -> SerializationError:
    """Pickle each name alone to say which variable is at fault (only runs after a failure)."""
    culprits: dict[str, str] = {}
    for name, obj in group.items():
        reasons = []
        for pickler, dumps in _DUMPERS.items():
            try:
                dumps(obj, protocol=PROTOCOL, buffer_callback=lambda _buffer: False)
                break
            except Exception as exc:
                reasons.append(f"{pickler}: {_describe(exc)}")
        else:
            culprits[name] = "; ".join(reasons)
    if not culprits:  # each pickles alone, not together
        culprits = {", ".join(group): "; ".join(f"{p}: {r}" for p, r in group_reasons.items())}
    details = "; ".join(
        f"variable {name!r} ({type(group[name]).__name__ if name in group else 'group'}): {why}"
        for name, why in culprits.items()
    )
    return SerializationError(f"cannot pickle {details}", tuple(culprits), culprits)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
