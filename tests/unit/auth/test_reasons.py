"""Every error reason the auth code raises is declared in auth.v1.ErrorReason (docs/api.md)."""

from __future__ import annotations

import ast
from pathlib import Path

from api.gen.auth.v1 import error_reason_pb2
from api.gen.kms.v1 import error_reason_pb2 as kms_error_reason_pb2

ROOT = Path(__file__).resolve().parents[3]
AUTH_FILES = [
    "internal/biz/auth.py",
    "internal/biz/user.py",
    "internal/biz/token.py",
    "internal/biz/password.py",
    "internal/biz/lockout.py",
    "internal/biz/identifiers.py",
    "internal/biz/totp.py",
    "internal/data/user.py",
    "internal/data/session.py",
    "internal/data/signing_keys.py",
    "internal/service/auth.py",
]
ERROR_CLASSES = {
    "InvalidArgument",
    "NotFound",
    "Conflict",
    "Unauthenticated",
    "PermissionDenied",
    "FailedPrecondition",
    "ResourceExhausted",
    "Unavailable",
}


def raised_reasons(files: list[str] = AUTH_FILES) -> set[str]:
    reasons = set()
    for name in files:
        for node in ast.walk(ast.parse((ROOT / name).read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ERROR_CLASSES
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                reasons.add(str(node.args[0].value))
    return reasons


def test_every_raised_reason_is_declared() -> None:
    declared = set(error_reason_pb2.ErrorReason.keys())
    reasons = raised_reasons()
    assert {"INVALID_CREDENTIALS", "REFRESH_TOKEN_REUSED", "ACCOUNT_LOCKED", "TOTP_INVALID"} <= reasons
    assert reasons <= declared, reasons - declared


def test_every_reason_raised_anywhere_is_declared_in_a_proto() -> None:
    files = [str(p.relative_to(ROOT)) for p in (ROOT / "internal").rglob("*.py")]
    declared = set(error_reason_pb2.ErrorReason.keys()) | set(kms_error_reason_pb2.ErrorReason.keys())
    reasons = raised_reasons(files)
    assert {"CIPHERTEXT_INVALID", "KEY_NOT_FOUND", "CREDENTIALS_MISSING", "CAPTCHA_INVALID"} <= reasons
    assert reasons <= declared, reasons - declared
