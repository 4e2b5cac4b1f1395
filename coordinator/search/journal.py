"""Persisting the coordinator state at a cost proportional to what changed.

Object stores cannot append, so the state lives in numbered objects under
`<run>/coordinator/` (layout in `storage.keys`):

    journal/000000000042.json   one per group commit: the records that batch
                                changed or dropped, the scalar fields, new events
                                and new values of the best-metric history
    snapshot/000000000040.json  the whole live state as of journal entry 40
    archive/gen-0003.json       generation 3's history entries, written once

A write is one journal entry (plus, once per generation, the archive of a
generation closed `archive_lag` generations ago). Once the entries since
the last snapshot are at least `snapshot_every` and hold at least as many
bytes as it did, the leader also writes a snapshot and deletes what the
snapshot before it made redundant, so the journal stays short. Closed
generations' history leaves the live state once archived: neither entries
nor snapshots grow with the number of finished generations.

The one part of an archived entry that may still change is
`checkpoint_deleted` (retention can delete a pinned checkpoint later); such
keys are kept in `late_deleted` (few: the lag outlasts retention's window).

Every object is framed: a JSON header line (`format`, `kind`, `seq`, `size`,
`sha256` of the body) and the body, so a torn or corrupt object is detected
whatever the backend. `recovery.load_state` rebuilds the state from them.

`Image` is what storage holds after the last write, as record texts, kept in
memory so a write is a diff (of the keys the state's record maps saw
change, `tracked.RecordMap`; record texts are cached by the records, so an
unchanged record is recognised by identity) and a failed write can be rolled
back without reading storage. Images are never mutated: each batch makes a
new one, sharing what did not change with the last (`layered.Layered`), so
a write costs what changed, not the size of the population.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring_ascii as quote
from typing import Any

from autolfads.coordinator.search.errors import CoordinatorError
from autolfads.coordinator.search.layered import Layered
from autolfads.coordinator.search.state import RECORD_MAPS, SearchState, encode_value
from autolfads.storage.keys import RunLayout

JOURNAL_FORMAT = 2
RECORD_KINDS = RECORD_MAPS
# The state's scalar fields, written whole in every entry (a few hundred
# bytes). `best_history` (one value per generation) goes as what was added.
SCALAR_FIELDS = (
    "run", "mode", "data_key", "data_sha256", "config_key", "status", "message",
    "generation", "revision", "best",
)  # fmt: skip
DEFAULT_SNAPSHOT_EVERY = 64
MAX_ENTRIES_BETWEEN_SNAPSHOTS = 512


class CorruptObject(CoordinatorError):
    """A journal, snapshot or archive object that fails its frame check."""


@dataclass(frozen=True)
class Image:
    """What storage holds after journal entry `seq` (record texts, no objects).

    `history` holds the open generations (> `archived_through`) as
    member -> generation -> text; `archive` the archived ones as written.
    """

    seq: int = 0
    fields: str = "{}"
    records: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: {k: {} for k in RECORD_KINDS}
    )
    history: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    event_refs: tuple[Any, ...] = ()  # the state's event dicts, by identity
    event_texts: tuple[str, ...] = ()
    archived_through: int = -1
    archive: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    late_deleted: frozenset[str] = frozenset()
    best_history: tuple[float, ...] = ()  # the state's values, as written


def prime(state: SearchState, base: Image) -> Image:
    """The image of `state`, which storage holds as `base` (after recovery or
    a rollback): same content, but texts shared with the state's records so
    the next diff recognises unchanged records by identity."""
    records = {
        k: Layered({key: r.encoded() for key, r in getattr(state, k).items()}) for k in RECORD_KINDS
    }
    history = {
        member: {e.generation: e.encoded() for e in entries if e.generation > base.archived_through}
        for member, entries in state.history.items()
    }
    return replace(
        base,
        fields=_fields(state),
        records=records,
        history=Layered({m: h for m, h in history.items() if h}),
        event_refs=tuple(state.events),
        event_texts=tuple(encode_value(e) for e in state.events),
        best_history=tuple(state.best_history),
    )


# ------------------------------------------------------------------ framing


def frame(kind: str, seq: int, body: bytes) -> bytes:
    header = {
        "format": JOURNAL_FORMAT,
        "kind": kind,
        "seq": seq,
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + body


def unframe(data: bytes, kind: str, seq: int) -> dict[str, Any]:
    """The body of a framed object, parsed; CorruptObject if anything is off."""
    head, sep, body = data.partition(b"\n")
    try:
        header = json.loads(head)
        ok = (
            sep
            and header.get("format") == JOURNAL_FORMAT
            and header.get("kind") == kind
            and header.get("seq") == seq
            and header.get("size") == len(body)
            and header.get("sha256") == hashlib.sha256(body).hexdigest()
        )
        if not ok:
            raise ValueError("header does not match the body (torn or overwritten)")
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("body is not a JSON object")
        return doc
    except (ValueError, AttributeError) as err:
        raise CorruptObject(f"{kind} {seq}: {err}") from None


# ------------------------------------------------------------------ writing


@dataclass
class Batch:
    """One journal write: archive objects first, then the entry."""

    image: Image  # what storage holds once this batch is written
    docs: list[tuple[str, bytes]]
    entry_key: str
    entry: bytes


class JournalWriter:
    """Turns the live state into journal entries, archives and snapshots.

    Called under the service lock (`take`); what it returns is written
    outside it. `archive_lag`: a generation is archived once the search is
    this many generations past it (after retention has had its say).
    """

    def __init__(
        self,
        layout: RunLayout,
        *,
        archive_lag: int,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
    ) -> None:
        if archive_lag < 1 or snapshot_every < 1:
            raise ValueError("archive_lag and snapshot_every must be >= 1")
        self.layout = layout
        self.archive_lag = archive_lag
        self.snapshot_every = snapshot_every

    def take(self, state: SearchState, base: Image, deleted: Collection[str]) -> Batch:
        """The entry that brings storage from `base` to `state`. `deleted`:
        checkpoint keys retention marked deleted in this batch."""
        through = max(base.archived_through, state.generation - 1 - self.archive_lag)
        if state.terminal:
            through = base.archived_through  # nothing more to gain
        archive, docs = self._archive(state, base, through)
        late = {k for k in deleted if self._generation_of(k) <= through}
        seq = base.seq + 1
        fields = _fields(state)
        parts: list[str] = [f'"seq":{seq}', f'"fields":{fields}']
        records: dict[str, Layered[str, str]] = {}
        maps = [getattr(state, kind) for kind in RECORD_KINDS]
        for kind, live in zip(RECORD_KINDS, maps, strict=True):
            # Only the keys touched since the last take can differ from `base`
            # (it is that take's image), unless nothing was written yet.
            keys = None if base.seq == 0 else live.touched
            written = Layered.of(base.records[kind])
            put, drop = _diff(live, written, keys)
            records[kind] = written.changed(put, drop)
            parts.append(f'"put_{kind}":{_join(put.items())}')
            parts.append(f'"drop_{kind}":{json.dumps(drop)}')
        # Only the touched members' entries can differ, unless nothing was
        # written yet; archiving drops closed generations from every member.
        members = None if base.seq == 0 else state.history.touched
        history, changed = _diff_history(
            state, base.history, through, members, through > base.archived_through
        )
        parts.append(f'"put_history":{_join_history(changed)}')
        keep, added = _event_delta(base.event_refs, state.events)
        new_texts = tuple(encode_value(e) for e in added)
        texts = (base.event_texts[len(base.event_texts) - keep :] if keep else ()) + new_texts
        parts.append(f'"events_keep":{keep},"events_add":[{",".join(new_texts)}]')
        best_keep, best_add = _best_delta(base.best_history, state.best_history)
        parts.append(f'"best_history_keep":{best_keep},"best_history_add":{best_add}')
        parts.append(f'"archived_through":{through},"late_deleted":{json.dumps(sorted(late))}')
        image = Image(
            seq=seq,
            fields=fields,
            records=records,
            history=history,
            event_refs=tuple(state.events),
            event_texts=texts,
            archived_through=through,
            archive=archive,
            late_deleted=base.late_deleted | late,
            best_history=tuple(state.best_history),
        )
        body = ("{" + ",".join(parts) + "}").encode()
        for live in (*maps, state.history):  # taken: later changes are relative to this image
            live.touched = {}
        return Batch(image, docs, self.layout.journal_entry(seq), frame("journal", seq, body))

    def snapshot_due(
        self, image: Image, last_snapshot: int, entry_bytes: int, snapshot_bytes: int
    ) -> bool:
        """At least `snapshot_every` entries since the last snapshot, and
        at least as many bytes of them (`entry_bytes`) as that snapshot had:
        a snapshot costs the whole live state, so this keeps its share of
        the writes at most what the entries themselves cost (1024 members:
        5 MB snapshots, ~4 KB entries), and recovery never reads more than
        about twice a snapshot. Past `MAX_ENTRIES_BETWEEN_SNAPSHOTS` entries
        one is due whatever their size (recovery reads entries one by one)."""
        if last_snapshot < 0:
            return True
        entries = image.seq - last_snapshot
        if entries >= MAX_ENTRIES_BETWEEN_SNAPSHOTS:
            return True
        return entries >= self.snapshot_every and entry_bytes >= snapshot_bytes

    def snapshot(self, image: Image) -> tuple[str, bytes]:
        """The whole live state as of `image.seq`, as one framed object."""
        return self.layout.snapshot(image.seq), frame("snapshot", image.seq, snapshot_body(image))

    def _archive(
        self, state: SearchState, base: Image, through: int
    ) -> tuple[Mapping[int, Mapping[str, str]], list[tuple[str, bytes]]]:
        if through <= base.archived_through:
            return base.archive, []
        archive = dict(base.archive)
        docs = []
        for g in range(base.archived_through + 1, through + 1):
            entries = {
                m: e.encoded() for m, hs in state.history.items() for e in hs if e.generation == g
            }
            archive[g] = entries
            body = (
                '{"generation":' + str(g) + ',"entries":' + _join(entries.items()) + "}"
            ).encode()
            docs.append((self.layout.archive(g), frame("archive", g, body)))
        return archive, docs

    def _generation_of(self, checkpoint: str) -> int:
        parsed = self.layout.try_parse_checkpoint_key(checkpoint)
        return parsed[1] if parsed else -1


def snapshot_body(image: Image) -> bytes:
    """An entry that, applied to nothing, gives `image` (a snapshot's body)."""
    parts = [f'"seq":{image.seq}', f'"fields":{image.fields}']
    for kind in RECORD_KINDS:
        parts.append(f'"put_{kind}":{_join(image.records[kind].items())}')
        parts.append(f'"drop_{kind}":[]')
    parts.append(f'"put_history":{_join_history(image.history)}')
    parts.append(f'"events_keep":0,"events_add":[{",".join(image.event_texts)}]')
    parts.append(f'"best_history_keep":0,"best_history_add":{encode_value(image.best_history)}')
    parts.append(
        f'"archived_through":{image.archived_through},'
        f'"late_deleted":{json.dumps(sorted(image.late_deleted))}'
    )
    return ("{" + ",".join(parts) + "}").encode()


def _fields(state: SearchState) -> str:
    return encode_value({name: getattr(state, name) for name in SCALAR_FIELDS})


def _best_delta(written: tuple[float, ...], live: Sequence[float]) -> tuple[int, str]:
    """How many written values stay, and the rest as JSON. The history only
    grows; anything else (a state replaced) rewrites it whole. (Values are
    the same float objects, so NaNs compare equal here.)"""
    keep = len(written) if tuple(live[: len(written)]) == written else 0
    return keep, encode_value(list(live[keep:]))


def _diff(
    live: Mapping[str, Any], written: Mapping[str, str], keys: Collection[str] | None
) -> tuple[dict[str, str], list[str]]:
    """Records whose text differs from `written`, and the keys `live` no
    longer has. `keys`: the only keys that can differ (None: any)."""
    if keys is not None:
        return _diff_keys(live, written, keys)
    put: dict[str, str] = {}
    for key, record in live.items():
        text = record.encoded()
        if written.get(key) is not text:
            put[key] = text
    drop: list[str] = []
    if len(written) + sum(1 for key in put if key not in written) != len(live):
        drop = [key for key in written if key not in live]  # only then can a key have gone
    return put, drop


def _diff_keys(
    live: Mapping[str, Any], written: Mapping[str, str], keys: Collection[str]
) -> tuple[dict[str, str], list[str]]:
    put: dict[str, str] = {}
    drop: list[str] = []
    for key in keys:
        record = live.get(key)
        if record is not None:
            text = record.encoded()
            if written.get(key) is not text:
                put[key] = text
        elif key in written:
            drop.append(key)
    return put, drop


def _diff_history(
    state: SearchState,
    written: Mapping[str, Mapping[int, str]],
    through: int,
    members: Collection[str] | None,
    archiving: bool,
) -> tuple[Layered[str, Mapping[int, str]], dict[str, dict[int, str]]]:
    """The open history (generations > `through`) and what changed in it.
    `members`: the only members whose entries can differ (None: any).
    `archiving`: generations up to `through` just closed for good, so every
    member's open history loses them. A member with no change keeps its
    written dict (no copy), and so does the map when only a few changed."""
    whole = members is None or archiving
    history: dict[str, Mapping[int, str]] = {}  # whole: all of it; else the members changed
    members = state.history if members is None or archiving else members
    changed: dict[str, dict[int, str]] = {}
    for member in members:
        old = written.get(member, {})
        diff: dict[int, str] = {}
        # Newest first, only as far as the open generations.
        for entry in reversed(state.history.get(member, ())):
            if entry.generation <= through:
                break
            text = entry.encoded()
            if old.get(entry.generation) is not text:
                diff[entry.generation] = text
        if diff:
            changed[member] = diff
        if diff or archiving:
            merged = {g: t for g, t in old.items() if g > through}
            merged.update(diff)
            if merged:
                history[member] = merged
        elif old and whole:
            history[member] = old
    if whole:
        return Layered(history), changed
    return Layered.of(written).changed(history, ()), changed


def _event_delta(written: tuple[Any, ...], live: list[Any]) -> tuple[int, list[Any]]:
    """(how many of the written events are still the oldest live ones, the
    events appended since). Events are only appended and trimmed from the
    front, so the last written event's position tells both."""
    if written:
        last = written[-1]
        for i in range(len(live) - 1, -1, -1):
            if live[i] is last:
                return i + 1, live[i + 1 :]
    return 0, list(live)


def _join(items: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join([f"{quote(key)}:{text}" for key, text in items]) + "}"


def _join_history(history: Mapping[str, Mapping[int, str]]) -> str:
    return _join((m, _join((str(g), t) for g, t in h.items())) for m, h in history.items())


# ------------------------------------------------------------------ reading


@dataclass
class Doc:
    """The state as recovery assembles it: parsed records, applied in order."""

    seq: int = 0
    fields: dict[str, Any] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {k: {} for k in RECORD_KINDS}
    )
    history: dict[str, dict[int, Any]] = field(default_factory=dict)
    events: list[Any] = field(default_factory=list)
    archived_through: int = -1
    late_deleted: set[str] = field(default_factory=set)
    best_history: list[Any] = field(default_factory=list)

    def apply(self, body: dict[str, Any]) -> None:
        """Apply one journal entry (or a snapshot to an empty Doc)."""
        try:
            self.seq = int(body["seq"])
            self.fields = dict(body["fields"])
            if "best_history_add" in body:
                keep = int(body["best_history_keep"])
                self.best_history = [*self.best_history[:keep], *body["best_history_add"]]
            else:  # written before the history went as a delta: in the fields
                self.best_history = list(self.fields.pop("best_history"))
            for kind in RECORD_KINDS:
                self.records[kind].update(body[f"put_{kind}"])
                for key in body[f"drop_{kind}"]:
                    self.records[kind].pop(key, None)
            through = int(body["archived_through"])
            for member, entries in body["put_history"].items():
                self.history.setdefault(member, {}).update({int(g): e for g, e in entries.items()})
            if through > self.archived_through:
                for member in list(self.history):
                    kept = {g: e for g, e in self.history[member].items() if g > through}
                    self.history[member] = kept
            self.archived_through = through
            keep = int(body["events_keep"])
            self.events = self.events[len(self.events) - keep :] if keep else []
            self.events.extend(body["events_add"])
            self.late_deleted.update(body["late_deleted"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CorruptObject(f"seq {body.get('seq')}: malformed ({err!r})") from None

    def state(self, archive: Mapping[int, Mapping[str, Any]]) -> SearchState:
        """The SearchState these records describe, with `archive` (generation ->
        member -> entry) as the closed generations' history."""
        history: dict[str, list[Any]] = {}
        for g in sorted(archive):
            for member, entry in archive[g].items():
                history.setdefault(member, []).append(entry)
        for member, open_entries in self.history.items():
            history.setdefault(member, []).extend(open_entries[g] for g in sorted(open_entries))
        doc = {
            **self.fields,
            "best_history": self.best_history,
            **self.records,
            "history": {m: hs for m, hs in history.items() if hs},
            "events": self.events,
        }
        state = SearchState.from_doc(doc)
        if self.late_deleted:
            for recovered in state.history.values():
                for entry in recovered:
                    if (
                        entry.generation <= self.archived_through
                        and entry.checkpoint in self.late_deleted
                    ):
                        entry.checkpoint_deleted = True
        return state


def archive_texts(archive: Mapping[int, Mapping[str, Any]]) -> dict[int, dict[str, str]]:
    """Parsed archive entries back to record texts (for an Image)."""
    return {g: {m: encode_value(e) for m, e in entries.items()} for g, entries in archive.items()}


def parse_archive(body: dict[str, Any], generation: int) -> dict[str, Any]:
    entries = body.get("entries")
    if body.get("generation") != generation or not isinstance(entries, dict):
        raise CorruptObject(f"archive {generation}: malformed")
    return entries


def image_state(image: Image) -> SearchState:
    """Decode an image (a rollback) the way recovery decodes storage."""
    doc = Doc()
    doc.apply(json.loads(snapshot_body(image)))
    archive = {g: {m: json.loads(t) for m, t in e.items()} for g, e in image.archive.items()}
    return doc.state(archive)
