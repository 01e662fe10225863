"""Capacity from the practice's own data (docs/methods.md s.3.2): supply (a clinician's
qualifying visits in 12 months) over demand (the active patients' visits per patient-year), on a
hand-made population with known counts, the fall-backs to configured figures, the file's
`method`, and on a generated population, observed supply against the visits the generator made."""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any

import pytest

from fhirpanel.config import Settings
from fhirpanel.domain.capacity import (
    CONFIGURED,
    OBSERVED,
    CapacitySettings,
    ClinicianCapacity,
    practice_capacity,
)
from fhirpanel.domain.dates import months_before
from fhirpanel.domain.panels import AgeSexWeights, compute_panels
from fhirpanel.domain.records import PatientRecord, Population
from fhirpanel.errors import MappingError
from fhirpanel.fhir.source import MemorySource
from fhirpanel.ingest import read_population
from fhirpanel.run import analyse
from fhirpanel.sandbox.generate import generate_population
from fhirpanel.sandbox.patients import PatientGenerator
from fhirpanel.sandbox.visits import Visit
from fhirpanel.tables import Tables
from fhirpanel.tables.files import load_mapping_ref
from fhirpanel.tables.loader import parse_capacities
from tests.unit.test_attribution import (
    AS_OF,
    META,
    attribute,
    build,
    days_ago,
    doc,
    pcp_roles,
    pid,
    visit,
)

DEFAULT = ClinicianCapacity(20.0, 220.0, 2.0)
OBSERVED_SETTINGS = CapacitySettings(default=DEFAULT, method=OBSERVED)
NEUTRAL = AgeSexWeights(weights={})


def known_population(old_visit_days: int = 400) -> Population:
    """d1: 6 visits in the year; d2: 4 (one with a patient since made inactive); d3: none.
    Active patients: p1 (4 visits), p2 (4), p3 (1), p4 (never seen), p6 (seen only before the
    year) = 9 visits over 5 patients, 3 of them seen."""
    n = iter(range(1, 100))

    def seen(patient: int, clinician: int, days: int) -> Any:
        return visit(f"e{next(n)}", pid(patient), doc(clinician), days_ago(days))

    encounters = [
        *(seen(1, 1, d) for d in (10, 40, 100, 200)),
        *(seen(2, 1, d) for d in (20, 50)),
        *(seen(2, 2, d) for d in (30, 60)),
        seen(3, 2, 90),
        seen(5, 2, 120),
        seen(6, 1, old_visit_days),  # before the year: data reach back, counts for nothing
    ]
    patients = [
        PatientRecord(id=pid(4)),
        PatientRecord(id=pid(5), active=False),
    ]
    return build(encounters, patients, roles=pcp_roles(1, 2, 3))


def test_observed_capacity_is_supply_over_demand_exactly() -> None:
    pop = known_population()
    result = attribute(pop)
    found = practice_capacity(pop, result, AS_OF, OBSERVED_SETTINGS, [doc(1), doc(2), doc(3)])
    assert (found.requested, found.method, found.reason) == (OBSERVED, OBSERVED, None)
    demand = found.demand
    assert (demand.visits, demand.patients, demand.patients_seen) == (9, 5, 3)
    assert demand.per_patient == 9 / 5 and demand.per_patient_seen == 3.0
    assert found.encounters_from == days_ago(400).date()
    by_doc = found.by_practitioner()
    d1, d2 = by_doc[doc(1)], by_doc[doc(2)]
    # supply counts every visit the clinician gave, the inactive patient's included
    assert (d1.method, d1.visits, d1.supply, d1.demand) == (OBSERVED, 6, 6.0, 9 / 5)
    assert d1.capacity == 6 / (9 / 5)
    assert (d2.visits, d2.capacity) == (4, 4 / (9 / 5))
    assert d1.basis == "observed: 6 visits in 12 months / 1.80 visits per patient-year"
    # no visit in the year: a new clinician keeps the configured capacity
    d3 = by_doc[doc(3)]
    assert (d3.method, d3.capacity) == (CONFIGURED, 2200.0)
    assert d3.basis == (
        "configured (no qualifying visits in 12 months): 20 visits a day x 220 days / "
        "2 visits per patient-year"
    )


