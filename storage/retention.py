"""Checkpoint garbage collection, so a long search does not fill the bucket.

Per member, the newest `keep_generations` checkpoints stay. So does every
protected checkpoint, which the caller (it owns the generation records)
names: the coordinator protects those a queued or leased segment may still
start or fall back from, and the best one. Parents copied from generations
ago are not kept for their own sake, so storage stays bounded. Only `checkpoint.pt` files are removed: metrics and histories are
small and are the record of the search.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from autolfads.storage.base import Store
from autolfads.storage.errors import InvalidKey, ObjectNotFound, StorageError
from autolfads.storage.keys import RunLayout, split_checkpoint_key

log = logging.getLogger(__name__)


def _parse(key: str) -> tuple[str, str, int]:
    """(run path, member, generation) of a checkpoint key."""
    parsed = split_checkpoint_key(key)
    if parsed is None:
        raise InvalidKey(
            f"not a checkpoint key: {key!r} (expected <run>/members/<member>/gen-NNNN/checkpoint.pt)"
        )
    return parsed


def select_checkpoints_to_delete(
    existing: Iterable[str], keep_generations: int, protected: Iterable[str] = ()
) -> list[str]:
    """The checkpoint keys to delete, sorted; a pure function.

    existing: checkpoint keys currently stored (any runs, any members).
    keep_generations: newest checkpoints kept per member (>= 1).
    protected: keys never deleted (start points, fallbacks, the best); keys not in
        `existing` are ignored.
    """
    if isinstance(keep_generations, bool) or not isinstance(keep_generations, int):
        raise StorageError(f"keep_generations must be an integer, got {keep_generations!r}")
    if keep_generations < 1:
        raise StorageError(f"keep_generations must be >= 1, got {keep_generations}")
    keep = set(protected)
    by_member: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for key in set(existing):
        run, member, generation = _parse(key)
        by_member[run, member].append((generation, key))
    doomed: list[str] = []
    for checkpoints in by_member.values():
        checkpoints.sort(reverse=True)  # newest first
        doomed.extend(key for _, key in checkpoints[keep_generations:] if key not in keep)
    return sorted(doomed)


def gc_checkpoints(
    store: Store, layout: RunLayout, keep_generations: int, protected: Iterable[str] = ()
) -> list[str]:
    """Delete the run's checkpoints that `select_checkpoints_to_delete` picks.

    Returns the deleted keys. Safe to run while trainers write: a checkpoint
    written after the listing is simply not considered this time.
    """
    existing = [
        info.key
        for info in store.list(layout.members_prefix())
        if layout.try_parse_checkpoint_key(info.key) is not None
    ]
    doomed = select_checkpoints_to_delete(existing, keep_generations, protected)
    for key in doomed:
        try:
            store.delete(key)
        except ObjectNotFound:
            continue
    if doomed:
        log.info("deleted %d old checkpoint(s) of run %s", len(doomed), layout.run)
    return doomed
