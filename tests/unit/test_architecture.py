"""The layer rules of docs/architecture.md, checked by import-linter (contracts in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), "import-linter is not installed: pip install -e '.[test]'"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.split("Contracts:")[-1].replace("0 broken", "")


def test_cmd_is_not_a_package() -> None:
    # A package named cmd shadows the standard library module that pdb (and so pytest) imports.
    assert not (ROOT / "cmd" / "__init__.py").exists()
    assert not (ROOT / "cmd" / "server" / "__init__.py").exists()
