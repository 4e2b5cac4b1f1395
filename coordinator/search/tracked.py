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

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

_CACHE = "_encoded_json"
_DERIVED = "_derived"  # values computed from the fields: name -> value
_OWNER = "_owner"  # (map, key) of the map holding the record


class Encoded:
    """Mixin for the state's mutable records: remembers its JSON text until
    one of its fields is assigned (and tells the map holding it, if any)."""

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        d.pop(_CACHE, None)
        d.pop(_DERIVED, None)
        owner = d.get(_OWNER)
        if owner is not None:
            owner[0].touch(owner[1])
        object.__setattr__(self, name, value)

    def encoded(self) -> str:
        text = self.__dict__.get(_CACHE)
        if text is None:
            text = dumps(self)
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
    return _ENCODE(_plain(value))


# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    """`value` as JSON-ready data in one pass: dataclasses as dicts of their
    fields (like `asdict`, without its deep copy: containers are never
    mutated while encoded), and non-finite floats, which JSON lacks, as
    {"$float": "nan"} etc. The exact-type checks come first because this
    runs for every field of every changed record."""
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
