"""`MemoryStore`: objects in a dict, for tests and for throwaway work in one process.

It keeps the whole storage contract (atomic puts, recorded SHA-256, sorted
recursive listing, idempotent delete) without touching a disk, so coordinator
and worker tests can run on it, alone or wrapped in a `FaultyStore`. Nothing
survives the process, and other processes cannot see it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from autolfads.storage.base import ObjectInfo, SourceFile, Store
from autolfads.storage.errors import ObjectNotFound


class MemoryStore(Store):
    """A thread-safe in-memory store (no presigned URLs)."""

    def __init__(self, name: str = "memory") -> None:
        self.url = f"memory://{name}"
        # key -> (bytes, info); a put replaces the pair at once.
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self._lock = threading.Lock()

    def _put_bytes(
        self, key: str, data: bytes, sha256: str, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        info = ObjectInfo(key, len(data), sha256, time.time(), dict(metadata), content_type)
        with self._lock:
            self._objects[key] = (data, info)
        return info

    def _put_file(
        self, key: str, path: Path, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        with SourceFile(path) as src:
            data = src.read()
        return self._put_bytes(key, data, hashlib.sha256(data).hexdigest(), content_type, metadata)

    def _get_bytes(self, key: str) -> tuple[bytes, ObjectInfo]:
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise ObjectNotFound(f"{self.location(key)}: no such object")
        return found

    def _download(self, key: str, tmp: Path) -> tuple[ObjectInfo, str]:
        data, info = self._get_bytes(key)
        tmp.write_bytes(data)
        return info, hashlib.sha256(data).hexdigest()

    def _stat(self, key: str) -> ObjectInfo:
        return self._get_bytes(key)[1]

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._lock:
            infos = [info for key, (_, info) in self._objects.items() if key.startswith(prefix)]
        return iter(sorted(infos, key=lambda info: info.key))

    def _delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def replace_behind_the_back(self, key: str, data: bytes, *, keep_checksum: bool) -> None:
        """Swap an object's bytes without recording their checksum: what disk
        corruption or a foreign writer does to a real store (contract tests)."""
        with self._lock:
            _, info = self._objects[key]
            sha = info.sha256 if keep_checksum else None
            self._objects[key] = (
                data,
                ObjectInfo(key, len(data), sha, time.time(), info.metadata, info.content_type),
            )
