"""Domain errors of the PBT coordinator, shared by service, servicer and client.

The servicer maps each to one gRPC status code (`servicer.STATUS_CODES`) and
the client maps the code back to the same class, so callers on both sides of
the wire catch the same exceptions.
"""

from __future__ import annotations

from autolfads.errors import AutolfadsError


class CoordinatorError(AutolfadsError):
    """Base class: a request the coordinator refused, or cannot serve."""


class InvalidRequest(CoordinatorError):
    """Malformed or inconsistent request (bad hparams, wrong generation...)."""


class UnknownLease(CoordinatorError):
    """The lease id was never granted by this search."""


class StaleLease(CoordinatorError):
    """The lease expired or was revoked; its report changes nothing."""


class SearchFinished(CoordinatorError):
    """The search is over (finished, cancelled or failed)."""


class CoordinatorUnavailable(CoordinatorError):
    """The coordinator could not be reached within the bounded wait."""

    exit_code = 3


class Unauthenticated(CoordinatorError):
    """The call carried no bearer token, or one the coordinator does not know."""


class PermissionDenied(CoordinatorError):
    """The token is valid but its role may not make this call."""


class Overloaded(CoordinatorError):
    """A resource limit refused the call: busy (too many calls or streams at
    once; the client retries those) or a request over the size bound."""


class TlsError(CoordinatorError):
    """TLS could not be set up: unreadable certificates or a failed handshake."""
