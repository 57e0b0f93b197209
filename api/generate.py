"""Generate the Python protobuf/gRPC code in ``api/gen`` from ``api/proto``, and the kms.v1 code the Python
client library ships (``clients/python/src/authkms_client/_gen``).

Usage (from the repository root)::

    python -m api.generate             # regenerate api/gen, the client's stubs and api/openapi.yaml; build/buf-deps
    python -m api.generate --check     # exit 1, listing stale files, if any of them is out of date
    python -m api.generate --buf-deps  # only refresh build/buf-deps (needed by `buf lint`)

``api/proto`` is the import root, so descriptors are named ``auth/v1/auth.proto``. protoc writes
absolute imports that follow that root (``from auth.v1 import auth_pb2``); they are rewritten once,
here, to ``from api.gen.auth.v1 import auth_pb2`` so nothing else has to patch ``sys.path``.

Google's protos come from the installed packages, never from copies in the tree: protoc reads
``google/api`` and ``google/rpc`` from googleapis-common-protos in site-packages. ``buf`` cannot read
site-packages, so the few files our protos import are copied to the git-ignored ``build/buf-deps``,
a second module in ``buf.yaml``.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import re
import shutil
import sys
import tempfile
from pathlib import Path

import google.api.annotations_pb2
import yaml
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from api import openapi

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "api" / "proto"
GEN_ROOT = REPO_ROOT / "api" / "gen"
GEN_PACKAGE = "api.gen"
BUF_DEPS_ROOT = REPO_ROOT / "build" / "buf-deps"
# Files our protos import from googleapis-common-protos (buf resolves google/protobuf itself).
BUF_DEP_FILES = ("google/api/annotations.proto", "google/api/http.proto", "google/rpc/status.proto")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
OPENAPI_PATH = REPO_ROOT / "api" / "openapi.yaml"
# The services the HTTP server serves; their google.api.http routes make up the OpenAPI document.
HTTP_SERVICES = ["auth.v1.Auth", "kms.v1.KMS"]
GEN_INIT_DOC = '"""Generated protobuf/gRPC code. Do not edit: run `python -m api.generate`."""\n'
# The client library carries its own copy of kms.v1, so installing it needs none of the server's dependencies.
CLIENT_GEN_ROOT = REPO_ROOT / "clients" / "python" / "src" / "authkms_client" / "_gen"
CLIENT_GEN_PACKAGE = "authkms_client._gen"
CLIENT_PROTO_DIR = "kms"


def googleapis_include() -> Path:
    """The site-packages directory holding googleapis-common-protos' ``google/api/*.proto``."""
    # ``google.api`` is a namespace package (no __file__), so locate it through a real module.
    root = Path(google.api.annotations_pb2.__file__).resolve().parent.parent.parent
    missing = [name for name in BUF_DEP_FILES if not (root / name).is_file()]
    if missing:
        raise SystemExit(f"googleapis-common-protos protos not found under {root}: {missing}")
    return root


def proto_files(top_level: str | None = None) -> list[Path]:
    """Every proto under ``api/proto``, or those under one top-level folder (e.g. ``kms``)."""
    files = sorted(PROTO_ROOT.rglob("*.proto"))
    return [f for f in files if top_level is None or f.relative_to(PROTO_ROOT).parts[0] == top_level]


def _import_patterns(package: str) -> list[tuple[re.Pattern[str], str]]:
    """Regexes turning absolute imports of our own proto packages into imports under ``package``."""
    top_levels = sorted(p.name for p in PROTO_ROOT.iterdir() if p.is_dir())
    ours = "|".join(re.escape(name) for name in top_levels)
    return [
        # from auth.v1 import auth_pb2 as auth_dot_v1_dot_auth__pb2
        (re.compile(rf"^(\s*)from ((?:{ours})(?:\.\w+)*) import ", re.M), rf"\1from {package}.\2 import "),
        # import auth.v1.auth_pb2 as x  (not emitted today, handled for safety)
        (
            re.compile(rf"^(\s*)import ((?:{ours})(?:\.\w+)*)\.(\w+) as (\w+)$", re.M),
            rf"\1from {package}.\2 import \3 as \4",
        ),
    ]


def _rewrite_imports(out_dir: Path, package: str) -> None:
    patterns = _import_patterns(package)
    for path in sorted(out_dir.rglob("*")):
        if not path.name.endswith(GENERATED_SUFFIXES):
            continue
        text = path.read_text(encoding="utf-8")
        for pattern, replacement in patterns:
            text = pattern.sub(replacement, text)
        path.write_text(text, encoding="utf-8")


def _add_init_files(out_dir: Path) -> None:
    (out_dir / "__init__.py").write_text(GEN_INIT_DOC, encoding="utf-8")
    for directory in sorted(p for p in out_dir.rglob("*") if p.is_dir()):
        (directory / "__init__.py").write_text("", encoding="utf-8")


