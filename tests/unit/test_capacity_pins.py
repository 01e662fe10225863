"""Observed capacity behaviour that mutation testing (`make mutation`) showed no test pinned:
which encounters show how far the data reach, and a year of data without a qualifying visit."""

from __future__ import annotations

import dataclasses

import pytest

from fhirpanel.domain.capacity import (
    CONFIGURED,
    OBSERVED,
    CapacitySettings,
    ClinicianCapacity,
    practice_capacity,
)
from fhirpanel.domain.records import PatientRecord
from fhirpanel.errors import MappingError
from tests.unit.test_attribution import (
    AS_OF,
    attribute,
    build,
    days_ago,
    doc,
    pcp_roles,
    pid,
    visit,
)
from tests.unit.test_capacity import OBSERVED_SETTINGS, known_population


def test_encounters_after_the_as_of_date_or_without_a_day_do_not_show_the_data_reach_back() -> None:
    future = visit("f1", pid(1), doc(1), days_ago(-30))
    undated = dataclasses.replace(visit("u1", pid(1), doc(1), days_ago(400)), start=None)
    pop = build([future, undated], roles=pcp_roles(1))
    found = practice_capacity(pop, attribute(pop), AS_OF, OBSERVED_SETTINGS, [doc(1)])
    assert (found.method, found.encounters_from) == (CONFIGURED, None)


def test_an_encounter_on_the_as_of_date_counts_for_the_reach() -> None:
    pop = build([visit("e1", pid(1), doc(1), days_ago(0))], roles=pcp_roles(1))
    found = practice_capacity(pop, attribute(pop), AS_OF, OBSERVED_SETTINGS, [doc(1)])
    assert found.encounters_from == AS_OF


def test_a_year_of_data_without_a_qualifying_visit_of_an_active_patient_is_configured() -> None:
    # Records reach back two years, but the year's only visit is an inactive patient's.
    pop = build(
        [visit("e1", pid(1), doc(1), days_ago(700)), visit("e2", pid(2), doc(1), days_ago(10))],
        [PatientRecord(id=pid(1)), PatientRecord(id=pid(2), active=False)],
        roles=pcp_roles(1),
    )
    found = practice_capacity(pop, attribute(pop), AS_OF, OBSERVED_SETTINGS, [doc(1)])
    assert found.demand.per_patient is None
    assert (found.requested, found.method) == (OBSERVED, CONFIGURED)
    assert found.reason is not None
    assert found.clinicians[0].method == CONFIGURED


def test_with_a_year_of_data_and_visits_the_method_is_observed() -> None:
    pop = known_population()
    assert practice_capacity(pop, attribute(pop), AS_OF, OBSERVED_SETTINGS, []).method == OBSERVED


# --- the settings' own checks --------------------------------------------------------------------

FIGURES = ClinicianCapacity(20.0, 220.0, 2.0)


@pytest.mark.parametrize("ref", ["Practitioner/", "practitioner/d1", "d1"])
def test_an_override_must_name_a_practitioner(ref: str) -> None:
    with pytest.raises(MappingError):
        CapacitySettings(default=FIGURES, overrides={ref: FIGURES})


def test_fte_up_to_2_is_accepted_and_above_is_refused() -> None:
    two = dataclasses.replace(FIGURES, fte=2.0)
    assert CapacitySettings(default=two).default.fte == 2.0
    for fte in (2.01, 2.5):
        with pytest.raises(MappingError):
            CapacitySettings(default=dataclasses.replace(FIGURES, fte=fte))
        with pytest.raises(MappingError):
            CapacitySettings(
                default=FIGURES, overrides={doc(1): dataclasses.replace(FIGURES, fte=fte)}
            )


def test_fte_only_must_name_an_override() -> None:
    with pytest.raises(MappingError):
        CapacitySettings(default=FIGURES, fte_only=frozenset({doc(1)}))
    ok = CapacitySettings(
        default=FIGURES, overrides={doc(1): FIGURES}, fte_only=frozenset({doc(1)})
    )
    assert ok.fte_only == frozenset({doc(1)})
