"""The one storage interface: objects addressed by validated '/'-separated keys.

Guarantees every backend keeps (tests/test_storage_contract.py checks them):

* Each put is atomic: a reader sees the old object or the whole new one,
  never a part, and a crash mid-write leaves nothing visible. A group of
  objects is published by writing its marker last (e.g. `metrics.json` after
  `checkpoint.pt`, the generation record after every member's files).
* Each put records the SHA-256 of the bytes; reads verify it by default and
  raise `ChecksumMismatch` (or its subclass `MissingChecksum`) on a mismatch,
  so a caller can fall back to an older checkpoint.
* `list` is recursive and sorted by key; `delete` is idempotent.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from autolfads.storage.errors import (
    ChecksumMismatch,
    InvalidMetadata,
    MissingChecksum,
    ObjectNotFound,
    SourceUnreadable,
    StorageError,
    Unsupported,
)
from autolfads.storage.keys import validate_key, validate_prefix, validate_sha256

log = logging.getLogger(__name__)

CHUNK = 1 << 20
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# User metadata travels as `x-amz-meta-<name>` headers: lowercase ASCII names,
# printable ASCII values. `sha256` is reserved for the integrity checksum.
_META_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_META_VALUE = re.compile(r"^[\x20-\x7e]{0,1024}$")
RESERVED_METADATA = frozenset({"sha256"})
# A concurrent overwrite can be caught between its two halves on some
# backends; one re-read after this pause tells that apart from corruption.
_REREAD_PAUSE_S = 0.05


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object. `sha256` is None when unknown
    (e.g. in S3 listings, which carry no user metadata)."""

    key: str
    size: int
    sha256: str | None = None
    modified: float | None = None  # seconds since the epoch
    metadata: dict[str, str] = field(default_factory=dict, hash=False)
    content_type: str | None = None


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Validate user metadata; return a plain dict copy."""
    clean: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        if not isinstance(name, str) or not _META_NAME.fullmatch(name):
            raise InvalidMetadata(
                f"invalid metadata name {name!r}: use 1-64 lowercase letters, digits or '-'"
            )
        if name in RESERVED_METADATA:
            raise InvalidMetadata(f"metadata name {name!r} is reserved for the checksum")
        if not isinstance(value, str) or not _META_VALUE.fullmatch(value):
            raise InvalidMetadata(
                f"invalid value for metadata {name!r}: use at most 1024 printable ASCII characters"
            )
        if value != value.strip(" "):  # HTTP drops them: S3 would store another value
            raise InvalidMetadata(
                f"invalid value for metadata {name!r}: remove the spaces at its start or end"
            )
        clean[name] = value
    return clean


def check_content_type(content_type: str) -> str:
    if not isinstance(content_type, str) or not re.fullmatch(r"[\x21-\x7e ]{1,200}", content_type):
        raise InvalidMetadata(f"invalid content type {content_type!r}")
    return content_type


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex digest, size) of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with SourceFile(path) as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class SourceFile:
    """A local file read for an upload: a failure to open or read it raises
    `SourceUnreadable` naming it (an OSError here would otherwise read as
    a problem of the destination, or of the network)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = open(path, "rb")  # noqa: SIM115 (closed by close / __exit__)
        except OSError as err:
            raise _unreadable(path, err) from None

    def read(self, n: int = -1) -> bytes:
        try:
            return self._file.read(n)
        except OSError as err:
            raise _unreadable(self.path, err) from None

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SourceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unreadable(path: Path, err: OSError) -> SourceUnreadable:
    return SourceUnreadable(f"cannot read {path}: {err.strerror or err}")


