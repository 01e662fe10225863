"""The layers import downward only (docs/architecture.md#layers): entry points -> services ->
adapters (store, write-back, the FHIR client, the tables) -> the pure domain, with a few shared
leaves (errors, settings, vocabulary) that everything may use. Every import counts, including
those under `TYPE_CHECKING` and inside functions: a type named upward is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fhirpanel"

LEAF, DOMAIN, ADAPTER, SERVICE, ENTRY = range(5)
LAYER_NAMES = {
    LEAF: "shared leaf",
    DOMAIN: "domain",
    ADAPTER: "adapter",
    SERVICE: "service",
    ENTRY: "entry point",
}

# Longest prefix wins, so `fhirpanel.jobs.worker` (an entry point) overrides `fhirpanel.jobs`.
LAYERS: dict[str, int] = {
    "fhirpanel.errors": LEAF,
    "fhirpanel.config": LEAF,
    "fhirpanel.vocabulary": LEAF,
    "fhirpanel.domain": DOMAIN,
    "fhirpanel.tables": ADAPTER,
    "fhirpanel.mappings": ADAPTER,
    "fhirpanel.fhir": ADAPTER,
    "fhirpanel.store": ADAPTER,
    "fhirpanel.writeback": ADAPTER,
    "fhirpanel.ingest": SERVICE,
    "fhirpanel.run": SERVICE,
    "fhirpanel.report": SERVICE,
    "fhirpanel.service": SERVICE,
    "fhirpanel.jobs": SERVICE,
    "fhirpanel.jobs.worker": ENTRY,
    "fhirpanel.checkserver": ENTRY,
    "fhirpanel.cli": ENTRY,
    "fhirpanel.commands": ENTRY,
    "fhirpanel.supervisor": ENTRY,
    "fhirpanel.api": ENTRY,
    "fhirpanel.sandbox": ENTRY,
    "fhirpanel.__main__": ENTRY,
    "fhirpanel": LEAF,  # the package's own __init__ (version only)
}

# Within the adapter layer: the store keeps plain rows and knows nothing of FHIR or the
# write-back; the inbound FHIR package does not build outgoing resources.
SIDEWAYS_BANS: dict[str, tuple[str, ...]] = {
    "fhirpanel.store": (
        "fhirpanel.fhir",
        "fhirpanel.writeback",
        "fhirpanel.tables",
        "fhirpanel.domain.outcome",
    ),
    "fhirpanel.fhir": ("fhirpanel.writeback", "fhirpanel.store"),
    "fhirpanel.tables": ("fhirpanel.fhir", "fhirpanel.store", "fhirpanel.writeback"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best = max(
        (p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None
    )
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")
    return LAYERS[best]


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from fhirpanel import x` names a module x, not the package
            if target == "fhirpanel":
                found += [(node.lineno, f"fhirpanel.{a.name}") for a in node.names]
    return [
        (line, name) for line, name in found if name == "fhirpanel" or name.startswith("fhirpanel.")
    ]


def all_modules() -> list[tuple[Path, str]]:
    return [
        (p, module_name(p)) for p in sorted(PACKAGE.rglob("*.py")) if "migrations" not in p.parts
    ]


def test_every_module_has_a_layer() -> None:
    for _path, module in all_modules():
        layer_of(module)


def test_imports_point_downward_only() -> None:
    offenders = []
    for path, module in all_modules():
        mine = layer_of(module)
        for line, target in imports(path, module):
            if target == "fhirpanel":
                continue
            theirs = layer_of(target)
            if theirs > mine:
                offenders.append(
                    f"{module}:{line} ({LAYER_NAMES[mine]}) imports {target} "
                    f"({LAYER_NAMES[theirs]})"
                )
    assert offenders == []


def test_no_sideways_imports_the_layout_forbids() -> None:
    offenders = []
    for path, module in all_modules():
        for owner, banned in SIDEWAYS_BANS.items():
            if not (module == owner or module.startswith(owner + ".")):
                continue
            for line, target in imports(path, module):
                if any(target == b or target.startswith(b + ".") for b in banned):
                    offenders.append(f"{module}:{line} imports {target}")
    assert offenders == []


@pytest.mark.parametrize(
    ("module", "target", "upward"),
    [
        ("fhirpanel.store.results", "fhirpanel.run", True),
        ("fhirpanel.writeback.writer", "fhirpanel.jobs.refresh", True),
        ("fhirpanel.domain.risk", "fhirpanel.tables", True),
        ("fhirpanel.api.routes", "fhirpanel.service.review", False),
        ("fhirpanel.jobs.worker", "fhirpanel.jobs.refresh", False),
    ],
)
def test_the_checker_tells_up_from_down(module: str, target: str, upward: bool) -> None:
    assert (layer_of(target) > layer_of(module)) is upward


def test_relative_and_package_imports_are_resolved(tmp_path: Path) -> None:
    pkg = tmp_path / "fhirpanel" / "store"
    pkg.mkdir(parents=True)
    source = pkg / "x.py"
    source.write_text("from ..run import analyse\nfrom fhirpanel import report\n")
    found = [name for _line, name in imports(source, "fhirpanel.store.x")]
    assert found == ["fhirpanel.run", "fhirpanel", "fhirpanel.report"]
