"""The trainer's publisher thread: finished segments are stored and reported
in the order they finished, and a failure ends the worker on its own thread."""

from __future__ import annotations

import threading

import pytest

from autolfads.storage import StorageError
from autolfads.trainer.publisher import Publisher


def test_publishes_in_order_off_the_calling_thread_and_waits_for_all():
    publisher = Publisher()
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
    publisher = Publisher()

    def upload() -> None:
        raise StorageError("bucket gone")

    publisher.submit(upload)
    with pytest.raises(StorageError, match="bucket gone"):
        publisher.wait()
    publisher.submit(upload)
    publisher.close()  # finishes it; the error is left to check/wait
    with pytest.raises(StorageError):
        publisher.check()
