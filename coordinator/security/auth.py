"""Bearer-token authentication of the coordinator's RPCs (a server interceptor).

Every call must carry `authorization: Bearer <token>` whose role grants the
method's right (`tokens.RIGHTS`); health checks and server reflection stay
open (Kubernetes probes carry no token; reflection only describes the public
protocol, never the search). Refusals:

    no token, malformed header, unknown token    UNAUTHENTICATED
    valid token, role lacks the method's right   PERMISSION_DENIED

A refused call never reaches the servicer (its request bytes are not even
parsed), so it changes nothing. Refusals are logged with method, peer and
reason but never the token, at most one line per `log_interval_s` (a flood
of bogus calls must not flood the log; the rest are counted in `refused`).
Tokens are compared with `hmac.compare_digest` against every configured
token, so the time taken does not depend on which one (if any) matched.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from autolfads.coordinator.security.interceptors import UNKNOWN_METHOD
from autolfads.coordinator.security.tokens import RIGHTS, ROLES, Right, Role, TokenSet

log = logging.getLogger("autolfads.coordinator.security.auth")

COORDINATOR = "/autolfads.pbt.v1.Coordinator/"
METHOD_RIGHTS: dict[str, Right] = {
    COORDINATOR + "RequestWork": "work",
    COORDINATOR + "Heartbeat": "work",
    COORDINATOR + "ReportResult": "work",
    COORDINATOR + "GetStatus": "read",
    COORDINATOR + "WatchStatus": "read",
    COORDINATOR + "CancelSearch": "operate",
}
# Open without a token: probes and API discovery.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
AUTHORIZATION = "authorization"


def required_right(method: str) -> Right | None:
    """The right `method` needs; None for open methods. Unknown methods need
    the most powerful right, so a future RPC is never open by accident."""
    if method.startswith(OPEN_PREFIXES):
        return None
    return METHOD_RIGHTS.get(method, "operate")


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata a client sends."""
    return ((AUTHORIZATION, f"Bearer {token}"),)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: TokenSet, log_interval_s: float = 10.0) -> None:
        if tokens.empty:
            raise ValueError("AuthInterceptor needs at least one token")
        self._tokens: list[tuple[Role, bytes]] = [
            (role, token.encode()) for role in ROLES if (token := tokens.token(role)) is not None
        ]
        self._log_interval_s = log_interval_s
        self._lock = threading.Lock()
        self._last_log = -float("inf")
        self._suppressed = 0
        self.refused: Counter[tuple[str, str]] = Counter()  # (method, code name)

    async def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        method = handler_call_details.method
        right = required_right(method)
        if right is None:
            return await continuation(handler_call_details)
        role, reason = self.authenticate(handler_call_details.invocation_metadata)
        if role is not None and right in RIGHTS[role]:
            return await continuation(handler_call_details)
        if role is None:
            code, message = grpc.StatusCode.UNAUTHENTICATED, f"{reason}; {_hint(right)}"
        else:
            code = grpc.StatusCode.PERMISSION_DENIED
            message = f"the {role} token may not call {_short(method)}; {_hint(right)}"
            reason = f"{role} token lacks the {right} right"
        return self._refusal(
            await continuation(handler_call_details), method, code, message, reason
        )

    def authenticate(self, metadata: Sequence[tuple[str, Any]] | None) -> tuple[Role | None, str]:
        """(role, "") for a known bearer token, else (None, why not)."""
        values = [v for k, v in metadata or () if k == AUTHORIZATION]
        if not values:
            return None, "no bearer token"
        if len(values) > 1:
            return None, "more than one authorization header"
        value = values[0] if isinstance(values[0], str) else repr(values[0])
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, "the authorization header is not 'Bearer <token>'"
        given = token.strip().encode("utf-8", "replace")
        role: Role | None = None
        for candidate, expected in self._tokens:  # no early exit: constant work
            if hmac.compare_digest(given, expected):
                role = candidate
        return (role, "") if role is not None else (None, "unknown token")

    # ------------------------------------------------------------ refusals

    def _refusal(
        self,
        handler: grpc.RpcMethodHandler | None,
        method: str,
        code: grpc.StatusCode,
        message: str,
        reason: str,
    ) -> grpc.RpcMethodHandler:
        """A handler that refuses without parsing the request (identity deserializer)."""

        async def refuse(request: Any, context: Any) -> Any:
            self._record(method, code, context.peer(), reason)
            await context.abort(code, message)

        async def refuse_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            await refuse(request, context)
            yield  # pragma: no cover - abort raised above

        serializer = handler.response_serializer if handler is not None else None
        if handler is not None and handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                refuse_stream, request_deserializer=None, response_serializer=serializer
            )
        if handler is not None and handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=serializer)
        if handler is not None and handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                refuse_stream, response_serializer=serializer
            )
        return grpc.unary_unary_rpc_method_handler(refuse, response_serializer=serializer)

    def _record(self, method: str, code: grpc.StatusCode, peer: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            # (A made-up path is not a counter of its own: see UNKNOWN_METHOD.)
            name = _short(method) if method in METHOD_RIGHTS else UNKNOWN_METHOD
            self.refused[(name, code.name)] += 1
            if now - self._last_log < self._log_interval_s:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last_log = self._suppressed, 0, now
        more = f" (+{suppressed} refusals not logged)" if suppressed else ""
        log.warning("refused %.200s from %s: %s [%s]%s", method, peer, reason, code.name, more)


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


def _hint(right: Right) -> str:
    roles = [role for role in ROLES if right in RIGHTS[role]]
    names = roles[0] if len(roles) == 1 else ", ".join(roles[:-1]) + " or " + roles[-1]
    return f"{_activity(right)} needs the {names} token"


def _activity(right: Right) -> str:
    return {"read": "reading", "work": "training", "operate": "operating"}[right]
