"""Password policy (NIST SP 800-63B, ASVS 6.2) and hashing: Argon2id, plus the Go service's bcrypt hashes.

* Policy: length only (8 up to ``auth.password_max_length``), no composition rules, so passphrases pass;
  refused when on a common-password list (the ``zxcvbn`` package's list of the most frequent leaked
  passwords) or when it contains the username or the email's local part.
* Every password is normalised before it is hashed or verified (:func:`normalize_password`), so "café"
  typed as NFC or NFD is one password. Hashes stored before normalisation was introduced still verify:
  when the normalised form does not match, the password as typed is tried too, and the login rehashes.
* Hashes are PHC strings (``$argon2id$v=19$m=…,t=…,p=…$salt$hash``), so the parameters travel with each
  hash and a login can tell when a stored hash must be redone. Argon2 and bcrypt are CPU- and
  memory-heavy (tens of milliseconds), so they always run in a worker thread.
* ``auth.legacy_bcrypt``: users imported from the Go service carry bcrypt hashes (``$2a$``/``$2b$``,
  cost 10). With it on they verify (pyca ``bcrypt``) and are rehashed to Argon2id on the first login,
  and every verification, the dummy one for unknown users included, does the same work: one Argon2id
  and one bcrypt (cost 10) verification, one of them against a dummy hash. So neither the kind of an
  account's hash nor its existence shows in the timing, however loaded the machine is.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import bcrypt
from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from internal.biz.errors import InvalidArgument

if TYPE_CHECKING:
    from internal.conf.config import Auth

MIN_PASSWORD_LENGTH = 8
MIN_CONTEXT_WORD = 3  # shorter usernames/local parts would refuse half of all passwords
_SALT_BYTES = 16
_HASH_BYTES = 32
_PHC_PARAMS = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$")
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_BCRYPT_MAX_BYTES = 72  # bcrypt reads no further; the Go library refused or cut longer passwords
_GO_BCRYPT_COST = 10


def normalize_password(password: str) -> str:
    """RFC 8265 OpaqueString style: every Unicode space becomes U+0020, then NFKC (NIST SP 800-63B)."""
    spaced = "".join(" " if unicodedata.category(ch) == "Zs" else ch for ch in password)
    return unicodedata.normalize("NFKC", spaced)


@functools.cache
def _common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS  # ~30,000 entries; loaded on first use

    return frozenset(FREQUENCY_LISTS["passwords"])


def check_password_policy(password: str, max_length: int, *, username: str = "", email: str = "") -> None:
    """Length (after normalisation), printable, not common, no username or email local part in it.

    Raises InvalidArgument(PASSWORD_WEAK) with ``field=password`` in the metadata.
    """
    text = normalize_password(password)
    if len(text) < MIN_PASSWORD_LENGTH:
        raise _weak(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(text) > max_length:
        raise _weak(f"password must have at most {max_length} characters")
    if not text.isprintable():
        raise _weak("password must not contain control characters")
    folded = text.casefold()
    if folded in _common_passwords():
        raise _weak("password is too common; choose another")
    local_part = email.rpartition("@")[0] if "@" in email else ""
    for word in (username, local_part):
        if len(word) >= MIN_CONTEXT_WORD and word.casefold() in folded:
            raise _weak("password must not contain the username or the email address")


def _weak(message: str) -> InvalidArgument:
    return InvalidArgument("PASSWORD_WEAK", message, {"field": "password"})


class PasswordHasher(Protocol):
    """Hashes and verifies passwords; implementations normalise them and keep the event loop free."""

    async def hash(self, password: str) -> str: ...

    async def verify(self, password: str, encoded: str) -> bool: ...

    def needs_rehash(self, encoded: str) -> bool:
        """True when the hash is not Argon2id with the current parameters (e.g. a bcrypt import)."""
        ...

    async def dummy_verify(self, password: str) -> None:
        """Spend the time of one verification without a user, so unknown users cost the same."""
        ...


@dataclass(frozen=True)
class Argon2Params:
    memory_kib: int = 19456
    iterations: int = 2
    lanes: int = 1

    @classmethod
    def from_conf(cls, auth: Auth) -> Argon2Params:
        a = auth.argon2
        return cls(memory_kib=a.memory_kib, iterations=a.iterations, lanes=a.lanes)


def _candidates(password: str) -> list[str]:
    """The normalised password, then the one as typed when it differs (hashes from before normalisation)."""
    normalized = normalize_password(password)
    return [normalized] if normalized == password else [normalized, password]


def _bcrypt_matches(password: str, encoded: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode()[:_BCRYPT_MAX_BYTES], encoded.encode())
    except ValueError:  # malformed hash, or a NUL byte bcrypt refuses
        return False


class Argon2PasswordHasher:
    """Argon2id with the configured parameters (``auth.argon2``), computed in a worker thread."""

    def __init__(self, params: Argon2Params, *, legacy_bcrypt: bool = False) -> None:
        self._params = params
        self._legacy_bcrypt = legacy_bcrypt
        # Computed once up front so even the first unknown-user login costs exactly one verification.
        self._dummy = self._hash_sync(secrets.token_hex(16))
        self._dummy_bcrypt = bcrypt.hashpw(secrets.token_hex(16).encode(), bcrypt.gensalt(_GO_BCRYPT_COST)).decode()

    @classmethod
    def from_conf(cls, auth: Auth) -> Argon2PasswordHasher:
        return cls(Argon2Params.from_conf(auth), legacy_bcrypt=auth.legacy_bcrypt)

    def _kdf(self) -> Argon2id:
        return Argon2id(
            salt=os.urandom(_SALT_BYTES),
            length=_HASH_BYTES,
            iterations=self._params.iterations,
            lanes=self._params.lanes,
            memory_cost=self._params.memory_kib,
        )

    def _hash_sync(self, password: str) -> str:
        return self._kdf().derive_phc_encoded(normalize_password(password).encode())

    def _verify_sync(self, password: str, encoded: str) -> bool:
        if encoded.startswith(_BCRYPT_PREFIXES):
            if not self._legacy_bcrypt:
                return False
            matched = any(_bcrypt_matches(c, encoded) for c in _candidates(password))
            _argon2_matches(password, self._dummy)  # the Argon2id half of the equal work
            return matched
        matched = _argon2_matches(password, encoded)
        if self._legacy_bcrypt:
            for candidate in _candidates(password):  # the bcrypt half of the equal work
                _bcrypt_matches(candidate, self._dummy_bcrypt)
        return matched

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hash_sync, password)

    async def verify(self, password: str, encoded: str) -> bool:
        return await asyncio.to_thread(self._verify_sync, password, encoded)

    def needs_rehash(self, encoded: str) -> bool:
        match = _PHC_PARAMS.match(encoded)
        if match is None:
            return True
        memory, iterations, lanes = (int(g) for g in match.groups())
        p = self._params
        return (memory, iterations, lanes) != (p.memory_kib, p.iterations, p.lanes)

    async def dummy_verify(self, password: str) -> None:
        await self.verify(password, self._dummy)


def _argon2_matches(password: str, encoded: str) -> bool:
    for candidate in _candidates(password):
        try:
            Argon2id.verify_phc_encoded(candidate.encode(), encoded)
        except (InvalidKey, ValueError):
            # ValueError: not an Argon2id PHC string: never matches.
            continue
        return True
    return False
