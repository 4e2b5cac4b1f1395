"""MinIO / S3 backend through the `minio` client.

Every request goes through `S3Store._call`, which retries transient failures
(connection errors, timeouts, 5xx, SlowDown) with bounded exponential backoff
and turns whatever remains into one of our one-line StorageErrors. The
urllib3 pool handed to the client does no retrying of its own (so the budget
is ours alone) and has a short connect timeout (so a dead server fails fast).

The SHA-256 of each object travels as user metadata (`x-amz-meta-sha256`,
shown as "sha256" in the MinIO console). S3 puts are atomic by nature: a
single PUT or a completed multipart upload appears whole or not at all.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar
from xml.etree import ElementTree

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from autolfads.storage.base import (
    ObjectInfo,
    SourceFile,
    Store,
    StoreCapabilities,
    sha256_file,
)
from autolfads.storage.errors import (
    BucketNotFound,
    ChecksumMismatch,
    ObjectNotFound,
    SourceUnreadable,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
    one_line,
    redact,
)
from autolfads.storage.keys import InvalidKey, validate_key
from autolfads.storage.retry import RetriesExhausted, RetryPolicy, call_with_retry

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_PART_SIZE = 5 * 1024 * 1024  # the S3 minimum for all but the last part
DEFAULT_PART_SIZE = 16 * 1024 * 1024
_META_PREFIX = "x-amz-meta-"

_AUTH_HINTS = {
    "InvalidAccessKeyId": "the access key is not known to the server; check AWS_ACCESS_KEY_ID "
    "(or MINIO_ACCESS_KEY / MINIO_ROOT_USER)",
    "SignatureDoesNotMatch": "the secret key does not match the access key; check "
    "AWS_SECRET_ACCESS_KEY (or MINIO_SECRET_KEY / MINIO_ROOT_PASSWORD)",
    "AccessDenied": "access denied: wrong credentials, or the key's policy does not allow this",
    "AllAccessDisabled": "all access to this bucket has been disabled",
    "ExpiredToken": "the session token has expired; refresh AWS_SESSION_TOKEN",
    "InvalidToken": "the session token is invalid; check AWS_SESSION_TOKEN",
    "TokenRefreshRequired": "the session token must be refreshed; renew AWS_SESSION_TOKEN",
    "AccountProblem": "the account behind these credentials cannot use this bucket",
}
_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "OperationAborted"}
)


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach the server. Secrets are excluded from repr()."""

    endpoint: str  # "host:port", no scheme
    secure: bool = True
    region: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    cert_check: bool = True
    ca_file: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    part_size: int = DEFAULT_PART_SIZE
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if (self.access_key is None) != (self.secret_key is None):
            raise StorageError(
                "S3 credentials are incomplete: set both the access key (AWS_ACCESS_KEY_ID) "
                "and the secret key (AWS_SECRET_ACCESS_KEY), or neither for anonymous access"
            )
        if self.part_size < MIN_PART_SIZE:
            raise StorageError(f"S3 part size {self.part_size} is below the 5 MiB minimum")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise StorageError("S3 timeouts must be positive")

    @property
    def endpoint_url(self) -> str:
        return ("https://" if self.secure else "http://") + self.endpoint

    def secrets(self) -> tuple[str | None, ...]:
        return (self.access_key, self.secret_key, self.session_token)


def _http_client(settings: S3Settings) -> urllib3.PoolManager:
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=settings.connect_timeout_s, read=settings.read_timeout_s),
        # One pool slot per parallel multipart upload thread plus headroom.
        maxsize=10,
        cert_reqs="CERT_REQUIRED" if settings.cert_check else "CERT_NONE",
        ca_certs=settings.ca_file or os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=False,  # our own bounded retry loop owns the budget
    )


def tls_failure(err: BaseException) -> bool:
    """A failed TLS handshake (a wrong scheme or certificate): no retry mends it.
    A connection closed mid-handshake is not one: a load balancer or proxy
    drops connections that way while the MinIO pod behind it restarts."""
    if isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason is not None:
        err = err.reason
    if not isinstance(err, urllib3.exceptions.SSLError | ssl.SSLError):
        return False
    return not _closed_mid_handshake(err)