def _protoc(*outputs: str, top_level: str | None = None) -> None:
    files = proto_files(top_level)
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    bundled = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={bundled}",
        f"--proto_path={googleapis_include()}",
        *outputs,
        *(str(path) for path in files),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generate_into(out_dir: Path) -> None:
    """Run protoc for every proto under ``api/proto`` into ``out_dir`` and post-process the output."""
    _protoc(f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}")
    _rewrite_imports(out_dir, GEN_PACKAGE)
    _add_init_files(out_dir)


def generate_client_into(out_dir: Path) -> None:
    """The client library's kms.v1 stubs, importing each other under ``authkms_client._gen``."""
    outputs = (f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}")
    _protoc(*outputs, top_level=CLIENT_PROTO_DIR)
    _rewrite_imports(out_dir, CLIENT_GEN_PACKAGE)
    _add_init_files(out_dir)


def openapi_yaml(tmp: Path) -> str:
    """The OpenAPI document as YAML, from the protos with their comments (protoc's descriptor set)."""
    out = tmp / "descriptors.binpb"
    _protoc(f"--descriptor_set_out={out}", "--include_imports", "--include_source_info")
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    document = openapi.build(files, HTTP_SERVICES, _project_version())
    return "# Generated from api/proto by `python -m api.generate`. Do not edit.\n" + yaml.safe_dump(
        document, sort_keys=False, allow_unicode=True, width=120
    )


def _project_version() -> str:
    text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version = "([^"]+)"', text, re.M)
    return match.group(1) if match else "0"


def _relative_files(root: Path) -> set[Path]:
    if not root.exists():
        return set()
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def stale_files(fresh: Path, current: Path) -> list[Path]:
    """Files under ``current`` that differ from, are missing from, or are absent in ``fresh``."""
    names = _relative_files(fresh) | _relative_files(current)
    return sorted(
        name
        for name in names
        if not (fresh / name).is_file()
        or not (current / name).is_file()
        or not filecmp.cmp(fresh / name, current / name, shallow=False)
    )


def sync_tree(fresh: Path, current: Path) -> list[Path]:
    """Make ``current`` equal to ``fresh``, touching only files that change. Returns those files."""
    changed = stale_files(fresh, current)
    for name in changed:
        source, target = fresh / name, current / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        else:
            target.unlink()
    for directory in sorted((p for p in current.rglob("*") if p.is_dir()), reverse=True):
        if directory.name != "__pycache__" and not any(directory.iterdir()):
            directory.rmdir()
    return changed


def sync_buf_deps() -> None:
    """Copy the googleapis protos our protos import into ``build/buf-deps`` for ``buf``."""
    source_root = googleapis_include()
    for name in BUF_DEP_FILES:
        target = BUF_DEPS_ROOT / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_root / name, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.generate", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if api/gen is stale; write nothing")
    mode.add_argument("--buf-deps", action="store_true", help="only refresh build/buf-deps for buf")
    args = parser.parse_args(argv)

    if args.buf_deps:
        sync_buf_deps()
        return 0
    with (
        tempfile.TemporaryDirectory(prefix="api-gen-") as tmp,
        tempfile.TemporaryDirectory(prefix="api-gen-client-") as client_tmp,
        tempfile.TemporaryDirectory() as scratch,
    ):
        fresh, client_fresh = Path(tmp), Path(client_tmp)
        generate_into(fresh)
        generate_client_into(client_fresh)
        document = openapi_yaml(Path(scratch))
        trees = ((fresh, GEN_ROOT), (client_fresh, CLIENT_GEN_ROOT))
        if args.check:
            stale = [(root / name).relative_to(REPO_ROOT) for new, root in trees for name in stale_files(new, root)]
            if not OPENAPI_PATH.is_file() or OPENAPI_PATH.read_text(encoding="utf-8") != document:
                stale.append(OPENAPI_PATH.relative_to(REPO_ROOT))
            for path in stale:
                print(f"stale: {path}", file=sys.stderr)
            if stale:
                print("generated code or OpenAPI out of date: run `python -m api.generate`", file=sys.stderr)
                return 1
            return 0
        for new, root in trees:
            root.mkdir(parents=True, exist_ok=True)
            for name in sync_tree(new, root):
                print(f"updated: {(root / name).relative_to(REPO_ROOT)}")
        if not OPENAPI_PATH.is_file() or OPENAPI_PATH.read_text(encoding="utf-8") != document:
            OPENAPI_PATH.write_text(document, encoding="utf-8")
            print(f"updated: {OPENAPI_PATH.relative_to(REPO_ROOT)}")
    sync_buf_deps()
    return 0


if __name__ == "__main__":
    sys.exit(main())
