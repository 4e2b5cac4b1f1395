"""Object storage for runs: MinIO/S3 and local-directory backends.

    store = open_store("s3://autolfads/runs")      # or "file:///data/runs", "./runs"
    layout = RunLayout("chaotic-rnn-demo")
    store.put_bytes(layout.checkpoint("m003", 7), blob)
    blob = store.get_bytes(layout.checkpoint("m003", 7))  # verified SHA-256

See docs/storage.md for the run layout and how to point at a MinIO server.
This package imports no torch.

    base       the interface (`Store`, `StoreCapabilities`), atomic and verified
    local, s3  the two backends; memory an in-process one; url picks one
    faults     `WrapperStore` / `FaultyStore`: a public seam for faults
    testing    `StoreContract`, the suite every backend passes
    keys       validated keys and the run layout (`RunLayout`)
    cache      content-addressed data files; retention old checkpoints
    retry, errors, locks   backoff, one-line errors, file locks
    claims     one coordinator per run: a claim held in the store
"""

from autolfads.storage.base import ObjectInfo, Store, StoreCapabilities
from autolfads.storage.cache import DataCache, default_cache_dir, upload_data
from autolfads.storage.errors import (
    BucketNotFound,
    ChecksumMismatch,
    InvalidKey,
    InvalidMetadata,
    MissingChecksum,
    ObjectNotFound,
    SourceUnreadable,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
    Unsupported,
)
from autolfads.storage.faults import FaultyStore, WrapperStore
from autolfads.storage.keys import (
    RunLayout,
    validate_identifier,
    validate_key,
    validate_prefix,
    validate_sha256,
)
from autolfads.storage.local import LocalStore
from autolfads.storage.memory import MemoryStore
from autolfads.storage.retention import gc_checkpoints, select_checkpoints_to_delete
from autolfads.storage.retry import RetryPolicy
from autolfads.storage.s3 import S3Settings, S3Store
from autolfads.storage.url import open_store, s3_settings_from_env

__all__ = [
    "BucketNotFound",
    "ChecksumMismatch",
    "DataCache",
    "FaultyStore",
    "InvalidKey",
    "InvalidMetadata",
    "LocalStore",
    "MemoryStore",
    "MissingChecksum",
    "ObjectInfo",
    "ObjectNotFound",
    "SourceUnreadable",
    "RetryPolicy",
    "RunLayout",
    "S3Settings",
    "S3Store",
    "StorageAuthError",
    "StorageError",
    "StorageUnavailable",
    "Unsupported",
    "WrapperStore",
    "Store",
    "StoreCapabilities",
    "default_cache_dir",
    "gc_checkpoints",
    "open_store",
    "s3_settings_from_env",
    "select_checkpoints_to_delete",
    "upload_data",
    "validate_identifier",
    "validate_key",
    "validate_prefix",
    "validate_sha256",
]
