"""The Go service's KMS formats, read-only: what ``migrate adopt`` needs to open its data and nothing more.

* Root key: PBKDF2-HMAC-SHA256(seed, salt, iterations), 32 bytes. The Go service hardcodes its settings
  (``GO_DEFAULT_SEED``, ``GO_DEFAULT_SALT``, ``GO_DEFAULT_ITERATIONS``).
* Data key (``kms_data_keys.encrypted_key``): ``nonce(12) | AES-256-GCM(root key, key)``, no associated data.
* Field value (``users.*_encrypted``): the ASCII text ``<version>:<algorithm>:<hex(nonce(12) | AES-GCM(data
  key, value))>``, again without associated data, so a value moved to another row or column still opened
  there; our envelopes bind each value to its row and field instead (docs/security.md item 1).
* Its blind indexes were plain SHA-256 of the value as typed: anyone could test a guess against them, which
  is why adopt replaces them rather than keeping them.

Nothing here writes the Go formats; no new data is ever produced in them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

GO_DEFAULT_SEED = "default-seed-value"
GO_DEFAULT_SALT = "default-salt-value"
GO_DEFAULT_ITERATIONS = 100_000
GO_MIN_ITERATIONS = 10_000  # what the Go service itself refused below
GO_ALGORITHM = "AES-256-GCM"  # the only algorithm its crypto service ever used for values
_NONCE = 12
_TAG = 16
_KEY = 32
_MAX_VALUE_BYTES = 64 * 1024  # far above any email, phone or name; bounds a hostile row
_VERSION = re.compile(r"v?[0-9]{1,30}")


class LegacyFormatError(Exception):
    """A Go-format value or key that does not parse or does not open. Messages never hold data or keys."""


@dataclass(frozen=True)
class GoSettings:
    """The Go service's KMS settings (its internal/data/data.go), which derive its root key."""

    seed: str = field(default=GO_DEFAULT_SEED, repr=False)
    salt: str = field(default=GO_DEFAULT_SALT, repr=False)
    iterations: int = GO_DEFAULT_ITERATIONS

    def check(self) -> None:
        if not self.seed:
            raise LegacyFormatError("the source seed must not be empty")
        if not self.salt:
            raise LegacyFormatError("the source salt must not be empty")
        if isinstance(self.iterations, bool) or self.iterations < GO_MIN_ITERATIONS:
            raise LegacyFormatError(f"the source iteration count must be at least {GO_MIN_ITERATIONS}")


def derive_go_root_key(settings: GoSettings) -> bytes:
    """The Go service's root key (CPU-heavy: run it in a thread)."""
    settings.check()
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=_KEY, salt=settings.salt.encode(), iterations=settings.iterations
    )
    return kdf.derive(settings.seed.encode())


def unwrap_go_data_key(root_key: bytes, encrypted_key: bytes) -> bytes:
    """A Go data key's 32 bytes; LegacyFormatError if it does not open under ``root_key``."""
    data = bytes(encrypted_key)
    if len(data) < _NONCE + _TAG + 1:
        raise LegacyFormatError("wrapped data key is too short")
    try:
        material = AESGCM(root_key).decrypt(data[:_NONCE], data[_NONCE:], None)
    except InvalidTag:
        raise LegacyFormatError("data key does not open under the source root key") from None
    if len(material) != _KEY:
        raise LegacyFormatError("data key is not 32 bytes")
    return material


@dataclass(frozen=True)
class GoCiphertext:
    version: str  # the data key's version as the value names it ("v1733…" or "3")
    algorithm: str
    sealed: bytes = field(repr=False)  # nonce | ciphertext | tag


def parse_go_value(stored: bytes) -> GoCiphertext:
    """Split ``<version>:<algorithm>:<hex>``; LegacyFormatError for anything else."""
    raw = bytes(stored)
    if len(raw) > 2 * _MAX_VALUE_BYTES + 128:
        raise LegacyFormatError("value is too long")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise LegacyFormatError("value is not in the Go service's text format") from None
    parts = text.split(":")
    if len(parts) != 3 or not _VERSION.fullmatch(parts[0]):
        raise LegacyFormatError("value is not <version>:<algorithm>:<hex>")
    if parts[1] != GO_ALGORITHM:
        raise LegacyFormatError("value names an algorithm the Go service never sealed values with")
    try:
        sealed = bytes.fromhex(parts[2])
    except ValueError:
        raise LegacyFormatError("value's ciphertext is not hexadecimal") from None
    if len(sealed) < _NONCE + _TAG:
        raise LegacyFormatError("value's ciphertext is too short")
    return GoCiphertext(parts[0], parts[1], sealed)


def version_names(version: int, metadata: Mapping[str, object] | None) -> set[str]:
    """Every spelling a value may use for a stored key's version: the column (``3``, ``v3``), and the
    ``version`` its metadata records where the Go service kept its ``v<nanoseconds>`` name there."""
    names = {str(version), f"v{version}"}
    recorded = (metadata or {}).get("version")
    if isinstance(recorded, str) and _VERSION.fullmatch(recorded):
        names.add(recorded)
    return names


class GoKeyring:
    """The Go service's data keys, opened; looks them up by any name a value may use."""

    __slots__ = ("_by_name", "ids")

    def __init__(self) -> None:
        self._by_name: dict[str, AESGCM] = {}
        self.ids: list[str] = []

    def __repr__(self) -> str:
        return f"GoKeyring({len(self.ids)} keys, <material hidden>)"

    def add(self, key_id: str, names: Iterable[str], material: bytes) -> None:
        aead = AESGCM(material)
        for name in names:
            self._by_name[name] = aead
        self.ids.append(key_id)

    def open(self, stored: bytes) -> bytes:
        """The plaintext of one stored Go value; LegacyFormatError names the reason, never the data."""
        value = parse_go_value(stored)
        aead = self._by_name.get(value.version)
        if aead is None:
            raise LegacyFormatError("value names a data-key version that is not in kms_data_keys")
        try:
            return aead.decrypt(value.sealed[:_NONCE], value.sealed[_NONCE:], None)
        except InvalidTag:
            raise LegacyFormatError("value does not open under its data key") from None

    def drop(self) -> None:
        self._by_name.clear()