def copy_hashing(src: BinaryIO | SourceFile, dst: BinaryIO) -> tuple[str, int]:
    """Copy a stream, returning (sha256 hex, bytes copied)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _temp_tag() -> str:
    """This process's part of temp-file names: its pid and 3 random bytes
    (the pid alone may be an earlier process's whose temp file a crash left)."""
    return f"{os.getpid():x}-{secrets.token_hex(3)}"


# A temp name is the tag and a counter, not fresh random bytes: each of
# those was a getrandom system call per file, two per local write. A
# forked child takes a new tag; O_EXCL settles any clash left.
_TAG = [_temp_tag()]
_COUNTER = itertools.count()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _TAG.__setitem__(0, _temp_tag()))


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to a raw descriptor (no file object: opening one
    costs three system calls)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def open_temp_beside(path: Path) -> tuple[int, Path]:
    """Create a fresh hidden temp file in the destination's folder (made if
    missing), so that `os.replace` onto the destination is an atomic
    same-filesystem rename. Returns its open descriptor (write-only) and path.

    The folder is made only when the first try finds it missing: most
    writes go to a folder that exists, and on slow filesystems every
    system call counts."""
    # (Python opens every descriptor close-on-exec.)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_BINARY", 0)
    for attempt in range(4):
        tmp = path.with_name(f".{path.name}.{_TAG[0]}-{next(_COUNTER):x}.part")
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:  # a name clash (or a folder named so): try another
            continue
        except FileNotFoundError:
            # The folder is missing, or a concurrent delete pruned it (empty)
            # after it was made: make it and try again.
            if attempt == 3:
                raise
            make_folders(path.parent)
    raise FileExistsError(errno.EEXIST, "no free temp file name", str(path.parent))


def make_folders(folder: Path) -> None:
    """`mkdir -p folder`, each new folder's name made durable in its parent:
    a file renamed into a new folder and fsynced there must not vanish with
    its folder after a power loss (a journal entry naming a checkpoint in a
    new `gen-NNNN/` folder would then name nothing)."""
    missing: list[Path] = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            if not new.is_dir():  # a file in the way: the open that follows says so
                return
            # Made by a concurrent writer, which may not have synced it yet.
        fsync_dir(new.parent)


