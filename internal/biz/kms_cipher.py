"""Field encryption and keyed blind indexes under named keys: the data plane of kms.v1 and of users' PII.

Steady-state encryption touches neither PostgreSQL nor Redis: the active version of each named key comes
from the key ring's in-memory cache, and per-version encryption counts are kept in memory and flushed by the
ring's background task. A small value is sealed inline (AES-GCM on a few KiB costs microseconds, far less
than a hop to a worker thread, measured at ~50–200 µs); a single value whose estimated cost exceeds
``THREAD_COST_THRESHOLD`` (≈ 1 MiB of AES-GCM, ≈ 20 KiB of SM4-GCM) is sealed in a thread so the event loop
stays responsive. Batches are sealed inline in chunks of bounded cost, yielding to the event loop between
chunks: per-item work is interpreter-bound, so a thread would only add hand-over costs.

``KmsCipher`` does no access control: the kms.v1 service checks the caller's credential first
(``internal.biz.credentials``), and the service's own use cases reach users' PII only through
``UsersPiiCipher``, bound to the reserved users' key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from internal.biz.errors import DomainError, InvalidArgument
from internal.biz.identifiers import normalize_index_value
from internal.biz.kms import DEFAULT_KEY, USERS_KEY
from internal.biz.kms_keyring import KeyRing
from internal.biz.pii import Sealed
from internal.pkg.kms.envelope import (
    COST_PER_BYTE,
    MAX_FIELD_CHARS,
    DataKey,
    FieldValue,
    SealedValue,
    check_plaintext,
    is_legacy,
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
    algorithm: str  # of the one active version used for the whole batch
    key_version: int
    results: list[bytes | DomainError]  # one ciphertext or error per item, same order


class KmsCipher:
    """Seal, open and blind-index values under a named key (``key_name`` already validated and authorized)."""

    def __init__(
        self,
        ring: KeyRing,
        *,
        max_plaintext_bytes: int,
        max_batch_items: int,
        thread_cost_threshold: int = THREAD_COST_THRESHOLD,
    ) -> None:
        self._ring = ring
        self.max_plaintext_bytes = max_plaintext_bytes
        self.max_batch_items = max_batch_items
        self._thread_cost = thread_cost_threshold

    def __repr__(self) -> str:
        return "KmsCipher(<keys hidden>)"

    def _heavy(self, size: int, key: DataKey) -> bool:
        """Whether sealing or opening ``size`` bytes under ``key`` should leave the event loop for a thread."""
        return ITEM_COST + size * COST_PER_BYTE[key.algorithm] > self._thread_cost

    async def _active(self, key_name: str) -> DataKey:
        return self._ring.cached_active(key_name) or await self._ring.load_active(key_name)

    async def _key(self, key_name: str, version: int) -> DataKey:
        return self._ring.cached(key_name, version) or await self._ring.load(key_name, version)

    async def encrypt(self, key_name: str, field: str, plaintext: bytes, context: Mapping[str, str]) -> Sealed:
        """Seal under the key's active version. Errors: VALIDATION_ERROR, PLAINTEXT_TOO_LARGE, KEY_NOT_FOUND."""
        data = check_plaintext(plaintext, self.max_plaintext_bytes)
        key = await self._active(key_name)
        sealer = self._ring.sealer(key)
        if self._heavy(len(data), key):
            ciphertext = await asyncio.to_thread(sealer.seal, field, data, context)
        else:  # the common case, inline: this is the Encrypt RPC's hot path
            ciphertext = sealer.seal(field, data, context)
        self._ring.count_encryptions(key_name, key.version, 1)
        return Sealed(ciphertext, key.version)

    async def decrypt(self, key_name: str, field: str, ciphertext: bytes, context: Mapping[str, str]) -> Decrypted:
        """Open a value; CIPHERTEXT_INVALID on any mismatch (another key's ciphertext included), KEY_NOT_FOUND
        for unknown or destroyed versions, KEY_PENDING_DESTRUCTION for a version scheduled for destruction."""
        header = parse_header(ciphertext)
        validate_binding(field, context)
        key = await self._key(key_name, header.key_version)
        data = bytes(ciphertext)
        if self._heavy(len(data), key):
            plaintext = await asyncio.to_thread(open_sealed, key, field, data, context)
        else:
            plaintext = open_sealed(key, field, data, context)
        return Decrypted(plaintext, key.version)

    async def rewrap(self, key_name: str, field: str, ciphertext: bytes, context: Mapping[str, str]) -> Sealed:
        """The same plaintext re-encrypted under the key's active version; the plaintext never leaves this call."""
        opened = await self.decrypt(key_name, field, ciphertext, context)
        return await self.encrypt(key_name, field, opened.plaintext, context)

    def blind_index(self, key_name: str, field: str, value: str) -> str:
        """64 hex chars: HMAC-SHA256 under the key's own blind-index key for ``field``, of the normalized value."""
        if not isinstance(field, str) or not field or len(field) > MAX_FIELD_CHARS:
            raise InvalidArgument("VALIDATION_ERROR", f"field must be 1..{MAX_FIELD_CHARS} characters")
        normalized = normalize_index_value(field, value)  # the one normaliser (internal.biz.identifiers)
        index_key = self._ring.blind_index_key(key_name, field)
        return hmac.new(index_key, normalized.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def _chunk_items(self, *keys: DataKey | DomainError) -> int:
        """Items per batch chunk: bounded by count and by the cost of the largest allowed plaintexts."""
        weight = max((COST_PER_BYTE[k.algorithm] for k in keys if isinstance(k, DataKey)), default=1)
        return max(1, min(CHUNK_ITEMS, CHUNK_COST // (self.max_plaintext_bytes * weight)))

    def _check_batch(self, count: int) -> None:
        if count > self.max_batch_items:
            raise InvalidArgument(
                "BATCH_TOO_LARGE", f"batch exceeds {self.max_batch_items} items", {"limit": str(self.max_batch_items)}
            )

    async def encrypt_batch(
        self, key_name: str, items: Sequence[FieldValue], refused: Mapping[str, DomainError] | None = None
    ) -> EncryptBatchResult:
        """One active version for the whole batch; a bad item fails alone with its own error, and an item naming a
        field in ``refused`` with that field's error (checked in the sealing loop, where the field is read anyway)."""
        self._check_batch(len(items))
        key = await self._active(key_name)
        results: list[bytes | DomainError] = []
        limit = self.max_plaintext_bytes
        for start in range(0, len(items), chunk := self._chunk_items(key)):
            if start:
                await asyncio.sleep(0)  # let other calls run between chunks
            results += self._ring.sealer(key).seal_many(items[start : start + chunk], limit, refused)
        self._ring.count_encryptions(key_name, key.version, sum(type(r) is bytes for r in results))
        return EncryptBatchResult(key.algorithm.value, key.version, results)

    async def decrypt_batch(self, key_name: str, items: Sequence[SealedValue]) -> list[Decrypted | DomainError]:
        """One result per item, same order; each item fails alone."""
        self._check_batch(len(items))
        keys: dict[int, DataKey | DomainError] = {}
        for version in key_versions(items):
            try:
                keys[version] = await self._key(key_name, version)
            except DomainError as exc:
                keys[version] = exc
        results: list[Decrypted | DomainError] = []
        for start in range(0, len(items), chunk := self._chunk_items(*keys.values())):
            if start:
                await asyncio.sleep(0)  # let other calls run between chunks
            for opened in open_many(keys, items[start : start + chunk]):
                results.append(opened if isinstance(opened, DomainError) else Decrypted(*opened))
        return results


class UsersPiiCipher:
    """``pii.FieldCipher`` for users' PII: the reserved users' key, which no service credential can reach.

    Values stored before named keys (format 1 envelopes, under ``default``) still open here and are moved onto
    the users' key by maintenance; until then a lookup also tries the blind index ``default`` gave them."""

    def __init__(self, cipher: KmsCipher, key_name: str = USERS_KEY) -> None:
        self._cipher = cipher
        self._key_name = key_name

    async def encrypt(self, field: str, plaintext: bytes, context: Mapping[str, str]) -> Sealed:
        return await self._cipher.encrypt(self._key_name, field, plaintext, context)

    async def decrypt(self, field: str, ciphertext: bytes, context: Mapping[str, str]) -> bytes:
        key_name = DEFAULT_KEY if is_legacy(ciphertext) else self._key_name
        return (await self._cipher.decrypt(key_name, field, ciphertext, context)).plaintext

    def is_current(self, ciphertext: bytes, active_version: int) -> bool:
        """Whether a stored value is already under the users' key at ``active_version`` or later."""
        return not is_legacy(ciphertext) and parse_header(ciphertext).key_version >= active_version

    def blind_index(self, field: str, value: str) -> str:
        return self._cipher.blind_index(self._key_name, field, value)

    def lookup_hashes(self, field: str, value: str) -> list[str]:
        """Every blind index a stored row for ``value`` may hold: the users' key's, and the one from before."""
        return [self.blind_index(field, value), self._cipher.blind_index(DEFAULT_KEY, field, value)]
