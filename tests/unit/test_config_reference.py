"""docs/configuration.md is generated from the Bootstrap model, complete, fresh, and says true things."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from internal.conf import reference
from internal.conf.config import Bootstrap, Kms, _env_overrides, load_config
from internal.conf.duration import parse_duration

REGENERATE = f"stale: run `{reference.COMMAND}`"


def _leaves(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every leaf key, walked independently of the generator."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _leaves(annotation, (*path, name))
        else:
            yield (*path, name)


def test_committed_reference_is_fresh() -> None:
    assert reference.DOC_PATH.read_text() == reference.render(), REGENERATE
    assert reference.main(["--check"]) == 0


def test_check_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(reference.render().replace("`10s`", "`11s`", 1))
    monkeypatch.setattr(reference, "DOC_PATH", stale)
    assert reference.main(["--check"]) == 1
    monkeypatch.setattr(reference, "DOC_PATH", tmp_path / "missing.md")
    assert reference.main(["--check"]) == 1


def test_every_leaf_key_is_documented_with_its_environment_variable() -> None:
    text = reference.render()
    leaves = list(_leaves(Bootstrap))
    assert len(leaves) > 60
    for path in leaves:
        assert f"| `{'.'.join(path)}` | `APP__{'__'.join(path).upper()}` |" in text, path
    documented = [key.path for key in reference.leaf_keys()]
    assert sorted(documented) == sorted(leaves), "each key exactly once"


def test_documented_environment_variables_set_their_keys() -> None:
    for key in reference.leaf_keys():
        node = _env_overrides({key.env: "x"})
        for part in key.path:
            node = node[part]
        assert node == "x", key.env
    config = load_config(environ={"APP__SERVER__GRPC__ADDR": "127.0.0.1:9100", "APP__AUTH__LOCK_DURATION": "1h30m"})
    assert config.server.grpc.addr == "127.0.0.1:9100"
    assert config.auth.lock_duration == timedelta(minutes=90)


def test_database_and_redis_shortcuts_are_documented_and_work() -> None:
    text = reference.render()
    assert reference.SHORTCUTS == {"DATABASE_URL": "data.database.url", "REDIS_URL": "data.redis.url"}
    for variable, dotted in reference.SHORTCUTS.items():
        assert f"| `{variable}` | `{dotted}` |" in text
        config = load_config(environ={variable: "scheme://probe/0"})
        section, sub, key = dotted.split(".")
        assert getattr(getattr(getattr(config, section), sub), key) == "scheme://probe/0"
    explicit = load_config(environ={"DATABASE_URL": "postgresql://a/a", "APP__DATA__DATABASE__URL": "postgresql://b/b"})
    assert explicit.data.database.url == "postgresql://b/b", "the APP__ variable wins, as documented"


def test_defaults_types_and_descriptions() -> None:
    keys = {key.dotted: key for key in reference.leaf_keys()}
    assert keys["server.grpc.grace_period"].default == "10s"
    assert keys["auth.refresh_token_expiration"].default == "168h"
    assert keys["kms.iterations"].default == "600000"
    assert keys["kms.iterations"].type == "integer (≥ 10000)"
    assert keys["data.database.url"].default == '""'
    assert keys["server.http.enabled"].default == "true"
    assert keys["auth.jwt_algorithm"].type == "one of `EdDSA`, `HS256`"
    assert "redis+sentinel://" in keys["data.redis.url"].description, "the comment above the field"
    assert keys["data.database.url"].description.endswith("Shortcut: `DATABASE_URL`.")
    assert keys["data.redis.url"].description.endswith("Shortcut: `REDIS_URL`.")


def test_comments_are_read_from_the_source() -> None:
    comments = reference.field_comments(Kms)
    assert comments["rotate_after_encryptions"].startswith("Default for keys without their own policy")
    assert "seed" not in comments


def test_notes_name_real_keys_and_never_duplicate_a_comment() -> None:
    leaves = {".".join(path) for path in _leaves(Bootstrap)}
    assert set(reference.NOTES) <= leaves
    uncommented = {
        key.dotted for key in reference.leaf_keys() if key.description.startswith(reference.NOTES.get(key.dotted, "-"))
    }
    assert set(reference.NOTES) <= uncommented, "a config.py comment now describes this key: drop its note"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(seconds=1.5), "1s500ms"),
        (timedelta(minutes=30), "30m"),
        (timedelta(minutes=90), "1h30m"),
        (timedelta(days=7), "168h"),
        (timedelta(days=30), "720h"),
    ],
)
def test_durations_are_go_style_and_parse_back(value: timedelta, text: str) -> None:
    assert reference.format_duration(value) == text
    assert parse_duration(text) == value
