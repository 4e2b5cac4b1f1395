"""The local-directory backend: crash safety, the on-disk layout, URLs, and
the data cache (content-addressed, verified, downloaded once)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from autolfads.storage import (
    BucketNotFound,
    ChecksumMismatch,
    DataCache,
    InvalidKey,
    LocalStore,
    ObjectNotFound,
    RunLayout,
    StorageError,
    open_store,
    upload_data,
)
from autolfads.storage import base as storage_base
from autolfads.storage import local as storage_local
from autolfads.storage.base import open_temp_beside, write_all

# A child process that writes one object and hangs at a chosen point of the
# write, so the test can SIGKILL it exactly there (a real crash, mid-write).
_CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from autolfads.storage import LocalStore

    root, key, size, point = sys.argv[1:]
    store = LocalStore(root)

    def hang():
        print("READY", flush=True)
        time.sleep(60)

    if point == "before-publish":
        real_fsync = os.fsync
        def fsync(fd):  # first call: the data temp file is complete
            real_fsync(fd)
            hang()
        os.fsync = fsync
    else:  # "between-renames": the sidecar is published, the data is not
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            hang()
        os.replace = replace
    store.put_bytes(key, b"N" * int(size))
    """
)


def crash_during_put(root: Path, key: str, size: int, point: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, str(root), key, str(size), point],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    try:
        line = child.stdout.readline()
        assert line.strip() == "READY", child.stderr.read()
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL


KEY = "run/members/m001/gen-0002/checkpoint.pt"


@pytest.mark.parametrize("point", ["before-publish", "between-renames"])
def test_crash_while_writing_a_new_key_leaves_nothing_visible(
    local_store: LocalStore, point: str
) -> None:
    crash_during_put(local_store.root, KEY, 300_000, point)
    assert not local_store.exists(KEY)
    assert list(local_store.list()) == []
    with pytest.raises(ObjectNotFound):
        local_store.get_bytes(KEY)
    # The next writer is not disturbed by the leftovers.
    local_store.put_bytes(KEY, b"complete")
    assert local_store.get_bytes(KEY) == b"complete"
    assert [i.key for i in local_store.list()] == [KEY]


