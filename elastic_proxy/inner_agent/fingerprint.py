"""Value fingerprints for mutation detection and for checking recomputed values.

Why: `str(obj)` and object-id graphs miss `obj.v = 2` and edits deep inside containers of
arrays. This walks the value itself (attributes, slots, containers, array buffers) and errs
towards "changed": what it cannot inspect gets a fingerprint unique to the call. Digests are
xxh3_128 over a tagged byte stream built only from values and type names (never id() nor
hash() of str), so equal values give equal digests in a new process, as a restore needs.
"""

from __future__ import annotations

import array
import contextlib
import copyreg
import functools
import io
import mmap
import os
import pickle
import struct
import sys
import types
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import xxhash

from .process_objects import process_object_types

__all__ = ["Fingerprint", "Tracker", "at_one_moment", "fingerprint", "inspect"]

_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: defined in Python (or by an extension via PyType_FromSpec)
_FAST_PATH_MIN = 32  # containers at least this long are first tried as plain data
_FLUSH_AT = 1 << 16
#: matplotlib figures are rendered this small for their fingerprint: enough to see a change.
FIGURE_DPI = 40
#: ... unless they draw more data points than this: then their data alone (drawing would cost seconds).
FIGURE_PIXELS_UP_TO_POINTS = 200_000
_NOTEBOOK_MODULE = "__main__"
_MISSING = object()
_pack_q = struct.Struct("<q").pack
_pack_Q = struct.Struct("<Q").pack
_pack_d = struct.Struct("<d").pack
_pack_dd = struct.Struct("<dd").pack


@dataclass(frozen=True)
class Fingerprint:
    """A digest, and whether some part could not be inspected (then the digest is random)."""

    digest: bytes
    opaque: bool = False
    opaque_types: tuple[str, ...] = ()

    def hex(self) -> str:
        return self.digest.hex()


_renders: dict[int, tuple[Any, bytes]] | None = None
"""Pixels by figure id, while `at_one_moment` holds (the figure is kept, so its id stays its own)."""


@contextlib.contextmanager
def at_one_moment() -> Iterator[None]:
    """Fingerprints taken inside see one state: no user code runs between them (the agent's own
    passes over the namespace). A figure that several names reach (`fig`, `ax`) is drawn once."""
    global _renders
    if _renders is not None:
        yield
        return
    _renders = {}
    try:
        yield
    finally:
        _renders = None


def inspect(obj: Any) -> Fingerprint:
    walker = _Walker()
    walker.walk(obj)
    return walker.result()


def fingerprint(obj: Any) -> bytes:
    return inspect(obj).digest


class Tracker:
    """Remembers one fingerprint per variable name and answers "did it change?"."""

    def __init__(self) -> None:
        self._prints: dict[str, Fingerprint] = {}

    def update(self, name: str, obj: Any) -> bool:
        """Fingerprint `obj` as the new value of `name`; True when it differs from the last one
        (a new name, a different digest, or an object that could not be inspected)."""
        new = inspect(obj)
        old = self._prints.get(name)
        self._prints[name] = new
        return old is None or new.opaque or old.digest != new.digest

    def forget(self, name: str) -> None:
        self._prints.pop(name, None)

    def get(self, name: str) -> Fingerprint | None:
        return self._prints.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._prints

    def names(self) -> set[str]:
        return set(self._prints)


_CLASS_BOOKKEEPING = frozenset({"__dict__", "__weakref__", "__slotnames__"})

def _path_of(cls: type) -> bytes:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls.__name__)}".encode()


_cached_path = functools.lru_cache(maxsize=4096)(_path_of)


def _type_path(cls: type) -> bytes:
    try:
        return _cached_path(cls)
    except TypeError:  # a metaclass that makes its classes unhashable
        return _path_of(cls)


