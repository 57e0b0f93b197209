"""The configuration reference (docs/configuration.md), generated from the ``Bootstrap`` model.

Every leaf key with its dotted path, environment variable, type, default and description. Descriptions
are the ``#`` comments written right above a field in ``internal/conf/config.py`` (pydantic never sees
comments, so they are read from the source), which keeps one source of truth for both.

    python -m internal.conf.reference > docs/configuration.md    # regenerate
    python -m internal.conf.reference --check                     # exit 1 when the committed file is stale
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
import textwrap
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from internal.conf.config import ENV_PREFIX, Bootstrap

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
COMMAND = "python -m internal.conf.reference > docs/configuration.md"
# Mirrors the shortcuts that internal.conf.config reads; tests check that they really work.
SHORTCUTS = {"DATABASE_URL": "data.database.url", "REDIS_URL": "data.redis.url"}

# Descriptions for keys that have no comment in config.py. A comment there wins; tests fail when a note
# names no key or duplicates a comment, so the two never drift apart silently.
NOTES = {
    "server.grpc.addr": "host:port of the gRPC server (health and reflection on the same port).",
    "server.grpc.max_message_bytes": "Largest request or reply message, in bytes.",
    "server.grpc.grace_period": "On SIGTERM/SIGINT, how long in-flight RPCs may run before they are cancelled.",
    "server.grpc.workers": "Server processes sharing the port (SO_REUSEPORT) under one supervisor; "
    "`--workers N` overrides it.",
    "server.grpc.tls.cert_file": "PEM certificate chain; with key_file, serve TLS instead of plaintext.",
    "server.grpc.tls.key_file": "PEM private key for cert_file.",
    "server.http.addr": "host:port of the HTTP server: the HTTP/JSON API (every google.api.http route), "
    "/.well-known/jwks.json, /openapi.yaml and, unless monitoring_addr is set, /metrics, /healthz, /readyz; "
    "production mode wants it set explicitly.",
    "server.http.enabled": "Serve HTTP at all (API and monitoring).",
    "data.database.min_pool_size": "Connections the pool keeps open.",
    "data.database.max_pool_size": "Most connections the pool opens (per process).",
    "data.database.connect_timeout": "Timeout for opening one connection.",
    "data.database.statement_timeout": "PostgreSQL statement_timeout for every connection.",
    "data.database.auto_migrate": "Apply pending migrations at start-up.",
    "data.redis.key_prefix": "Prepended to every Redis key, so several deployments can share one Redis.",
    "data.redis.socket_timeout": "Connect and read timeout for Redis calls.",
    "auth.captcha_enabled": "Require a captcha on login and registration (together with auth.captcha.enabled).",
    "auth.jwt_signing_key_file": "File holding the JWT signing key; wins over jwt_signing_key.",
    "auth.smtp.password": "Secret: set it from the environment.",
    "auth.sms_webhook.bearer_token": "Secret: set it from the environment.",
    "kms.seed": "Secret: the root-key seed (PBKDF2 input). The default is refused in production mode.",
    "kms.seed_file": "File holding the seed; wins over seed.",
    "kms.salt": "Secret: the root-key PBKDF2 salt.",
    "kms.salt_file": "File holding the salt; wins over salt.",
    "kms.previous_seed_file": "File holding the previous seed; wins over previous_seed.",
    "kms.previous_salt": "Root-key rotation only: the salt being replaced.",
    "kms.previous_salt_file": "File holding the previous salt; wins over previous_salt.",
    "kms.iterations": "PBKDF2-HMAC-SHA256 iterations for the root key.",
    "kms.algorithm": "Algorithm of new data keys; AES-256-CBC is refused (unauthenticated).",
    "kms.rotate_interval": "Default rotation period of named keys without their own policy.",
    "kms.storage_type": "Where wrapped data keys live: the database, or one JSON file (single node).",
    "kms.storage_path": "The JSON file when storage_type is file.",
    "security.mode": "production refuses development defaults (KMS seed, development outbox).",
    "monitoring.log_format": "auto: JSON when stderr is not a terminal or in production mode, text otherwise.",
    "monitoring.otlp_endpoint": "OTLP gRPC collector, e.g. http://otel-collector:4317; empty turns tracing off.",
    "monitoring.service_name": "service.name of the traces.",
}

_HEADER = f"""\
# Configuration reference

<!-- Generated from internal/conf/config.py by `{COMMAND}`. Do not edit by hand. -->

The service reads `configs/config.yaml` (or every `*.yaml` in the folder given with `-conf`), then applies
environment variables, then validates everything at start-up; an invalid value stops it with a message
that names the key.

