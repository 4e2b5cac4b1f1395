"""Content-addressed data files: upload once per run, download once per pod.

A data file's key holds its SHA-256 (`<run>/data/<sha256>.h5`), so the bytes
behind a key never change and a local copy named by the hash stays valid for
ever. `DataCache.fetch` downloads into `<cache_dir>/<sha256>.h5` at most once
per cache folder, even with many trainer processes asking at the same time:
an exclusive lock file serialises the download, and the file only appears
(by atomic rename) after its hash has been verified.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from autolfads.storage.base import Store, sha256_file
from autolfads.storage.errors import ChecksumMismatch, StorageError
from autolfads.storage.keys import RunLayout, validate_key, validate_sha256
from autolfads.storage.locks import FileLock

log = logging.getLogger(__name__)

_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}$")


def default_cache_dir() -> Path:
    """$AUTOLFADS_CACHE_DIR, else ~/.cache/autolfads/data."""
    configured = os.environ.get("AUTOLFADS_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "autolfads" / "data"


def _suffix(key: str) -> str:
    match = _SUFFIX.search(key.rsplit("/", 1)[-1])
    return match.group(0) if match else ""


class DataCache:
    """Local, verified copies of content-addressed objects of one store."""

    def __init__(self, store: Store, cache_dir: str | Path) -> None:
        self.store = store
        self.cache_dir = Path(cache_dir).expanduser()
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(
                f"cannot create data cache {self.cache_dir}: {err.strerror}"
            ) from None
        # What this instance did, for logs and tests: downloads vs cache hits.
        self.downloads = 0
        self.hits = 0

    def path_for(self, key: str, sha256: str) -> Path:
        return self.cache_dir / f"{validate_sha256(sha256)}{_suffix(validate_key(key))}"

    def fetch(self, key: str, sha256: str, *, rehash: bool = False) -> Path:
        """Local path of the object `key` whose content hash is `sha256`.

        Downloads (verified against `sha256`) only if this cache folder does
        not hold it yet. `rehash` re-checks a cached copy, replacing it if it
        was damaged on disk.
        """
        dest = self.path_for(key, sha256)
        if not rehash and dest.is_file():
            self.hits += 1
            return dest
        # A re-check hashes under the lock too: another process re-checking
        # may be replacing the copy meanwhile.
        # make_folder: the folder may have been cleared since this cache was
        # made (a long-lived trainer, a tmp cleaner); it is made again.
        with FileLock(self.cache_dir / f".{sha256}.lock", make_folder=True):
            # Another process may have finished the download while we waited.
            if self._usable(dest, sha256, rehash):
                self.hits += 1
                return dest
            log.info("downloading %s from %s into %s", key, self.store.url, dest)
            # Replaces a damaged copy by rename, never by deleting it first:
            # a process that just found the path must not find it gone.
            self.store.get_file(key, dest, expected_sha256=sha256)
            self.downloads += 1
        return dest

    @staticmethod
    def _usable(path: Path, sha256: str, rehash: bool) -> bool:
        if not path.is_file():
            return False
        if rehash and sha256_file(path)[0] != sha256:
            log.warning("cached %s is damaged; downloading it again", path)
            return False
        return True


def upload_data(
    store: Store, layout: RunLayout, path: str | Path, *, suffix: str | None = None
) -> tuple[str, str]:
    """Upload a local data file under its content hash, unless already there.

    Returns (key, sha256). The key ends in `suffix` if given, else in the
    file's own (".h5" if none). An existing object with the same key is
    reused only if its recorded checksum agrees (same key means same bytes)."""
    src = Path(path)
    if not src.is_file():
        raise StorageError(f"data file {src} does not exist")
    sha256, _ = sha256_file(src)
    key = layout.data(sha256, suffix if suffix is not None else _suffix(src.name) or ".h5")
    if store.exists(key) and store.stat(key).sha256 == sha256:
        return key, sha256
    info = store.put_file(key, src, metadata={"source-name": _ascii_name(src.name)})
    if info.sha256 != sha256:
        raise ChecksumMismatch(f"{src} changed while it was being uploaded; try again")
    return key, sha256


def _ascii_name(name: str) -> str:
    """The original file name as metadata S3 can carry (printable ASCII, no
    spaces at the ends)."""
    clean = "".join(ch if 0x20 <= ord(ch) < 0x7F else "_" for ch in name)[:200].strip(" ")
    return clean or hashlib.sha256(name.encode()).hexdigest()[:16]
