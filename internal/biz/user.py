"""Users: the domain object, its repository interface, input rules and the caller's own profile."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from internal.biz import pii
from internal.biz.errors import InvalidArgument, NotFound
from internal.biz.identifiers import email_key, username_key
from internal.biz.masking import mask_email, mask_phone
from internal.biz.ports import Caller

MAX_NAME_CHARS = 128
# Blind-index field of an email's confusable key (``identifiers.email_key``): UNIQUE in users.email_key_hash.
EMAIL_KEY_INDEX = "email_key"


@dataclass(frozen=True)
class User:
    """A users row as biz sees it: PII stays encrypted until a use case needs the plaintext."""

    id: int
    username: str
    password_hash: str
    email_encrypted: bytes | None
    phone_encrypted: bytes | None
    name_encrypted: bytes | None
    totp_secret_encrypted: bytes | None
    totp_enabled: bool
    totp_last_step: int | None
    created_at: datetime


@dataclass(frozen=True)
class NewUser:
    """A row to insert: the id comes from ``UserRepo.next_id`` so ciphertexts can be bound to it."""

    id: int
    username: str
    username_key: str  # identifiers.username_key: UNIQUE, so confusable usernames cannot coexist
    password_hash: str
    email_encrypted: bytes
    email_hash: str
    email_key_hash: str
    phone_encrypted: bytes | None
    phone_hash: str | None
    name_encrypted: bytes | None
    name_hash: str | None
    pii_key_version: int  # lowest version of the users' key among the row's ciphertexts
    # Blind indexes of this email/phone from before the users' key; a row holding one is the same address.
    earlier_hashes: tuple[str, ...] = ()
    # Keyed index of username_key: a deleted account holding it blocks the username (internal.biz.account).
    username_hash: str | None = None


@dataclass(frozen=True)
class KeylessUser:
    """A row stored before identifiers had confusable keys (migration 000007)."""

    id: int
    username: str
    email_encrypted: bytes | None


@dataclass(frozen=True)
class Profile:
    user_id: int
    username: str
    email_masked: str
    phone_masked: str
    name_masked: str
    totp_enabled: bool
    created_at: datetime


class UserRepo(Protocol):
    """Persistence of users (implemented by ``internal.data.user.PgUserRepo``)."""

    async def next_id(self) -> int: ...

    async def create(self, user: NewUser) -> None:
        """Insert; a taken username/email/phone raises ``Conflict("USER_EXISTS")``."""
        ...

    async def get(self, user_id: int) -> User | None: ...

    async def find_by_username(self, username: str) -> User | None:
        """Case-insensitive lookup."""
        ...

    async def find_by_email_hash(self, *email_hashes: str) -> User | None:
        """The user whose email blind index is any of ``email_hashes``."""
        ...

    async def find_by_phone_hash(self, *phone_hashes: str) -> User | None: ...

    async def update_password(self, user_id: int, password_hash: str) -> None: ...

    async def set_pending_totp(self, user_id: int, secret_encrypted: bytes, key_version: int) -> None:
        """Store a new (not yet enabled) TOTP secret."""
        ...

    async def enable_totp(self, user_id: int, step: int) -> bool:
        """Enable the pending secret and record ``step`` as used; False if already enabled or none pending."""
        ...

    async def disable_totp(self, user_id: int) -> None: ...

    async def consume_totp_step(self, user_id: int, step: int) -> bool:
        """Atomically record ``step`` as used; False if it (or a later one) was used already."""
        ...

    async def without_identifier_keys(self, after_id: int, limit: int) -> list[KeylessUser]:
        """Rows (id > ``after_id``, ascending) whose username_key is not set yet."""
        ...

    async def set_identifier_keys(self, user_id: int, username_key: str, email_key_hash: str | None) -> bool:
        """Store the keys unless they are taken (an older confusable twin); False then, the row unchanged."""
        ...


def _field_error(field: str, message: str) -> InvalidArgument:
    return InvalidArgument("VALIDATION_ERROR", message, {"field": field})


def validate_name(name: str) -> str:
    text = name.strip()
    if not text or len(text) > MAX_NAME_CHARS or not text.isprintable():
        raise _field_error("name", f"name must be 1-{MAX_NAME_CHARS} printable characters")
    return text


def email_key_hash(cipher: pii.FieldCipher, email: str) -> str:
    """The blind index of an email's confusable key: what ``users.email_key_hash`` holds (UNIQUE)."""
    return cipher.blind_index(EMAIL_KEY_INDEX, email_key(email))


def mask_name(name: str) -> str:
    """``Alice Smith`` → ``A***``: the initial only."""
    return f"{name[:1]}***" if name else ""


class UserUsecase:
    """Reads about the caller's own account."""

    def __init__(self, users: UserRepo, cipher: pii.FieldCipher) -> None:
        self._users = users
        self._cipher = cipher

    async def get_profile(self, caller: Caller) -> Profile:
        """The caller's profile; PII is decrypted only to be masked."""
        if caller.user_id is None:
            raise NotFound("USER_NOT_FOUND", "no user is associated with these credentials")
        user = await self._users.get(caller.user_id)
        if user is None:
            raise NotFound("USER_NOT_FOUND", "user not found")
        context = pii.user_context(user.id)
        email = await self._decrypt(pii.EMAIL, user.email_encrypted, context)
        phone = await self._decrypt(pii.PHONE, user.phone_encrypted, context)
        name = await self._decrypt(pii.NAME, user.name_encrypted, context)
        return Profile(
            user_id=user.id,
            username=user.username,
            email_masked=mask_email(email) if email else "",
            phone_masked=mask_phone(phone) if phone else "",
            name_masked=mask_name(name),
            totp_enabled=user.totp_enabled,
            created_at=user.created_at,
        )

    async def backfill_identifier_keys(self, batch: int = 500) -> int:
        """Give rows from before confusable keys existed their keys; returns how many got them.

        Idempotent and safe on several replicas at once. A row whose key an older confusable twin already
        holds keeps none (both accounts go on working; only new registrations are checked against keys).
        """
        done, after = 0, 0
        while rows := await self._users.without_identifier_keys(after, batch):
            for row in rows:
                email = await self._decrypt(pii.EMAIL, row.email_encrypted, pii.user_context(row.id))
                email_hash = email_key_hash(self._cipher, email) if email else None
                done += await self._users.set_identifier_keys(row.id, username_key(row.username), email_hash)
            after = rows[-1].id
        return done

    async def _decrypt(self, field: str, ciphertext: bytes | None, context: dict[str, str]) -> str:
        if ciphertext is None:
            return ""
        return (await self._cipher.decrypt(field, ciphertext, context)).decode()
