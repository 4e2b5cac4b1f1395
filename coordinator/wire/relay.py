"""Calls relayed between front processes and the coordinator that owns the
search: the frames on the socket between them, and the owner's side.

With `--relays N` the coordinator's gRPC server runs in N front processes
(`front.py`) on one port (SO_REUSEPORT: the kernel spreads connections
among them), and the search stays in one process, the owner. gRPC's own
work per call (about half of the coordinator's CPU under load,
benchmarks/README.md part 15) then runs beside the owner's event loop
instead of on it, and on other cores where there are any. A front does
what needs no search state: TLS, authentication, the per-call limits,
logging and counters, health and reflection. It passes each call's
request bytes on undecoded, with its deadline, and the owner runs the
same servicer as a single-process coordinator and sends back the reply's
bytes or the error. There is still one copy of the search state.

A frame is a header (call id, kind, method, payload length; network byte
order) and a payload:

    front -> owner   CALL    deadline (time.monotonic() value, the same clock
                             in every process of the machine; -1: none) +
                             request bytes
                     CANCEL  (the client went away: the owner cancels the call)
                     ACK     (a stream's message went out to its client: the
                             owner computes the next one only then, as a
                             stream served in one process does)
    owner -> front   REPLY   reply bytes (a stream sends one REPLY per message)
                     END     (a stream is over)
                     ERROR   status code, error kind, details
    both             CONTROL a JSON document: the front's configuration
                             (owner -> front, first), READY with its port or
                             FAILED (front -> owner), STOP with a grace period,
                             and ALIVE once a second (owner -> front: a front
                             whose owner stops answering says NOT_SERVING)

The socket is one end of a socketpair handed to the front at its start, so
no other process can reach it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from autolfads.coordinator.security.exposure import ServerSecurity
from autolfads.coordinator.security.limits import ERROR_KIND_KEY
from autolfads.coordinator.security.tls import ServerTls
from autolfads.coordinator.security.tokens import TokenSet
from autolfads.coordinator.wire.status_codes import internal_message
from autolfads.pbt.v1 import coordinator_pb2 as pb

log = logging.getLogger(__name__)

HEADER = struct.Struct("!IBBI")  # call id, kind, method, payload length
DEADLINE = struct.Struct("!d")
CALL, CANCEL, REPLY, END, ERROR, CONTROL, ACK = range(1, 8)
# The owner tells each front it is alive this often (see CONTROL); a front
# says NOT_SERVING once it has heard nothing for DEFAULT_OWNER_SILENT_S.
ALIVE_EVERY_S = 1.0
DEFAULT_OWNER_SILENT_S = 10.0
# Call ids are 32 bits on the wire; a front's count wraps (after about four
# billion calls, long after the call that had an id before has ended).
MAX_CALL_ID = 0xFFFFFFFF
# The relayed methods, by their index in frames: (name, request type, streams).
METHODS: tuple[tuple[str, type[Any], bool], ...] = (
    ("RequestWork", pb.RequestWorkRequest, False),
    ("Heartbeat", pb.HeartbeatRequest, False),
    ("ReportResult", pb.ReportResultRequest, False),
    ("GetStatus", pb.GetStatusRequest, False),
    ("WatchStatus", pb.WatchStatusRequest, True),
    ("CancelSearch", pb.CancelSearchRequest, False),
)
_CODES = {code.value[0]: code for code in grpc.StatusCode}

OnFrame = Callable[["FrameProtocol", int, int, int, bytes], None]


class FrameProtocol(asyncio.Protocol):
    """Frames over a stream socket, both ways. Frames sent in one turn of
    the event loop go out in one write (a burst of answers at a generation's
    boundary is one system call, not a thousand)."""

    def __init__(self, on_frame: OnFrame, on_lost: Callable[[], None] | None = None) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._in = bytearray()
        self._out = bytearray()
        self._flush_due = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._in
        buf += data
        pos, end_of_data = 0, len(buf)
        while end_of_data - pos >= HEADER.size:
            call_id, kind, method, length = HEADER.unpack_from(buf, pos)
            end = pos + HEADER.size + length
            if end > end_of_data:
                break
            self._on_frame(self, call_id, kind, method, bytes(buf[pos + HEADER.size : end]))
            pos = end
        del buf[:pos]

    def send(self, call_id: int, kind: int, method: int, payload: bytes = b"") -> None:
        self._out += HEADER.pack(call_id, kind, method, len(payload))
        self._out += payload
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def send_control(self, document: dict[str, Any]) -> None:
        self.send(0, CONTROL, 0, json.dumps(document).encode())

    def _flush(self) -> None:
        self._flush_due = False
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes(self._out))
        self._out.clear()

    def close(self) -> None:
        """Send what is pending, then close (the transport writes its buffer
        out before it closes)."""
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._on_lost is not None:
            self._on_lost()


def encode_error(code: grpc.StatusCode, kind: str, details: str) -> bytes:
    name = kind.encode()[:255]
    return bytes([code.value[0], len(name)]) + name + details.encode()


def decode_error(payload: bytes) -> tuple[grpc.StatusCode, str, str]:
    code = _CODES.get(payload[0], grpc.StatusCode.UNKNOWN)
    size = payload[1]
    return code, payload[2 : 2 + size].decode(), payload[2 + size :].decode(errors="replace")


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, kind: str) -> None:
        super().__init__(details)
        self.code, self.details, self.kind = code, details, kind


class RelayContext:
    """What the servicer uses of a gRPC context, for a relayed call."""

    __slots__ = ("_deadline", "_kind")

    def __init__(self, deadline: float | None) -> None:
        self._deadline = deadline
        self._kind = ""

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        for key, value in metadata:
            if key == ERROR_KIND_KEY:
                self._kind = value

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details, self._kind)


class RelayOwner:
    """The owner's side: runs each relayed call on the servicer, on the
    owner's event loop, and sends its answer back to the front it came from."""

    def __init__(self, servicer: Any) -> None:
        self._handlers = [getattr(servicer, name) for name, _, _ in METHODS]
        self._calls: dict[tuple[int, int], asyncio.Task[None]] = {}
        # Streams whose last message waits for the front's ACK.
        self._acks: dict[tuple[int, int], asyncio.Future[None]] = {}

    def on_frame(
        self, front: FrameProtocol, call_id: int, kind: int, method: int, payload: bytes
    ) -> None:
        key = (id(front), call_id)
        if kind == CALL and method < len(METHODS):
            run = self._stream if METHODS[method][2] else self._unary
            # (The call's coroutine takes itself off the list when it ends.)
            self._calls[key] = asyncio.get_running_loop().create_task(
                run(front, call_id, method, payload)
            )
        elif kind == ACK:
            sent = self._acks.pop(key, None)
            if sent is not None and not sent.done():
                sent.set_result(None)
        elif kind == CANCEL:
            running = self._calls.pop(key, None)
            if running is not None:
                running.cancel()
        elif kind == CALL:
            front.send(call_id, ERROR, method, encode_error(grpc.StatusCode.UNIMPLEMENTED, "", ""))

    def cancel_all(self, front: FrameProtocol) -> None:
        """The front is gone: its calls have no one to answer."""
        for key in [key for key in self._calls if key[0] == id(front)]:
            # Popped here: a task cancelled before it first ran never gets to
            # take itself off.
            self._calls.pop(key).cancel()

    async def _unary(self, front: FrameProtocol, call_id: int, method: int, payload: bytes) -> None:
        try:
            request, context = _decode(method, payload)
            reply = await self._handlers[method](request, context)
            front.send(call_id, REPLY, method, reply.SerializeToString())
        except asyncio.CancelledError:
            return  # the client went away: nobody to answer
        except _Aborted as err:
            front.send(call_id, ERROR, method, encode_error(err.code, err.kind, err.details))
        except Exception as err:  # a bug of ours: the call fails, the owner goes on
            front.send(call_id, ERROR, method, _internal(err))
        finally:
            self._calls.pop((id(front), call_id), None)

    async def _stream(
        self, front: FrameProtocol, call_id: int, method: int, payload: bytes
    ) -> None:
        try:
            request, context = _decode(method, payload)
            messages: AsyncIterator[Any] = self._handlers[method](request, context)
            key = (id(front), call_id)
            async for message in messages:
                # The next message is made once this one is out: a watcher
                # that stops reading holds one message, not every revision.
                sent = asyncio.get_running_loop().create_future()
                self._acks[key] = sent
                front.send(call_id, REPLY, method, message.SerializeToString())
                await sent
            front.send(call_id, END, method)
        except asyncio.CancelledError:
            return
        except _Aborted as err:
            front.send(call_id, ERROR, method, encode_error(err.code, err.kind, err.details))
        except Exception as err:  # logged with the reference the caller is given
            front.send(call_id, ERROR, method, _internal(err))
        finally:
            self._calls.pop((id(front), call_id), None)
            self._acks.pop((id(front), call_id), None)


