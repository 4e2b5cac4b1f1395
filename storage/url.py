"""`open_store(url)`: one string picks the backend and where it stores.

    s3://bucket/prefix                       MinIO/S3; endpoint + keys from env
    s3://bucket/prefix?endpoint=http://minio:9000&region=us-east-1
    file:///abs/dir, /abs/dir, ./relative/dir   local directory

Environment variables (the names MinIO and AWS users already set):

    endpoint    AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, MINIO_ENDPOINT
                (http:// or https:// decides TLS; a bare host:port uses
                MINIO_SECURE, default true); default s3.amazonaws.com
    access key  AWS_ACCESS_KEY_ID, MINIO_ACCESS_KEY, MINIO_ROOT_USER
    secret key  AWS_SECRET_ACCESS_KEY, MINIO_SECRET_KEY, MINIO_ROOT_PASSWORD
    token       AWS_SESSION_TOKEN
    region      AWS_REGION, AWS_DEFAULT_REGION, MINIO_REGION
    TLS         AWS_CA_BUNDLE or SSL_CERT_FILE (CA file);
                AUTOLFADS_S3_CERT_CHECK=false skips verification
    tuning      AUTOLFADS_S3_MAX_ATTEMPTS, AUTOLFADS_S3_BASE_DELAY_S,
                AUTOLFADS_S3_MAX_DELAY_S, AUTOLFADS_S3_CONNECT_TIMEOUT_S,
                AUTOLFADS_S3_PART_SIZE_MB

Credentials are never accepted in a URL: URLs end up in logs, configs and
status output, so they must be safe to print.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from autolfads.storage.base import Store
from autolfads.storage.errors import InvalidKey, StorageError
from autolfads.storage.keys import validate_key
from autolfads.storage.local import LocalStore
from autolfads.storage.retry import RetryPolicy, env_number
from autolfads.storage.s3 import S3Settings, S3Store

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_URL_OPTIONS = frozenset({"endpoint", "region"})
_SECRET_WORDS = ("key", "secret", "password", "token", "credential", "signature")
_FALSE = {"0", "false", "no", "off"}
_TRUE = {"1", "true", "yes", "on"}


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise StorageError(f"environment variable {name}={raw!r} must be true or false")


def parse_endpoint(endpoint: str, secure_default: bool, source: str) -> tuple[str, bool]:
    """'http://host:9000' -> ('host:9000', False); a bare 'host:9000' uses the default."""
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https"):
            raise StorageError(
                f"{source}: endpoint scheme must be http or https, got {parts.scheme!r}"
            )
        if parts.username or parts.password:
            raise StorageError(f"{source}: credentials are not accepted in the endpoint URL")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise StorageError(f"{source}: endpoint must be scheme://host[:port] without a path")
        host, secure = parts.netloc, parts.scheme == "https"
    else:
        host, secure = endpoint, secure_default
    if "@" in host:  # user:secret@host without a scheme: never echoed
        raise StorageError(f"{source}: credentials are not accepted in the endpoint")
    if not _HOSTPORT.fullmatch(host):
        raise StorageError(f"{source}: endpoint host {host!r} is not host[:port]")
    return host, secure


def s3_settings_from_env(
    env: Mapping[str, str],
    *,
    endpoint: str | None = None,
    region: str | None = None,
    retry: RetryPolicy | None = None,
) -> S3Settings:
    """S3Settings from the usual environment variables; URL options win."""
    secure_default = _flag(env, "MINIO_SECURE", True)
    if endpoint is not None:
        source = "endpoint in the store URL"
    else:
        endpoint = _first(env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MINIO_ENDPOINT")
        source = "S3 endpoint from the environment"
    host, secure = parse_endpoint(endpoint or "https://s3.amazonaws.com", secure_default, source)
    ca_file = _first(env, "AWS_CA_BUNDLE", "SSL_CERT_FILE")
    if ca_file and not Path(ca_file).is_file():
        raise StorageError(f"CA bundle {ca_file} (AWS_CA_BUNDLE/SSL_CERT_FILE) does not exist")
    part_mb = env_number(env, "AUTOLFADS_S3_PART_SIZE_MB", int, 16)
    return S3Settings(
        endpoint=host,
        secure=secure,
        region=region or _first(env, "AWS_REGION", "AWS_DEFAULT_REGION", "MINIO_REGION"),
        access_key=_first(env, "AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY", "MINIO_ROOT_USER"),
        secret_key=_first(env, "AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_PASSWORD"),
        session_token=_first(env, "AWS_SESSION_TOKEN"),
        cert_check=_flag(env, "AUTOLFADS_S3_CERT_CHECK", True),
        ca_file=ca_file,
        connect_timeout_s=env_number(env, "AUTOLFADS_S3_CONNECT_TIMEOUT_S", float, 5.0) or 5.0,
        part_size=int(part_mb) * 1024 * 1024,
        retry=retry or RetryPolicy.from_env(env),
    )


def _parse_s3_url(url: str) -> tuple[str, str, dict[str, str]]:
    """'s3://bucket/a/b?endpoint=...' -> ('bucket', 'a/b', {'endpoint': ...}).

    Messages never echo the URL: a mistaken one may hold a secret."""
    parts = urlsplit(url)
    if parts.username or parts.password or "@" in parts.netloc:
        raise StorageError(
            "credentials are not accepted in store URLs; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or MINIO_ROOT_USER / MINIO_ROOT_PASSWORD) instead"
        )
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        lowered = name.lower()
        if any(word in lowered for word in _SECRET_WORDS):
            raise StorageError(
                "credentials are not accepted in store URLs; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY in the environment instead"
            )
        if lowered not in _URL_OPTIONS:
            raise StorageError(
                f"unknown store URL option {name!r}; allowed: {', '.join(sorted(_URL_OPTIONS))}"
            )
        if not value.strip():
            # `?endpoint=$MINIO` with the variable unset: an empty value would
            # silently mean AWS, whatever the environment says.
            raise StorageError(f"store URL option {name!r} is empty; give a value or drop it")
        options[lowered] = value
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidKey(
            f"invalid bucket name {bucket!r}: use 3-63 lowercase letters, digits, '.' or '-'"
        )
    prefix = parts.path.strip("/")
    if prefix:
        validate_key(prefix, kind="store prefix")
    if parts.fragment:
        raise StorageError("store URLs take no '#fragment'")
    return bucket, prefix, options


def open_store(
    url: str,
    *,
    create_bucket: bool = True,
    env: Mapping[str, str] | None = None,
    retry: RetryPolicy | None = None,
) -> Store:
    """Open the store named by `url` (see the module docstring).

    `create_bucket` creates a missing bucket (or local directory) where the
    credentials allow; otherwise a missing one raises BucketNotFound. `env`
    replaces os.environ (tests, or several stores in one process); `retry`
    replaces the retry policy from the environment.
    """
    if not isinstance(url, str) or not url.strip():
        raise StorageError("store URL is empty; use s3://bucket/prefix, file:///dir or a path")
    env = os.environ if env is None else env
    url = url.strip()
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise StorageError("store URL contains control characters")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "s3":
        bucket, prefix, options = _parse_s3_url(url)
        settings = s3_settings_from_env(
            env, endpoint=options.get("endpoint"), region=options.get("region"), retry=retry
        )
        store = S3Store(bucket, prefix, settings)
        store.ensure_bucket(create=create_bucket)
        return store
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise StorageError("file:// URLs must be local: use file:///absolute/path")
        if parts.query or parts.fragment:
            raise StorageError("file:// store URLs take no query or fragment")
        path = unquote(parts.path)
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):  # %00 and the like
            raise StorageError("store URL's path contains control characters once decoded")
        return LocalStore(Path(path), create=create_bucket)
    if scheme:
        raise StorageError(
            f"unsupported store URL scheme {scheme!r}; use s3://bucket/prefix "
            "(endpoint via AWS_ENDPOINT_URL or ?endpoint=), file:///dir or a plain path"
        )
    return LocalStore(Path(url), create=create_bucket)
