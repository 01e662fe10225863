"""Loads the TOML data files under `mappings/`, each with a `[meta]` naming source and version.

Only I/O and the common checks live here; each domain module turns the plain tables into its own
typed, validated objects (`from_mapping`), so the domain stays free of file access.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from fhirpanel.errors import MappingError

DEFAULT_MAPPINGS_DIR = Path(__file__).resolve().parent.parent / "mappings"
REQUIRED_META = ("source", "version")


def list_mappings(directory: Path | None = None) -> list[str]:
    """Names (relative paths without `.toml`) of every mapping file."""
    root = directory or DEFAULT_MAPPINGS_DIR
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.toml"))


def load_mapping(name: str, directory: Path | None = None) -> dict[str, Any]:
    """Read `mappings/<name>.toml` and check its `[meta]` table."""
    return _load(name, (directory or DEFAULT_MAPPINGS_DIR).resolve())


@lru_cache(maxsize=64)
def _load(name: str, root: Path) -> dict[str, Any]:
    path = root / f"{name}.toml"
    if not path.is_file():
        raise MappingError(f"mapping file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MappingError(f"{path}: not valid TOML: {exc}") from exc
    meta = data.get("meta")
    if not isinstance(meta, dict):
        raise MappingError(f"{path}: missing [meta] table (source, version)")
    missing = [k for k in REQUIRED_META if not str(meta.get(k, "")).strip()]
    if missing:
        raise MappingError(f"{path}: [meta] lacks {', '.join(missing)}")
    return data



def load_mapping_ref(ref: str, directory: Path | None = None) -> dict[str, Any]:
    """A mapping named in settings: a name under mappings/ (`pipelines/mgma`), or a path to a
    TOML file of the same shape elsewhere (a practice's own pipeline or table)."""
    if ref.endswith(".toml"):
        path = Path(ref).resolve()
        return _load(path.stem, path.parent)
    return load_mapping(ref, directory)
