"""One coordinator per run: a claim held in the store while it serves.

Two coordinators on one run (a second `autolfads run --resume` in another
terminal, `--force` on a run still being served, a retried Argo step while
the old pod still reaches MinIO) would both write journal entries under the
same sequence numbers and leave a state no recovery can trust. Whatever
serves or deletes a run claims it first, and a live claim refuses the
second comer in one line.

Two mechanisms, one interface (`claim_run` -> `RunClaim`):

- A local store takes an `flock` on `<root>/.autolfads/claims/<run>.lock`
  (the holder's description written inside, for the refusal). Exact and
  instant: the kernel drops it when the holder dies, even on kill -9.
- Other stores (S3/MinIO, memory) hold a record, `<run>/coordinator/owner.json`,
  that the owner rewrites every `renew_every_s` with a counter (`beat`). A
  newcomer that finds one watches it: a new beat means the owner lives (it is
  refused); no beat for the owner's own `lapse_after_s` (written in the
  record) means the owner is gone (it takes over, with a warning). No clocks
  of two machines are compared. A record left by a process of this host that
  no longer exists is taken over at once, so a local kill -9 resumes without
  waiting. Two comers racing for an empty key both write; each reads back
  after `settle_s` and only the last writer keeps it.

A record is taken over at once only when its holder is provably gone: a
process of this very kernel (same boot id) and pid namespace whose pid no
longer runs, or now runs another process (its start time differs). Equal
host names prove nothing (containers, `localhost`); anything unsure waits
out the lapse.

An owner that cannot renew for most of its lapse, or finds the record no
longer its own, counts the claim as lost (`held()` is false), stops
renewing, and every write through `claim.fence(store)` fails from then
on: its caller stops serving rather than write beside a newcomer. Times
are measured on the boot-time clock, which keeps counting while a laptop
sleeps (the monotonic clock does not).

What this cannot rule out without conditional writes (which the `minio`
client does not offer): two comers racing for an empty key whose writes
land more than `settle_s` apart both hold it until the first renewal; and
a renewal whose write hangs past the lapse can land over a newcomer's
record (both then count the claim as lost: neither writes on); and a fenced
write that began before the claim was lost can land after a newcomer took
over (the coordinator's journal is safe from that: a resumed coordinator
numbers its writes past anything a predecessor can have in flight,
`GroupCommit.start_past_predecessor`).
"""

from __future__ import annotations

import abc
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autolfads.errors import AutolfadsError
from autolfads.storage.base import ObjectInfo, Store
from autolfads.storage.errors import ChecksumMismatch, ObjectNotFound, StorageError
from autolfads.storage.keys import RunLayout
from autolfads.storage.local import LocalStore
from autolfads.storage.memory import MemoryStore

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from autolfads.storage.faults import WrapperStore

log = logging.getLogger(__name__)

RENEW_EVERY_S = 5.0
LAPSE_AFTER_S = 30.0
SETTLE_S = 1.0
# A record's lapse is honoured up to this; a bogus one cannot stall a newcomer.
MAX_LAPSE_S = 600.0
_BOOT_CLOCK = getattr(time, "CLOCK_BOOTTIME", None)


def _clock() -> float:
    """Seconds that keep counting while the machine is suspended."""
    if _BOOT_CLOCK is not None:
        return time.clock_gettime(_BOOT_CLOCK)
    return time.monotonic()


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return ""


def _start_time(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot), None if no
    such process; "" where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # Field 22; the command (field 2) may hold spaces and parentheses.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


# An owner stops counting its claim as held once this share of its lapse has
# passed without a renewal: a newcomer may take over at the whole lapse.
_FENCE_SHARE = 0.8


class RunClaimed(AutolfadsError):
    """Another live process serves (or deletes) the run."""


class ClaimLost(AutolfadsError):
    """This process's claim lapsed or was taken over: it must stop writing."""

    exit_code = 1

    def __init__(self, claim: RunClaim) -> None:
        super().__init__(
            f"run {claim.run!r}: stopped serving, since its claim was lost "
            f"({claim.lost_reason}); another coordinator may be serving it"
        )


@dataclass(frozen=True)
class Claimant:
    """Who holds a claim: shown to whoever is refused. `boot`, `pidns` and
    `started` identify the process exactly ("" where unknown)."""

    command: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    boot: str = ""
    pidns: str = ""
    started: str = ""

    @classmethod
    def this_process(cls, command: str) -> Claimant:
        pid = os.getpid()
        return cls(
            command,
            pid=pid,
            boot=_read_text("/proc/sys/kernel/random/boot_id"),
            pidns=_pid_namespace(),
            started=_start_time(pid) or "",
        )

    def describe(self) -> str:
        return f"{self.command} (host {self.host}, pid {self.pid})"

    def gone(self, here: Claimant) -> bool:
        """True only when this claimant provably no longer runs: a process of
        `here`'s kernel and pid namespace whose pid is free or reused."""
        if not (self.boot and self.pidns and self.started):
            return False
        if (self.boot, self.pidns) != (here.boot, here.pidns):
            return False
        started = _start_time(self.pid)
        return started is None or (started != "" and started != self.started)