def _closed_mid_handshake(err: BaseException) -> bool:
    seen: set[int] = set()
    todo: list[object] = [err]
    while todo:  # urllib3 wraps ssl's error in args, causes or contexts
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionResetError):
            return True
        if "UNEXPECTED_EOF" in str(e) or "EOF occurred in violation of protocol" in str(e):
            return True
        todo += [*e.args, e.__cause__, e.__context__]
    return False


def is_transient(err: BaseException) -> bool:
    """Worth retrying: the network or the server hiccuped, not our request."""
    if tls_failure(err):  # (urllib3's SSLError is one of its HTTPErrors)
        return False
    if isinstance(err, S3Error):
        return err.code in _TRANSIENT_CODES or _server_hiccup(err.response.status)
    if isinstance(err, ServerError):
        return _server_hiccup(err.status_code)
    if isinstance(err, InvalidResponseError):
        # Non-XML answers (a proxy's 502 page); the status is only in the text.
        match = re.search(r"Response code: (\d+)", str(err))
        return match is not None and _server_hiccup(int(match.group(1)))
    return isinstance(
        err, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError | socket.timeout
    )


def _server_hiccup(status: int) -> bool:
    """A 5xx worth retrying; 501 Not Implemented (a request this server never
    supports) and 505 are answered the same way every time."""
    return status >= 500 and status not in (501, 505)


