"""A coordinator whose gRPC servers run in relay front processes
(`--relays N`): real front processes on one loopback port, relaying to the
search in this process. The protocol must not change: searches finish,
errors keep their kinds, refusals happen at the front, long polls and
streams are released when their clients go, a dead front is replaced, and
no front outlives its coordinator."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from coordinator_helpers import (
    fake_train,
    open_tiny_search,
    run_threads,
    saved_state,
    stage_tiny_run,
)

from autolfads.coordinator.search.errors import (
    CoordinatorError,
    CoordinatorUnavailable,
    InvalidRequest,
    Unauthenticated,
)
from autolfads.coordinator.security.exposure import ClientSecurity, ServerSecurity
from autolfads.coordinator.security.tokens import TokenSet
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.coordinator.wire.commit_bridge import CommitBridge
from autolfads.coordinator.wire.held_calls import HeldCalls
from autolfads.coordinator.wire.relay import (
    ACK,
    CALL,
    CANCEL,
    DEADLINE,
    METHODS,
    REPLY,
    FrameProtocol,
    RelayOwner,
)
from autolfads.coordinator.wire.server import create_server
from autolfads.coordinator.wire.servicer import CoordinatorServicer
from autolfads.errors import ConfigError
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.storage import LocalStore

TOKENS = TokenSet.generate()
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SO_REUSEPORT")


@pytest.fixture
def staged_run(tmp_path) -> tuple[str, str]:
    """(store URL, run name) of a run staged for `autolfads coordinator`."""
    stage_tiny_run(tmp_path)
    return str(tmp_path / "store"), "search"


@pytest.fixture
def relayed(local_store):
    service = open_tiny_search(local_store)
    server, port = create_server(
        "127.0.0.1:0", service, security=ServerSecurity(tokens=TOKENS), relays=2
    )
    yield service, server, f"127.0.0.1:{port}"
    server.stop(0)


def client(target: str, token: str | None = TOKENS.worker, **kwargs) -> CoordinatorClient:
    return CoordinatorClient(target, security=ClientSecurity(token=token), **kwargs)


def front_pids(server) -> list[int]:
    return [process.pid for process in server.fronts.processes]


def until(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_search_runs_to_its_end_through_relay_fronts(relayed, local_store):
    service, server, target = relayed
    assert len(set(front_pids(server))) == 2

    def work(name: str) -> None:
        with client(target, timeout_s=30) as c:
            while (reply := c.request_work(name, 1, wait_s=5)).action != "done":
                for grant in reply.leases:
                    assert c.report(fake_train(local_store, grant, name)).accepted

    # Several connections, so that both fronts serve some.
    run_threads([threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)], 120)
    state = saved_state(local_store, "search")
    assert state.status == "finished"
    assert all(len(h) == 3 for h in state.history.values())
    with client(target, TOKENS.observer) as c:
        assert c.status().state == "finished"
        assert c.health() == "SERVING"


def test_errors_keep_their_kinds_and_refusals_happen_at_the_front(relayed):
    _, _, target = relayed
    with client(target, unavailable_wait_s=1) as c, pytest.raises(InvalidRequest, match="max"):
        c.request_work("w0", 99)
    with client(target, token=None, unavailable_wait_s=1) as c:
        with pytest.raises(Unauthenticated):
            c.status()
        assert c.health() == "SERVING"  # probes need no token


def test_a_cancelled_long_poll_is_released_at_the_owner(relayed):
    service, server, target = relayed
    with client(target) as c:
        assert len(c.request_work("w0", 4).leases) == 4  # all of generation 0
    cancel = threading.Event()
    answers = []

    def ask() -> None:
        with client(target, timeout_s=10) as c:
            answers.append(c.request_work("w1", 1, wait_s=60, cancel=cancel))

    asker = threading.Thread(target=ask)
    asker.start()
    until(lambda: len(server.held) == 1, "the long poll to be held at the owner")
    cancel.set()
    asker.join(30)
    assert [a.action for a in answers] == ["wait"]
    until(lambda: len(server.held) == 0, "the owner to release the held call")


def test_a_status_stream_follows_the_search_through_a_front(relayed, local_store):
    _, _, target = relayed
    with client(target, TOKENS.observer) as watcher, client(target) as worker:
        updates = watcher.watch(timeout_s=60)
        first = next(updates)
        grant = worker.request_work("w0", 1).leases[0]
        assert next(updates).revision > first.revision
        worker.report(fake_train(local_store, grant, "w0"))
        assert next(updates).members != first.members
        updates.close()


def test_a_dead_front_is_replaced_and_calls_go_on(relayed):
    _, server, target = relayed
    victim = front_pids(server)[0]
    os.kill(victim, signal.SIGKILL)
    until(lambda: server.fronts.processes[0].poll() is not None, "the front to die")
    server.tend()  # returns at once: the replacement starts in the background
    until(lambda: victim not in front_pids(server), "a replacement front")
    assert len(set(front_pids(server))) == 2
    for _ in range(4):  # new connections, whichever front takes them
        with client(target) as c:
            assert c.request_work("w0", 1).action in ("train", "wait")


def test_fronts_stop_with_the_server(local_store):
    service = open_tiny_search(local_store)
    server, port = create_server("127.0.0.1:0", service, relays=2)
    assert server.fronts is not None
    fronts = server.fronts.processes
    server.stop(0)
    assert all(process.poll() is not None for process in fronts)
    with (
        pytest.raises(CoordinatorUnavailable),
        CoordinatorClient(f"127.0.0.1:{port}", unavailable_wait_s=0.5) as c,
    ):
        c.status()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent has not reaped it


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_no_front_outlives_a_killed_coordinator(tmp_path, staged_run):
    store_url, run = staged_run
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "autolfads", "coordinator", "--storage", store_url, "--run", run,
         "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--relays", "2"],
    )  # fmt: skip
    try:
        until(lambda: port_file.exists() or proc.poll() is not None, "the coordinator")
        assert proc.poll() is None
        # (Children of any of its threads: the event loop's thread starts them.)
        tasks = Path(f"/proc/{proc.pid}/task").iterdir()
        fronts = [int(pid) for task in tasks for pid in (task / "children").read_text().split()]
        assert len(fronts) == 2 and all(_alive(pid) for pid in fronts)
    finally:
        proc.kill()
        proc.wait()
    until(lambda: not any(_alive(pid) for pid in fronts), "the fronts to exit")


def test_relays_must_be_a_sensible_count(tmp_path, staged_run):
    store_url, run = staged_run
    result = subprocess.run(
        [sys.executable, "-m", "autolfads", "coordinator", "--storage", store_url, "--run", run,
         "--relays", "-1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--relays -1 must be between 0 and 64" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_address_in_use_is_one_clear_error(local_store):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(CoordinatorError, match=f"cannot listen on 127.0.0.1:{port}"):
            create_server(f"127.0.0.1:{port}", open_tiny_search(local_store), relays=2)
    finally:
        taken.close()


def test_a_front_that_cannot_start_is_one_clear_error_and_leaves_nothing(local_store):
    # 203.0.113.1 (TEST-NET-3) is no address of this machine: the probe
    # cannot tell (port 0), the front's bind fails and it says why.
    security = ServerSecurity(tokens=TOKENS, allow_plaintext=True)
    before = _children()
    reason = "cannot start a relay front on 203.0.113.1:0: CoordinatorError: cannot listen on"
    with pytest.raises(CoordinatorError, match=reason):
        create_server("203.0.113.1:0", open_tiny_search(local_store), security=security, relays=2)
    assert _children() <= before  # the front that failed is gone


def _children() -> set[int]:
    """Pids of this process's live children (any thread's)."""
    pids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids.update(int(pid) for pid in (task / "children").read_text().split())
        except OSError:  # the thread ended
            continue
    return {pid for pid in pids if _alive(pid)}


def test_a_second_coordinator_cannot_share_the_fronts_port(relayed, local_store, tmp_path):
    # The fronts share their port among themselves only: another search on
    # the same address would take a share of the trainers.
    _, _, target = relayed
    other = open_tiny_search(LocalStore(tmp_path / "other"))
    with pytest.raises(CoordinatorError, match="another server holds the port"):
        create_server(target, other, relays=1)
    with pytest.raises(CoordinatorError, match="cannot listen"):
        create_server(target, other)  # nor can one without relays


def test_relays_need_a_tcp_address(local_store, tmp_path):
    with pytest.raises(ConfigError, match="--relays shares a TCP port"):
        create_server(
            f"unix:{tmp_path}/coordinator.sock",
            open_tiny_search(local_store),
            relays=2,
        )


def test_a_relayed_stream_sends_its_next_message_only_once_the_last_went_out(local_store):
    """A watcher that stops reading must cost the owner nothing: the owner
    makes a stream's next message once the front says the last one went
    out (ACK), as a stream served in one process waits for gRPC. Played
    here by the test on the front's end of a real socketpair."""
    service = open_tiny_search(local_store)

    async def main() -> tuple[int, int, int, int]:
        loop = asyncio.get_running_loop()
        bridge, held = CommitBridge(service, loop), HeldCalls(service, loop, 8)
        owner = RelayOwner(CoordinatorServicer(service, bridge, held))
        frames: asyncio.Queue[tuple[int, int, bytes]] = asyncio.Queue()
        mine, theirs = socket.socketpair()
        await loop.create_unix_connection(lambda: FrameProtocol(owner.on_frame), sock=mine)
        _, front = await loop.create_unix_connection(
            lambda: FrameProtocol(
                lambda _, cid, kind, m, payload: frames.put_nowait((cid, kind, payload))
            ),
            sock=theirs,
        )
        watch = [i for i, (name, _, _) in enumerate(METHODS) if name == "WatchStatus"][0]
        try:
            front.send(
                7, CALL, watch, DEADLINE.pack(30.0) + pb.WatchStatusRequest().SerializeToString()
            )
            call_id, kind, payload = await frames.get()
            assert (call_id, kind) == (7, REPLY)
            first = pb.SearchStatus.FromString(payload).revision
            for i in range(5):  # five changes the watcher has not read
                await loop.run_in_executor(None, service.request_work, f"w{i}", 1)
            # Nothing more comes until the front acknowledges the first.
            await asyncio.sleep(0.3)
            pending = frames.qsize()
            front.send(7, ACK, watch)
            call_id, kind, payload = await frames.get()
            assert (call_id, kind) == (7, REPLY)
            front.send(7, CANCEL, watch)
            now = service.status().revision
            return first, pending, pb.SearchStatus.FromString(payload).revision, now
        finally:
            held.close()
            bridge.close()

    first, pending, second, now = asyncio.run(main())
    assert pending == 0
    # The state as it is when the watcher is ready, not the next revision in line.
    assert first + 1 < second == now


