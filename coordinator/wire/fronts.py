"""The owner's front processes (`--relays N`, see `relay`): started, told
their configuration, restarted if one dies, stopped in order.

Runs on the owner's event loop. The first front binds the coordinator's
address (port 0 picks one); the others, and any restarted one, bind the
port it got. A front that cannot start is a startup error of the whole
server, named in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from autolfads.coordinator.search.errors import CoordinatorError
from autolfads.coordinator.wire.relay import ALIVE_EVERY_S, CONTROL, FrameProtocol, RelayOwner

log = logging.getLogger(__name__)

# A front imports gRPC and binds its port: seconds at most, even on a busy machine.
START_TIMEOUT_S = 60.0
# After its grace period, a front that has not exited is killed.
STOP_MARGIN_S = 5.0


@dataclass
class _Front:
    process: subprocess.Popen[bytes]
    link: FrameProtocol


class Fronts:
    def __init__(self, owner: RelayOwner, config: dict[str, Any], count: int) -> None:
        if count < 1:
            raise ValueError(f"relays {count} must be >= 1")
        self._owner = owner
        self._config = config
        self._count = count
        self._fronts: list[_Front] = []
        self._host = ""
        self.port = 0
        self._restarting: asyncio.Task[None] | None = None
        self._beating: asyncio.Task[None] | None = None

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        """The front processes now serving (for logs, monitoring and tests)."""
        return [front.process for front in self._fronts]

    async def start(self, listen: str) -> int:
        """Start every front; the port they serve."""
        self._host = listen.rsplit(":", 1)[0]
        check_free(listen)
        try:
            front, self.port = await self._spawn(listen)
            self._fronts.append(front)
            for _ in range(self._count - 1):
                front, _ = await self._spawn(f"{self._host}:{self.port}")
                self._fronts.append(front)
        except BaseException:
            await self.stop(0)
            raise
        self._beating = asyncio.get_running_loop().create_task(self._beat())
        return self.port

    def restart_soon(self) -> None:
        """Loop thread: replace dead fronts in the background. A start takes
        half a second or more, and the serve loop (lease expiry, SIGTERM)
        must not wait for it."""
        if self._restarting is None or self._restarting.done():
            self._restarting = asyncio.get_running_loop().create_task(self._restart_dead())

    async def _restart_dead(self) -> None:
        """Replace each front that has exited (its calls already failed to
        their clients, who retry against the others). A front that cannot
        be started is logged and tried again at the next call."""
        for i, front in enumerate(self._fronts):
            code = front.process.poll()
            if code is None:
                continue
            log.error(
                "relay front %d exited with code %s; starting another", front.process.pid, code
            )
            self._owner.cancel_all(front.link)
            front.link.close()
            try:
                self._fronts[i], _ = await self._spawn(f"{self._host}:{self.port}")
            except Exception as err:  # fork refused, no memory, port taken: next time
                log.error("cannot replace relay front %d: %s", front.process.pid, err)

    async def _beat(self) -> None:
        """ALIVE to every front once a second, from the owner's loop: a
        front whose owner is stuck stops answering health checks SERVING."""
        while True:
            for front in self._fronts:
                front.link.send_control({"alive": 1})
            await asyncio.sleep(ALIVE_EVERY_S)

    async def stop(self, grace_s: float) -> None:
        """Fronts stop taking calls, finish what runs within `grace_s`, exit."""
        for task in (self._beating, self._restarting):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for front in self._fronts:
            front.link.send_control({"stop": grace_s})
        loop = asyncio.get_running_loop()
        for front in self._fronts:
            try:
                await loop.run_in_executor(None, front.process.wait, grace_s + STOP_MARGIN_S)
            except subprocess.TimeoutExpired:
                log.warning("relay front %d did not stop; killing it", front.process.pid)
                front.process.kill()
                await loop.run_in_executor(None, front.process.wait)
            front.link.close()
        self._fronts = []

    async def _spawn(self, listen: str) -> tuple[_Front, int]:
        mine, theirs = socket.socketpair()
        with theirs:
            try:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "autolfads.coordinator.wire.front",
                        str(theirs.fileno()),
                    ],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                )
            except BaseException:
                mine.close()
                raise
        try:
            return await self._handshake(process, mine, listen)
        except BaseException:  # failed, or cancelled by a stop: leave nothing running
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
            raise

    async def _handshake(
        self, process: subprocess.Popen[bytes], mine: socket.socket, listen: str
    ) -> tuple[_Front, int]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[dict[str, Any]] = loop.create_future()
        link: FrameProtocol | None = None

        def on_frame(
            sender: FrameProtocol, call_id: int, kind: int, method: int, payload: bytes
        ) -> None:
            if kind == CONTROL:
                if not answer.done():
                    answer.set_result(json.loads(payload))
            else:
                self._owner.on_frame(sender, call_id, kind, method, payload)

        def on_lost() -> None:
            if not answer.done():
                answer.set_result({"failed": "it exited before it was serving"})
            if link is not None:
                self._owner.cancel_all(link)

        _, link = await loop.create_unix_connection(
            lambda: FrameProtocol(on_frame, on_lost), sock=mine
        )
        link.send_control({**self._config, "listen": listen})
        try:
            reply = await asyncio.wait_for(answer, START_TIMEOUT_S)
        except (TimeoutError, asyncio.TimeoutError):  # (not the same class before 3.11)
            reply = {"failed": f"not serving after {START_TIMEOUT_S:.0f} s"}
        if "ready" not in reply:
            link.close()
            raise CoordinatorError(f"cannot start a relay front on {listen}: {reply['failed']}")
        return _Front(process, link), int(reply["ready"])


def check_free(listen: str) -> None:
    """Refuse an address that another server holds. The fronts bind with
    SO_REUSEPORT to share the port among themselves; without this check a
    second coordinator started with --relays on the same address would join
    them, and the kernel would split the trainers between two searches. A
    socket bound without SO_REUSEPORT cannot share the port with anyone."""
    host, _, port = listen.rpartition(":")
    if port == "0":
        return  # the kernel picks a free port
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, ValueError):
        return  # the first front names the problem
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as err:
                raise CoordinatorError(
                    f"cannot listen on {listen}: {err.strerror or err} "
                    "(another server holds the port)"
                ) from None
