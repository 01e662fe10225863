"""The attribution and panel mapping files load and validate through `fhirpanel.tables`, name
their source, and hold the codes the methods and the sandbox rely on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fhirpanel.domain.records import CPT, HCPCS, NUCC, SNOMED
from fhirpanel.tables.files import load_mapping_ref
from fhirpanel.tables.loader import (
    parse_age_sex_weights,
    parse_capacities,
    parse_pipeline,
    parse_primary_care,
    parse_sentinel_exams,
    parse_visit_rules,
)

VISIT_TYPE = "urn:fhirpanel:sandbox:visit-type"
LOADERS: dict[str, Callable[[dict[str, Any]], object]] = {
    "qualifying_visits": parse_visit_rules,
    "sentinel_exams": parse_sentinel_exams,
    "primary_care": parse_primary_care,
    "capacity": parse_capacities,
    "pipelines/mgma": parse_pipeline,
    "pipelines/case_study_1": parse_pipeline,
    "pipelines/case_study_2": parse_pipeline,
    "pipelines/case_study_3": parse_pipeline,
    "age_sex_weights_example": parse_age_sex_weights,
}
SOURCES = {
    "qualifying_visits": "MGMA",
    "sentinel_exams": "Murray",
    "primary_care": "NUCC",
    "capacity": "Murray",
    "pipelines/mgma": "MGMA",
    "pipelines/case_study_1": "Exhibit Two",
    "pipelines/case_study_2": "Exhibit Two",
    "pipelines/case_study_3": "Exhibit Two",
    "age_sex_weights_example": "Murray",
}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_mapping_loads_validates_and_names_its_source(name: str) -> None:
    data = load_mapping_ref(name)
    assert LOADERS[name](data) is not None
    assert SOURCES[name] in data["meta"]["source"]


def test_qualifying_visit_rules() -> None:
    rules = parse_visit_rules(load_mapping_ref("qualifying_visits"))
    assert rules.statuses == frozenset({"finished"})
    assert rules.classes == frozenset({"AMB", "VR"})
    assert not rules.classes & {"EMER", "IMP", "ACUTE", "HH", "OBSENC"}
    for code in ("NURSE", "LAB", "VACCINE", "ANTICOAG"):
        assert (VISIT_TYPE, code) in rules.excluded_codes
    assert {(SNOMED, "82078001"), (SNOMED, "33879002")} <= rules.excluded_codes
    assert rules.excluded_texts >= {
        "nurse visit",
        "nurse only",
        "lab draw",
        "lab only",
        "vaccine only",
        "immunization only",
        "anticoagulation clinic",
        "coumadin clinic",
    }


def test_sentinel_exam_codes() -> None:
    codes = parse_sentinel_exams(load_mapping_ref("sentinel_exams")).codes
    cpt = {f"{n}" for n in [*range(99381, 99388), *range(99391, 99398)]}
    assert {c for s, c in codes if s == CPT} == cpt
    assert {c for s, c in codes if s == HCPCS} == {"G0402", "G0438", "G0439"}
    assert {c for s, c in codes if s == SNOMED} == {
        "162673000",
        "410620009",
        "444971000124105",
        "456201000124103",
        "86013001",
    }
    assert (SNOMED, "185349003") not in codes  # "Encounter for check up" is not a physical


def test_primary_care_specialties() -> None:
    pc = parse_primary_care(load_mapping_ref("primary_care"))
    nucc = {c for s, c in pc.codes if s == NUCC}
    assert {
        "207Q00000X",
        "207R00000X",
        "208000000X",
        "208D00000X",
        "207QG0300X",
        "363L00000X",
        "363LF0000X",
        "363LP2300X",
        "363LA2200X",
        "363LG0600X",
        "363LP0200X",
        "363A00000X",
        "363AM0700X",
    } <= nucc
    # every 207Q* listed is family medicine; only general, geriatric and adolescent internal
    # medicine; only general and adolescent pediatrics
    assert {c for c in nucc if c.startswith("207R")} == {"207R00000X", "207RG0300X", "207RA0000X"}
    assert {c for c in nucc if c.startswith("2080")} == {"208000000X", "2080A0000X"}
    for specialist in (
        "207RC0000X",
        "207RE0101X",
        "207RN0300X",
        "207P00000X",
        "208M00000X",
        "163W00000X",
        "2080P0202X",
        "363LA2100X",
    ):
        assert specialist not in nucc
    snomed = {c for s, c in pc.codes if s == SNOMED}
    assert {"62247001", "59058001", "419772000", "394814009", "394802001", "394537008"} <= snomed
    assert "158965000" not in snomed  # "medical practitioner" covers specialists too
    assert pc.labels == {
        "family medicine",
        "family practice",
        "general practice",
        "internal medicine",
        "pediatrics",
        "geriatric medicine",
        "nurse practitioner",
        "physician assistant",
        "primary care",
    }
    assert {(NUCC, "208000000X"), (NUCC, "363LP0200X")} <= pc.pediatric_codes
    assert pc.pediatric_codes <= pc.codes
    assert pc.pediatric_labels == {"pediatrics"}


def test_pipelines() -> None:
    def steps(name: str) -> list[str]:
        return [s.name for s in parse_pipeline(load_mapping_ref(f"pipelines/{name}")).steps]

    assert steps("mgma") == ["four-cut-18m"]
    assert steps("case_study_1") == ["risk-product", "four-cut-12m", "four-cut-18m"]
    assert steps("case_study_2") == ["four-cut-12m"]
    assert steps("case_study_3") == ["declared-pcp", "four-cut-18m", "four-cut-36m"]
    assert parse_pipeline(load_mapping_ref("pipelines/mgma")).name == "mgma"


def test_capacity_default_is_the_murray_example() -> None:
    settings = parse_capacities(load_mapping_ref("capacity"))
    assert settings.default.panel_capacity == 2200
    assert dict(settings.overrides) == {}
