"""Masked PII for places where a person must read it (logs, the caller's own profile).

The masks keep just enough to recognise one's own address (``j***@example.com``,
``+86138****5678``) and never enough to reconstruct it.
"""

from __future__ import annotations

_MASK = "***"


def mask_email(email: str) -> str:
    """``john@example.com`` → ``j***@example.com``; anything without a domain → ``***``."""
    local, sep, domain = email.strip().rpartition("@")
    if not sep or not domain:
        return _MASK
    return f"{local[:1]}{_MASK}@{domain}"


def mask_phone(phone: str) -> str:
    """``+8613812345678`` → ``+86138****5678``: country code and prefix, last four digits.

    At least four characters are always masked; short inputs keep only their last two.
    """
    text = phone.strip()
    if len(text) <= 2:
        return "*" * len(text)
    tail = 4 if len(text) >= 9 else 2
    masked = max(4, len(text) - 10)
    head = max(len(text) - tail - masked, 0)
    return text[:head] + "*" * (len(text) - head - tail) + text[-tail:]
