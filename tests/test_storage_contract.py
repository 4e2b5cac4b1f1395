"""One contract, every backend: each store here subclasses the contract that
ships with the package (`autolfads.storage.testing.StoreContract`).

The S3 store runs on a real S3 HTTP server (moto on loopback, or a real MinIO;
see conftest.py); the wrappers run over the in-memory store, so a store that
injects faults keeps the contract whenever no fault is injected.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from autolfads.storage import FaultyStore, LocalStore, MemoryStore, S3Store, Store, WrapperStore
from autolfads.storage.testing import StoreContract


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        return LocalStore(tmp_path / "store")

    def tamper(self, store: Store, key: str, data: bytes, *, keep_checksum: bool) -> None:
        assert isinstance(store, LocalStore)
        path = store.root / key
        path.write_bytes(data)
        if not keep_checksum:
            path.with_name(f".{path.name}.meta.json").unlink()


class TestS3Store(StoreContract):
    @pytest.fixture
    def store(self, make_s3_store) -> Store:
        return make_s3_store("contract")

    @pytest.fixture(autouse=True)
    def _raw(self, s3_server) -> None:
        self.raw = s3_server.raw_client()

    def tamper(self, store: Store, key: str, data: bytes, *, keep_checksum: bool) -> None:
        assert isinstance(store, S3Store)
        recorded = store.stat(key).sha256
        meta = {"x-amz-meta-sha256": recorded} if keep_checksum else None
        self.raw.put_object(
            store.bucket, f"contract/{key}", io.BytesIO(data), len(data), metadata=meta
        )


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Store:
        return MemoryStore()

    def tamper(self, store: Store, key: str, data: bytes, *, keep_checksum: bool) -> None:
        assert isinstance(store, MemoryStore)
        store.replace_behind_the_back(key, data, keep_checksum=keep_checksum)


class TestFaultyStoreWithoutFaults(TestMemoryStore):
    @pytest.fixture
    def store(self) -> Store:
        return FaultyStore(MemoryStore())

    def tamper(self, store: Store, key: str, data: bytes, *, keep_checksum: bool) -> None:
        assert isinstance(store, WrapperStore)
        super().tamper(store.inner, key, data, keep_checksum=keep_checksum)
