"""Local-directory backend: the embedded default for one machine.

Keys map to files under the root with the same layout as in a bucket, so
`ls -R` shows what the MinIO console would. Each object `a/b/name` has a
hidden sidecar `a/b/.name.meta.json` with its SHA-256, size, content type and
metadata. A write goes to a hidden temp file in the same folder, is fsynced,
and is published by two renames, sidecar first, then data, under a per-key
lock that readers share; so a reader always pairs a data file with the
sidecar written with it, even while other threads or processes overwrite it.

A crash before the data rename leaves the previous data file (or none)
visible: a new key stays absent; an overwritten one reads as a
ChecksumMismatch (detected, never silently wrong). Hidden names are never
valid keys, so sidecars, temp files and the `.autolfads/` lock folder cannot
collide with objects and never appear in listings.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from autolfads.storage.base import (
    ObjectInfo,
    SourceFile,
    Store,
    copy_hashing,
    fsync_dir,
    open_temp_beside,
    write_all,
)
from autolfads.storage.errors import BucketNotFound, InvalidKey, ObjectNotFound, StorageError
from autolfads.storage.keys import validate_key
from autolfads.storage.locks import StripedLocks

log = logging.getLogger(__name__)

_META_SUFFIX = ".meta.json"
_INTERNAL = ".autolfads"


def _meta(sha256: str, size: int, content_type: str, metadata: dict[str, str]) -> dict:
    return {"sha256": sha256, "size": size, "content_type": content_type, "metadata": metadata}


class LocalStore(Store):
    """Objects as files under `root` (created when `create` is true)."""

    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()
        # The directory is made by the first write, never here: a command that
        # fails (or only reads) leaves no empty store folder behind.
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"{self.root}: exists but is not a directory")
        if not create and not self.root.is_dir():
            raise BucketNotFound(f"{self.root}: store directory does not exist")
        self._locks = StripedLocks(self.root / _INTERNAL / "locks")

    # ---- paths -------------------------------------------------------------

    def location(self, key: str | None = None) -> str:
        return str(self._path(key)) if key else str(self.root)

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*key.split("/"))
        # Validation already forbids '..' and absolute keys; this is the
        # invariant it buys.
        assert path.is_relative_to(self.root), key
        return path

    @staticmethod
    def _meta_path(path: Path) -> Path:
        return path.with_name(f".{path.name}{_META_SUFFIX}")

    def _io_error(self, key: str, err: OSError) -> StorageError:
        if err.errno == errno.ENOSPC:
            return StorageError(f"{self.location(key)}: no space left on device")
        return StorageError(f"{self.location(key)}: {err.strerror or err}")

    def _not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(f"{self.location(key)}: no such object")

    # ---- writing -----------------------------------------------------------

    def _write(self, key: str, fill: Callable[[int], dict]) -> ObjectInfo:
        """Let `fill(fd)` write a temp file beside the key's path through its
        raw descriptor (and return its sidecar dict), then publish both.

        Every write of the coordinator's journal goes through here, so it
        makes no system call it can do without (18 per put, from 45): folders
        are made only when missing, the size and time come from the open
        file, bytes go to raw descriptors (a file object costs three calls
        to open), temp names need no random bytes from the kernel, and temp
        files are removed only when they were not published."""
        path = self._path(key)
        if path.is_dir():
            raise InvalidKey(f"{self.location(key)}: is a folder of other objects, not an object")
        tmp = meta_tmp = None
        published = False
        try:
            fd, tmp = self._temp_beside(key, path)
            try:
                meta = fill(fd)
                os.fsync(fd)
                st = os.fstat(fd)  # a rename keeps the size and modification time
            finally:
                os.close(fd)
            fd, meta_tmp = self._temp_beside(key, self._meta_path(path))
            try:
                write_all(fd, json.dumps(meta, sort_keys=True).encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            with self._locks.exclusive(key):
                os.replace(meta_tmp, self._meta_path(path))
                os.replace(tmp, path)
            published = True
            fsync_dir(path.parent)
        except OSError as err:
            raise self._io_error(key, err) from None
        finally:
            if not published:
                for leftover in (tmp, meta_tmp):
                    if leftover is not None:
                        leftover.unlink(missing_ok=True)
        return self._info(key, st, meta)

    def _temp_beside(self, key: str, path: Path) -> tuple[int, Path]:
        try:
            return open_temp_beside(path)
        except (NotADirectoryError, FileExistsError):
            raise InvalidKey(f"{self.location(key)}: a parent of this key is an object") from None

    def _put_bytes(
        self, key: str, data: bytes, sha256: str, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        def fill(fd: int) -> dict:
            write_all(fd, data)
            return _meta(sha256, len(data), content_type, metadata)

        return self._write(key, fill)

    def _put_file(
        self, key: str, path: Path, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        def fill(fd: int) -> dict:
            # One pass: the checksum is of exactly the bytes written.
            with SourceFile(path) as src, open(fd, "wb", closefd=False) as dst:
                sha256, size = copy_hashing(src, dst)
            return _meta(sha256, size, content_type, metadata)

        return self._write(key, fill)

    # ---- reading -----------------------------------------------------------

    def _read_meta(self, path: Path) -> dict:
        try:
            with open(self._meta_path(path), encoding="utf-8") as fh:
                meta = json.load(fh)
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def _info(self, key: str, st: os.stat_result, meta: dict) -> ObjectInfo:
        sha = meta.get("sha256")
        # A sidecar that describes other bytes (a crash between the two
        # renames) must not vouch for this file.
        if not isinstance(sha, str) or meta.get("size") != st.st_size:
            sha = None
        raw = meta.get("metadata")
        metadata = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        ctype = meta.get("content_type")
        return ObjectInfo(
            key=key,
            size=st.st_size,
            sha256=sha,
            modified=st.st_mtime,
            metadata=metadata,
            content_type=ctype if isinstance(ctype, str) else None,
        )

    def _open(self, key: str) -> tuple[BinaryIO, ObjectInfo]:
        """Open the data file and read its sidecar as one consistent pair."""
        path = self._path(key)
        try:
            with self._locks.shared(key):
                fh = open(path, "rb")  # noqa: SIM115 - returned to the caller
                meta = self._read_meta(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._not_found(key) from None
        except OSError as err:
            raise self._io_error(key, err) from None
        try:
            return fh, self._info(key, os.fstat(fh.fileno()), meta)
        except BaseException:
            fh.close()
            raise

    def _stat(self, key: str) -> ObjectInfo:
        fh, info = self._open(key)
        fh.close()
        return info

    def _get_bytes(self, key: str) -> tuple[bytes, ObjectInfo]:
        fh, info = self._open(key)
        try:
            with fh:
                return fh.read(), info
        except OSError as err:
            raise self._io_error(key, err) from None

    def _download(self, key: str, tmp: Path) -> tuple[ObjectInfo, str]:
        src, info = self._open(key)
        try:
            with src, open(tmp, "wb") as dst:
                sha256, _ = copy_hashing(src, dst)
        except OSError as err:
            raise self._io_error(key, err) from None
        return info, sha256

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Walk only the deepest folder the prefix pins down.
        folder, _, _ = prefix.rpartition("/")
        start = self._path(folder) if folder else self.root
        if not start.is_dir():
            return iter(())
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if name.startswith(".") or not key.startswith(prefix):
                    continue
                try:
                    keys.append(validate_key(key))
                except InvalidKey:
                    log.debug("skipping %s: not a valid key", key)
        return self._infos(sorted(keys))

    def _infos(self, keys: list[str]) -> Iterator[ObjectInfo]:
        for key in keys:
            try:
                yield self._stat(key)
            except ObjectNotFound:
                continue  # deleted while listing

    # ---- deleting ----------------------------------------------------------

    def _delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            return  # a "folder", not an object: like S3, nothing to delete
        try:
            with self._locks.exclusive(key):
                path.unlink(missing_ok=True)
                self._meta_path(path).unlink(missing_ok=True)
        except NotADirectoryError:
            return  # a parent is a file, so the key cannot exist
        except OSError as err:
            raise self._io_error(key, err) from None
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        """Remove folders left empty, up to the root (as S3 'folders' vanish)."""
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or raced with a writer): keep it
            folder = folder.parent
