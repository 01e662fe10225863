"""Clinicians come and go (issue 17, item 4): a Practitioner marked `active: false`, or whose
every primary-care PractitionerRole has ended (or not begun) by the as-of date, takes no
patients; their earlier visits stay in the record but decide nothing, so their patients go to
the clinician the Four Cut finds among those still here."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from fhirpanel.domain.attribution import assess_eligibility
from fhirpanel.domain.records import Population, PractitionerRecord
from fhirpanel.fhir.parse import parse_practitioner_role
from tests.unit.test_attribution import (
    RULES,
    attribute,
    build,
    days_ago,
    doc,
    one,
    pid,
    role,
    visit,
)

AS_OF = date(2026, 11, 22)


def practice(
    *, d1_active: bool = True, r1_start: date | None = None, r1_end: date | None = None
) -> Population:
    roles = [replace(role("r1", doc(1)), start=r1_start, end=r1_end), role("r2", doc(2))]
    population = build(
        [
            visit("e1", pid(1), doc(1), days_ago(30)),
            visit("e2", pid(1), doc(1), days_ago(60)),
            visit("e3", pid(1), doc(1), days_ago(90)),
            visit("e4", pid(1), doc(2), days_ago(200)),
            visit("e5", pid(2), doc(1), days_ago(40)),
        ],
        roles=roles,
    )
    population.practitioners[doc(1)] = PractitionerRecord(id=doc(1), active=d1_active)
    return population


def test_a_clinician_still_here_keeps_the_panel() -> None:
    result = attribute(practice()).by_patient()
    assert (result[pid(1)].practitioner, result[pid(2)].practitioner) == (doc(1), doc(1))


def test_an_inactive_practitioner_gets_no_patients() -> None:
    population = practice(d1_active=False)
    result = attribute(population).by_patient()
    # p1 saw d1 three times and d2 once: the Four Cut now finds d2; p2 saw only d1.
    assert (result[pid(1)].practitioner, result[pid(1)].rule) == (doc(2), "single-provider")
    assert (result[pid(2)].status, result[pid(2)].practitioner) == ("unassigned", None)
    eligibility = assess_eligibility(population, AS_OF, RULES)
    assert eligibility.departed == (doc(1),) and not eligibility.is_eligible(doc(1))


@pytest.mark.parametrize(
    ("start", "end", "eligible"),
    [
        (None, date(2025, 6, 30), False),  # ended before the as-of date
        (None, AS_OF, True),  # the end day is still held (a Period's end is inclusive)
        (None, date(2027, 1, 31), True),  # ends later
        (date(2026, 12, 1), None, False),  # not begun
        (date(2020, 1, 1), None, True),
    ],
)
def test_a_role_counts_only_within_its_period(
    start: date | None, end: date | None, eligible: bool
) -> None:
    population = practice(r1_start=start, r1_end=end)
    eligibility = assess_eligibility(population, AS_OF, RULES)
    assert eligibility.is_eligible(doc(1)) is eligible
    assert (doc(1) in eligibility.departed) is not eligible
    assert (one(population, pid(2)).practitioner == doc(1)) is eligible


def test_without_roles_an_inactive_clinician_is_not_taken_from_the_visits() -> None:
    population = practice(d1_active=False)
    population.roles.clear()
    eligibility = assess_eligibility(population, AS_OF, RULES)
    assert eligibility.fallback_all_on_visits
    assert eligibility.on_visits == (doc(2),) and eligibility.departed == (doc(1),)


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        ("2025-06-30", date(2025, 6, 30)),
        ("2025-06", date(2025, 6, 30)),  # a partial end runs to the end of its month
        ("2024-02", date(2024, 2, 29)),
        ("2025", date(2025, 12, 31)),
        ("2025-12", date(2025, 12, 31)),
        ("2025-06-30T17:00:00Z", date(2025, 6, 30)),
    ],
)
def test_a_role_period_is_read_with_an_inclusive_end(end: str, expected: date) -> None:
    record = parse_practitioner_role(
        {
            "resourceType": "PractitionerRole",
            "id": "r1",
            "practitioner": {"reference": "Practitioner/d1"},
            "period": {"start": "2019-03", "end": end},
        }
    )
    assert (record.start, record.end) == (date(2019, 3, 1), expected)
