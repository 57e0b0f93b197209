"""The layer rules of docs/architecture.md, checked by import-linter (contracts in pyproject.toml)."""

from __future__ import annotations

import ast
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


def _modules(*roots: str) -> list[tuple[Path, ast.Module]]:
    files = [p for root in roots for p in sorted((ROOT / root).rglob("*.py")) if "gen" not in p.parts]
    return [(p, ast.parse(p.read_text(encoding="utf-8"), str(p))) for p in files]


PORTS = "internal.biz.ports"
PORT_NAMES = {"Caller", "AuditLog", "RateLimiter", "RateDecision", "RateVerdict", "ADMIN_SCOPE"}


def test_cross_cutting_ports_have_one_home() -> None:
    """Caller, AuditLog and the rate limiter are defined in biz/ports.py only, and imported from there."""
    home = ROOT / "internal" / "biz" / "ports.py"
    wrong: list[str] = []
    for path, tree in _modules("internal", "tests", "bench", "cmd"):
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in PORT_NAMES and path.is_relative_to(ROOT / "internal"):
                wrong += [f"{where}: defines {node.name}"] if path != home else []
            if isinstance(node, ast.ImportFrom) and node.module != PORTS:
                wrong += [f"{where}: {a.name} from {node.module}" for a in node.names if a.name in PORT_NAMES]
    assert not wrong, wrong


def test_one_repository_per_data_module() -> None:
    """Each internal/data module holds at most one PostgreSQL or Redis adapter."""
    crowded = {}
    for path, tree in _modules("internal/data"):
        adapters = [n.name for n in tree.body if isinstance(n, ast.ClassDef) and n.name.startswith(("Pg", "Redis"))]
        if len(adapters) > 1:
            crowded[path.name] = adapters
    assert not crowded, crowded


def test_audit_events_has_one_writer() -> None:
    writers = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "internal").rglob("*.py"))
        if "INSERT INTO audit_events" in p.read_text(encoding="utf-8")
    ]
    assert writers == ["internal/data/audit.py"]


def _imported(path: Path, tree: ast.Module) -> list[tuple[str, str]]:
    """(module, name) for every import in ``tree``; ``name`` is empty for ``import module``."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = node.module or ""
            if node.level:
                module = f"{base}.{module}" if module else base
            # ``from tests.e2e import test_x`` imports a module: record it as one.
            found += [(module, alias.name) for alias in node.names]
            found += [(f"{module}.{alias.name}", "") for alias in node.names]
    return found


def _is_test_module(module: str) -> bool:
    parts = module.split(".")
    if parts[0] != "tests" or not parts[-1].startswith("test_"):
        return False
    return (ROOT.joinpath(*parts[:-1]) / f"{parts[-1]}.py").is_file()


def test_no_test_module_imports_another() -> None:
    """Test modules stay independent: shared helpers live in a conftest.py or a tests/**/helpers module
    (tests/e2e/harness.py for the server processes), never in another test_*.py module."""
    wrong: list[str] = []
    for path, tree in _modules("tests"):
        where = path.relative_to(ROOT).as_posix()
        for module, name in _imported(path, tree):
            if _is_test_module(module):
                wrong.append(f"{where}: {f'{name} from ' if name else 'import '}{module}")
    assert not wrong, wrong