- Any key can be set from the environment as `{ENV_PREFIX}SECTION__KEY` (double underscore between levels,
  case-insensitive), e.g. `APP__SERVER__GRPC__ADDR=127.0.0.1:9100`. Environment beats YAML.
- Durations are written Go-style: `500ms`, `30s`, `15m`, `1h30m`, `168h` (also `d` for days, or plain seconds).
- Secrets (`kms.seed`, `kms.salt`, `auth.jwt_signing_key`, `auth.smtp.password`, …) come from the
  environment or from the matching `*_file` key (e.g. a mounted Kubernetes secret), never from a committed
  file. In `security.mode: production` the development KMS seed and the development outbox are refused.

## Shortcuts

| variable | sets | note |
|---|---|---|
"""


@dataclass(frozen=True)
class Key:
    """One leaf of the configuration tree."""

    path: tuple[str, ...]
    type: str
    default: str
    description: str

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def env(self) -> str:
        return ENV_PREFIX + "__".join(self.path).upper()


def format_duration(value: timedelta) -> str:
    """Go-style, largest units first, zero parts left out: ``168h``, ``1h30m``, ``1s500ms``."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        amount, total_ms = divmod(total_ms, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def _format_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return format_duration(value)
    if value == "":
        return '""'
    return str(value)


def _format_type(field: FieldInfo) -> str:
    annotation = field.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    names: dict[Any, str] = {str: "string", int: "integer", bool: "boolean", float: "number", timedelta: "duration"}
    name = names.get(annotation) or str(getattr(annotation, "__name__", annotation))
    bounds = []
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            bounds.append(f"≥ {rule.ge}")
        elif isinstance(rule, annotated_types.Gt):
            bounds.append(f"> {rule.gt}")
        elif isinstance(rule, annotated_types.Le):
            bounds.append(f"≤ {rule.le}")
        elif isinstance(rule, annotated_types.Lt):
            bounds.append(f"< {rule.lt}")
    return f"{name} ({', '.join(bounds)})" if bounds else name


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The ``#`` comment lines written directly above each field of ``model``, joined into one sentence."""
    source = textwrap.dedent(inspect.getsource(model))
    lines = source.splitlines()
    comments: dict[str, str] = {}
    [cls] = ast.parse(source).body
    assert isinstance(cls, ast.ClassDef)
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above: list[str] = []
        index = node.lineno - 2
        while index >= 0 and lines[index].strip().startswith("#"):
            above.insert(0, lines[index].strip().lstrip("#").strip())
            index -= 1
        if above:
            comments[node.target.id] = " ".join(above)
    return comments


def _describe(dotted: str, comment: str | None, shortcuts: dict[str, str]) -> str:
    text = comment or NOTES.get(dotted, "")
    if dotted in shortcuts:
        text += f" Shortcut: `{shortcuts[dotted]}`."
    return text.strip()


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def sections(
    model: type[BaseModel] = Bootstrap, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], list[Key]]]:
    """Each section (depth first, in declaration order) with its own leaf keys."""
    comments = field_comments(model)
    shortcuts = {dotted: variable for variable, dotted in SHORTCUTS.items()}
    keys = [
        Key(
            (*path, name),
            _format_type(field),
            _format_default(field.default),
            _describe(".".join((*path, name)), comments.get(name), shortcuts),
        )
        for name, field in model.model_fields.items()
        if not _is_section(field.annotation)
    ]
    if keys:
        yield path, keys
    for name, field in model.model_fields.items():
        if _is_section(field.annotation):
            yield from sections(field.annotation, (*path, name))  # type: ignore[arg-type]


def leaf_keys() -> list[Key]:
    return [key for _, keys in sections() for key in keys]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    out = [_HEADER]
    for variable, dotted in SHORTCUTS.items():
        env = ENV_PREFIX + dotted.replace(".", "__").upper()
        out.append(f"| `{variable}` | `{dotted}` | used when `{env}` is not set |\n")
    for path, keys in sections():
        out.append(f"\n## `{'.'.join(path)}`\n\n")
        out.append("| key | environment variable | type | default | description |\n|---|---|---|---|---|\n")
        for key in keys:
            out.append(
                f"| `{key.dotted}` | `{key.env}` | {_cell(key.type)} | `{_cell(key.default)}` | "
                f"{_cell(key.description)} |\n"
            )
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m internal.conf.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {DOC_PATH.name} is not up to date")
    args = parser.parse_args(argv)
    text = render()
    if not args.check:
        sys.stdout.write(text)
        return 0
    current = DOC_PATH.read_text() if DOC_PATH.exists() else ""
    if current != text:
        print(f"{DOC_PATH} is stale: run `{COMMAND}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
