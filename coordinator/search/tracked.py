"""Records that remember their JSON, and maps that remember which keys changed.

Persisting the coordinator state costs what changed, not what exists
(`journal`): a 1024-member search changes a few records per write but holds
thousands. Two pieces make that possible without scanning:

- `Encoded` records keep their JSON text until a field is assigned, so an
  unchanged record is recognised by the identity of its text.
- A `RecordMap` (the state's segments, leases and request records) keeps
  the keys whose record was added, replaced, removed or changed in place
  since the journal last took them (`touched`, in the order first touched,
  so new keys reach storage in the order they were added); `None` means
  "anything may have changed" (a map just built), and the journal then
  compares every record. A `HistoryMap` does the same for the members whose
  history entries were appended or changed.

Both are sound because records change only by field assignment: container
fields (hparams, fallbacks, lease_ids) are replaced, never mutated in place,
and nested records (StartPoint, SegmentResult) are frozen.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any, Literal, Union

import orjson

_CACHE = "_encoded_json"
_DERIVED = "_derived"  # values computed from the fields: name -> value
_OWNER = "_owner"  # (map, key) of the map holding the record


class Encoded:
    """Mixin for the state's mutable records: remembers its JSON text until
    one of its fields is assigned (and tells the map holding it, if any).
    Subclasses are plain dataclasses: assignments go straight into the
    instance's __dict__ (no properties with setters, no slots)."""

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        # A record being built (its dataclass __init__ sets every field) has
        # nothing cached and no map yet: a few thousand per generation close.
        if _CACHE in d or _DERIVED in d or _OWNER in d:
            d.pop(_CACHE, None)
            d.pop(_DERIVED, None)
            owner = d.get(_OWNER)
            if owner is not None:
                owner[0].touch(owner[1])
        d[name] = value  # plain fields: what object.__setattr__ does

    def encoded(self) -> str:
        text = self.__dict__.get(_CACHE)
        if text is None:
            text = _record_text(self)
            self.__dict__[_CACHE] = text
        return text

    def derived(self, name: str, make: Callable[[Any], Any]) -> Any:
        """`make(self)`, remembered under `name` until a field is assigned
        (for an immutable value computed from the fields: a member's
        history.jsonl line, the policy's score of a history entry)."""
        cache = self.__dict__.get(_DERIVED)
        if cache is None:
            cache = self.__dict__[_DERIVED] = {}
        value = cache.get(name)
        if value is None:
            value = cache[name] = make(self)
        return value


class RecordMap(dict[str, Any]):
    """key -> an `Encoded` record (the state's segments, leases and request
    records), collecting the keys changed since the journal last took them
    (module doc). Every way of changing a dict goes through a method below;
    a record added here reports its own field assignments to the map."""

    # An ordered set; the class default also serves copies, which are
    # rebuilt without __init__ (copy.deepcopy of the state).
    touched: dict[str, None] | None = None

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        super().__init__(items)
        self.touched = None  # new: the next diff compares everything
        for key, value in self.items():
            self._adopt(key, value)

    def _adopt(self, key: str, value: Any) -> None:
        _own(self, key, value)

    def touch(self, key: str) -> None:
        if self.touched is not None:
            self.touched[key] = None

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._adopt(key, value)
        self.touch(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.touch(key)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self.touch(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        key, value = super().popitem()
        self.touch(key)
        return key, value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other: Any) -> RecordMap:  # type: ignore[override,misc]
        self.update(other)
        return self

    def clear(self) -> None:
        super().clear()
        self.touched = None


class HistoryMap(RecordMap):
    """member -> that member's history entries, oldest first, as a tuple.
    Entries are added with `append`: a tuple makes any other way of adding
    one fail loudly instead of going unseen. A touched member is one whose
    entries were added or changed."""

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        super().__init__((key, tuple(value)) for key, value in dict(items).items())

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, tuple(value))

    def _adopt(self, key: str, value: Any) -> None:
        for entry in value:
            _own(self, key, entry)

    def append(self, member: str, entry: Any) -> None:
        # Not through __setitem__: that would adopt every earlier entry
        # again, work that grew with the generations on every report.
        dict.__setitem__(self, member, (*self.get(member, ()), entry))
        _own(self, member, entry)
        self.touch(member)


def _own(owner: RecordMap, key: str, value: Any) -> None:
    if isinstance(value, Encoded):
        value.__dict__[_OWNER] = (owner, key)


