"""Immutable maps that share what did not change.

A journal image (`journal.Image`) holds the text of every live record, and
each write makes a new image from the last one while the last one stays
whole (a failed write rolls back to it; a snapshot encodes it outside the
lock). Copying its maps made every write O(records): 50-100 us under the
service lock at 1024 members, growing with the population. A `Layered`
map is one write's changes laid over the map before it: O(changes) to
make, a lookup walks at most `MAX_DEPTH` layers, and every `MAX_DEPTH`-th
write copies the whole map into one layer again (amortised: 1/16 of a
copy per write).

Iteration gives what a dict changed in place would give (an updated key
keeps its place, a new one goes last, a dropped one leaves), so a snapshot
lists records in the order the old copies did, and a state rebuilt from
it in the order the search made them.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# Layers before a map is copied into one again: a lookup costs at most this
# many dict probes, and a write 1/MAX_DEPTH of a copy.
MAX_DEPTH = 16
_GONE = object()  # a key this layer drops
_ABSENT = object()


class Layered(Mapping[K, V], Generic[K, V]):
    """A read-only map; `changed` makes a new one from it."""

    __slots__ = ("_top", "_below", "_depth", "_len", "__weakref__")

    def __init__(self, items: Mapping[K, V] | None = None) -> None:
        self._top: dict[K, object] = dict(items) if items else {}
        self._below: Layered[K, V] | None = None
        self._depth = 0
        self._len = len(self._top)

    @classmethod
    def of(cls, items: Mapping[K, V]) -> Layered[K, V]:
        """`items` itself if already layered (they are never changed), else a copy."""
        return items if isinstance(items, Layered) else cls(items)

    def changed(self, put: Mapping[K, V], drop: Iterable[K]) -> Layered[K, V]:
        """This map with `put` set and `drop` removed (a key in both is
        dropped); this map is left as it was."""
        if not put and not drop:
            return self  # no empty layer, and no copy every 16th of them
        top: dict[K, object] = dict(put)
        size = self._len + sum(1 for key in put if key not in self)
        for key in dict.fromkeys(drop):
            if top.pop(key, _ABSENT) is not _ABSENT and key not in self:
                size -= 1  # counted above as a new key
            if key in self:
                top[key] = _GONE
                size -= 1
        layer: Layered[K, V] = object.__new__(Layered)
        layer._top, layer._below, layer._depth, layer._len = top, self, self._depth + 1, size
        return Layered(layer._flat()) if layer._depth >= MAX_DEPTH else layer

    def __getitem__(self, key: K) -> V:
        value = self._find(key)
        if value is _ABSENT:
            raise KeyError(key)
        return value  # type: ignore[return-value]

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        value = self._find(key)
        return default if value is _ABSENT else value  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        return self._find(key) is not _ABSENT  # type: ignore[arg-type]

    def _find(self, key: K) -> object:
        """The value of `key`, newest layer first; `_ABSENT` if it has none
        (never set, or dropped since)."""
        layer: Layered[K, V] | None = self
        while layer is not None:
            value = layer._top.get(key, _ABSENT)
            if value is not _ABSENT:
                return _ABSENT if value is _GONE else value
            layer = layer._below
        return _ABSENT

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[K]:
        return iter(self._flat())

    def items(self) -> ItemsView[K, V]:
        return self._flat().items()

    def _flat(self) -> dict[K, V]:
        """One dict, as if each layer had been applied to a copy of the one
        below it in turn (the order a dict changed in place keeps)."""
        layers = []
        layer: Layered[K, V] | None = self
        while layer is not None:
            layers.append(layer._top)
            layer = layer._below
        flat: dict[K, object] = dict(layers.pop())
        for top in reversed(layers):
            for key, value in top.items():
                if value is _GONE:
                    del flat[key]
                else:
                    flat[key] = value
        return flat  # type: ignore[return-value]
