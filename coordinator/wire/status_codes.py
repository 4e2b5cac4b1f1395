"""Domain errors <-> gRPC status codes: the one mapping, used by both sides.

The servicer turns an exception into (code, message) plus trailing metadata
naming the error class; the client turns an `RpcError` back into the same
class. Two classes may share a code (StaleLease and SearchFinished are both
FAILED_PRECONDITION: "your lease no longer counts"); the metadata tells them
apart, and a foreign client still gets a meaningful code.
"""

from __future__ import annotations

import logging
import uuid

import grpc

from autolfads.coordinator.search.errors import (
    CoordinatorError,
    CoordinatorUnavailable,
    InvalidRequest,
    Overloaded,
    PermissionDenied,
    SearchFinished,
    StaleLease,
    Unauthenticated,
    UnknownLease,
)
from autolfads.coordinator.security.limits import ERROR_KIND_KEY
from autolfads.errors import AutolfadsError
from autolfads.storage.errors import StorageError

__all__ = ["ERROR_KIND_KEY", "STATUS_CODES", "error_kind", "from_rpc_error", "to_status"]

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[Exception], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownLease: grpc.StatusCode.NOT_FOUND,
    StaleLease: grpc.StatusCode.FAILED_PRECONDITION,
    SearchFinished: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # Storage trouble is transient from the caller's view: retry later.
    StorageError: grpc.StatusCode.UNAVAILABLE,
    # The coordinator is stopping (a WatchStatus it ends): ask again later.
    CoordinatorUnavailable: grpc.StatusCode.UNAVAILABLE,
}
# Codes the client maps back when the metadata is missing (foreign servers).
_BY_CODE: dict[grpc.StatusCode, type[CoordinatorError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: UnknownLease,
    grpc.StatusCode.FAILED_PRECONDITION: StaleLease,
    grpc.StatusCode.UNAVAILABLE: CoordinatorUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: CoordinatorUnavailable,
    # Refused by the auth interceptor or a resource limit (no metadata there).
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
}
_BY_NAME: dict[str, type[CoordinatorError]] = {
    cls.__name__: cls
    for cls in (
        InvalidRequest,
        UnknownLease,
        StaleLease,
        SearchFinished,
        CoordinatorUnavailable,
        Unauthenticated,
        PermissionDenied,
        Overloaded,
    )
}


def to_status(err: Exception) -> tuple[grpc.StatusCode, str, str]:
    """(code, one-line message, error kind) for an exception raised by the service."""
    for cls in type(err).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls], str(err), type(err).__name__
    if isinstance(err, AutolfadsError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(err), "InvalidRequest"
    return grpc.StatusCode.INTERNAL, internal_message(err), ""


def internal_message(err: Exception) -> str:
    """What a caller is told of a bug of ours: a reference into the server's
    log, which has the traceback. The exception's own text may name paths,
    buckets or token files, and callers may hold no more than an observer
    token."""
    reference = uuid.uuid4().hex[:12]
    log.error("internal error (reference %s)", reference, exc_info=err)
    return f"internal error (reference {reference}; the server's log has the details)"


def error_kind(err: grpc.RpcError) -> str:
    """The error class our server named in the call's trailing metadata ("" if none)."""
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_KIND_KEY:
            return str(value)
    return ""


def from_rpc_error(err: grpc.RpcError, target: str) -> CoordinatorError:
    """The domain exception for a failed call (message prefixed by the target)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(code)
    cls = _BY_NAME.get(error_kind(err)) or _BY_CODE.get(code, CoordinatorError)
    return cls(f"coordinator {target}: {details}")