def _encode_str(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


class _NotPlainData(Exception):
    pass


def _value(*parts: Any) -> None:
    """Named in the plain-data stream as the maker of plain objects and arrays; never called."""
    raise NotImplementedError


def _flat_bytes(arr: Any, numpy: Any) -> Any:
    """An array's elements as one contiguous uint8 view (copied only when not contiguous)."""
    arr = numpy.asarray(arr)  # a subclass (masked, memmap, matrix) as its plain data
    if arr.flags.c_contiguous:
        flat = arr.reshape(-1)
    elif arr.flags.f_contiguous:
        flat = arr.T.reshape(-1)
    else:
        flat = numpy.ascontiguousarray(arr).reshape(-1)
    return flat.view(numpy.uint8)


def _array_layout(arr: Any) -> bytes:
    """dtype, shape and strides (C and Fortran order are fed differently); an empty array's
    strides are arbitrary, and differ once pickled, so they are left out."""
    dtype = arr.dtype
    strides = arr.strides if arr.size else ()
    return f"{dtype.str}|{dtype.descr if dtype.fields else ''}|{arr.shape}|{strides}".encode()


class _PlainDataPickler(pickle.Pickler):
    """The C pickler calls reducer_override for everything but exact None, bool, int, float,
    str, bytes, list, tuple, dict, set and frozenset. Here it describes the two other common
    kinds of plain data, numpy arrays (layout and buffer digest) and instances of plain
    classes (type name and __dict__), and refuses the rest, so a dump succeeds only for
    plain data. Fast mode (no memo) makes the bytes independent of object identity."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=3)
        self.fast = True
        self.numpy = sys.modules.get("numpy")
        self.plain_paths: dict[type, bytes | None] = {}  # class -> its name, if plain without slots

    def reducer_override(self, obj: Any) -> Any:
        if obj is _value:
            return NotImplemented  # pickled by name
        cls = type(obj)
        numpy = self.numpy
        if numpy is not None and cls is numpy.ndarray and not obj.dtype.hasobject:
            digest = xxhash.xxh3_128(_flat_bytes(obj, numpy)).digest()
            return _value, (b"A", _array_layout(obj), digest)
        state = getattr(obj, "__dict__", None)
        if type(state) is not dict:
            raise _NotPlainData
        try:
            path = self.plain_paths[cls]
        except KeyError:
            path = _type_path(cls) if _is_plain(obj) and not _slot_names(cls) else None
            self.plain_paths[cls] = path
        if path is None:
            raise _NotPlainData
        return _value, (b"o", path), state


def _root_figure(artist: Any) -> Any:
    """The top-level Figure an artist is drawn in (through subfigures), or None."""
    figure_class = sys.modules["matplotlib.figure"].Figure
    node = artist
    for _ in range(64):
        if node is None or isinstance(node, figure_class):
            return node
        node = getattr(node, "figure", None)
    return None


def _artist_data(artist: Any) -> list[Any]:
    """The arrays an artist draws: a line's points, a collection's offsets, an image's or a
    colour-mapped collection's values (a masked array as its data and its mask: its other
    attributes are bookkeeping that pickling does not keep)."""
    masked = sys.modules["numpy.ma"]
    data = []
    for getter in ("get_xydata", "get_offsets", "get_array"):
        method = getattr(artist, getter, None)
        value = method() if method is not None else None
        if isinstance(value, masked.MaskedArray):
            data += [masked.getdata(value), masked.getmaskarray(value)]
        elif value is not None:
            data.append(value)
    return data


def _render(figure: Any) -> bytes:
    """RGBA pixels at FIGURE_DPI, whatever the session's savefig settings. Quietly: a layout
    warning would land in the user's cell."""
    import matplotlib

    out = io.BytesIO()
    with warnings.catch_warnings(), matplotlib.rc_context({
        "savefig.bbox": "standard", "savefig.transparent": False, "savefig.facecolor": "auto",
        "savefig.edgecolor": "auto",
    }):
        warnings.simplefilter("ignore")
        figure.savefig(out, format="rgba", dpi=FIGURE_DPI)
    return out.getvalue()


def _plain_data_bytes(obj: Any) -> bytes | None:
    """One C pass over plain data (list(range(5_000_000)), a dict of a million str keys,
    records, lists of dataclasses, dicts of arrays). None when it holds anything else, or a
    set: set order follows str hashes, which differ per process (protocol 3 writes sets as a
    `__builtin__` global, easy to spot)."""
    buffer = io.BytesIO()
    try:
        _PlainDataPickler(buffer).dump(obj)
    except Exception:  # not plain data, a cycle, or too deep: walk it instead
        return None
    data = buffer.getvalue()
    return None if b"__builtin__\n" in data else data


