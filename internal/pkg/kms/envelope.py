"""Self-describing ciphertext envelope and the AEAD algorithms behind it (docs/security.md items 1, 2).

Layout (all integers big-endian)::

    offset  size  field
    0       1     magic 0xA7
    1       1     format version (2; 1 before named keys)
    2       4     data-key version (uint32) within its named key
    6       1     algorithm id (1 AES-256-GCM, 2 ChaCha20-Poly1305, 3 SM4-GCM)
    7       12    nonce (fresh random per encryption)
    19      n+16  ciphertext + 16-byte tag

The associated data authenticates the first 7 header bytes (so the key version and algorithm cannot be
edited), the key name, the field name and the sorted context map, each length-prefixed so that ("a", "bc")
and ("ab", "c") never encode alike. The nonce is authenticated implicitly by the AEAD. Because the key name
is in the associated data, a ciphertext made under one named key never opens under another, even where two
keys' versions share a number.

Format 1 envelopes were made before named keys existed: their associated data has no key name, and every
one of them belongs to the key ``default`` (the keys of that time became its versions), so they open
under ``default`` only.

SM4 takes a 16-byte key. Every data key is 32 random bytes whatever its algorithm (one storage and
wrapping format); an SM4-GCM key uses HKDF-SHA256(data key, info="authkms/kms/sm4-gcm/v1")[:16].

Every failure to parse or authenticate becomes the same ``CIPHERTEXT_INVALID`` error, so callers learn
nothing about which check failed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from internal.biz.errors import DomainError, InvalidArgument

MAGIC = 0xA7
FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1  # before named keys: no key name in the associated data
LEGACY_KEY_NAME = "default"  # the one key format 1 envelopes can belong to
NONCE_SIZE = 12
TAG_SIZE = 16
DATA_KEY_SIZE = 32
_PREFIX = struct.Struct(">BBIB")
KEY_VERSION_OFFSET = 2  # of the uint32 key version (0-based)
PREFIX_SIZE = _PREFIX.size  # magic, format, key version, algorithm: enough to tell which version a value needs
HEADER_SIZE = _PREFIX.size + NONCE_SIZE
MIN_CIPHERTEXT_SIZE = HEADER_SIZE + TAG_SIZE
MAX_KEY_VERSION = 2**31 - 1  # the version column is a PostgreSQL INTEGER

MAX_FIELD_CHARS = 128
MAX_CONTEXT_ENTRIES = 64
MAX_CONTEXT_CHARS = 1024
_AD_DOMAIN = b"authkms/kms/ad/v2"
_LEGACY_AD_DOMAIN = b"authkms/kms/ad/v1"
_SM4_INFO = b"authkms/kms/sm4-gcm/v1"


class Algorithm(StrEnum):
    AES_256_GCM = "AES-256-GCM"
    CHACHA20_POLY1305 = "ChaCha20-Poly1305"
    SM4_GCM = "SM4-GCM"
    AES_256_CBC = "AES-256-CBC"


ALGORITHM_IDS: dict[Algorithm, int] = {
    Algorithm.AES_256_GCM: 1,
    Algorithm.CHACHA20_POLY1305: 2,
    Algorithm.SM4_GCM: 3,
}
_BY_ID = {v: k for k, v in ALGORITHM_IDS.items()}
# Relative CPU cost per plaintext byte (measured: AES-GCM ≈ 0.2 ns/B with AES-NI, ChaCha ≈ 0.4, SM4 ≈ 10).
COST_PER_BYTE: dict[Algorithm, int] = {
    Algorithm.AES_256_GCM: 1,
    Algorithm.CHACHA20_POLY1305: 2,
    Algorithm.SM4_GCM: 48,
}


def ciphertext_invalid() -> InvalidArgument:
    return InvalidArgument("CIPHERTEXT_INVALID", "ciphertext is invalid or does not match its field and context")


def algorithm_for_new_key(name: str) -> Algorithm:
    """The algorithm for a new data key; AES-256-CBC (unauthenticated) and unknown names are refused."""
    try:
        algorithm = Algorithm(name)
    except ValueError:
        raise InvalidArgument("VALIDATION_ERROR", f"unknown data-key algorithm {name[:40]!r}") from None
    if algorithm not in ALGORITHM_IDS:
        raise InvalidArgument(
            "VALIDATION_ERROR", "AES-256-CBC is unauthenticated and refused for new keys; use AES-256-GCM"
        )
    return algorithm


class DataKey:
    """An unwrapped version of a named key, ready to seal and open. Never shows its material."""

    __slots__ = ("_aead", "_sm4_key", "algorithm", "key_name", "version")

    def __init__(self, key_name: str, version: int, algorithm: Algorithm, material: bytes) -> None:
        if len(material) != DATA_KEY_SIZE:
            raise ValueError("data keys are 32 bytes")
        if algorithm not in ALGORITHM_IDS:
            raise ValueError("unsupported data-key algorithm")
        self.key_name = key_name
        self.version = version
        self.algorithm = algorithm
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._sm4_key: bytes | None = None
        if algorithm is Algorithm.AES_256_GCM:
            self._aead = AESGCM(material)
        elif algorithm is Algorithm.CHACHA20_POLY1305:
            self._aead = ChaCha20Poly1305(material)
        else:
            self._sm4_key = HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=_SM4_INFO).derive(material)

    def __repr__(self) -> str:
        algorithm = self.algorithm.value
        return f"DataKey({self.key_name!r}, version={self.version}, algorithm={algorithm}, <material hidden>)"

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("DataKey cannot be pickled")

    def _seal(self, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
        if self._aead is not None:
            return self._aead.encrypt(nonce, plaintext, ad)
        assert self._sm4_key is not None
        encryptor = Cipher(algorithms.SM4(self._sm4_key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(ad)
        return encryptor.update(plaintext) + encryptor.finalize() + encryptor.tag

    def _open(self, nonce: bytes, sealed: bytes, ad: bytes) -> bytes:
        if self._aead is not None:
            return self._aead.decrypt(nonce, sealed, ad)
        assert self._sm4_key is not None
        body, tag = sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]
        decryptor = Cipher(algorithms.SM4(self._sm4_key), modes.GCM(nonce, tag)).decryptor()
        decryptor.authenticate_additional_data(ad)
        return decryptor.update(body) + decryptor.finalize()


@dataclass(frozen=True)
class Header:
    format: int
    key_version: int
    algorithm: Algorithm
    nonce: bytes


def validate_binding(field: str, context: Mapping[str, str]) -> None:
    """Field and context must be short strings; anything else is the caller's error (VALIDATION_ERROR)."""
    if not isinstance(field, str) or not field or len(field) > MAX_FIELD_CHARS:
        raise InvalidArgument("VALIDATION_ERROR", f"field must be 1..{MAX_FIELD_CHARS} characters")
    if not isinstance(context, Mapping) or len(context) > MAX_CONTEXT_ENTRIES:
        raise InvalidArgument("VALIDATION_ERROR", f"context must be a map of at most {MAX_CONTEXT_ENTRIES} entries")
    for key, value in context.items():
        if not (isinstance(key, str) and isinstance(value, str)):
            raise InvalidArgument("VALIDATION_ERROR", "context keys and values must be strings")
        if len(key) > MAX_CONTEXT_CHARS or len(value) > MAX_CONTEXT_CHARS:
            raise InvalidArgument("VALIDATION_ERROR", f"context entries are limited to {MAX_CONTEXT_CHARS} characters")


