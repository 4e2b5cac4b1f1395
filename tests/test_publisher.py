"""The trainer's publisher thread: finished segments are stored and reported
in the order they finished, their leases are heartbeated until then, and a
failure ends the worker on its own thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from run_helpers import until

from autolfads.storage import StorageError
from autolfads.trainer.beats import Beat, Beats
from autolfads.trainer.publisher import Publisher


def test_publishes_in_order_off_the_calling_thread_and_waits_for_all():
    publisher = Publisher(Beats())
    release = threading.Event()
    done: list[str] = []
    threads: set[str] = set()

    def step(name: str, gate: threading.Event | None = None):
        def run() -> None:
            if gate is not None:
                gate.wait(30)
            threads.add(threading.current_thread().name)
            done.append(name)

        return run

    publisher.submit(step("m000 checkpoint+report", release))
    publisher.submit(step("m001 checkpoint+report"))
    assert publisher.busy and done == []  # the first is held: nothing overtook it
    release.set()
    publisher.wait()
    assert done == ["m000 checkpoint+report", "m001 checkpoint+report"]
    assert not publisher.busy and threading.current_thread().name not in threads
    publisher.close()


def test_a_failed_publish_is_raised_on_the_trainers_thread():
    publisher = Publisher(Beats())

    def upload() -> None:
        raise StorageError("bucket gone")

    publisher.submit(upload)
    with pytest.raises(StorageError, match="bucket gone"):
        publisher.wait()
    publisher.submit(upload)
    publisher.close()  # finishes it; the error is left to check/wait
    with pytest.raises(StorageError):
        publisher.check()


def gated(gate: threading.Event) -> Callable[[], None]:
    """A publish that waits for `gate` (an upload held by the store)."""
    return lambda: None if gate.wait(30) else None


def beat(call: Callable[[], bool]) -> Beat:
    return Beat(call, 0.01, limit_s=60, what="m000 generation 1")


class Counted:
    """A beat that counts its calls; it answers `answer` (or raises it)."""

    def __init__(self, answer: bool | Exception = True) -> None:
        self.calls = 0
        self.answer = answer

    def __call__(self) -> bool:
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_leases_are_heartbeated_while_waiting_and_uploading_then_no_more():
    beats = Beats()
    publisher = Publisher(beats)
    release = threading.Event()
    uploading, queued = Counted(), Counted()
    publisher.submit(gated(release), beat(uploading))
    publisher.submit(lambda: None, beat(queued))
    # The held upload's lease and the one queued behind it are both kept alive.
    until(lambda: uploading.calls >= 3 and queued.calls >= 3, "beats of both leases")
    release.set()
    publisher.wait()
    after = uploading.calls, queued.calls
    # Published: no more beats. A third segment's beats show time went on.
    held = threading.Event()
    later = Counted()
    publisher.submit(gated(held), beat(later))
    until(lambda: later.calls >= 5, "beats of a later lease")
    assert (uploading.calls, queued.calls) == after
    held.set()
    publisher.close()
    beats.close()


def test_a_lease_the_coordinator_dropped_is_not_beaten_again_and_errors_do_not_stop_beats():
    beats = Beats()
    publisher = Publisher(beats)
    release = threading.Event()
    dropped, failing = Counted(answer=False), Counted(answer=ConnectionError("coordinator down"))
    publisher.submit(gated(release), beat(dropped))
    publisher.submit(lambda: None, beat(failing))
    until(lambda: failing.calls >= 5, "beats through errors")
    assert dropped.calls == 1
    release.set()
    publisher.close()
    beats.close()


def test_a_lease_stuck_on_storage_past_the_limit_is_beaten_no_more():
    beats = Beats()
    stuck, slow = Counted(), Counted()
    beats.add(Beat(stuck, 0.01, limit_s=0.2, what="m000 generation 1"))
    beats.add(beat(slow))
    # Once the first stops, the second's count runs ahead of it.
    until(lambda: slow.calls >= stuck.calls + 20, "the limited beat to stop")
    calls = stuck.calls
    until(lambda: slow.calls >= calls + 40, "more beats of the other")
    assert stuck.calls == calls
    beats.close()


def test_a_beat_discarded_while_others_are_called_is_not_called():
    beats = Beats()
    busy, free = threading.Event(), threading.Event()
    first_called, go_on = threading.Event(), threading.Event()
    second = Counted()

    def blocker() -> bool:  # holds the helper thread while the other two fall due
        busy.set()
        free.wait(30)
        return False

    def first() -> bool:
        first_called.set()
        go_on.wait(30)
        return True

    beats.add(Beat(blocker, 0.01, limit_s=60, what="m000"))
    assert busy.wait(30)
    beats.add(Beat(first, 0.01, limit_s=60, what="m001"))
    token = beats.add(Beat(second, 0.01, limit_s=60, what="m002"))
    added = time.monotonic()
    until(lambda: time.monotonic() > added + 0.05, "both to fall due")
    free.set()  # the next round finds both due; the first is called...
    assert first_called.wait(30)
    beats.discard(token)  # ...and the second dropped while it runs
    go_on.set()
    beats.close()
    assert second.calls == 0
