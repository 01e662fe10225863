"""Every data file under mappings/ fits its schema and names its source and version; the loader
reads each once per pass and its errors are one clear MappingError naming the file, the key and
the reason."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from fhirpanel.config import Settings
from fhirpanel.errors import ExitCode, MappingError
from fhirpanel.tables import Tables
from fhirpanel.tables.files import DEFAULT_MAPPINGS_DIR, label, list_mappings, load_mapping_ref
from fhirpanel.tables.schemas import (
    AgeSexWeightsFile,
    BlendFile,
    CapacityFile,
    CarePlanTemplatesFile,
    CharlsonFile,
    ChronicConditionsFile,
    CrosswalkFile,
    PediatricComplexityFile,
    PipelineFile,
    PrimaryCareFile,
    QualifyingVisitsFile,
    RiskFile,
    SentinelExamsFile,
    TableFile,
    TeamsFile,
    TiersFile,
    WritebackCodesFile,
    validate,
)

SCHEMAS: dict[str, type[TableFile]] = {
    "age_sex_weights_example": AgeSexWeightsFile,
    "blend": BlendFile,
    "capacity": CapacityFile,
    "careplan_templates": CarePlanTemplatesFile,
    "charlson_quan2005": CharlsonFile,
    "pediatric_complexity": PediatricComplexityFile,
    "chronic_conditions": ChronicConditionsFile,
    "primary_care": PrimaryCareFile,
    "qualifying_visits": QualifyingVisitsFile,
    "risk": RiskFile,
    "sentinel_exams": SentinelExamsFile,
    "snomed_icd10cm": CrosswalkFile,
    "teams": TeamsFile,
    "tiers": TiersFile,
    "writeback_codes": WritebackCodesFile,
}


def schema_of(name: str) -> type[TableFile]:
    return PipelineFile if name.startswith("pipelines/") else SCHEMAS[name]


def test_there_are_mapping_files() -> None:
    assert len(list_mappings()) >= 10


@pytest.mark.parametrize("name", list_mappings())
def test_every_mapping_file_fits_its_schema_with_meta(name: str) -> None:
    model = validate(schema_of(name), load_mapping_ref(name), name)
    assert model.meta.source.strip()
    assert model.meta.version.strip()


def test_shipped_files_are_named_from_the_repository() -> None:
    assert label(DEFAULT_MAPPINGS_DIR / "tiers.toml") == "mappings/tiers.toml"
    assert label(Path("/elsewhere/tiers.toml")) == "/elsewhere/tiers.toml"


# --------------------------------------------------------------------------- one pass, one load


def copy_of_mappings(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DEFAULT_MAPPINGS_DIR, tmp_path / "mappings"))


def with_mappings(directory: Path, **attribution: str) -> Settings:
    settings = Settings.load(env={})
    return dataclasses.replace(
        settings,
        mappings_dir=str(directory),
        attribution=dataclasses.replace(settings.attribution, **attribution),
    )


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def load_error(settings: Settings) -> str:
    with pytest.raises(MappingError) as caught:
        Tables.load(settings)
    assert caught.value.exit_code == ExitCode.MAPPING
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_tables_load_every_table_a_pass_needs(tables: Tables) -> None:
    assert tables.method.pipeline.name == "mgma"
    assert tables.method.risk.tiers.tiers == (1, 2, 3, 4)
    assert tables.method.capacities.default.panel_capacity == 2200
    assert tables.writeback.codes.care_plan_categories[0]["code"] == "assess-plan"
    assert sorted(tables.writeback.templates.tiers) == [2, 3, 4]
    assert tables.writeback.labels.utilisation_months == 12


def test_a_wrong_type_names_the_file_and_the_key(tmp_path: Path) -> None:
    directory = copy_of_mappings(tmp_path)
    edit(directory / "tiers.toml", "tier = 3\n", 'tier = "3"\n')
    assert load_error(with_mappings(directory)) == (
        f"{directory / 'tiers.toml'}: rules[2].tier: Input should be a valid integer (got '3')"
    )


def test_a_missing_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    directory = copy_of_mappings(tmp_path)
    edit(directory / "capacity.toml", "visits_per_day = 20.0\n", "")
    assert load_error(with_mappings(directory)) == (
        f"{directory / 'capacity.toml'}: default.visits_per_day: Field required"
    )


def test_an_unknown_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    directory = copy_of_mappings(tmp_path)
    edit(
        directory / "pipelines" / "mgma.toml",
        "window_months = 18\n",
        "window_months = 18\nwindows = 3\n",
    )
    assert load_error(with_mappings(directory)) == (
        f"{directory / 'pipelines' / 'mgma.toml'}: steps[1].windows: "
        "Extra inputs are not permitted (got 3)"
    )


def test_meta_needs_source_and_version(tmp_path: Path) -> None:
    directory = copy_of_mappings(tmp_path)
    edit(directory / "capacity.toml", 'version = "2026.2"\n', "")
    assert load_error(with_mappings(directory)) == (
        f"{directory / 'capacity.toml'}: meta.version: Field required"
    )


def test_a_check_of_the_typed_table_names_the_file_too(tmp_path: Path) -> None:
    directory = copy_of_mappings(tmp_path)
    edit(
        directory / "qualifying_visits.toml",
        'qualifying = ["AMB", "VR"]',
        'qualifying = ["AMB", "VR", "EMER"]',
    )
    assert load_error(with_mappings(directory)) == (
        f"{directory / 'qualifying_visits.toml'}: classes: EMER both qualifying and not"
    )


def test_every_tier_given_a_care_plan_needs_a_template() -> None:
    settings = Settings.load(env={})
    settings = dataclasses.replace(
        settings, writeback=dataclasses.replace(settings.writeback, care_plan_tiers="3,4,5")
    )
    assert load_error(settings) == (
        "mappings/careplan_templates.toml: no activities for tier(s) [5], which "
        "writeback.care_plan_tiers gives a CarePlan"
    )


def test_several_errors_in_one_message() -> None:
    data = {"meta": {"source": "s", "version": "1"}, "name": " ", "steps": [{"kind": "x"}]}
    with pytest.raises(MappingError) as caught:
        validate(PipelineFile, data, "p")
    assert str(caught.value) == (
        "p: name: String should have at least 1 character (got ' '); "
        "steps[1].kind: Input should be 'manual', 'declared-pcp', 'risk-product' or 'four-cut' "
        "(got 'x')"
    )


def test_missing_and_broken_files_are_clear_errors(tmp_path: Path) -> None:
    directory = copy_of_mappings(tmp_path)
    (directory / "risk.toml").unlink()
    assert load_error(with_mappings(directory)).startswith("mapping file not found: ")
    (directory / "risk.toml").write_text("[meta\n")
    assert load_error(with_mappings(directory)).startswith(
        f"{directory / 'risk.toml'}: not valid TOML: "
    )


def test_a_mapping_can_be_a_file_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "my_pipeline.toml"
    path.write_text(
        'name = "ours"\n[meta]\nsource = "our practice"\nversion = 1\n'
        '[[steps]]\nkind = "four-cut"\nwindow_months = 24\n'
    )
    tables = Tables.load(with_mappings(DEFAULT_MAPPINGS_DIR, pipeline=str(path)))
    assert tables.method.pipeline.name == "ours"
    assert tables.method.pipeline.widest_window == 24