def fsync_file(path: Path) -> None:
    """Flush a file's contents to disk (opened for writing: Windows fsyncs
    only such descriptors)."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the renames in a folder durable; not every platform or
    filesystem allows it (Windows cannot open a folder), which is left as is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path_beside(path: Path) -> Path:
    """`open_temp_beside` for a caller that opens the file itself."""
    fd, tmp = open_temp_beside(path)
    os.close(fd)
    return tmp


@dataclass(frozen=True)
class StoreCapabilities:
    """What a backend offers beyond the contract every store keeps.

    presigned_urls: `presigned_url()` hands out time-limited browser links
    (S3/MinIO); elsewhere it raises `Unsupported`.
    parallel_writes: how many puts are worth running at once from threads of
    one process. Round trips (S3) overlap, so many pay off; a local disk's
    writes are system calls that the kernel serialises on its journal, and
    every extra writer thread only contends for the GIL with the caller's
    other threads (the coordinator's event loop), so one writes them all.
    """

    presigned_urls: bool = False
    parallel_writes: int = 1

    def __post_init__(self) -> None:
        if self.parallel_writes < 1:
            raise ValueError(f"parallel_writes must be at least 1, got {self.parallel_writes}")


class Store(ABC):
    """Abstract object store; see the module docstring for the guarantees."""

    #: Credential-free display form, e.g. "s3://bucket/prefix?endpoint=..." or "file:///abs".
    url: str
    capabilities: StoreCapabilities = StoreCapabilities()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def location(self, key: str | None = None) -> str:
        """Where `key` (or the store) lives, for messages; never has credentials."""
        return f"{self.url}/{key}" if key else self.url

    # ---- writing -----------------------------------------------------------

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Store `data` under `key` atomically, recording its SHA-256."""
        validate_key(key)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise StorageError(
                f"{self.location(key)}: data must be bytes, got {type(data).__name__}"
            )
        data = bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        return self._put_bytes(
            key, data, sha, check_content_type(content_type), check_metadata(metadata)
        )

    def put_file(
        self,
        key: str,
        path: str | Path,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Stream a local file to `key` (multipart on S3), recording its SHA-256."""
        validate_key(key)
        src = Path(path)
        if not src.is_file():
            raise StorageError(f"cannot upload {src}: not an existing file")
        return self._put_file(key, src, check_content_type(content_type), check_metadata(metadata))

    def put_json(
        self, key: str, value: Any, *, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        """Store a JSON document (indented, so it reads well in the console)."""
        text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n"
        return self.put_bytes(
            key, text.encode("utf-8"), content_type="application/json", metadata=metadata
        )

    # ---- reading -----------------------------------------------------------

    def get_bytes(
        self, key: str, *, verify: bool = True, expected_sha256: str | None = None
    ) -> bytes:
        """The object's bytes. With `verify`, they must hash to the recorded
        SHA-256 (and to `expected_sha256` when given), else ChecksumMismatch."""
        validate_key(key)
        if expected_sha256 is not None:
            validate_sha256(expected_sha256)
        for attempt in (0, 1):
            data, info = self._get_bytes(key)
            if not verify:
                return data
            actual = hashlib.sha256(data).hexdigest()
            try:
                self._verify(key, actual, info.sha256, expected_sha256)
                return data
            except ChecksumMismatch:
                if attempt:
                    raise
                time.sleep(_REREAD_PAUSE_S)
        raise AssertionError("unreachable")

    def get_json(self, key: str, *, verify: bool = True) -> Any:
        data = self.get_bytes(key, verify=verify)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StorageError(f"{self.location(key)}: not valid JSON ({err})") from None

    def get_file(
        self,
        key: str,
        path: str | Path,
        *,
        verify: bool = True,
        expected_sha256: str | None = None,
    ) -> ObjectInfo:
        """Download to `path` atomically: the file appears only once complete
        and (with `verify`) checked; on any failure nothing is left behind."""
        validate_key(key)
        if expected_sha256 is not None:
            validate_sha256(expected_sha256)
        dest = Path(path)
        for attempt in (0, 1):
            tmp = temp_path_beside(dest)
            try:
                info, actual = self._download(key, tmp)
                if verify:
                    self._verify(key, actual, info.sha256, expected_sha256)
                # On disk before it has its name: after a power loss a cache
                # must not find a file that exists but is incomplete.
                try:
                    fsync_file(tmp)
                    os.replace(tmp, dest)
                except OSError as err:
                    raise StorageError(f"cannot write {dest}: {err.strerror or err}") from None
                fsync_dir(dest.parent)
                return info
            except ChecksumMismatch:
                if attempt:
                    raise
                time.sleep(_REREAD_PAUSE_S)
            finally:
                tmp.unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def stat(self, key: str) -> ObjectInfo:
        """Size, SHA-256, modification time and metadata; ObjectNotFound if absent."""
        return self._stat(validate_key(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (plain string prefix,
        as in S3), recursively, sorted by key."""
        return self._list(validate_prefix(prefix))

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
        self._delete(validate_key(key))

    def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        """A time-limited GET URL for a browser (`Unsupported` where the backend
        has none, see `capabilities`). The URL itself grants access: hand it to
        the user, never log it."""
        validate_key(key)
        if (
            isinstance(expires_s, bool)
            or not isinstance(expires_s, int)
            or not 1 <= expires_s <= 604800
        ):
            raise StorageError(f"presigned URL lifetime {expires_s!r} must be 1..604800 seconds")
        if not self.capabilities.presigned_urls:
            raise Unsupported(
                f"{self.location(key)}: {type(self).__name__} has no presigned URLs; "
                "serve the file another way or use an S3/MinIO store"
            )
        return self._presigned_url(key, expires_s)

    def _verify(self, key: str, actual: str, recorded: str | None, expected: str | None) -> None:
        where = self.location(key)
        if expected is not None and actual != expected:
            raise ChecksumMismatch(
                f"{where}: content SHA-256 {actual[:16]}... differs from the expected "
                f"{expected[:16]}...; the object is corrupt or was replaced"
            )
        if recorded is None:
            if expected is None:
                raise MissingChecksum(
                    f"{where}: no SHA-256 recorded (written outside autolfads?); "
                    "cannot verify it, read it with verify=False if you trust it"
                )
            return
        if actual != recorded:
            raise ChecksumMismatch(
                f"{where}: content SHA-256 {actual[:16]}... differs from the recorded "
                f"{recorded[:16]}...; the object is corrupt or was modified behind the store's back"
            )

    # ---- backend primitives (keys already validated) ----------------------

    @abstractmethod
    def _put_bytes(
        self, key: str, data: bytes, sha256: str, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo: ...

    @abstractmethod
    def _put_file(
        self, key: str, path: Path, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo: ...

    @abstractmethod
    def _get_bytes(self, key: str) -> tuple[bytes, ObjectInfo]: ...

    @abstractmethod
    def _download(self, key: str, tmp: Path) -> tuple[ObjectInfo, str]:
        """Write the object's bytes to `tmp`; return (info, sha256 of the bytes written)."""

    @abstractmethod
    def _stat(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    def _presigned_url(self, key: str, expires_s: int) -> str:
        """Only called where `capabilities.presigned_urls` is true."""
        raise Unsupported(f"{type(self).__name__} declares presigned URLs but has none")