def test_a_write_into_new_folders_makes_each_folder_durable(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a power cut to test with, the protocol is checked: each new
    # folder's name is synced in its parent, and the object's name in its
    # folder. (Before, only the last: after a power loss the new gen-NNNN/
    # folder, and the checkpoint a journal entry names, could be gone.)
    synced: list[Path] = []
    real = storage_base.fsync_dir

    def recording(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(storage_base, "fsync_dir", recording)
    monkeypatch.setattr(storage_local, "fsync_dir", recording)
    local_store.put_bytes(KEY, b"checkpoint")
    root = local_store.root
    made = [root / "run", root / "run/members", root / "run/members/m001"]
    made.append(root / "run/members/m001/gen-0002")
    assert all(folder.parent in synced for folder in made), synced
    assert synced[-1] == made[-1]  # the rename, after the folders


def test_crash_before_publishing_an_overwrite_keeps_the_old_object(
    local_store: LocalStore,
) -> None:
    local_store.put_bytes(KEY, b"old checkpoint")
    crash_during_put(local_store.root, KEY, 300_000, "before-publish")
    assert local_store.get_bytes(KEY) == b"old checkpoint"


def test_crash_between_renames_of_an_overwrite_is_detected(local_store: LocalStore) -> None:
    local_store.put_bytes(KEY, b"old checkpoint")
    crash_during_put(local_store.root, KEY, 300_000, "between-renames")
    # The sidecar describes bytes that never landed: never silently accepted.
    with pytest.raises(ChecksumMismatch):
        local_store.get_bytes(KEY)
    assert local_store.get_bytes(KEY, verify=False) == b"old checkpoint"
    local_store.put_bytes(KEY, b"rewritten")
    assert local_store.get_bytes(KEY) == b"rewritten"


def test_disk_layout_mirrors_the_keys(local_store: LocalStore) -> None:
    layout = RunLayout("chaotic-rnn-demo")
    keys = [
        layout.config(),
        layout.checkpoint("m003", 7),
        layout.member_metrics("m003", 7),
        layout.history("m003"),
        layout.generation(7),
        layout.state(),
        layout.best("report/index.html"),
    ]
    for key in keys:
        local_store.put_bytes(key, key.encode())
    visible = []
    for dirpath, dirnames, filenames in os.walk(local_store.root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(local_store.root)
        visible += [(rel / n).as_posix() for n in filenames if not n.startswith(".")]
    assert sorted(visible) == sorted(keys)
    assert (
        local_store.root / "chaotic-rnn-demo/members/m003/gen-0007/checkpoint.pt"
    ).read_bytes() == (layout.checkpoint("m003", 7).encode())
    # Deleting the last object of a folder removes the empty folders too.
    local_store.delete(layout.best("report/index.html"))
    assert not (local_store.root / "chaotic-rnn-demo/best").exists()
    assert local_store.root.is_dir()


def _files_under(root: Path) -> list[str]:
    """Every file in the store's key folders, hidden ones included (the
    lock folder aside)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".autolfads"]
        found += [(Path(dirpath) / n).relative_to(root).as_posix() for n in filenames]
    return sorted(found)


def test_writes_leave_only_objects_and_their_sidecars(local_store: LocalStore) -> None:
    # A new folder, an overwrite, and a folder a delete pruned in between.
    local_store.put_bytes(KEY, b"first")
    local_store.put_bytes(KEY, b"second")
    local_store.delete(KEY)
    local_store.put_bytes(KEY, b"third")
    local_store.put_bytes("run/best/search.json", b"{}")
    assert _files_under(local_store.root) == [
        "run/best/.search.json.meta.json",
        "run/best/search.json",
        "run/members/m001/gen-0002/.checkpoint.pt.meta.json",
        "run/members/m001/gen-0002/checkpoint.pt",
    ]
    assert local_store.get_bytes(KEY) == b"third"


def test_a_write_that_fails_midway_leaves_the_old_object_and_no_temp_files(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_store.put_bytes(KEY, b"old checkpoint")
    before = _files_under(local_store.root)
    real_fsync = os.fsync
    calls = []

    def disk_full_at_sidecar(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the data temp file is written; its sidecar fails
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_at_sidecar)
    with pytest.raises(StorageError, match="no space left on device"):
        local_store.put_bytes(KEY, b"new checkpoint")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert _files_under(local_store.root) == before
    assert local_store.get_bytes(KEY) == b"old checkpoint"


def test_a_forked_child_names_its_temp_files_apart_from_its_parent(tmp_path: Path) -> None:
    # Temp names come from a per-process tag and a counter, both copied by a
    # fork: were the tag kept, a parent and its child writing the same key
    # would try the very same names in lockstep.
    open_temp_beside(tmp_path / "x")  # the parent has used the counter
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next temp name, then leave at once
        try:
            fd, name = open_temp_beside(tmp_path / "x")
            os.close(fd)
            os.write(write_end, f"{os.getpid()} {name.name}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        child_pid, child_name = fh.read().split()
    os.waitpid(pid, 0)
    fd, parent_name = open_temp_beside(tmp_path / "x")
    os.close(fd)
    assert child_name.startswith(f".x.{int(child_pid):x}-")
    assert parent_name.name.startswith(f".x.{os.getpid():x}-")


def test_write_all_writes_every_byte_through_short_writes() -> None:
    # A pipe takes 64 KiB at a time: os.write returns short counts.
    data = os.urandom(1 << 20)
    read_end, write_end = os.pipe()
    received = bytearray()

    def drain() -> None:
        with os.fdopen(read_end, "rb") as fh:
            while chunk := fh.read(1 << 16):
                received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    write_all(write_end, data)
    os.close(write_end)
    reader.join()
    assert bytes(received) == data


def test_object_and_folder_cannot_share_a_name(local_store: LocalStore) -> None:
    local_store.put_bytes("a/b", b"object")
    with pytest.raises(InvalidKey, match="parent of this key is an object"):
        local_store.put_bytes("a/b/c", b"x")
    local_store.put_bytes("x/y/z", b"object")
    with pytest.raises(InvalidKey, match="folder"):
        local_store.put_bytes("x/y", b"x")
    local_store.delete("x/y")  # a folder, not an object: nothing to delete
    assert local_store.get_bytes("x/y/z") == b"object"
    with pytest.raises(ObjectNotFound):
        local_store.get_bytes("x/y")


def test_open_store_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("./runs")
    assert isinstance(relative, LocalStore) and relative.root == tmp_path / "runs"
    spaced = tmp_path / "my runs"
    via_url = open_store(spaced.as_uri())
    assert isinstance(via_url, LocalStore) and via_url.root == spaced
    assert open_store(str(spaced)).url == via_url.url == spaced.as_uri()
    with pytest.raises(BucketNotFound, match="does not exist"):
        open_store(str(tmp_path / "absent"), create_bucket=False)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        open_store(str(tmp_path / "a-file"))


# ---- data cache ----------------------------------------------------------------


@pytest.fixture
def dataset(local_store: LocalStore, tmp_path: Path) -> tuple[str, str, bytes]:
    data = os.urandom(2_000_000)
    src = tmp_path / "session.h5"
    src.write_bytes(data)
    key, sha = upload_data(local_store, RunLayout("demo"), src)
    return key, sha, data


def test_upload_data_is_content_addressed(local_store: LocalStore, dataset) -> None:
    key, sha, data = dataset
    assert sha == hashlib.sha256(data).hexdigest()
    assert key == f"demo/data/{sha}.h5"
    assert local_store.stat(key).metadata == {"source-name": "session.h5"}


def test_a_file_name_with_spaces_at_its_ends_uploads(local_store: LocalStore, tmp_path) -> None:
    # Metadata values may not start or end with a space (S3 drops them);
    # the recorded source name is trimmed instead of refused.
    src = tmp_path / " session 2.h5 "
    src.write_bytes(b"rates")
    key, _ = upload_data(local_store, RunLayout("demo"), src)
    assert local_store.stat(key).metadata == {"source-name": "session 2.h5"}


def test_cache_downloads_once_then_hits(local_store: LocalStore, dataset, tmp_path) -> None:
    key, sha, data = dataset
    cache = DataCache(local_store, tmp_path / "cache")
    path = cache.fetch(key, sha)
    assert path == tmp_path / "cache" / f"{sha}.h5" and path.read_bytes() == data
    assert cache.fetch(key, sha) == path
    assert (cache.downloads, cache.hits) == (1, 1)
    # Another cache on the same folder (another trainer on the pod): a hit.
    other = DataCache(local_store, tmp_path / "cache")
    other.fetch(key, sha)
    assert (other.downloads, other.hits) == (0, 1)


def test_cache_concurrent_fetches_download_once(local_store: LocalStore, dataset, tmp_path) -> None:
    key, sha, _ = dataset
    caches = [DataCache(local_store, tmp_path / "cache") for _ in range(6)]
    start = threading.Barrier(len(caches))

    def fetch(cache: DataCache) -> None:
        start.wait()  # all ask at the same moment
        cache.fetch(key, sha)

    threads = [threading.Thread(target=fetch, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(c.downloads for c in caches) == 1


def test_cache_rejects_wrong_content(local_store: LocalStore, dataset, tmp_path) -> None:
    key, sha, _ = dataset
    cache = DataCache(local_store, tmp_path / "cache")
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ChecksumMismatch):
        cache.fetch(key, wrong)
    assert [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == []


def test_cache_rehash_repairs_a_damaged_copy(local_store: LocalStore, dataset, tmp_path) -> None:
    key, sha, data = dataset
    cache = DataCache(local_store, tmp_path / "cache")
    path = cache.fetch(key, sha)
    path.write_bytes(b"bit rot")
    assert cache.fetch(key, sha, rehash=True).read_bytes() == data
    assert cache.downloads == 2


def test_cache_folder_cleared_while_in_use_is_made_again(
    local_store: LocalStore, dataset, tmp_path
) -> None:
    """A trainer's cache folder removed under it (cleared cache, tmp
    cleaner) failed every later fetch with a FileNotFoundError traceback."""
    key, sha, data = dataset
    cache = DataCache(local_store, tmp_path / "cache")
    shutil.rmtree(tmp_path / "cache")
    assert cache.fetch(key, sha).read_bytes() == data