class _HashingReader(SourceFile):
    """A file opened for an upload that hashes what the upload reads."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        self._digest.update(data)
        self.size += len(data)
        return data

    def sha256(self) -> str:
        return self._digest.hexdigest()


def _size_now(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


class S3Store(Store):
    """Objects under `s3://<bucket>/<prefix>` on a MinIO or S3 server."""

    # Eight puts in flight: each is mostly a wait on the server (the
    # coordinator's member histories, 1024 of them at a generation's close).
    capabilities = StoreCapabilities(presigned_urls=True, parallel_writes=8)

    def __init__(self, bucket: str, prefix: str, settings: S3Settings) -> None:
        if prefix:
            validate_key(prefix, kind="store prefix")
        self.bucket = bucket
        self.prefix = prefix
        self.settings = settings
        self._object_prefix = f"{prefix}/" if prefix else ""
        path = f"{bucket}/{prefix}" if prefix else bucket
        self.url = f"s3://{path}?endpoint={settings.endpoint_url}"
        self._client = Minio(
            settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            session_token=settings.session_token,
            secure=settings.secure,
            region=settings.region,
            http_client=_http_client(settings),
            cert_check=settings.cert_check,
        )

    # ---- request plumbing --------------------------------------------------

    def location(self, key: str | None = None) -> str:
        path = (
            f"{self.bucket}/{self._object_prefix}{key}" if key else f"{self.bucket}/{self.prefix}"
        )
        return f"s3://{path.rstrip('/')} (endpoint {self.settings.endpoint_url})"

    def _name(self, key: str) -> str:
        return self._object_prefix + key

    def _call(self, op: str, key: str | None, fn: Callable[[], T]) -> T:
        """Run one client operation with retries; map failures to StorageErrors."""
        where = self.location(key)
        try:
            return call_with_retry(
                fn, policy=self.settings.retry, is_transient=is_transient, what=f"{op} {where}"
            )
        except RetriesExhausted as exhausted:
            cause = self._describe(exhausted.last)
            raise StorageUnavailable(
                f"{op} {where} failed after {exhausted.attempts} attempts over "
                f"{exhausted.waited_s:.1f} s: {cause}"
            ) from None
        except StorageError:
            raise
        except S3Error as err:
            raise self._map_s3_error(op, where, err) from None
        except (
            MinioException,
            ValueError,
            OSError,
            urllib3.exceptions.HTTPError,
            ElementTree.ParseError,  # a garbled error document
        ) as err:
            raise self._map_other(op, where, err) from None

    def _describe(self, err: BaseException) -> str:
        if isinstance(err, S3Error):
            text = f"{err.code} (HTTP {err.response.status})"
        elif isinstance(err, urllib3.exceptions.HTTPError | OSError):
            reason = getattr(err, "reason", None) or err
            text = f"cannot reach {self.settings.endpoint_url} ({type(err).__name__}: {reason})"
        else:
            text = f"{type(err).__name__}: {err}"
        return one_line(redact(text, self.settings.secrets()), 200)

    def _map_s3_error(self, op: str, where: str, err: S3Error) -> StorageError:
        code = err.code or "Unknown"
        if code in _AUTH_HINTS:
            return StorageAuthError(f"{op} {where}: {code}: {_AUTH_HINTS[code]}")
        if code == "NoSuchBucket":
            return BucketNotFound(
                f"{op} {where}: bucket {self.bucket!r} does not exist at "
                f"{self.settings.endpoint_url}; create it or fix the URL"
            )
        if code in {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}:
            return ObjectNotFound(f"{where}: no such object")
        if code == "RequestTimeTooSkewed":
            return StorageError(
                f"{op} {where}: the server rejected our clock; sync the system time"
            )
        # Redacted before it is shortened: a secret cut in two would not match.
        message = one_line(redact(err.message or "", self.settings.secrets()), 160)
        return StorageError(f"{op} {where}: {code} (HTTP {err.response.status}): {message}")

    def _map_other(self, op: str, where: str, err: BaseException) -> StorageError:
        text = str(err)
        if isinstance(err, InvalidResponseError) and re.search(r"Response code: 40[13]\b", text):
            return StorageAuthError(
                f"{op} {where}: the server refused the request ({self._describe(err)})"
            )
        if tls_failure(err):
            return StorageError(
                f"{op} {where}: TLS handshake with {self.settings.endpoint_url} failed; "
                "check the certificate (SSL_CERT_FILE) or use http:// for a plain-HTTP server"
            )
        if isinstance(err, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
            return StorageUnavailable(f"{op} {where}: {self._describe(err)}")
        return StorageError(f"{op} {where}: {self._describe(err)}")

    # ---- bucket ------------------------------------------------------------

    def ensure_bucket(self, *, create: bool) -> None:
        """Check the bucket exists; create it when `create` (and allowed)."""
        if self._call("check bucket", None, lambda: self._client.bucket_exists(self.bucket)):
            return
        if not create:
            raise BucketNotFound(
                f"{self.location()}: bucket {self.bucket!r} does not exist; create it "
                "(e.g. in the MinIO console) or allow autolfads to create it"
            )

        def make() -> None:
            try:
                self._client.make_bucket(self.bucket)
            except S3Error as err:
                # Another pod won the race: the bucket is there, which is all we want.
                if err.code != "BucketAlreadyOwnedByYou":
                    raise

        self._call("create bucket", None, make)
        log.info("created bucket %s at %s", self.bucket, self.settings.endpoint_url)

    # ---- writing -----------------------------------------------------------

    def _put_stream(
        self,
        key: str,
        open_stream: Callable[[], Any],
        size: int,
        sha256: str,
        content_type: str,
        metadata: dict[str, str],
    ) -> ObjectInfo:
        headers = {f"{_META_PREFIX}{name}": value for name, value in metadata.items()}
        headers[f"{_META_PREFIX}sha256"] = sha256

        def put() -> None:
            # A fresh stream per attempt: a retry re-sends from the start.
            with open_stream() as stream:
                self._client.put_object(
                    self.bucket,
                    self._name(key),
                    stream,
                    size,
                    content_type=content_type,
                    metadata=dict(headers),  # minio's wider value type
                    part_size=self.settings.part_size,
                )

        self._call("put", key, put)
        return ObjectInfo(
            key=key, size=size, sha256=sha256, metadata=dict(metadata), content_type=content_type
        )

    def _put_bytes(
        self, key: str, data: bytes, sha256: str, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        return self._put_stream(
            key, lambda: io.BytesIO(data), len(data), sha256, content_type, metadata
        )

    def _put_file(
        self, key: str, path: Path, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        # The checksum goes in the request headers, so it is computed first,
        # and the upload reads the file a second time. What it sends is
        # hashed too: a file changed in between would be stored under a
        # checksum it does not have, and every later download would fail.
        sha256, size = sha256_file(path)
        sent: list[_HashingReader] = []

        def open_stream() -> _HashingReader:
            sent.append(_HashingReader(path))
            return sent[-1]

        changed = (
            f"{path} changed while it was being uploaded to {self.location(key)}; "
            "upload the file again once it is complete"
        )
        try:
            info = self._put_stream(key, open_stream, size, sha256, content_type, metadata)
        except SourceUnreadable:
            raise
        except StorageError:
            # A file that shrank fails the upload itself ("not enough data"):
            # that is the file's doing, not the server's.
            if _size_now(path) != size:
                raise ChecksumMismatch(changed) from None
            raise
        if sent[-1].size != size or sent[-1].sha256() != sha256:
            self._delete(key)
            raise ChecksumMismatch(f"{changed} (the object was removed)")
        return info

    # ---- reading -----------------------------------------------------------

    def _info(self, key: str, headers: Mapping[str, str], size: int) -> ObjectInfo:
        metadata: dict[str, str] = {}
        sha256 = None
        for name, value in headers.items():
            lower = name.lower()
            if not lower.startswith(_META_PREFIX):
                continue
            short = lower[len(_META_PREFIX) :]
            if short == "sha256":
                sha256 = value.strip().lower()
            else:
                metadata[short] = value
        modified = None
        if headers.get("last-modified"):
            try:
                modified = parsedate_to_datetime(headers["last-modified"]).timestamp()
            except (TypeError, ValueError):
                modified = None
        return ObjectInfo(
            key=key,
            size=size,
            sha256=sha256,
            modified=modified,
            metadata=metadata,
            content_type=headers.get("content-type"),
        )

    def _get_bytes(self, key: str) -> tuple[bytes, ObjectInfo]:
        def get() -> tuple[bytes, Any]:
            response = self._client.get_object(self.bucket, self._name(key))
            try:
                return response.read(), response.headers
            finally:
                response.close()
                response.release_conn()

        data, headers = self._call("get", key, get)
        return data, self._info(key, headers, len(data))

    def _download(self, key: str, tmp: Path) -> tuple[ObjectInfo, str]:
        def get() -> tuple[Any, str]:
            digest = hashlib.sha256()
            response = self._client.get_object(self.bucket, self._name(key))
            try:
                # Truncate on each attempt: a retry writes the file afresh.
                with open(tmp, "wb") as fh:
                    for chunk in response.stream(1 << 20):
                        digest.update(chunk)
                        fh.write(chunk)
                return response.headers, digest.hexdigest()
            finally:
                response.close()
                response.release_conn()

        headers, sha256 = self._call("get", key, get)
        return self._info(key, headers, tmp.stat().st_size), sha256

    def _stat(self, key: str) -> ObjectInfo:
        obj = self._call(
            "stat", key, lambda: self._client.stat_object(self.bucket, self._name(key))
        )
        info = self._info(key, obj.metadata or {}, int(obj.size or 0))
        modified = obj.last_modified.timestamp() if obj.last_modified else info.modified
        return ObjectInfo(
            key=key,
            size=info.size,
            sha256=info.sha256,
            modified=modified,
            metadata=info.metadata,
            content_type=obj.content_type or info.content_type,
        )

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        found: list[Any] = []

        def fetch() -> None:
            # Resume after the last key seen, so a retry does not start over.
            start_after = found[-1].object_name if found else None
            for obj in self._client.list_objects(
                self.bucket, prefix=self._name(prefix), recursive=True, start_after=start_after
            ):
                found.append(obj)

        self._call("list", prefix or "(all)", fetch)
        infos = []
        for obj in found:
            name = obj.object_name or ""
            key = name[len(self._object_prefix) :]
            if obj.is_dir or not name.startswith(self._object_prefix) or name.endswith("/"):
                continue  # console-made "folder" markers
            try:
                validate_key(key)
            except InvalidKey:
                log.debug("skipping %s: not a valid key", name)
                continue
            modified = obj.last_modified.timestamp() if obj.last_modified else None
            infos.append(ObjectInfo(key=key, size=int(obj.size or 0), modified=modified))
        infos.sort(key=lambda info: info.key)
        return iter(infos)

    # ---- deleting, sharing ---------------------------------------------------

    def _delete(self, key: str) -> None:
        # S3 answers 204 for a missing key, which makes delete idempotent.
        self._call("delete", key, lambda: self._client.remove_object(self.bucket, self._name(key)))

    def _presigned_url(self, key: str, expires_s: int) -> str:
        return self._call(
            "presign",
            key,
            lambda: self._client.presigned_get_object(
                self.bucket, self._name(key), expires=timedelta(seconds=expires_s)
            ),
        )