@functools.lru_cache(maxsize=1024)
def _slot_names(cls: type) -> tuple[str, ...]:
    names = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in [slots] if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            mangled = f"_{klass.__name__.lstrip('_')}{slot}" if slot.startswith("__") else slot
            names.append(mangled)
    return tuple(names)


def _looks_plain(cls: type) -> bool:
    """No C base but object, pickled the default way: its state is exactly its __dict__ and
    slots, which can be walked directly (faster than __reduce_ex__)."""
    if not all(k is object or k.__flags__ & _HEAPTYPE for k in cls.__mro__):
        return False
    if cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__reduce__ is not object.__reduce__:
        return False
    getstate = getattr(cls, "__getstate__", None)
    return getstate is None or getstate is getattr(object, "__getstate__", None)


_plain_classes: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def _is_plain(obj: Any) -> bool:
    """Extension types can be heap types too (a lock is one): the first instance of each class
    is also pickled the default way, which refuses C state it cannot see."""
    cls = type(obj)
    try:
        return _plain_classes[cls]
    except (KeyError, TypeError):
        pass
    plain = _looks_plain(cls)
    if plain:
        try:
            obj.__reduce_ex__(4)
        except Exception:
            plain = False
    try:
        _plain_classes[cls] = plain
    except TypeError:
        pass
    return plain


_DESCRIPTOR_TYPES = (
    types.MemberDescriptorType, types.GetSetDescriptorType, types.WrapperDescriptorType,
    types.MethodDescriptorType, types.MethodWrapperType, types.ClassMethodDescriptorType,
)


_handler_names: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()
# Checked in order, after numpy and pandas; the exact builtin types are found first this way too.
_HANDLERS_BY_BASE: tuple[tuple[Any, str], ...] = (
    (list, "_list"),
    (tuple, "_tuple"),
    (dict, "_dict"),
    ((set, frozenset), "_set"),
    ((bytes, bytearray, memoryview, mmap.mmap, array.array), "_buffer"),
    ((int, float, str, complex), "_atom_subclass"),
    (types.FunctionType, "_function"),
    (types.CodeType, "_code"),
    (types.MethodType, "_method"),
    (types.BuiltinFunctionType, "_builtin"),
    (types.ModuleType, "_module"),
    (type, "_class"),
    ((staticmethod, classmethod), "_wrapper"),
    (property, "_property"),
    (_DESCRIPTOR_TYPES, "_descriptor"),
    (types.CellType, "_cell"),
    (types.MappingProxyType, "_mapping_proxy"),
)


