"""`fhirpanel/domain` is pure: no I/O libraries, no clock reads, no file access."""

from __future__ import annotations

import ast
from pathlib import Path

DOMAIN = Path(__file__).resolve().parents[2] / "fhirpanel" / "domain"
FORBIDDEN_MODULES = {
    "requests",
    "urllib3",
    "httpx",
    "flask",
    "sqlalchemy",
    "apscheduler",
    "socket",
    "sqlite3",
    "subprocess",
    "http",
    "urllib",
    "fhirpanel.fhir",
    "fhirpanel.store",
    "fhirpanel.api",
    "fhirpanel.jobs",
    "fhirpanel.writeback",
    "fhirpanel.mappings",
    "fhirpanel.config",
    "fhirpanel.tables",
    "pydantic",
    "os",
    "pathlib",
    "time",
    "random",
    "logging",
}
# Calls that read the clock or the file system.
FORBIDDEN_CALLS = {"now", "today", "utcnow", "open", "time", "read_text", "read_bytes"}


def domain_files() -> list[Path]:
    """Every module of the domain, its packages' (`attribution/`) included."""
    return sorted(DOMAIN.rglob("*.py"))


def where(path: Path) -> str:
    return str(path.relative_to(DOMAIN))


def test_the_domain_packages_are_scanned() -> None:
    # A guard on domain_files: the attribution package's modules are checked, not skipped.
    names = {where(path) for path in domain_files()}
    assert {"attribution/__init__.py", "attribution/pipeline.py", "records.py"} <= names


def test_domain_imports_no_io() -> None:
    offenders = []
    for path in domain_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # a relative import would slip past the names below
                    offenders.append(f"{where(path)}:{node.lineno} relative import")
                names = [node.module] if node.module else []
            for name in names:
                if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_MODULES):
                    offenders.append(f"{where(path)}: import {name}")
    assert offenders == []


def test_domain_reads_no_clock_or_files() -> None:
    offenders = []
    for path in domain_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in FORBIDDEN_CALLS:
                    offenders.append(f"{where(path)}:{node.lineno} {name}()")
    assert offenders == []