def test_panels_carry_supply_demand_and_the_basis() -> None:
    pop = known_population()
    summary = compute_panels(pop, attribute(pop), AS_OF, OBSERVED_SETTINGS, NEUTRAL)
    panel = summary.by_practitioner()[doc(1)]
    # d1 holds p1, p2 (plurality ties go by the last visit: p2's last is d1's on day 20) and p6
    assert panel.size == 3
    assert (panel.supply, panel.demand, panel.capacity) == (6.0, 9 / 5, 6 / (9 / 5))
    assert panel.capacity_method == OBSERVED
    assert panel.capacity_basis == "observed: 6 visits in 12 months / 1.80 visits per patient-year"
    assert panel.open_capacity == panel.capacity - 3.0
    # age/sex-adjusted demand: the panel's weights times the practice's visits per patient-year
    assert panel.expected_visits == 3.0 * (9 / 5)
    assert panel.share_used == 3.0 / panel.capacity
    assert summary.capacity is not None and summary.capacity.method == OBSERVED


def test_less_than_a_year_of_encounters_falls_back_to_configured() -> None:
    pop = known_population(old_visit_days=300)
    found = practice_capacity(pop, attribute(pop), AS_OF, OBSERVED_SETTINGS, [doc(1)])
    assert (found.requested, found.method) == (OBSERVED, CONFIGURED)
    earliest = days_ago(300).date().isoformat()
    assert found.reason == (
        f"less than 12 months of encounters before the as-of date (the earliest is {earliest})"
    )
    d1 = found.clinicians[0]
    assert (d1.method, d1.capacity, d1.supply, d1.demand) == (CONFIGURED, 2200.0, 4400.0, 2.0)
    assert d1.basis.startswith("configured (less than 12 months of encounters before")


def test_the_year_is_measured_from_the_as_of_date() -> None:
    # An encounter exactly on the window's start day shows the data reach back a whole year.
    start = months_before(AS_OF, 12)
    pop = known_population(old_visit_days=(AS_OF - start).days)
    assert practice_capacity(pop, attribute(pop), AS_OF, OBSERVED_SETTINGS, []).method == OBSERVED
    pop = known_population(old_visit_days=(AS_OF - start).days - 1)
    assert practice_capacity(pop, attribute(pop), AS_OF, OBSERVED_SETTINGS, []).method == CONFIGURED


def test_no_encounters_or_configured_method() -> None:
    pop = build([], [PatientRecord(id=pid(1))], roles=pcp_roles(1))
    found = practice_capacity(pop, attribute(pop), AS_OF, OBSERVED_SETTINGS, [doc(1)])
    assert found.reason == "no encounters on or before the as-of date"
    pop = known_population()
    configured = CapacitySettings(default=DEFAULT)  # built directly: configured
    found = practice_capacity(pop, attribute(pop), AS_OF, configured, [doc(1)])
    assert (found.requested, found.method, found.reason) == (CONFIGURED, CONFIGURED, None)
    assert found.clinicians[0].basis == (
        "configured: 20 visits a day x 220 days / 2 visits per patient-year"
    )