class RunClaim(abc.ABC):
    """A held claim. `held()` is false once it was lost; `release()` ends it."""

    def __init__(self, run: str, claimant: Claimant) -> None:
        self.run = run
        self.claimant = claimant
        self.lost_reason = ""

    def held(self) -> bool:
        return not self.lost_reason

    @abc.abstractmethod
    def release(self) -> None:
        """End the claim; another coordinator may then claim the run."""

    def fence(self, store: Store) -> Store:
        """`store`, but every write or delete fails once the claim is lost."""
        return _Fenced(store, self)

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_run(
    store: Store,
    run: str,
    *,
    command: str,
    claimant: Claimant | None = None,
    renew_every_s: float = RENEW_EVERY_S,
    lapse_after_s: float = LAPSE_AFTER_S,
    settle_s: float | None = None,
) -> RunClaim:
    """Claim `run` in `store` for this process, or raise `RunClaimed`."""
    RunLayout(run)  # the run name is a valid identifier
    if not 0 < renew_every_s < lapse_after_s <= MAX_LAPSE_S:
        raise ValueError(f"need 0 < renew_every_s < lapse_after_s <= {MAX_LAPSE_S}")
    me = claimant or Claimant.this_process(command)
    base = store
    while isinstance(base, WrapperStore):  # the backend decides the mechanism
        base = base.inner
    if isinstance(base, LocalStore) and fcntl is not None:
        return _FileClaim.take(base, run, me)
    if settle_s is None:
        # One process sees a memory store; no other writer can race.
        settle_s = 0.0 if isinstance(base, MemoryStore) else SETTLE_S
    return _RecordClaim.take(store, run, me, renew_every_s, lapse_after_s, settle_s)


def _refusal(run: str, holder: str) -> RunClaimed:
    return RunClaimed(
        f"run {run!r} is being served by {holder}; stop that one first "
        "(or wait for it to end), then run this again"
    )


# ------------------------------------------------------------------ local


