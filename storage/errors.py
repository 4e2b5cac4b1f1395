"""Storage errors: one line each, safe to show (never a credential).

Callers catch the narrow classes to recover: `ChecksumMismatch` to fall back to
an older checkpoint, `ObjectNotFound` to treat a key as absent,
`StorageUnavailable` when the retry budget against the server is spent.
"""

from __future__ import annotations

from collections.abc import Iterable

from autolfads.errors import AutolfadsError


class StorageError(AutolfadsError):
    """Any storage problem; the message names the store, key and cause."""


class InvalidKey(StorageError):
    """A key, prefix or identifier that could escape the run or the store."""


class InvalidMetadata(StorageError):
    """Object metadata that S3 cannot carry (non-ASCII, bad names)."""


class ObjectNotFound(StorageError):
    """The key does not exist."""


class ChecksumMismatch(StorageError):
    """The bytes read do not hash to the SHA-256 recorded at write time."""


class SourceUnreadable(StorageError):
    """A local file given to `put_file` cannot be read (named, not the
    destination or the server)."""


class MissingChecksum(ChecksumMismatch):
    """The object records no SHA-256, so its bytes cannot be verified.

    A subclass of ChecksumMismatch: a caller that falls back on corrupt data
    also falls back on unverifiable data.
    """


class StorageAuthError(StorageError):
    """The server rejected the credentials or denied the operation."""


class BucketNotFound(StorageError):
    """The bucket (or the local store directory) does not exist."""


class StorageUnavailable(StorageError):
    """The server could not be reached, or kept failing, within the retry budget."""


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every non-trivial secret in `text` by '***'.

    A last line of defence for messages built from foreign exception text:
    our own messages never include credentials in the first place.
    """
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace and cut long foreign messages to keep errors one line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class Unsupported(StorageError):
    """The backend does not offer this operation (see `Store.capabilities`)."""