def test_overrides_win_and_fte_alone_scales_the_observed_visits() -> None:
    pop = known_population()
    data = {
        "meta": META,
        "default": {
            "visits_per_day": 20.0,
            "clinic_days_per_year": 220.0,
            "visits_per_patient_per_year": 2.0,
        },
        "overrides": {doc(1): {"fte": 0.5}, doc(2): {"visits_per_day": 10.0, "fte": 0.5}},
        "suggestions": {"pediatric_age_limit": 18, "continuity_months": 36},
    }
    settings = parse_capacities(data)
    assert settings.method == OBSERVED  # the file's default
    assert settings.fte_only == frozenset({doc(1)})
    found = practice_capacity(pop, attribute(pop), AS_OF, settings, [doc(1), doc(2)])
    d1, d2 = found.clinicians
    assert (d1.method, d1.supply, d1.capacity) == (OBSERVED, 3.0, 3.0 / (9 / 5))
    assert d1.basis == "observed: 6 visits in 12 months x 0.5 FTE / 1.80 visits per patient-year"
    assert (d2.method, d2.capacity) == (CONFIGURED, 550.0)
    assert d2.basis == (
        "configured (set for this clinician): 10 visits a day x 220 days x 0.5 FTE / "
        "2 visits per patient-year"
    )
    # configured: the fte-only override is the configured capacity, as before
    configured = parse_capacities({**data, "method": "configured"})
    assert configured.for_clinician(doc(1)).panel_capacity == 1100


def test_the_method_in_the_file() -> None:
    assert parse_capacities(load_mapping_ref("capacity")).method == OBSERVED
    data = dict(load_mapping_ref("capacity"), method="measured")
    with pytest.raises(MappingError, match=r"^capacity: method: Input should be 'observed' or"):
        parse_capacities(data)
    with pytest.raises(MappingError, match=r"^method: 'measured' is not one of observed"):
        CapacitySettings(default=DEFAULT, method="measured")  # type: ignore[arg-type]


# --- a generated population ---------------------------------------------------------------------

GENERATED_AS_OF = date(2026, 11, 22)
QUALIFYING_KINDS = ("office", "wellness")


def test_observed_supply_matches_the_visits_the_generator_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The generator has no explicit schedules: each clinician's year is the visits it makes for
    their patients. Counted as it makes them (office and wellness visits, finished, in person or
    by video, by a PCP, in the year), they are the supply observed from the resources, within 5%
    (malformed copies and dropped participants are the difference)."""
    made: list[Visit] = []
    original = PatientGenerator._encounter

    def recording(
        self: PatientGenerator, rng: Any, person: Any, seq: int, v: Visit, *a: Any
    ) -> Any:
        made.append(v)
        return original(self, rng, person, seq, v, *a)

    monkeypatch.setattr(PatientGenerator, "_encounter", recording)
    resources = list(generate_population(2000, 11, GENERATED_AS_OF))
    population = read_population(MemorySource(resources))
    tables = Tables.load(Settings.load(env={})).method
    outcome = analyse(population, GENERATED_AS_OF, tables)

    start = months_before(GENERATED_AS_OF, 12).toordinal()
    pcps = {
        f"Practitioner/{c.id}"
        for c in PatientGenerator(2000, 11, GENERATED_AS_OF, 0.01).directory.pcps
    }
    planned = Counter(
        f"Practitioner/{v.clinician.id}"
        for v in made
        if v.kind in QUALIFYING_KINDS
        and v.status == "finished"
        and v.klass in ("AMB", "VR")
        and start < v.day <= GENERATED_AS_OF.toordinal()
    )
    assert set(planned) <= pcps and len(planned) >= 8
    capacity = outcome.panels.capacity
    assert capacity is not None and capacity.method == OBSERVED
    observed = capacity.by_practitioner()
    demand = capacity.demand.per_patient
    assert demand is not None
    for clinician, visits in sorted(planned.items()):
        found = observed[clinician]
        assert found.method == OBSERVED
        assert found.supply == pytest.approx(visits, rel=0.05), clinician
        assert found.capacity == found.supply / demand
    panels = outcome.panels.by_practitioner()
    used = [panels[c].share_used for c in planned]
    # a believable practice: every panel uses a real share of what its clinician delivers
    assert all(u is not None and 0.3 < u < 1.5 for u in used), used