# ------------------------------------------------------------------ JSON


def dumps(value: Any) -> str:
    """Compact JSON of a record or plain value, non-finite floats included."""
    return orjson.dumps(_plain(value), option=orjson.OPT_NON_STR_KEYS).decode()


def _record_text(record: Any) -> str:
    """`dumps(record)`, in one call to orjson when the record's floats are
    all finite and plain: a closing 1,024-member generation encodes about
    2,000 records under the service lock, and a segment record's change
    and re-encoding took 19-21 us through the walk (`_plain`, then json's
    encoder) against 2-6 us here (bench_state_write.py,
    `segment_record_encode_us`). orjson writes the
    public attributes in the record's `__dict__`, in their order, and skips
    the private ones (the caches): the fields in field order, as `_plain`
    gives them, for every record made by `__init__`, `replace`, a copy or
    `from_doc`, and records change only by assigning fields. It writes a
    non-finite float as null and refuses a numpy scalar, so a record
    holding either (a diverged member's metric) takes the walk."""
    check = _finite_checks.get(type(record), _UNKNOWN)
    if check is _UNKNOWN:
        check = _finite_checks[type(record)] = _fields_check(type(record))
    if check is not _OPAQUE:
        try:
            if check is None or check(record):
                return orjson.dumps(record).decode()
        except TypeError:  # orjson.JSONEncodeError is one; so is isfinite("x")
            pass
    return dumps(record)


# A check is a function telling whether a value's floats are all finite;
# None: the type holds no float; _OPAQUE: the type is not understood (a
# field typed Any), so its records always take the walk.
_Check = Callable[[Any], bool]
_OPAQUE: Any = object()
_UNKNOWN: Any = object()
_finite_checks: dict[type, _Check | None] = {}
_PLAIN_TYPES = (str, int, bool, type(None))


def _fields_check(cls: type) -> _Check | None:
    """The check of dataclass `cls`, built once from its fields' types."""
    hints = typing.get_type_hints(cls)
    parts: list[tuple[str, _Check]] = []
    for f in fields(cls):
        check = _type_check(hints[f.name])
        if check is _OPAQUE:
            return _OPAQUE
        if check is not None:
            parts.append((f.name, check))
    if not parts:
        return None

    def all_finite(record: Any) -> bool:
        return all(check(getattr(record, name)) for name, check in parts)

    return all_finite


def _type_check(tp: Any) -> _Check | None:
    if tp in _PLAIN_TYPES:
        return None
    if tp is float:
        return math.isfinite
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return None if all(isinstance(a, _PLAIN_TYPES) for a in args) else _OPAQUE
    if origin is Union or origin is types.UnionType:
        return _optional_check(args)
    if origin is dict and len(args) == 2 and args[0] is str:
        return _each(_type_check(args[1]), dict.values)
    if origin is list and len(args) == 1:
        return _each(_type_check(args[0]), iter)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _each(_type_check(args[0]), iter)
    if is_dataclass(tp):
        return _fields_check(tp)  # type: ignore[arg-type]
    return _OPAQUE


def _optional_check(args: tuple[Any, ...]) -> _Check | None:
    """`X | None` only: which member of a wider union a value is would need
    telling apart before checking it."""
    inner = [a for a in args if a is not type(None)]
    if len(inner) != 1:
        return _OPAQUE
    check = _type_check(inner[0])
    if check is None or check is _OPAQUE:
        return check
    return lambda value: value is None or check(value)


def _each(check: _Check | None, items: Callable[[Any], Iterable[Any]]) -> _Check | None:
    if check is None or check is _OPAQUE:
        return check
    # map: with math.isfinite, the whole check runs in C
    return lambda value: all(map(check, items(value)))


def _plain(value: Any) -> Any:
    """`value` as JSON-ready data in one pass: dataclasses as dicts of their
    fields (like `asdict`, without its deep copy: containers are never
    mutated while encoded), and non-finite floats, which JSON lacks, as
    {"$float": "nan"} etc. The exact-type checks come first because this
    runs for every field of a record that `_record_text` cannot hand to
    orjson whole."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else {"$float": repr(value)}
    if kind is dict:
        return {k: _plain(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_plain(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES.get(kind)
        if names is None:
            names = _FIELD_NAMES[kind] = tuple(f.name for f in fields(value))
        return {name: _plain(getattr(value, name)) for name in names}
    # Subclasses (numpy floats, RecordMap, ...): the slow path.
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
