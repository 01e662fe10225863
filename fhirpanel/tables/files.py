"""Reads the TOML files under `mappings/` (or `mappings_dir`): the only place that does.

Reading only: the shape of each file, its `[meta]` included, is checked by `schemas`.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from fhirpanel.errors import MappingError

DEFAULT_MAPPINGS_DIR = Path(__file__).resolve().parents[2] / "mappings"


def list_mappings(directory: Path | None = None) -> list[str]:
    """Names (relative paths without `.toml`) of every mapping file."""
    root = directory or DEFAULT_MAPPINGS_DIR
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.toml"))


def mapping_path(ref: str, directory: Path | None = None) -> Path:
    """A mapping named in settings: a name under the mappings folder (`pipelines/mgma`), or a
    path to a TOML file of the same shape elsewhere (a practice's own pipeline or table)."""
    if ref.endswith(".toml"):
        return Path(ref).resolve()
    return (directory or DEFAULT_MAPPINGS_DIR).resolve() / f"{ref}.toml"


def label(path: Path) -> str:
    """How messages name a file: `mappings/tiers.toml` for one shipped with fhirpanel, else
    its full path."""
    try:
        return str(path.relative_to(DEFAULT_MAPPINGS_DIR.parent))
    except ValueError:
        return str(path)


def load_mapping_ref(ref: str, directory: Path | None = None) -> dict[str, Any]:
    """The plain tables of a mapping named in settings (see `mapping_path`), unchecked: read once
    per process and shared, so a caller that changes them must copy them first."""
    return _load(mapping_path(ref, directory))


@lru_cache(maxsize=64)
def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MappingError(f"mapping file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MappingError(f"{label(path)}: not valid TOML: {exc}") from exc
