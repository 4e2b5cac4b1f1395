"""A front process of a coordinator started with `--relays N` (see `relay`):
a `grpc.aio` server on the coordinator's port that authenticates, bounds,
logs and counts each call, and relays it to the owner of the search.

    python -m autolfads.coordinator.wire.front FD

FD is this process's end of the socket to the owner, which sends the
configuration first (tokens and TLS material never travel on the command
line or in the environment), then the front binds its address and answers
READY with its port, or FAILED with the reason. It stops when the owner
says STOP (gracefully: NOT_SERVING, then the grace period for calls under
way) or at once when the owner's end closes (the owner is gone). SIGINT and
SIGTERM are the owner's to handle: a terminal's Ctrl-C reaches every
process of its group, and the owner stops its fronts in order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2

from autolfads.coordinator.security.limits import ERROR_KIND_KEY, UNGUARDED_CALLS, server_options
from autolfads.coordinator.wire.relay import (
    ACK,
    ALIVE_EVERY_S,
    CALL,
    CANCEL,
    CONTROL,
    DEADLINE,
    DEFAULT_OWNER_SILENT_S,
    END,
    MAX_CALL_ID,
    METHODS,
    REPLY,
    FrameProtocol,
    decode_error,
    security_from,
)
from autolfads.coordinator.wire.server import (
    SERVICE_NAME,
    add_health_and_reflection,
    add_port,
    interceptor_chain,
)

log = logging.getLogger(__name__)

# The kind of the stand-in frame a call in flight gets when the owner is gone.
_GONE = 255
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Front:
    """The relay's front side: calls in flight by id, answered from frames."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ids = itertools.count(1)
        self._unary: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._streams: dict[int, asyncio.Queue[tuple[int, bytes]]] = {}
        self.owner: FrameProtocol | None = None
        self.owner_seen = time.monotonic()  # the owner's last ALIVE
        self._gone = False
        self.config: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.stopping: asyncio.Future[float] = loop.create_future()

    # ---- frames from the owner

    def on_frame(
        self, owner: FrameProtocol, call_id: int, kind: int, method: int, payload: bytes
    ) -> None:
        if kind == CONTROL:
            self._control(json.loads(payload))
        elif call_id in self._unary:
            future = self._unary.pop(call_id)
            if not future.done():
                future.set_result((kind, payload))
        elif call_id in self._streams:
            self._streams[call_id].put_nowait((kind, payload))

    def _control(self, document: dict[str, Any]) -> None:
        if not self.config.done():
            self.config.set_result(document)
        elif "alive" in document:
            self.owner_seen = time.monotonic()
        elif "stop" in document and not self.stopping.done():
            self.stopping.set_result(float(document["stop"]))

    def on_owner_lost(self) -> None:
        """Every call in flight fails (UNAVAILABLE: clients retry), and the
        front stops at once."""
        self._gone = True
        for future in self._unary.values():
            if not future.done():
                future.set_result((_GONE, b""))
        self._unary.clear()
        for queue in self._streams.values():
            queue.put_nowait((_GONE, b""))
        if not self.config.done():
            self.config.set_exception(ConnectionError("the coordinator closed the relay"))
        if not self.stopping.done():
            self.stopping.set_result(0.0)

    # ---- relayed calls

    def _send_call(self, method: int, raw: bytes, context: Any) -> int:
        assert self.owner is not None  # set before the server starts
        call_id = next(self._ids) % MAX_CALL_ID + 1
        remaining = context.time_remaining()
        # Absolute: the owner may get to the call later than it was sent.
        deadline = DEADLINE.pack(-1.0 if remaining is None else time.monotonic() + remaining)
        self.owner.send(call_id, CALL, method, deadline + raw)
        return call_id

    def _tell(self, call_id: int, kind: int, method: int) -> None:
        """An ACK or CANCEL for the owner, if it is still there."""
        if self.owner is not None and not self._gone:
            self.owner.send(call_id, kind, method)

    async def unary(self, method: int, raw: bytes, context: Any) -> bytes:
        if self._gone:
            await _fail(context, (_GONE, b""))
        future: asyncio.Future[tuple[int, bytes]] = self._loop.create_future()
        call_id = self._send_call(method, raw, context)
        self._unary[call_id] = future
        try:
            kind, payload = await future
        except asyncio.CancelledError:  # the client went away, or its deadline passed
            if self._unary.pop(call_id, None) is not None:
                self._tell(call_id, CANCEL, method)
            raise
        if kind == REPLY:
            return payload
        await _fail(context, (kind, payload))

    async def stream(self, method: int, raw: bytes, context: Any) -> AsyncIterator[bytes]:
        if self._gone:
            await _fail(context, (_GONE, b""))
        queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        call_id = self._send_call(method, raw, context)
        self._streams[call_id] = queue
        ended = False
        try:
            while True:
                kind, payload = await queue.get()
                if kind == REPLY:
                    yield payload  # returns once gRPC has taken it for the client
                    self._tell(call_id, ACK, method)
                elif kind == END:
                    ended = True
                    return
                else:
                    ended = True
                    await _fail(context, (kind, payload))
        finally:
            self._streams.pop(call_id, None)
            if not ended:
                self._tell(call_id, CANCEL, method)

    def handlers(self) -> grpc.GenericRpcHandler:
        """Each relayed method, request and reply as bytes (never decoded here)."""
        methods: dict[str, grpc.RpcMethodHandler] = {}
        for index, (name, _, streams) in enumerate(METHODS):
            if streams:
                methods[name] = grpc.unary_stream_rpc_method_handler(self._stream_of(index))
            else:
                methods[name] = grpc.unary_unary_rpc_method_handler(self._unary_of(index))
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)

    def _unary_of(self, method: int) -> Any:
        async def relay(raw: bytes, context: Any) -> bytes:
            return await self.unary(method, raw, context)

        return relay

    def _stream_of(self, method: int) -> Any:
        async def relay(raw: bytes, context: Any) -> AsyncIterator[bytes]:
            async for message in self.stream(method, raw, context):
                yield message

        return relay