def test_a_front_of_a_stuck_coordinator_is_not_serving(local_store):
    # Probes must see a coordinator whose event loop is stuck, as they do
    # when one process serves: the fronts stop saying SERVING.
    service = open_tiny_search(local_store)
    server, port = create_server("127.0.0.1:0", service, relays=1, owner_silent_s=1.0)
    release = threading.Event()
    try:
        with CoordinatorClient(f"127.0.0.1:{port}") as probe:
            assert probe.health() == "SERVING"
            server.loop.call_soon_threadsafe(release.wait, 30)  # the loop is stuck
            until(lambda: probe.health() == "NOT_SERVING", "NOT_SERVING")
            release.set()
            until(lambda: probe.health() == "SERVING", "SERVING again")
    finally:
        release.set()
        server.stop(0)


def test_long_polls_never_fill_a_fronts_bound_on_calls(local_store):
    # Held long polls are bounded where they are held (3 here), below each
    # front's bound on calls in flight (4): heartbeats, reports and status
    # calls always find room, whichever front their connection reached.
    service = open_tiny_search(local_store)
    server, port = create_server(
        "127.0.0.1:0", service, relays=2, max_concurrent_rpcs=4, max_held_calls=3
    )
    target = f"127.0.0.1:{port}"
    cancel = threading.Event()
    askers = []
    try:
        with CoordinatorClient(target) as c:
            assert len(c.request_work("w0", 4).leases) == 4  # nothing left to grant
        for i in range(3):

            def ask(name: str = f"v{i}") -> None:
                with CoordinatorClient(target, timeout_s=10) as c:
                    c.request_work(name, 1, wait_s=60, cancel=cancel)

            askers.append(threading.Thread(target=ask))
            askers[-1].start()
        held = server.held
        assert held is not None
        until(lambda: len(held) == 3, "three held long polls")
        for _ in range(8):  # new connections, spread over both fronts
            with CoordinatorClient(target, unavailable_wait_s=0.5) as c:
                assert c.status().population == 4
    finally:
        cancel.set()
        for asker in askers:
            asker.join(30)
        server.stop(0)


def test_every_method_of_the_protocol_is_relayed():
    # A method added to the .proto must reach the owner through the fronts.
    service = pb.DESCRIPTOR.services_by_name["Coordinator"]
    assert {name for name, _, _ in METHODS} == set(service.methods_by_name)
    for name, request_type, streams in METHODS:
        method = service.methods_by_name[name]
        assert method.input_type.full_name == request_type.DESCRIPTOR.full_name
        assert method.server_streaming == streams
