"""WatchStatus across a coordinator restart: the stream of a coordinator
that is stopping used to end as cleanly as at the end of the search, so a
watcher (`autolfads status --watch`, a user's script) took the stop for the
end; and the client gave up at the first error instead of riding out the
restart as its other calls do."""

from __future__ import annotations

import threading

from coordinator_helpers import open_tiny_search, saved_state

from autolfads.coordinator.search.errors import CoordinatorUnavailable
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.coordinator.wire.server import create_server


def test_a_watch_rides_out_a_coordinator_restart(local_store):
    service = open_tiny_search(local_store)
    server, port = create_server("127.0.0.1:0", service)
    watcher = CoordinatorClient(f"127.0.0.1:{port}", unavailable_wait_s=60.0)
    seen: list[tuple[int, str]] = []
    ended: list[BaseException] = []
    changed = threading.Condition()

    def watch() -> None:
        try:
            for view in watcher.watch():
                with changed:
                    seen.append((view.revision, view.state))
                    changed.notify_all()
        except BaseException as err:
            ended.append(err)
        with changed:
            changed.notify_all()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    with changed:
        assert changed.wait_for(lambda: seen or ended, timeout=30), "no first status"
    first = seen[-1][0]
    service.drain()  # SIGTERM: the stream must not end as if the search had
    server.graceful_stop(grace_s=1.0)
    # The same run, served again on the same port by a new coordinator.
    again = CoordinatorService.open_search(
        service.cfg, local_store, saved_state(local_store, "search").data_key, "ab" * 32
    )
    server, _ = create_server(f"127.0.0.1:{port}", again)
    try:
        with CoordinatorClient(f"127.0.0.1:{port}") as other:
            other.request_work("w1", 1)  # a change the watcher must hear of
        with changed:
            assert changed.wait_for(lambda: ended or seen[-1][0] > first, timeout=60), seen
        assert not ended, ended
        assert thread.is_alive()  # still watching a search that goes on
        assert all(state == "running" for _, state in seen)
        revisions = [r for r, _ in seen]
        assert revisions == sorted(set(revisions))  # none given twice
    finally:
        watcher.close()
        thread.join(timeout=30)
        server.stop(0)
    assert not thread.is_alive()


def test_a_watch_of_a_coordinator_that_stays_stopping_gives_up_in_time(local_store):
    # While it drains, a stopping coordinator answers each new stream with an
    # error; the watcher used to take the repeated status it was first sent
    # for news, reconnect five times a second and never give up.
    service = open_tiny_search(local_store)
    server, port = create_server("127.0.0.1:0", service)
    watcher = CoordinatorClient(f"127.0.0.1:{port}", unavailable_wait_s=1.0)
    ended: list[BaseException] = []
    first = threading.Event()

    def watch() -> None:
        try:
            for _ in watcher.watch():
                first.set()
        except BaseException as err:
            ended.append(err)
        first.set()

    thread = threading.Thread(target=watch, daemon=True)
    try:
        thread.start()
        assert first.wait(30)
        service.drain()  # and it stays up, stopping
        thread.join(timeout=30)
        assert not thread.is_alive(), "the watcher never gave up on a stopping coordinator"
        assert len(ended) == 1 and isinstance(ended[0], CoordinatorUnavailable), ended
        assert "stopping" in str(ended[0])
    finally:
        watcher.close()
        thread.join(timeout=30)
        server.stop(0)
