"""Every data file under mappings/ loads, names its source and version, and the loader's
errors are clear."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhirpanel.errors import MappingError
from fhirpanel.mappings import DEFAULT_MAPPINGS_DIR, list_mappings, load_mapping, load_mapping_ref


def test_there_are_mapping_files() -> None:
    assert len(list_mappings()) >= 10


@pytest.mark.parametrize("name", list_mappings())
def test_every_mapping_file_loads_with_meta(name: str) -> None:
    data = load_mapping(name)
    assert data["meta"]["source"].strip()
    assert str(data["meta"]["version"]).strip()


def test_missing_file_and_missing_meta_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="not found"):
        load_mapping("nope", tmp_path)
    (tmp_path / "bare.toml").write_text("a = 1\n")
    with pytest.raises(MappingError, match=r"missing \[meta\]"):
        load_mapping("bare", tmp_path)
    (tmp_path / "half.toml").write_text('[meta]\nsource = "x"\n')
    with pytest.raises(MappingError, match="lacks version"):
        load_mapping("half", tmp_path)
    (tmp_path / "broken.toml").write_text("[meta\n")
    with pytest.raises(MappingError, match="not valid TOML"):
        load_mapping("broken", tmp_path)


def test_a_mapping_can_be_a_file_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "my_pipeline.toml"
    path.write_text('[meta]\nsource = "our practice"\nversion = "1"\n')
    assert load_mapping_ref(str(path))["meta"]["source"] == "our practice"
    assert DEFAULT_MAPPINGS_DIR.is_dir()
