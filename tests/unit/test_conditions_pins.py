"""Diagnosis codes behaviour that mutation testing (`make mutation`) showed no test pinned: what a
code taken as sent reports, codings of other systems before the one that counts, and chronic
condition ranges at their lower bound."""

from __future__ import annotations

import dataclasses

import pytest

from fhirpanel.domain.codes import verhoeff_valid
from fhirpanel.domain.conditions import (
    VIA_CROSSWALK,
    VIA_ICD10CM,
    ChronicConditions,
    ChronicGroup,
    ConditionFilter,
    Crosswalk,
    CrosswalkRow,
    DiagnosisCode,
    condition_codes,
    patient_diagnoses,
)
from fhirpanel.domain.records import ICD10CM, SNOMED, Code, ConditionRecord
from fhirpanel.errors import MappingError
from fhirpanel.tables import Tables

LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def crosswalk(tables: Tables) -> Crosswalk:
    return tables.method.risk.crosswalk


def _condition(*codes: Code) -> ConditionRecord:
    return ConditionRecord(id="Condition/c1", patient="Patient/p1", codes=codes)


def test_an_icd10cm_coding_after_another_systems_is_taken_as_sent(crosswalk: Crosswalk) -> None:
    condition = _condition(Code(LOINC, "4548-4"), Code(ICD10CM, "e11.9 "))
    assert condition_codes(condition, crosswalk) == [
        DiagnosisCode("E119", "Condition/c1", VIA_ICD10CM, "e11.9 ")
    ]


def test_a_snomed_coding_after_another_systems_goes_through_the_crosswalk(
    crosswalk: Crosswalk,
) -> None:
    condition = _condition(Code(LOINC, "4548-4"), Code(SNOMED, "44054006"))
    (found,) = condition_codes(condition, crosswalk)
    assert (found.code, found.via, found.original) == ("E119", VIA_CROSSWALK, "44054006")


def test_a_chronic_range_includes_its_first_category() -> None:
    group = ChronicGroup("ihd", "Ischaemic heart disease", (), (("I20", "I25"),))
    assert [group.matches(code) for code in ("I200", "I259", "I19", "I26")] == [
        True,
        True,
        False,
        False,
    ]


FILTER = ConditionFilter(
    counted_clinical_status=frozenset({"active"}),
    count_absent_clinical_status=False,
    skipped_verification_status=frozenset({"refuted"}),
)


def test_without_a_clinical_status_a_condition_is_skipped_when_the_filter_says_so() -> None:
    condition = _condition(Code(ICD10CM, "E11.9"))
    assert FILTER.skip_reason(condition) == "no clinicalStatus"
    counting = dataclasses.replace(FILTER, count_absent_clinical_status=True)
    assert counting.skip_reason(condition) is None


def test_a_patients_diagnoses_list_the_skipped_and_the_unmapped_after_them(
    crosswalk: Crosswalk,
) -> None:
    conditions = [
        ConditionRecord("Condition/a", "Patient/p1", (Code(ICD10CM, "I10"),), "active", "refuted"),
        ConditionRecord("Condition/b", "Patient/p1", (Code(LOINC, "4548-4"),), "active"),
        ConditionRecord("Condition/c", "Patient/p1", (Code(ICD10CM, "E11.9"),), "active"),
        ConditionRecord("Condition/d", "Patient/p1", (Code(ICD10CM, "I50.9"),), "resolved"),
    ]
    found = patient_diagnoses(conditions, crosswalk, FILTER)
    assert [(d.code, d.condition) for d in found.codes] == [("E119", "Condition/c")]
    assert found.skipped == (
        ("Condition/a", "verificationStatus refuted"),
        ("Condition/d", "clinicalStatus resolved"),
    )
    assert found.unmapped == ("Condition/b",)


def test_the_crosswalk_keeps_its_rows_and_finds_each_by_snomed(crosswalk: Crosswalk) -> None:
    assert len(crosswalk) == len(crosswalk.rows) > 0
    for row in crosswalk.rows:
        assert crosswalk.lookup(row.snomed) is row


@pytest.mark.parametrize("bounds", [("I20", "I2X"), ("I2X", "I25"), ("I25", "I20")])
def test_a_chronic_range_needs_two_categories_in_order(bounds: tuple[str, str]) -> None:
    with pytest.raises(MappingError):
        ChronicConditions(groups=(ChronicGroup("x", "X", (), (bounds,)),), min_for_ccm=2)
    ChronicConditions(groups=(ChronicGroup("x", "X", (), (("I20", "I25"),)),), min_for_ccm=2)


def test_a_chronic_range_may_be_a_single_category() -> None:
    chronic = ChronicConditions(
        groups=(ChronicGroup("x", "X", (), (("I20", "I20"),)),), min_for_ccm=2
    )
    assert chronic.groups[0].matches("I209") and not chronic.groups[0].matches("I21")


def test_a_crosswalk_built_from_rows_finds_each_row() -> None:
    rows = [
        CrosswalkRow("44054006", "Type 2 diabetes mellitus", "E11.9", "Type 2 diabetes"),
        CrosswalkRow("84114007", "Heart failure", "I50.9", "Heart failure, unspecified"),
    ]
    crosswalk = Crosswalk.create(rows)
    assert crosswalk.rows == tuple(rows) and len(crosswalk) == 2
    assert crosswalk.lookup("84114007") is rows[1]
    assert crosswalk.lookup("431857002") is None


@pytest.mark.parametrize(
    ("digits", "valid"),
    [("44054006", True), ("44054007", False), ("4405400a", False), ("", False), ("0", True)],
)
def test_the_snomed_check_digit_needs_digits_and_a_matching_last_one(
    digits: str, valid: bool
) -> None:
    assert verhoeff_valid(digits) is valid