def check_plaintext(value: object, limit: int) -> bytes:
    """The plaintext as bytes, or VALIDATION_ERROR / PLAINTEXT_TOO_LARGE."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidArgument("VALIDATION_ERROR", "plaintext must be bytes")
    data = bytes(value)
    if len(data) > limit:
        raise InvalidArgument("PLAINTEXT_TOO_LARGE", f"plaintext exceeds {limit} bytes", {"limit": str(limit)})
    return data


_LENGTH = struct.Struct(">I")


def associated_data(prefix: bytes, key_name: str | None, field: str, context: Mapping[str, str]) -> bytes:
    """Canonical, unambiguous encoding of (header prefix, key name, field, sorted context): each part
    length-prefixed. ``key_name`` None: the format 1 encoding, which had no key name."""
    pack = _LENGTH.pack
    try:
        name = field.encode("utf-8")
        if key_name is None:
            parts = [_LEGACY_AD_DOMAIN, pack(len(prefix)), prefix]
        else:
            encoded_key_name = key_name.encode("utf-8")
            parts = [_AD_DOMAIN, pack(len(prefix)), prefix, pack(len(encoded_key_name)), encoded_key_name]
        parts += (pack(len(name)), name, pack(len(context)))
        for key in sorted(context):
            encoded_key, encoded_value = key.encode("utf-8"), context[key].encode("utf-8")
            parts += (pack(len(encoded_key)), encoded_key, pack(len(encoded_value)), encoded_value)
    except UnicodeEncodeError:
        raise InvalidArgument("VALIDATION_ERROR", "field and context must be valid Unicode text") from None
    return b"".join(parts)


def parse_header(ciphertext: bytes) -> Header:
    """The header of a stored value, or CIPHERTEXT_INVALID if it is not one of ours."""
    if not isinstance(ciphertext, bytes | bytearray | memoryview) or len(ciphertext) < MIN_CIPHERTEXT_SIZE:
        raise ciphertext_invalid()
    magic, fmt, version, alg_id = _PREFIX.unpack_from(ciphertext)
    algorithm = _BY_ID.get(alg_id)
    known_format = fmt in (FORMAT_VERSION, LEGACY_FORMAT_VERSION)
    if magic != MAGIC or not known_format or algorithm is None or not 0 < version <= MAX_KEY_VERSION:
        raise ciphertext_invalid()
    return Header(fmt, version, algorithm, bytes(ciphertext[_PREFIX.size : HEADER_SIZE]))


def is_legacy(ciphertext: bytes) -> bool:
    """Whether a stored envelope predates named keys (format 1, so it belongs to ``default``)."""
    return parse_header(ciphertext).format == LEGACY_FORMAT_VERSION


def named_key_version(prefix: bytes) -> int | None:
    """The key version an envelope of the current format names in its first ``PREFIX_SIZE`` bytes; None for a
    format 1 envelope (it belongs to ``default``) or bytes that are no envelope of ours. Lets storage hand over
    only a prefix of each stored value (no layout knowledge outside this module)."""
    if len(prefix) < PREFIX_SIZE:
        return None
    magic, fmt, version, alg_id = _PREFIX.unpack_from(prefix)
    if magic != MAGIC or fmt != FORMAT_VERSION or alg_id not in _BY_ID or not 0 < version <= MAX_KEY_VERSION:
        return None
    return int(version)


def sealed_algorithm(ciphertext: bytes) -> str:
    """The algorithm name in the header of an envelope ``seal`` just made (no checks: not for input)."""
    return _BY_ID[ciphertext[_PREFIX.size - 1]].value


def _prefix(key: DataKey) -> bytes:
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, key.version, ALGORITHM_IDS[key.algorithm])


def seal(key: DataKey, field: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
    """Encrypt under ``key`` with a fresh random nonce; returns the whole envelope."""
    return Sealer(key).seal(field, plaintext, context)


class FieldValue(Protocol):
    """One value to seal: ``crypto.EncryptItem``, or a kms.v1 ``EncryptItem`` message exactly as it arrived."""

    @property
    def field(self) -> str: ...

    @property
    def plaintext(self) -> bytes: ...

    @property
    def context(self) -> Mapping[str, str]: ...


def _same_context(context: Mapping[str, str], entries: tuple[tuple[str, str], ...]) -> bool:
    """Whether ``context`` holds exactly ``entries`` (in any order)."""
    try:
        if len(context) != len(entries):
            return False
        for key, value in entries:
            # ``in`` first: a protobuf map's [] would insert a missing key (and its get is slower).
            if key not in context or context[key] != value:
                return False
    except (TypeError, AttributeError):
        return False  # not a mapping: validate_binding names the problem
    return True


class Sealer:
    """Seals and opens values under one data key, doing the per-key work once: the header prefix, and the
    associated data per field (kept with the context entries it encodes, for at most MAX_CACHED_FIELDS fields).

    Callers repeat a few fields and contexts over and over; checking a context against the cached entries costs
    far less than validating, sorting and encoding it again. Every envelope is exactly what ``seal`` made before
    this cache existed (same associated data bytes)."""

    MAX_CACHED_FIELDS = 1024

    def __init__(self, key: DataKey) -> None:
        self.key = key
        self._prefix = _prefix(key)
        self._encrypt = key._aead.encrypt if key._aead is not None else key._seal
        self._by_field: dict[str, tuple[tuple[tuple[str, str], ...], bytes]] = {}

    def binding(self, field: str, context: Mapping[str, str]) -> tuple[tuple[tuple[str, str], ...], bytes]:
        """(context entries, associated data); VALIDATION_ERROR for a bad field or context."""
        cached = self._by_field.get(field) if type(field) is str else None
        if cached is not None and _same_context(context, cached[0]):
            return cached
        validate_binding(field, context)
        if len(self._by_field) >= self.MAX_CACHED_FIELDS:
            self._by_field.clear()  # callers choose field names: keep the cache bounded
        entries = tuple(context.items())
        cached = self._by_field[field] = (entries, associated_data(self._prefix, self.key.key_name, field, context))
        return cached

    def seal(self, field: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        """One envelope with a fresh random nonce (``plaintext`` already checked)."""
        ad = self.binding(field, context)[1]
        nonce = os.urandom(NONCE_SIZE)
        return self._prefix + nonce + self._encrypt(nonce, bytes(plaintext), ad)

    def open(self, field: str, ciphertext: bytes, context: Mapping[str, str], header: Header | None = None) -> bytes:
        """The plaintext of an envelope sealed under this key (``header``: its already parsed header, if any);
        any mismatch or tampering → CIPHERTEXT_INVALID."""
        header = header or parse_header(ciphertext)
        if header.key_version != self.key.version or header.algorithm is not self.key.algorithm:
            raise ciphertext_invalid()
        if header.format == LEGACY_FORMAT_VERSION:
            if self.key.key_name != LEGACY_KEY_NAME:
                raise ciphertext_invalid()
            validate_binding(field, context)
            ad = associated_data(bytes(ciphertext[: _PREFIX.size]), None, field, context)
        else:
            ad = self.binding(field, context)[1]
        try:
            return self.key._open(header.nonce, bytes(ciphertext[HEADER_SIZE:]), ad)
        except (InvalidTag, ValueError):
            raise ciphertext_invalid() from None

    def seal_many(
        self, items: Sequence[FieldValue], max_plaintext: int, refused: Mapping[str, DomainError] | None = None
    ) -> list[bytes | DomainError]:
        """One envelope per item, in order, or that item's own error; one ``os.urandom`` call for all nonces.
        An item whose field is in ``refused`` gets that error instead of an envelope.

        This loop is the EncryptBatch hot path (a few µs per item), hence the local names and the previous item's
        binding checked inline, entry by entry: a protobuf map's lookups are the dearest part of an item, and the
        per-field cache and the refused fields are consulted only when the field or context changes."""
        prefix, encrypt, binding = self._prefix, self._encrypt, self.binding
        refused = refused or {}
        random = os.urandom(NONCE_SIZE * len(items))
        results: list[bytes | DomainError] = []
        append = results.append
        last_field: str | None = None
        last_entries: tuple[tuple[str, str], ...] = ()
        last_count = -1
        ad = b""
        offset = 0
        for item in items:
            field, context, data = item.field, item.context, item.plaintext
            nonce = random[offset : offset + NONCE_SIZE]
            offset += NONCE_SIZE
            try:
                if type(data) is not bytes or len(data) > max_plaintext:
                    data = check_plaintext(data, max_plaintext)
                same = field == last_field and len(context) == last_count
                if same:
                    for key, value in last_entries:
                        # ``in`` first: a protobuf map's [] would insert a missing key (and its get is slower).
                        if key not in context or context[key] != value:
                            same = False
                            break
                if not same:
                    last_field = None
                    if field in refused:
                        append(refused[field])
                        continue
                    last_entries, ad = binding(field, context)
                    last_field, last_count = field, len(last_entries)
            except (TypeError, AttributeError):  # a context that is no mapping: validate_binding names it
                last_field = None
                try:
                    binding(field, context)
                except InvalidArgument as exc:
                    append(exc)
                    continue
                raise
            except InvalidArgument as exc:
                append(exc)
                continue
            append(prefix + nonce + encrypt(nonce, data, ad))
        return results


class SealedValue(Protocol):
    """One value to open: ``crypto.DecryptItem``, or a kms.v1 ``DecryptItem`` message exactly as it arrived."""

    @property
    def field(self) -> str: ...

    @property
    def ciphertext(self) -> bytes: ...

    @property
    def context(self) -> Mapping[str, str]: ...


def key_versions(items: Sequence[SealedValue]) -> set[int]:
    """The key versions named by the items' headers (unparseable items are skipped here, refused later)."""
    versions = set()
    for item in items:
        try:
            versions.add(parse_header(item.ciphertext).key_version)
        except InvalidArgument:
            continue
    return versions


def open_many(
    keys: Mapping[int, DataKey | DomainError], items: Sequence[SealedValue]
) -> list[tuple[bytes, int] | DomainError]:
    """``open_sealed`` of every item with the key its header names (looked up in ``keys``): (plaintext, key
    version) per item, in order, or that item's own error. One ``Sealer`` per key version, so the associated
    data is built once per key and distinct field + context."""
    sealers: dict[int, Sealer] = {}
    results: list[tuple[bytes, int] | DomainError] = []
    for item in items:
        try:
            header = parse_header(item.ciphertext)
            key = keys.get(header.key_version)
            if key is None:
                raise ciphertext_invalid()
            if isinstance(key, DomainError):
                results.append(key)
                continue
            sealer = sealers.get(key.version)
            if sealer is None:
                sealer = sealers[key.version] = Sealer(key)
            results.append((sealer.open(item.field, item.ciphertext, item.context, header), key.version))
        except InvalidArgument as exc:
            results.append(exc)
    return results


def open_sealed(key: DataKey, field: str, ciphertext: bytes, context: Mapping[str, str]) -> bytes:
    """Decrypt an envelope whose header names ``key``; any mismatch or tampering → CIPHERTEXT_INVALID."""
    return Sealer(key).open(field, ciphertext, context)