class _Walker:
    """Feeds a value's tagged encoding to one xxh3_128 hasher, depth-first, without recursion
    (deep linked structures must not hit the recursion limit). Every non-atomic object is
    numbered on first visit; a second visit feeds a back-reference, which ends cycles."""

    def __init__(self, outer: dict[int, tuple[int, Any]] | None = None) -> None:
        self.outer = outer or {}  # the enclosing walk's memo, read-only (set elements)
        self.hasher = xxhash.xxh3_128()
        self.buf = bytearray()
        self.memo: dict[int, tuple[int, Any]] = {}  # id -> (visit number, object kept alive)
        self.opaque_types: list[str] = []
        self.stack: list[Any] = []
        self.numpy = sys.modules.get("numpy")
        self.pandas = sys.modules.get("pandas")
        self.atoms = {
            type(None): self._none, bool: self._bool, int: self._int, float: self._float,
            complex: self._complex, str: self._str, bytes: self._bytes,
        }

    def result(self) -> Fingerprint:
        self.hasher.update(self.buf)
        return Fingerprint(self.hasher.digest(), bool(self.opaque_types), tuple(self.opaque_types[:8]))

    # -- byte stream ----------------------------------------------------------------------------

    def _emit(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= _FLUSH_AT:
            self.hasher.update(self.buf)
            self.buf.clear()

    def _emit_large(self, data: Any) -> None:
        """Hash a big buffer in place, without copying it into the stream buffer."""
        self.hasher.update(self.buf)
        self.buf.clear()
        self.hasher.update(data)

    def _header(self, tag: bytes, cls: type, length: int = 0) -> None:
        path = _type_path(cls)
        self._emit(b"".join((tag, _pack_Q(len(path)), path, _pack_Q(length))))

    def _opaque(self, obj: Any) -> None:
        self.opaque_types.append(_type_path(type(obj)).decode())
        self._emit(b"?" + os.urandom(16))

    # -- atoms ------------------------------------------------------------------------------------

    def _none(self, obj: None) -> None:
        self._emit(b"N")

    def _bool(self, obj: bool) -> None:
        self._emit(b"T" if obj else b"F")

    def _int(self, obj: int) -> None:
        if -(1 << 63) <= obj < (1 << 63):
            self._emit(b"i" + _pack_q(obj))
        else:
            data = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
            self._emit(b"I" + _pack_Q(len(data)) + data)

    def _float(self, obj: float) -> None:
        self._emit(b"f" + _pack_d(obj))

    def _complex(self, obj: complex) -> None:
        self._emit(b"c" + _pack_dd(obj.real, obj.imag))

    def _str(self, obj: str) -> None:
        self._sized(b"s", _encode_str(obj))

    def _bytes(self, obj: bytes) -> None:
        self._sized(b"b", obj)

    def _sized(self, tag: bytes, data: bytes) -> None:
        if len(data) >= _FLUSH_AT:
            self._emit(tag + _pack_Q(len(data)))
            self._emit_large(data)
        else:
            self._emit(tag + _pack_Q(len(data)) + data)

    # -- traversal --------------------------------------------------------------------------------

    def walk(self, root: Any) -> None:
        kind = type(root)
        container = kind in (list, tuple, dict)
        if (container or (kind not in self.atoms and _is_plain(root))) and self._pickled(root):
            return
        stack = self.stack
        stack.append(root)
        atoms = self.atoms
        memo = self.memo
        outer = self.outer
        while stack:
            obj = stack.pop()
            atom = atoms.get(type(obj))
            if atom is not None:
                atom(obj)
                continue
            seen = memo.get(id(obj))
            if seen is not None:
                self._emit(b"R" + _pack_q(seen[0]))
                continue
            seen = outer.get(id(obj))
            if seen is not None:
                self._emit(b"O" + _pack_q(seen[0]))
                continue
            memo[id(obj)] = (len(memo), obj)
            try:
                self._visit(obj)
            except Exception:  # a broken or exotic object: unknown, so "changed"
                self._opaque(obj)

    def _push_all(self, items: Any) -> None:
        """Queue children so that they are visited in order."""
        self.stack.extend(reversed(items) if isinstance(items, (list, tuple)) else reversed(list(items)))

    def _visit(self, obj: Any) -> None:
        cls = type(obj)
        try:
            name = _handler_names.get(cls)
        except TypeError:  # an unhashable class
            name = None
        if name is None:
            name = self._choose(obj)
            try:
                _handler_names[cls] = name
            except TypeError:
                pass
        getattr(self, name)(obj)

    def _choose(self, obj: Any) -> str:
        """The handler for a class: a property of the class alone, so it is chosen once."""
        numpy, pandas = self.numpy, self.pandas
        if numpy is not None and isinstance(obj, numpy.ndarray):
            return "_ndarray"
        if numpy is not None and isinstance(obj, numpy.generic):
            return "_numpy_scalar"
        if pandas is not None and isinstance(obj, (pandas.DataFrame, pandas.Series, pandas.Index)):
            return "_pandas"
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor):
            return "_tensor"
        artist = sys.modules.get("matplotlib.artist")
        if artist is not None and isinstance(obj, artist.Artist):
            return "_artist"
        if isinstance(obj, process_object_types()):
            return "_opaque"
        for kinds, name in _HANDLERS_BY_BASE:
            if isinstance(obj, kinds):
                return name
        return "_plain" if _is_plain(obj) else "_reduced"

    def _list(self, obj: list[Any]) -> None:
        self._sequence(obj, b"L")

    def _tuple(self, obj: tuple[Any, ...]) -> None:
        self._sequence(obj, b"U")

    def _numpy_scalar(self, obj: Any) -> None:
        self._header(b"g", type(obj))
        self._emit(str(obj.dtype.str).encode() + obj.tobytes())

    def _atom_subclass(self, obj: Any) -> None:
        cls = type(obj)
        self._header(b"v", cls)
        self.stack.append(self._instance_state(obj))
        for base in cls.__mro__:
            if base in self.atoms:
                self.stack.append(base(obj))
                return
        self.stack.append(repr(obj))

    def _method(self, obj: types.MethodType) -> None:
        self._header(b"m", type(obj))
        self.stack.extend([obj.__func__, obj.__self__])

    def _builtin(self, obj: types.BuiltinFunctionType) -> None:
        self._header(b"B", type(obj))
        self._str(getattr(obj, "__qualname__", obj.__name__))
        owner = obj.__self__
        if owner is not None and not isinstance(owner, types.ModuleType):
            self.stack.append(owner)

    def _module(self, obj: types.ModuleType) -> None:
        self._header(b"M", type(obj))
        self._str(obj.__name__)

    def _wrapper(self, obj: staticmethod | classmethod) -> None:
        self._header(b"d", type(obj))
        self.stack.append(obj.__func__)

    def _property(self, obj: property) -> None:
        self._header(b"p", type(obj))
        self._push_all([obj.fget, obj.fset, obj.fdel])

    def _descriptor(self, obj: Any) -> None:
        self._header(b"D", type(obj))
        self._str(getattr(obj, "__qualname__", getattr(obj, "__name__", "")))

    def _cell(self, obj: types.CellType) -> None:
        self._header(b"C", type(obj))
        try:
            self.stack.append(obj.cell_contents)
        except ValueError:
            self._emit(b"-")

    def _mapping_proxy(self, obj: types.MappingProxyType[Any, Any]) -> None:
        self._header(b"y", type(obj))
        self.stack.append(dict(obj))

    def _plain(self, obj: Any) -> None:
        self._header(b"o", type(obj))
        if _slot_names(type(obj)):
            self.stack.append(self._instance_state(obj))
        else:
            self.stack.append(getattr(obj, "__dict__", None))

    # -- containers ------------------------------------------------------------------------------

    def _instance_state(self, obj: Any) -> tuple[Any, ...]:
        """An instance's own attributes: its __dict__ (or None) and its slot values."""
        slots = tuple(getattr(obj, name, _MISSING) for name in _slot_names(type(obj)))
        state = getattr(obj, "__dict__", None)
        return (state if isinstance(state, dict) else None, *(s for s in slots if s is not _MISSING))

    def _extra_state(self, obj: Any, exact: tuple[type, ...]) -> None:
        """Subclasses of builtin containers may carry attributes as well (namedtuple's fields
        are the tuple itself; a defaultdict's factory is state)."""
        if type(obj) in exact:
            return
        extra: list[Any] = [self._instance_state(obj)]
        factory = getattr(obj, "default_factory", _MISSING)
        if factory is not _MISSING:
            extra.append(factory)
        self.stack.extend(reversed(extra))

    def _sequence(self, seq: list[Any] | tuple[Any, ...], tag: bytes) -> None:
        self._header(tag, type(seq), len(seq))
        self._extra_state(seq, (list, tuple))
        if not self._plain_data(seq):
            self._push_all(seq)

    def _dict(self, mapping: dict[Any, Any]) -> None:
        self._header(b"D", type(mapping), len(mapping))
        self._extra_state(mapping, (dict,))
        if self._plain_data(mapping):
            return
        flat: list[Any] = []
        for key, value in mapping.items():
            flat.append(key)
            flat.append(value)
        self._push_all(flat)

    def _set(self, items: set[Any] | frozenset[Any]) -> None:
        """Set order follows str hashes, which differ per process: elements are hashed alone
        and their digests sorted, or flat runs of atoms are sorted by value."""
        self._header(b"S", type(items), len(items))
        self._extra_state(items, (set, frozenset))
        kinds = set(map(type, items))
        sortable = len(kinds) == 1 and next(iter(kinds)) in (int, float, str, bytes)
        if sortable and self._plain_data(sorted(items)):
            return
        outer = {**self.outer, **self.memo} if self.outer else self.memo
        digests = []
        for item in items:
            sub = _Walker(outer)
            sub.walk(item)
            self.opaque_types += sub.opaque_types
            digests.append(sub.result().digest)
        self._emit(b"".join(sorted(digests)))

    def _plain_data(self, obj: list[Any] | tuple[Any, ...] | dict[Any, Any]) -> bool:
        """Big exact lists, tuples and dicts of plain data go through the pickler in one C pass.
        Only there and at the root: a failed try costs a pass, and trying at every level of a
        deep structure would cost a pass per level."""
        if len(obj) < _FAST_PATH_MIN or type(obj) not in (list, tuple, dict):
            return False
        return self._pickled(obj)

    def _pickled(self, obj: Any) -> bool:
        data = _plain_data_bytes(obj)
        if data is None:
            return False
        self._emit(b"=" + _pack_Q(len(data)))
        self._emit_large(data)
        return True

    def _buffer(self, obj: Any) -> None:
        self._header(b"b", type(obj))
        if isinstance(obj, array.array):
            self._emit(obj.typecode.encode())
        view = memoryview(obj)
        if isinstance(obj, memoryview):
            self._emit(f"{view.format}|{view.shape}".encode())
        data = view.tobytes() if not view.c_contiguous or view.ndim != 1 else view.cast("B")
        self._emit(_pack_Q(len(data)))
        self._emit_large(data)

    # -- numpy and pandas ------------------------------------------------------------------------

    def _ndarray(self, arr: Any) -> None:
        numpy = self.numpy
        self._header(b"A", type(arr))
        self._emit(_array_layout(arr))
        if type(arr) is not numpy.ndarray:
            self.stack.append(self._instance_state(arr))
        if arr.dtype.hasobject:
            self._push_all(arr.ravel().tolist() if arr.ndim else [arr.item()])
            return
        self._emit_large(_flat_bytes(arr, numpy))

    def _pandas(self, obj: Any) -> None:
        """DataFrame, Series, Index: pandas' own vectorised row hashes, plus labels and dtypes.
        Objects it cannot hash (lists in cells) go the generic way."""
        pandas = self.pandas
        try:
            rows = pandas.util.hash_pandas_object(obj, index=not isinstance(obj, pandas.Index))
        except (TypeError, ValueError):
            self._reduced(obj)
            return
        self._header(b"P", type(obj), len(obj))
        dtypes = obj.dtypes if isinstance(obj, pandas.DataFrame) else [obj.dtype]
        self._emit(repr([str(t) for t in dtypes]).encode())
        self._emit_large(rows.to_numpy().tobytes())
        labels = [obj.name if not isinstance(obj, pandas.DataFrame) else list(obj.columns)]
        labels.append(obj.index.names if not isinstance(obj, pandas.Index) else obj.names)
        labels.append(dict(obj.attrs) if hasattr(obj, "attrs") else None)
        self._push_all(labels)

    def _tensor(self, tensor: Any) -> None:
        """torch tensors: dtype, shape, requires_grad and the bytes of their data, then the gradient
        and a subclass's own state (a Parameter's). Their pickled form, a torch.save archive, names
        storages by keys local to the process, so the generic walk differed in a new process.
        Layouts other than dense (sparse, quantized, nested, meta) go the generic way."""
        torch = sys.modules["torch"]
        if (tensor.layout is not torch.strided or tensor.is_quantized or tensor.is_nested
                or tensor.device.type == "meta"):
            self._reduced(tensor)
            return
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        self._header(b"T", type(tensor))
        self._emit(f"{data.dtype}|{tuple(tensor.shape)}|{tensor.requires_grad}".encode())
        self._emit_large(data.view(torch.uint8).numpy())
        grad = tensor.grad if tensor.is_leaf else None  # .grad of a non-leaf warns, and is always None
        self._push_all([grad, None if type(tensor) is torch.Tensor else self._instance_state(tensor)])

    # -- matplotlib ------------------------------------------------------------------------------

    def _artist(self, artist: Any) -> None:
        """A matplotlib artist is its figure, seen as the user sees it (pixels), plus its place in it.

        The generic walk differed on every call: pickling a figure's callback registries advances
        their id counters, and figures hold manager numbers and weak methods. An artist outside
        any figure goes the generic way."""
        figure = _root_figure(artist)
        if figure is None:
            self._reduced(artist)
            return
        self._header(b"M", type(artist))
        if artist is figure:
            self._figure(figure)
            return
        place = next((i for i, each in enumerate(figure.findobj(include_self=False)) if each is artist), -1)
        self._emit(_pack_q(place))
        self.stack.append(figure)

    def _figure(self, figure: Any) -> None:
        """Pixels rendered at a fixed dpi (unless the data is too large to draw quickly), and each
        artist's type, visibility, label, text and data: what is drawn outside the view, or not
        at all, still counts. Rendered first: a first draw lays out ticks and legends."""
        width, height = figure.get_size_inches()
        self._emit(_pack_dd(width, height))
        points = sum(getattr(d, "size", 0) for each in figure.findobj() for d in _artist_data(each))
        if points <= FIGURE_PIXELS_UP_TO_POINTS:
            known = _renders.get(id(figure)) if _renders is not None else None
            pixels = known[1] if known is not None else _render(figure)
            if _renders is not None:
                _renders[id(figure)] = (figure, pixels)
            self._emit_large(pixels)
        scene = []
        artist_class = sys.modules["matplotlib.artist"].Artist
        for each in figure.findobj(include_self=False):
            text = each.get_text() if hasattr(each, "get_text") else None
            label = artist_class.get_label(each)  # not Axis.get_label, which is a Text
            scene.append((_type_path(type(each)), each.get_visible(), label, text, _artist_data(each)))
        self._push_all(scene)

    # -- code ------------------------------------------------------------------------------------

    def _function(self, func: types.FunctionType) -> None:
        """Name, and for the notebook's own functions the code too (a redefinition under the same
        name is a change); defaults, closure cells and attributes are state of any function."""
        self._header(b"x", type(func))
        self._str(f"{func.__module__}.{func.__qualname__}")
        parts: list[Any] = [func.__defaults__, func.__kwdefaults__, func.__dict__ or None,
                            func.__closure__]
        if func.__module__ == _NOTEBOOK_MODULE:
            parts.append(func.__code__)
        self._push_all(parts)

    def _code(self, code: types.CodeType) -> None:
        """Bytecode and constants, without the file name and line numbers, which differ from
        one kernel process to the next for the same cell. Digested apart from the rest of the
        walk: the compiler shares equal name tuples between the code objects of one cell, a
        restored class gets them unshared, and back-references would read that as a change."""
        self._header(b"K", type(code))
        sub = _Walker()
        sub.walk((code.co_code, code.co_consts, code.co_names, code.co_varnames, code.co_freevars,
                  code.co_cellvars, code.co_flags, code.co_argcount, code.co_kwonlyargcount))
        self.opaque_types += sub.opaque_types
        self._emit(sub.result().digest)

    def _class(self, cls: type) -> None:
        """Library classes by name; the notebook's own classes with their attributes, since
        class-level state (`Config.items.append(...)`) lives there. Attributes in name order:
        cloudpickle rebuilds a class `__dict__` in another order, and the same class must
        fingerprint the same after a restore. `__slotnames__` is copyreg's cache, added to a
        class the first time one of its instances is pickled: not state."""
        self._header(b"t", type(cls))
        self._emit(_type_path(cls))
        if cls.__module__ == _NOTEBOOK_MODULE and not isinstance(cls, types.GenericAlias):
            own = {k: v for k, v in sorted(vars(cls).items(), key=lambda item: str(item[0]))
                   if k not in _CLASS_BOOKKEEPING}
            self.stack.append(own)

    def _reduced(self, obj: Any) -> None:
        """Anything else is described the way pickle sees it, through __reduce_ex__; what
        cannot be pickled cannot be inspected either, and counts as changed every time."""
        try:
            custom = copyreg.dispatch_table.get(type(obj))  # how pickle itself looks first (re.Pattern)
            reduced = custom(obj) if custom is not None else obj.__reduce_ex__(4)
        except Exception:
            self._opaque(obj)
            return
        self._header(b"r", type(obj))
        if isinstance(reduced, str):
            self._str(reduced)
            return
        parts = [*reduced, None, None, None, None][:5]
        parts[3] = list(parts[3]) if parts[3] is not None else None
        parts[4] = list(parts[4]) if parts[4] is not None else None
        self._push_all(parts[:5])
