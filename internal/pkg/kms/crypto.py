"""Field encryption and keyed blind indexes (implements ``internal.biz.pii.FieldCipher``).

Steady-state encryption touches neither PostgreSQL nor Redis: the active key comes from the manager's
in-memory cache and the per-key encryption count is kept in memory and flushed by the manager's
background task. A small value is sealed inline (AES-GCM on a few KiB costs microseconds, far less
than a hop to a worker thread, measured at ~50–200 µs); a single value whose estimated cost exceeds
``THREAD_COST_THRESHOLD`` (≈ 1 MiB of AES-GCM, ≈ 20 KiB of SM4-GCM) is sealed in a thread so the event
loop stays responsive. Batches are sealed inline in chunks of bounded cost, yielding to the event loop
between chunks: per-item work is interpreter-bound, so a thread would only add hand-over costs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from internal.biz import pii
from internal.biz.errors import DomainError, InvalidArgument
from internal.biz.pii import Sealed
from internal.pkg.kms.envelope import (
    COST_PER_BYTE,
    MAX_FIELD_CHARS,
    DataKey,
    FieldValue,
    SealedValue,
    Sealer,
    check_plaintext,
    key_versions,
    open_many,
    open_sealed,
    parse_header,
    validate_binding,
)

THREAD_COST_THRESHOLD = 1 << 20
ITEM_COST = 4096  # fixed per-item overhead (header, AD, Python calls) in AES-GCM-byte equivalents
# A batch chunk holds at most this many items, and at most CHUNK_COST AES-GCM-byte equivalents of the
# largest allowed plaintexts (≈ 4 ms of AES-GCM), so no chunk holds the event loop long.
CHUNK_ITEMS = 1024
CHUNK_COST = 16 << 20
MAX_INDEX_VALUE_CHARS = 1024
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_PHONE_SEPARATORS = re.compile(r"[\s\-().]")


class KeyProvider(Protocol):
    """The key cache the manager keeps; only the ``load_*`` methods may do I/O (cache misses)."""

    def cached_active(self) -> DataKey | None: ...

    async def load_active(self) -> DataKey: ...

    def cached(self, version: int) -> DataKey | None: ...

    async def load(self, version: int) -> DataKey: ...

    def count_encryptions(self, version: int, n: int) -> None: ...

    def blind_index_key(self, field: str) -> bytes: ...

    def drop_cached_keys(self) -> None: ...


@dataclass(frozen=True)
class EncryptItem:
    field: str
    plaintext: bytes
    context: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class DecryptItem:
    field: str
    ciphertext: bytes
    context: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Decrypted:
    plaintext: bytes = dataclasses.field(repr=False)
    key_version: int


@dataclass(frozen=True)
class EncryptBatchResult:
    algorithm: str  # of the one active key used for the whole batch
    key_version: int
    results: list[bytes | DomainError]  # one ciphertext or error per item, same order


def normalize_index_value(field_name: str, value: str) -> str:
    """email: trimmed, lower-case; phone: separators removed, must be E.164; others: trimmed."""
    if not isinstance(value, str) or len(value) > MAX_INDEX_VALUE_CHARS:
        raise InvalidArgument("VALIDATION_ERROR", f"value must be text of at most {MAX_INDEX_VALUE_CHARS} characters")
    if field_name == pii.EMAIL:
        normalized = value.strip().lower()
    elif field_name == pii.PHONE:
        normalized = _PHONE_SEPARATORS.sub("", value)
        if not _E164.fullmatch(normalized):
            raise InvalidArgument("VALIDATION_ERROR", "phone must be in E.164 format, e.g. +8613812345678")
    else:
        normalized = value.strip()
    if not normalized:
        raise InvalidArgument("VALIDATION_ERROR", "value must not be empty")
    return normalized


class CryptoService:
    def __init__(
        self,
        keys: KeyProvider,
        *,
        max_plaintext_bytes: int,
        max_batch_items: int,
        thread_cost_threshold: int = THREAD_COST_THRESHOLD,
    ) -> None:
        self._keys = keys
        self.max_plaintext_bytes = max_plaintext_bytes
        self.max_batch_items = max_batch_items
        self._thread_cost = thread_cost_threshold
        self._index_keys: dict[str, bytes] = {}
        self._current_sealer: Sealer | None = None

    def __repr__(self) -> str:
        return "CryptoService(<keys hidden>)"

    def _sealer(self, key: DataKey) -> Sealer:
        """The sealer of ``key``, kept while it stays the active key (its binding cache is per key)."""
        sealer = self._current_sealer
        if sealer is None or sealer.key is not key:
            sealer = self._current_sealer = Sealer(key)
        return sealer

    def _heavy(self, size: int, key: DataKey) -> bool:
        """Whether sealing or opening ``size`` bytes under ``key`` should leave the event loop for a thread."""
        return ITEM_COST + size * COST_PER_BYTE[key.algorithm] > self._thread_cost

    async def _active(self) -> DataKey:
        return self._keys.cached_active() or await self._keys.load_active()

    async def _key(self, version: int) -> DataKey:
        return self._keys.cached(version) or await self._keys.load(version)

    async def encrypt(self, field: str, plaintext: bytes, context: Mapping[str, str]) -> Sealed:
        """Seal under the active key. Errors: VALIDATION_ERROR, PLAINTEXT_TOO_LARGE, KMS_NOT_INITIALIZED."""
        data = check_plaintext(plaintext, self.max_plaintext_bytes)
        key = await self._active()
        sealer = self._sealer(key)
        if self._heavy(len(data), key):
            ciphertext = await asyncio.to_thread(sealer.seal, field, data, context)
        else:  # the common case, inline: this is the Encrypt RPC's hot path
            ciphertext = sealer.seal(field, data, context)
        self._keys.count_encryptions(key.version, 1)
        return Sealed(ciphertext, key.version)

    async def decrypt_with_version(self, field: str, ciphertext: bytes, context: Mapping[str, str]) -> Decrypted:
        """Open a value; CIPHERTEXT_INVALID on any mismatch, KEY_NOT_FOUND for unknown/destroyed keys."""
        header = parse_header(ciphertext)
        validate_binding(field, context)
        key = await self._key(header.key_version)
        data = bytes(ciphertext)
        if self._heavy(len(data), key):
            plaintext = await asyncio.to_thread(open_sealed, key, field, data, context)
        else:
            plaintext = open_sealed(key, field, data, context)
        return Decrypted(plaintext, key.version)

    async def decrypt(self, field: str, ciphertext: bytes, context: Mapping[str, str]) -> bytes:
        return (await self.decrypt_with_version(field, ciphertext, context)).plaintext

    async def rewrap(self, field: str, ciphertext: bytes, context: Mapping[str, str]) -> Sealed:
        """The same plaintext re-encrypted under the active key; the plaintext never leaves this call."""
        opened = await self.decrypt_with_version(field, ciphertext, context)
        return await self.encrypt(field, opened.plaintext, context)

    def blind_index(self, field: str, value: str) -> str:
        """64 hex chars: HMAC-SHA256 under HKDF(root key, "blind-index:" + field) of the normalized value."""
        if not isinstance(field, str) or not field or len(field) > MAX_FIELD_CHARS:
            raise InvalidArgument("VALIDATION_ERROR", f"field must be 1..{MAX_FIELD_CHARS} characters")
        normalized = normalize_index_value(field, value)
        key = self._index_keys.get(field)
        if key is None:
            key = self._index_keys[field] = self._keys.blind_index_key(field)
        return hmac.new(key, normalized.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def _chunk_items(self, *keys: DataKey | DomainError) -> int:
        """Items per batch chunk: bounded by count and by the cost of the largest allowed plaintexts."""
        weight = max((COST_PER_BYTE[k.algorithm] for k in keys if isinstance(k, DataKey)), default=1)
        return max(1, min(CHUNK_ITEMS, CHUNK_COST // (self.max_plaintext_bytes * weight)))

    def _check_batch(self, count: int) -> None:
        if count > self.max_batch_items:
            raise InvalidArgument(
                "BATCH_TOO_LARGE", f"batch exceeds {self.max_batch_items} items", {"limit": str(self.max_batch_items)}
            )

    async def encrypt_batch(self, items: Sequence[FieldValue]) -> EncryptBatchResult:
        """One active key for the whole batch; a bad item fails alone with its own error."""
        self._check_batch(len(items))
        key = await self._active()
        results: list[bytes | DomainError] = []
        for start in range(0, len(items), chunk := self._chunk_items(key)):
            if start:
                await asyncio.sleep(0)  # let other calls run between chunks
            results += self._sealer(key).seal_many(items[start : start + chunk], self.max_plaintext_bytes)
        self._keys.count_encryptions(key.version, sum(type(r) is bytes for r in results))
        return EncryptBatchResult(key.algorithm.value, key.version, results)

    async def decrypt_batch(self, items: Sequence[SealedValue]) -> list[Decrypted | DomainError]:
        """One result per item, same order; each item fails alone."""
        self._check_batch(len(items))
        keys: dict[int, DataKey | DomainError] = {}
        for version in key_versions(items):
            try:
                keys[version] = await self._key(version)
            except DomainError as exc:
                keys[version] = exc
        results: list[Decrypted | DomainError] = []
        for start in range(0, len(items), chunk := self._chunk_items(*keys.values())):
            if start:
                await asyncio.sleep(0)  # let other calls run between chunks
            for opened in open_many(keys, items[start : start + chunk]):
                results.append(opened if isinstance(opened, DomainError) else Decrypted(*opened))
        return results

    def clear_cache(self) -> None:
        """Drop every cached key: unwrapped data keys (reloaded on next use) and blind-index keys."""
        self._index_keys.clear()
        self._current_sealer = None  # it holds the active data key
        self._keys.drop_cached_keys()

    def drop_index_keys(self) -> None:
        self._index_keys.clear()