async def _fail(context: Any, frame: tuple[int, bytes]) -> NoReturn:
    kind, payload = frame
    if kind == _GONE:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the coordinator is stopping; retry")
    code, error_kind, details = decode_error(payload)
    if error_kind:
        context.set_trailing_metadata(((ERROR_KIND_KEY, error_kind),))
    await context.abort(code, details)
    raise AssertionError("context.abort returned")


async def serve_front(fd: int) -> int:
    loop = asyncio.get_running_loop()
    front = Front(loop)
    _, owner = await loop.create_unix_connection(
        lambda: FrameProtocol(front.on_frame, front.on_owner_lost), sock=socket.socket(fileno=fd)
    )
    front.owner = owner
    try:
        config = await front.config
    except ConnectionError:  # the coordinator went away before it configured us
        return 1
    logging.basicConfig(
        level=int(config.get("log_level", logging.WARNING)),
        format="%(asctime)s %(levelname)s front %(process)d %(name)s: %(message)s",
    )
    try:
        server, port, health = await _start(front, config)
    except Exception as err:  # told to the owner, which names it and stops
        owner.send_control({"failed": f"{type(err).__name__}: {err}"})
        owner.close()
        return 1
    owner.send_control({"ready": port})
    silent_s = float(config.get("owner_silent_s", DEFAULT_OWNER_SILENT_S))
    watch = asyncio.create_task(_watch_owner(front, health, silent_s))
    grace = await front.stopping
    watch.cancel()
    if grace > 0:
        await health.enter_graceful_shutdown()
    await server.stop(grace)
    owner.close()
    return 0


async def _watch_owner(front: Front, health: Any, silent_s: float) -> None:
    """NOT_SERVING while the owner is silent (its loop stuck): the probes
    that would see a stuck single-process coordinator must see this one."""
    serving = True
    while True:
        await asyncio.sleep(ALIVE_EVERY_S)
        alive = time.monotonic() - front.owner_seen < silent_s
        if alive != serving:
            serving = alive
            status = SERVING if alive else NOT_SERVING
            log.warning("the coordinator is %s", "back" if alive else "not answering")
            for name in ("", SERVICE_NAME):
                await health.set(name, status)


async def _start(front: Front, config: dict[str, Any]) -> tuple[grpc.aio.Server, int, Any]:
    security = security_from(config)
    chain = interceptor_chain(security, None, int(config["max_streams"]), int(config["max_calls"]))
    # The other fronts bind the same port: the kernel spreads connections.
    options = [(k, v) for k, v in server_options() if k != "grpc.so_reuseport"]
    options.append(("grpc.so_reuseport", 1))
    # The guard bounds the calls it wraps; gRPC's cap, above it, the rest.
    calls = int(config["max_calls"]) + UNGUARDED_CALLS
    server = grpc.aio.server(interceptors=chain, options=options, maximum_concurrent_rpcs=calls)
    server.add_generic_rpc_handlers((front.handlers(),))
    health = await add_health_and_reflection(server)
    credentials = None if security.tls is None else security.tls.credentials()
    port = add_port(server, str(config["listen"]), credentials)
    await server.start()
    return server, port, health


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    return asyncio.run(serve_front(int(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