def _decode(method: int, payload: bytes) -> tuple[Any, RelayContext]:
    name, request_type, _ = METHODS[method]
    (when,) = DEADLINE.unpack_from(payload)
    deadline = None if when < 0 else when
    try:
        request = request_type.FromString(payload[DEADLINE.size :])
    except DecodeError as err:
        raise _Aborted(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{name}: the request bytes are not a valid message ({type(err).__name__})",
            "",
        ) from None
    return request, RelayContext(deadline)


def _internal(err: Exception) -> bytes:
    return encode_error(grpc.StatusCode.INTERNAL, "", internal_message(err))


def security_from(config: dict[str, Any]) -> ServerSecurity:
    tls = config.get("tls")
    return ServerSecurity(
        tokens=TokenSet(**config.get("tokens", {})),
        tls=None
        if tls is None
        else ServerTls(
            cert_chain=base64.b64decode(tls["cert_chain"]),
            private_key=base64.b64decode(tls["private_key"]),
            client_ca=base64.b64decode(tls["client_ca"]) if tls.get("client_ca") else None,
        ),
    )


def security_config(security: ServerSecurity) -> dict[str, Any]:
    """`security` as the configuration document's fields (the inverse of
    `security_from`)."""
    tokens = {role: security.tokens.token(role) for role in security.tokens.roles}
    tls = security.tls
    return {
        "tokens": tokens,
        "tls": None
        if tls is None
        else {
            "cert_chain": base64.b64encode(tls.cert_chain).decode(),
            "private_key": base64.b64encode(tls.private_key).decode(),
            "client_ca": base64.b64encode(tls.client_ca).decode() if tls.client_ca else None,
        },
    }