class _FileClaim(RunClaim):
    def __init__(self, run: str, claimant: Claimant, fd: int) -> None:
        super().__init__(run, claimant)
        self._fd: int | None = fd

    @classmethod
    def take(cls, store: LocalStore, run: str, me: Claimant) -> _FileClaim:
        path = store.root / ".autolfads" / "claims" / f"{run}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StorageError(
                f"{path}: cannot make the run's lock file ({err.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(path)
            os.close(fd)
            raise _refusal(run, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(me)).encode("utf-8"), 0)
        return cls(run, me, fd)

    def release(self) -> None:
        self.lost_reason = self.lost_reason or "released"  # fenced writes fail from now on
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # the next holder writes its own
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class _Fenced(WrapperStore):
    def __init__(self, inner: Store, claim: RunClaim) -> None:
        super().__init__(inner)
        self._claim = claim

    def _check(self, key: str) -> None:
        if not self._claim.held():
            raise StorageError(
                f"{self.location(key)}: not written, since the claim on run "
                f"{self._claim.run!r} was lost ({self._claim.lost_reason})"
            )

    def _put_bytes(
        self, key: str, data: bytes, sha256: str, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        self._check(key)
        return super()._put_bytes(key, data, sha256, content_type, metadata)

    def _put_file(
        self, key: str, path: Path, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        self._check(key)
        return super()._put_file(key, path, content_type, metadata)

    def _delete(self, key: str) -> None:
        self._check(key)
        super()._delete(key)


def _read_holder(path: Path) -> str:
    try:
        return Claimant(**json.loads(path.read_text("utf-8"))).describe()
    except (OSError, ValueError, TypeError):
        return "another process"  # it has not written its name yet


# ------------------------------------------------------------------ record


@dataclass(frozen=True)
class _Record:
    claimant: Claimant
    beat: int
    lapse_after_s: float

    def encode(self) -> bytes:
        doc = {**asdict(self.claimant), "beat": self.beat, "lapse_after_s": self.lapse_after_s}
        return json.dumps(doc, sort_keys=True).encode("utf-8")

    @classmethod
    def decode(cls, doc: object) -> _Record:
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        who = Claimant(
            command=str(doc["command"]),
            host=str(doc["host"]),
            pid=int(doc["pid"]),
            owner=str(doc["owner"]),
            boot=str(doc.get("boot", "")),
            pidns=str(doc.get("pidns", "")),
            started=str(doc.get("started", "")),
        )
        lapse = float(doc["lapse_after_s"])
        if not lapse > 0:  # NaN too
            raise ValueError(f"lapse_after_s {lapse}")
        return cls(who, int(doc["beat"]), min(lapse, MAX_LAPSE_S))


class _RecordClaim(RunClaim):
    def __init__(
        self, store: Store, run: str, me: Claimant, renew_every_s: float, lapse_after_s: float
    ) -> None:
        super().__init__(run, me)
        self._store = store
        self._key = RunLayout(run).owner()
        self._renew_every_s = renew_every_s
        self._lapse_after_s = lapse_after_s
        self._beat = 0
        self._renewed = _clock()  # when the last write that succeeded began
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def take(
        cls,
        store: Store,
        run: str,
        me: Claimant,
        renew_every_s: float,
        lapse_after_s: float,
        settle_s: float,
    ) -> _RecordClaim:
        claim = cls(store, run, me, renew_every_s, lapse_after_s)
        found = claim._read()
        if found is not None and found.claimant.owner != me.owner:
            claim._wait_out(found)
        claim._write()
        try:
            if settle_s > 0:
                time.sleep(settle_s)  # a racing comer's write lands within this
            now = claim._read()
            if now is None or now.claimant.owner != me.owner:
                holder = now.claimant.describe() if now else "another process"
                raise _refusal(run, holder)
        except BaseException:
            claim._stop.set()
            claim._delete_if_ours()  # an interrupted claim leaves nothing to wait out
            raise
        claim._thread = threading.Thread(target=claim._renew, name="run-claim", daemon=True)
        claim._thread.start()
        return claim

    def _read(self) -> _Record | None:
        try:
            data = self._store.get_bytes(self._key)
        except ObjectNotFound:
            return None
        except ChecksumMismatch as err:
            log.warning("run %s: ignoring a damaged claim record: %s", self.run, err)
            return None
        try:
            return _Record.decode(json.loads(data))
        except (KeyError, ValueError, TypeError) as err:
            log.warning("run %s: ignoring a malformed claim record (%s)", self.run, err)
            return None

    def _write(self) -> None:
        # Stamped with the time the write began: one that hangs and lands
        # late does not move the fence.
        began = _clock()
        record = _Record(self.claimant, self._beat, self._lapse_after_s)
        self._store.put_bytes(self._key, record.encode(), content_type="application/json")
        self._renewed = began

    def _wait_out(self, found: _Record) -> None:
        """Return once `found`'s owner is gone; raise while it lives."""
        holder = found.claimant.describe()
        if found.claimant.gone(self.claimant):
            log.info("run %s: taking over from %s, which no longer runs", self.run, holder)
            return
        log.info(
            "run %s: claimed by %s; waiting up to %.0f s to see whether it is alive",
            self.run,
            holder,
            found.lapse_after_s,
        )
        end = _clock() + found.lapse_after_s
        poll = min(0.5, found.lapse_after_s / 4)
        while _clock() < end:
            time.sleep(poll)
            now = self._read()
            if now is None:
                return  # released meanwhile
            if now.claimant.owner != found.claimant.owner or now.beat != found.beat:
                raise _refusal(self.run, now.claimant.describe())
        log.warning(
            "run %s: %s has not renewed its claim for %.0f s; taking the run over",
            self.run,
            holder,
            found.lapse_after_s,
        )

    def held(self) -> bool:
        if not self.lost_reason and not self._stop.is_set():
            fence = _FENCE_SHARE * self._lapse_after_s
            if _clock() - self._renewed > fence:
                self.lost_reason = f"not renewed for {fence:.0f} s"
        return not self.lost_reason

    def _renew(self) -> None:
        while not self._stop.wait(self._renew_every_s):
            if not self.held():  # fenced: a newcomer may hold it by now
                log.error("run %s: claim lost: %s", self.run, self.lost_reason)
                return
            try:
                now = self._read()
            except StorageError as err:
                log.warning("run %s: could not renew the claim (will retry): %s", self.run, err)
                continue
            if now is None or now.claimant.owner != self.claimant.owner:
                who = now.claimant.describe() if now else "nobody (its record was deleted)"
                self.lost_reason = f"the run was claimed by {who}"
                log.error("run %s: claim lost: %s", self.run, self.lost_reason)
                return
            if not self.held():  # the read outlasted the fence
                continue
            self._beat += 1
            try:
                self._write()
            except StorageError as err:
                log.warning("run %s: could not renew the claim (will retry): %s", self.run, err)

    def _delete_if_ours(self) -> None:
        try:
            now = self._read()
            if now is not None and now.claimant.owner == self.claimant.owner:
                self._store.delete(self._key)
        except StorageError as err:
            # It lapses on its own; a newcomer waits out the lapse.
            log.warning("run %s: could not remove the claim record: %s", self.run, err)

    def release(self) -> None:
        if self._stop.is_set():
            return
        lost = not self.held()
        self.lost_reason = self.lost_reason or "released"  # fenced writes fail from now on
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not lost:
            self._delete_if_ours()
