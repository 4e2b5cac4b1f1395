"""A coordinator that goes silent: no reset, no answer (a partition, a node
gone). Without keepalive pings a watcher (`autolfads status --watch`) waited
on it forever; now its pings go unanswered and the call ends UNAVAILABLE.
The silence is a real TCP relay on loopback that stops forwarding."""

from __future__ import annotations

import re
import select
import socket
import threading
from collections.abc import Iterator

import pytest
from coordinator_helpers import open_tiny_search

from autolfads.coordinator.search.errors import CoordinatorUnavailable
from autolfads.coordinator.security import limits
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.coordinator.wire.server import create_server
from autolfads.errors import ConfigError


class Relay:
    """Forwards TCP to `port` until `silence()`; then forwards nothing,
    either way, and keeps every connection open."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.silent = threading.Event()
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def silence(self) -> None:
        self.silent.set()

    def close(self) -> None:
        self.closed.set()
        for s in [self.listener, *self.sockets]:
            s.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peer = {client: server, server: client}
        while not self.closed.is_set():
            try:
                ready, _, _ = select.select([client, server], [], [], 0.05)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    if not self.silent.is_set():
                        peer[src].sendall(data)
            except OSError:
                return


@pytest.fixture
def relay(local_store, monkeypatch) -> Iterator[Relay]:
    # This server takes pings as often as the test's client sends them, so
    # only a ping unanswered (not one refused as too frequent) ends a call.
    monkeypatch.setattr(limits, "MIN_CLIENT_PING_MS", 100)
    server, port = create_server("127.0.0.1:0", open_tiny_search(local_store))
    relay = Relay(port)
    yield relay
    relay.close()
    server.stop(0)


def test_a_watcher_of_a_coordinator_gone_silent_ends_unavailable(relay):
    watcher = CoordinatorClient(
        f"127.0.0.1:{relay.port}", timeout_s=2.0, unavailable_wait_s=0.0, keepalive_s=0.5
    )
    seen: list[int] = []
    ended: list[BaseException] = []
    first = threading.Event()

    def watch() -> None:
        try:
            for view in watcher.watch():
                seen.append(view.revision)
                first.set()
        except BaseException as err:  # what the watcher's caller would get
            ended.append(err)
            first.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert first.wait(30) and seen, ended
    relay.silence()
    thread.join(timeout=60)
    watcher.close()
    assert not thread.is_alive(), "the watcher still waits on a silent coordinator"
    assert len(ended) == 1 and isinstance(ended[0], CoordinatorUnavailable), ended


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ({"keepalive_s": 1.0}, "keepalive_s=1.0: must be a number >= 5 (the coordinator allows"),
        ({"keepalive_s": float("nan")}, "keepalive_s=nan"),
        ({"timeout_s": 0}, "timeout_s=0: must be a number > 0"),
        ({"timeout_s": float("inf")}, "timeout_s=inf"),
        ({"unavailable_wait_s": -1.0}, "unavailable_wait_s=-1.0: must be a number >= 0"),
    ],
)
def test_client_settings_the_coordinator_would_refuse_are_one_line(setting, fragment):
    # A client pinging faster than the server's minimum is sent GOAWAY
    # ("too_many_pings") mid-search and every call on it fails: refuse it
    # when the client is made, naming the setting and the bound.
    with pytest.raises(ConfigError, match=re.escape(fragment)) as err:
        CoordinatorClient("127.0.0.1:1", **setting)
    assert "\n" not in str(err.value)


def test_a_coordinator_port_out_of_range_is_one_line(capsys):
    # `autolfads cancel localhost:99999` dialled port 34463 (gRPC wraps it)
    # and reported the coordinator unreachable; now every client says so.
    with pytest.raises(ConfigError, match="port 99999 is outside 1-65535"):
        CoordinatorClient("localhost:99999")
    from autolfads.cli import main

    assert main(["cancel", "localhost:99999"]) == 2
    err = capsys.readouterr().err.strip()
    assert "port 99999 is outside 1-65535" in err and "\n" not in err
