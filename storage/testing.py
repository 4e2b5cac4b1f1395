"""The storage contract as a reusable test class.

Every backend keeps the same promises (see `autolfads.storage.base`); this
module states them once, as tests, so that any store proves itself by
subclassing `StoreContract` (zarr's `zarr.testing.store.StoreTests` is the
model). A subclass provides the `store` fixture and `tamper`, which changes an
object behind the store's back the way corruption or a foreign writer would:

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path / "store")

        def tamper(self, store, key, data, *, keep_checksum):
            ...  # rewrite the bytes; keep or drop the recorded SHA-256

pytest then runs every `test_*` method for that store. Importing this module
needs pytest (a test dependency, not a runtime one).
"""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from autolfads.storage.base import Store
from autolfads.storage.errors import (
    ChecksumMismatch,
    InvalidKey,
    InvalidMetadata,
    MissingChecksum,
    ObjectNotFound,
    SourceUnreadable,
    StorageError,
    Unsupported,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Keys every operation must refuse, each for its own reason.
BAD_KEYS = [
    "../escape.bin",
    "run/../../escape.bin",
    "/etc/passwd",
    "a//b",
    "a/",
    "",
    ".hidden",
    "run/.x.meta.json",
    "a\x00b",
    "a\nb",
    "a\x1bb",
    "a\\b",
    "a b",
    "k" * 1000,
]


class StoreContract:
    """Subclass (as `Test...`) with a `store` fixture and a `tamper` method."""

    @pytest.fixture
    def store(self) -> Store:
        pytest.fail(f"{type(self).__name__} must provide a `store` fixture")

    def tamper(self, store: Store, key: str, data: bytes, *, keep_checksum: bool) -> None:
        """Replace `key`'s bytes with `data` bypassing `store`, keeping the
        recorded SHA-256 (silent corruption) or dropping it (a foreign writer)."""
        pytest.fail(f"{type(self).__name__} must implement `tamper`")

    # ---- round trips -----------------------------------------------------------

    def test_put_get_stat_round_trip(self, store: Store) -> None:
        data = b"\x00\x01checkpoint bytes\xff" * 100
        info = store.put_bytes(
            "run1/members/m001/gen-0000/checkpoint.pt", data, metadata={"member": "m001"}
        )
        assert info.sha256 == sha(data) and info.size == len(data)
        assert store.get_bytes("run1/members/m001/gen-0000/checkpoint.pt") == data
        stat = store.stat("run1/members/m001/gen-0000/checkpoint.pt")
        assert (stat.size, stat.sha256) == (len(data), sha(data))
        assert stat.metadata == {"member": "m001"}
        assert stat.content_type == "application/octet-stream"
        assert stat.modified is not None and stat.modified > 0
        assert store.exists("run1/members/m001/gen-0000/checkpoint.pt")

    def test_empty_object(self, store: Store) -> None:
        store.put_bytes("empty.bin", b"")
        assert store.get_bytes("empty.bin") == b""
        assert store.stat("empty.bin").size == 0

    def test_overwrite_replaces_bytes_and_checksum(self, store: Store) -> None:
        store.put_bytes("state.json", b"old")
        store.put_bytes("state.json", b"new and longer")
        assert store.get_bytes("state.json") == b"new and longer"
        assert store.stat("state.json").sha256 == sha(b"new and longer")

    def test_json_round_trip(self, store: Store) -> None:
        record = {"generation": 7, "ranking": ["m003", "m001"], "copied": {"m001": "m003"}}
        store.put_json("run/generations/gen-0007.json", record)
        assert store.get_json("run/generations/gen-0007.json") == record
        assert store.stat("run/generations/gen-0007.json").content_type == "application/json"

    def test_file_round_trip(self, store: Store, tmp_path: Path) -> None:
        src = tmp_path / "in.h5"
        data = bytes(range(256)) * 12_000  # ~3 MB: several 1 MiB chunks
        src.write_bytes(data)
        info = store.put_file("run/data/x.h5", src, metadata={"source-name": "in.h5"})
        assert info.sha256 == sha(data)
        dest = tmp_path / "out" / "copy.h5"
        got = store.get_file("run/data/x.h5", dest)
        assert dest.read_bytes() == data and got.sha256 == sha(data)
        # Downloading again over an existing file replaces it.
        store.put_bytes("run/data/x.h5", b"v2")
        store.get_file("run/data/x.h5", dest)
        assert dest.read_bytes() == b"v2"

    @pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names descriptors via /proc")
    def test_a_downloaded_file_is_on_disk_before_it_has_its_name(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # After a power loss, a file under its final name (which a data
        # cache takes as complete) must hold all its bytes: the temp file
        # is fsynced before the rename, and the folder after it.
        store.put_bytes("run/data/x.h5", b"payload")
        dest = tmp_path / "out" / "x.h5"
        dest.parent.mkdir()
        events: list[tuple[str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def replace(src: Any, dst: Any) -> None:
            events.append(("rename", f"{src} -> {dst}"))
            real_replace(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        store.get_file("run/data/x.h5", dest)
        monkeypatch.undo()
        renames = [i for i, (what, _) in enumerate(events) if what == "rename"]
        assert len(renames) == 1 and events[renames[0]][1].endswith(f" -> {dest}")
        tmp = events[renames[0]][1].split(" -> ")[0]
        assert ("fsync", tmp) in events[: renames[0]]
        assert ("fsync", str(dest.parent)) in events[renames[0] :]
        assert dest.read_bytes() == b"payload"

    @pytest.mark.skipif(not os.path.isfile("/proc/self/io"), reason="Linux's /proc/self/io")
    def test_a_file_that_changes_while_it_uploads_is_never_stored_inconsistent(
        self, store: Store
    ) -> None:
        # /proc/self/io differs at every read, like a file still being
        # written. Whatever a backend does (store what it read, or refuse),
        # the object must never fail its own checksum afterwards.
        try:
            info = store.put_file("run/data/changing.h5", Path("/proc/self/io"))
        except StorageError:
            assert not store.exists("run/data/changing.h5")
            return
        assert sha(store.get_bytes("run/data/changing.h5")) == info.sha256

    def test_put_file_missing_source_is_clear(self, store: Store, tmp_path: Path) -> None:
        with pytest.raises(StorageError, match="not an existing file"):
            store.put_file("x.bin", tmp_path / "absent.bin")

    @pytest.mark.skipif(not os.path.isfile("/proc/self/mem"), reason="Linux's /proc/self/mem")
    def test_an_unreadable_source_is_named_not_the_destination(self, store: Store) -> None:
        # /proc/self/mem is a file whose first read fails (EIO): the error
        # must name it, not the key or the server, and store nothing.
        with pytest.raises(SourceUnreadable, match="cannot read /proc/self/mem"):
            store.put_file("run/data/unreadable.h5", Path("/proc/self/mem"))
        assert not store.exists("run/data/unreadable.h5")

    # ---- missing objects, deletion -----------------------------------------------

    def test_missing_object(self, store: Store, tmp_path: Path) -> None:
        with pytest.raises(ObjectNotFound, match="absent.bin"):
            store.get_bytes("absent.bin")
        with pytest.raises(ObjectNotFound):
            store.stat("absent.bin")
        with pytest.raises(ObjectNotFound):
            store.get_file("absent.bin", tmp_path / "out.bin")
        assert not (tmp_path / "out.bin").exists()
        assert not store.exists("absent.bin")

    def test_delete_is_idempotent(self, store: Store) -> None:
        store.put_bytes("a/b/c.bin", b"1")
        store.put_bytes("a/b/d.bin", b"2")
        store.delete("a/b/c.bin")
        store.delete("a/b/c.bin")
        store.delete("never/existed.bin")
        assert not store.exists("a/b/c.bin")
        assert [i.key for i in store.list()] == ["a/b/d.bin"]

    # ---- listing -------------------------------------------------------------------

    def test_list_is_recursive_sorted_and_prefix_filtered(self, store: Store) -> None:
        keys = [
            "run/members/m010/gen-0001/checkpoint.pt",
            "run/members/m002/history.jsonl",
            "run/config.yaml",
            "run/members/m002/gen-0000/checkpoint.pt",
            "run/members/m001x/gen-0000/checkpoint.pt",
            "other/config.yaml",
        ]
        for n, key in enumerate(keys):
            store.put_bytes(key, bytes([n]) * (n + 1))
        assert [i.key for i in store.list()] == sorted(keys)
        assert [i.key for i in store.list("run/members/")] == sorted(
            k for k in keys if "members" in k
        )
        # A plain string prefix, as in S3: "m00" matches m001x and m002.
        assert [i.key for i in store.list("run/members/m00")] == [
            "run/members/m001x/gen-0000/checkpoint.pt",
            "run/members/m002/gen-0000/checkpoint.pt",
            "run/members/m002/history.jsonl",
        ]
        assert [i.key for i in store.list("run/members/m002/")] == [
            "run/members/m002/gen-0000/checkpoint.pt",
            "run/members/m002/history.jsonl",
        ]
        assert list(store.list("nothing/here/")) == []
        sizes = {i.key: i.size for i in store.list()}
        assert sizes["run/config.yaml"] == 3
        for info in store.list():
            assert info.sha256 in (None, store.stat(info.key).sha256)

    # ---- integrity -------------------------------------------------------------------

    def test_tampered_object_is_detected(self, store: Store, tmp_path: Path) -> None:
        key = "run/members/m001/gen-0003/checkpoint.pt"
        store.put_bytes(key, b"genuine checkpoint")
        self.tamper(store, key, b"corrupt checkpoint", keep_checksum=True)
        with pytest.raises(ChecksumMismatch, match="gen-0003/checkpoint.pt") as caught:
            store.get_bytes(key)
        assert "\n" not in str(caught.value)
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        with pytest.raises(ChecksumMismatch):
            store.get_file(key, downloads / "ckpt.pt")
        # Nothing half-verified is left at the destination.
        assert list(downloads.iterdir()) == []
        assert store.get_bytes(key, verify=False) == b"corrupt checkpoint"

    def test_object_without_checksum_is_unverifiable(self, store: Store) -> None:
        store.put_bytes("run/config.yaml", b"name: x\n")
        self.tamper(store, "run/config.yaml", b"name: y\n", keep_checksum=False)
        with pytest.raises(MissingChecksum, match="no SHA-256 recorded"):
            store.get_bytes("run/config.yaml")
        # MissingChecksum is a ChecksumMismatch: one except clause falls back on both.
        assert issubclass(MissingChecksum, ChecksumMismatch)
        assert store.get_bytes("run/config.yaml", verify=False) == b"name: y\n"
        # A caller that knows the content hash can still verify it.
        assert store.get_bytes("run/config.yaml", expected_sha256=sha(b"name: y\n")) == b"name: y\n"

    def test_expected_sha256_must_match(self, store: Store, tmp_path: Path) -> None:
        store.put_bytes("d.h5", b"data")
        with pytest.raises(ChecksumMismatch, match="expected"):
            store.get_bytes("d.h5", expected_sha256=sha(b"other"))
        with pytest.raises(ChecksumMismatch):
            store.get_file("d.h5", tmp_path / "d.h5", expected_sha256=sha(b"other"))
        assert not (tmp_path / "d.h5").exists()
        with pytest.raises(InvalidKey, match="SHA-256"):
            store.get_bytes("d.h5", expected_sha256="not-a-hash")

    def test_concurrent_overwrites_never_expose_a_mix(self, store: Store) -> None:
        # Writers replace one key with whole, distinct payloads while a reader
        # verifies every read: each read is one complete version.
        payloads = [bytes([n]) * (50_000 + n) for n in range(4)]
        store.put_bytes("run/coordinator/state.json", payloads[0])
        errors: list[BaseException] = []

        def write(data: bytes) -> None:
            try:
                for _ in range(5):
                    store.put_bytes("run/coordinator/state.json", data)
            except BaseException as err:  # reported below
                errors.append(err)

        threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
        for t in threads:
            t.start()
        seen = set()
        while any(t.is_alive() for t in threads):
            seen.add(store.get_bytes("run/coordinator/state.json"))
        for t in threads:
            t.join()
        assert not errors
        assert seen <= set(payloads)

    # ---- keys --------------------------------------------------------------------------

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_bad_keys_rejected_by_every_operation(
        self, store: Store, key: str, tmp_path: Path
    ) -> None:
        operations = [
            lambda: store.put_bytes(key, b"x"),
            lambda: store.get_bytes(key),
            lambda: store.get_file(key, tmp_path / "out"),
            lambda: store.stat(key),
            lambda: store.exists(key),
            lambda: store.delete(key),
            lambda: store.presigned_url(key),
        ]
        for operation in operations:
            with pytest.raises(InvalidKey) as caught:
                operation()
            assert "\n" not in str(caught.value)
        if key and key != "a/":  # "" and "a/" are valid listing prefixes
            with pytest.raises(InvalidKey):
                store.list(key)
        assert list(store.list()) == []
        assert not (tmp_path / "escape.bin").exists()

    def test_bad_metadata_rejected(self, store: Store) -> None:
        # (Spaces at a value's ends: HTTP drops them, so S3 would read back
        # another value than a local store.)
        bad = ({"Upper": "x"}, {"sha256": "x"}, {"ok": "caf\u00e9"}, {"ok": "a\nb"}, {"ok": " x "})
        for metadata in bad:
            with pytest.raises(InvalidMetadata):
                store.put_bytes("m.bin", b"x", metadata=metadata)
        assert not store.exists("m.bin")

    def test_presigned_url_serves_the_object_where_supported(self, store: Store) -> None:
        key = "run/best/report/index.html"
        store.put_bytes(key, b"<html>best</html>", content_type="text/html")
        with pytest.raises(StorageError, match="lifetime"):
            store.presigned_url(key, expires_s=0)
        if not store.capabilities.presigned_urls:
            with pytest.raises(Unsupported, match="no presigned URLs"):
                store.presigned_url(key, expires_s=60)
            return
        url = store.presigned_url(key, expires_s=60)
        assert url.startswith("http")
        with urllib.request.urlopen(url, timeout=10) as response:  # the test server: loopback
            assert response.read() == b"<html>best</html>"
