"""Panels: Murray & Davies capacity (observed supply and demand: test_capacity.py), age/sex
weights on a hand-computed population, risk- and HCC-adjusted panel size (blended: test_blend.py),
each panel against its peers, the suggestions `compute_panels` makes for unassigned patients (the
placement rules themselves: test_placement.py), and the outreach list."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from fhirpanel.domain.attribution import ManualAssignment
from fhirpanel.domain.panels import (
    ADULT,
    PEDIATRIC,
    AgeSexWeights,
    CapacitySettings,
    ClinicianCapacity,
    OutreachItem,
    Panel,
    Relative,
    age_band,
    compute_age_sex_weights,
    compute_panels,
    outreach_list,
    relative_to_peers,
)
from fhirpanel.domain.placement import PlacementRules
from fhirpanel.domain.records import CPT, Code, PatientRecord, Population
from fhirpanel.errors import MappingError
from fhirpanel.tables.files import load_mapping_ref
from fhirpanel.tables.loader import parse_age_sex_weights, parse_capacities
from tests.unit.test_attribution import (
    AS_OF,
    CARDIOLOGY,
    FAMILY,
    META,
    PEDIATRICS,
    RULES,
    attribute,
    build,
    days_ago,
    doc,
    pcp_roles,
    pid,
    role,
    visit,
)

PREVENTIVE = Code(CPT, "99396", "Preventive visit")
CAPACITY = parse_capacities(load_mapping_ref("capacity"))
NEUTRAL = AgeSexWeights(weights={})


def born(years: int, days: int = 0) -> date:
    """A birth date giving `years` whole years of age on the as-of date."""
    return date(AS_OF.year - years, AS_OF.month, AS_OF.day) - timedelta(days=days)


def person(n: int, years: int | None, sex: str | None = "female", **kwargs: Any) -> PatientRecord:
    return PatientRecord(
        id=pid(n), birth_date=born(years) if years is not None else None, sex=sex, **kwargs
    )


def capacities(**open_by_doc: float) -> CapacitySettings:
    """Capacities giving each named clinician exactly this many patients of capacity."""
    base = ClinicianCapacity(
        visits_per_day=1.0, clinic_days_per_year=1.0, visits_per_patient_per_year=1.0
    )
    overrides = {doc(int(k[1:])): ClinicianCapacity(1.0, v, 1.0) for k, v in open_by_doc.items()}
    return CapacitySettings(default=base, overrides=overrides)


# --- capacity ----------------------------------------------------------------------------------


def test_capacity_formula_murray_and_davies() -> None:
    full = ClinicianCapacity(
        visits_per_day=20, clinic_days_per_year=220, visits_per_patient_per_year=2
    )
    assert full.panel_capacity == 2200
    half = ClinicianCapacity(20, 220, 2, fte=0.5)
    assert half.panel_capacity == 1100
    assert ClinicianCapacity(24, 200, 3).panel_capacity == 1600


def test_capacity_settings_from_a_table_with_overrides_inheriting_the_default() -> None:
    assert CAPACITY.default.panel_capacity == 2200
    assert CAPACITY.pediatric_age_limit == 18
    assert CAPACITY.placement == PlacementRules(pediatric_age_limit=18, continuity_months=36)
    data = {
        "meta": META,
        "default": {
            "visits_per_day": 20,
            "clinic_days_per_year": 220,
            "visits_per_patient_per_year": 2,
        },
        "overrides": {doc(1): {"fte": 0.5}, doc(2): {"visits_per_day": 24}},
        "suggestions": {"pediatric_age_limit": 18, "continuity_months": 24},
    }
    settings = parse_capacities(data)
    assert settings.continuity_months == 24
    assert settings.default.fte == 1.0
    assert settings.for_clinician(doc(1)).panel_capacity == 1100
    assert settings.for_clinician(doc(2)).panel_capacity == 2640
    assert settings.for_clinician(doc(3)).panel_capacity == 2200


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # the file's shape (schemas)
        (
            {"default": {"visits_per_day": 20, "clinic_days_per_year": 220}},
            r"default\.visits_per_patient_per_year: Field required",
        ),
        (
            {
                "default": {
                    "visits_per_day": -1,
                    "clinic_days_per_year": 220,
                    "visits_per_patient_per_year": 2,
                }
            },
            r"default\.visits_per_day: Input should be greater than 0 \(got -1\)",
        ),
        (
            {
                "default": {
                    "visits_per_day": "20",
                    "clinic_days_per_year": 220,
                    "visits_per_patient_per_year": 2,
                }
            },
            r"default\.visits_per_day: Input should be a valid number \(got '20'\)",
        ),
        (
            {
                "default": {
                    "visits_per_day": float("inf"),
                    "clinic_days_per_year": 220,
                    "visits_per_patient_per_year": 2,
                }
            },
            r"default\.visits_per_day: Input should be a finite number",
        ),
        (
            {
                "default": {
                    "visits_per_day": 20,
                    "clinic_days_per_year": 220,
                    "visits_per_patient_per_year": 2,
                    "hours": 8,
                }
            },
            r"default\.hours: Extra inputs are not permitted",
        ),
        (
            {"overrides": {doc(1): {"days": 3}}},
            r'overrides\."Practitioner/d1"\.days: Extra inputs are not permitted',
        ),
        (
            {"suggestions": {"pediatric_age_limit": 0, "continuity_months": 36}},
            r"suggestions\.pediatric_age_limit: Input should be greater than or equal to 1",
        ),
        ({"suggestions": {}}, r"suggestions\.pediatric_age_limit: Field required"),
        (
            {"suggestions": {"pediatric_age_limit": 18}},
            r"suggestions\.continuity_months: Field required",
        ),
        (
            {"suggestions": {"pediatric_age_limit": 18, "continuity_months": 360}},
            r"suggestions\.continuity_months: Input should be less than or equal to 120",
        ),
        # the settings' own checks (CapacitySettings)
        (
            {
                "default": {
                    "visits_per_day": 20,
                    "clinic_days_per_year": 220,
                    "visits_per_patient_per_year": 2,
                    "fte": 80,
                }
            },
            r"default\.fte: above 2\.0 looks like a percentage",
        ),
        (
            {"overrides": {doc(1): {"fte": 50}}},
            r'overrides\."Practitioner/d1"\.fte: above 2\.0 looks like a percentage',
        ),
        ({"overrides": {"d1": {"fte": 0.5}}}, r"overrides: 'd1' is not a Practitioner reference"),
    ],
)
def test_bad_capacity_tables_are_refused(change: dict[str, Any], message: str) -> None:
    data = {**load_mapping_ref("capacity"), **change}
    with pytest.raises(MappingError, match=rf"^capacity: {message}"):
        parse_capacities(data)


# --- age/sex weights ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "band"),
    [
        (born(0), "0-1"),
        (born(1), "0-1"),
        (born(2), "2-4"),
        (born(2, days=-1), "0-1"),
        (born(17), "12-17"),
        (born(18), "18-29"),
        (born(64, days=1), "45-64"),
        (born(85), "85+"),
        (born(103), "85+"),
        (None, None),
        (AS_OF + timedelta(days=1), None),
    ],
)
def test_age_bands_on_the_as_of_date(birth: date | None, band: str | None) -> None:
    assert age_band(birth, AS_OF) == band


def test_age_sex_weights_hand_computed() -> None:
    # Cells: female 30-44 (2 patients, 3 + 1 visits), male 30-44 (1 patient, 0 visits),
    # female 65-74 (1 patient, 2 visits). Overall rate 6 / 4 = 1.5, so:
    # F30-44 = (4/2)/1.5 = 4/3, M30-44 = 0, F65-74 = (2/1)/1.5 = 4/3.
    roles = [*pcp_roles(1), role("r9", doc(9), CARDIOLOGY)]
    encounters = [
        visit("a1", pid(1), doc(1), days_ago(10)),
        visit("a2", pid(1), doc(1), days_ago(20)),
        visit("a3", pid(1), doc(1), days_ago(30)),
        visit("b1", pid(2), doc(1), days_ago(40)),
        visit("c1", pid(4), doc(1), days_ago(50)),
        visit("c2", pid(4), doc(1), days_ago(60)),
        # not counted: outside 12 months, a specialist, an emergency visit
        visit("x1", pid(2), doc(1), days_ago(400)),
        visit("x2", pid(3), doc(9), days_ago(5)),
        visit("x3", pid(3), doc(1), days_ago(5), class_code="EMER"),
        # not counted: an excluded patient and patients without a known cell
        visit("x4", pid(5), doc(1), days_ago(5)),
        visit("x5", pid(6), doc(1), days_ago(5)),
        visit("x6", pid(7), doc(1), days_ago(5)),
    ]
    patients = [
        person(1, 35),
        person(2, 44),
        person(3, 30, "male"),
        person(4, 70),
        person(5, 35, active=False),
        person(6, 35, "unknown"),
        person(7, None),
    ]
    weights = compute_age_sex_weights(build(encounters, patients, roles), AS_OF, RULES)
    assert weights.weights == {
        ("30-44", "female"): pytest.approx(4 / 3),
        ("30-44", "male"): 0.0,
        ("65-74", "female"): pytest.approx(4 / 3),
    }
    assert weights.basis == (
        ("30-44", "female", 2, 4),
        ("30-44", "male", 1, 0),
        ("65-74", "female", 1, 2),
    )
    assert weights.weight(born(40), "female", AS_OF) == pytest.approx(4 / 3)
    assert weights.weight(born(8), "female", AS_OF) == 1.0  # empty cell
    assert weights.weight(born(40), "unknown", AS_OF) == 1.0
    assert weights.weight(None, "female", AS_OF) == 1.0
    # A longer window also counts x1.
    longer = compute_age_sex_weights(
        build(encounters, patients, roles), AS_OF, RULES, window_months=18
    )
    assert longer.basis[0] == ("30-44", "female", 2, 5)


def test_age_sex_weights_without_visits_are_neutral() -> None:
    weights = compute_age_sex_weights(build(patients=[person(1, 40)]), AS_OF, RULES)
    assert weights.weights == {} and weights.weight(born(40), "female", AS_OF) == 1.0


def test_supplied_age_sex_table() -> None:
    example = parse_age_sex_weights(load_mapping_ref("age_sex_weights_example"))
    assert len(example.weights) == 30
    table = parse_age_sex_weights(
        {
            "meta": META,
            "weights": [
                {"band": "65-74", "sex": "male", "weight": 1.8},
                {"band": "0-1", "sex": "female", "weight": 0.9},
            ],
        }
    )
    assert table.weight(born(70), "male", AS_OF) == 1.8
    assert table.weight(born(70), "female", AS_OF) == 1.0
    for rows, message in [
        (
            [{"band": "65-75", "sex": "male", "weight": 1}],
            r"weights\[1\]\.band: '65-75' is not one of 0-1, 2-4, ",
        ),
        (
            [{"band": "65-74", "sex": "M", "weight": 1}],
            r"weights\[1\]\.sex: 'M' is not one of female, male, other$",
        ),
        (
            [{"band": "65-74", "sex": "male", "weight": 0}],
            r"weights\[1\]\.weight: Input should be greater than 0 \(got 0\)$",
        ),
        (
            [{"band": "65-74", "sex": "male", "weight": 1}] * 2,
            r"weights\[2\]: duplicate cell 65-74 male$",
        ),
        ([], r"weights: List should have at least 1 item after validation, not 0$"),
    ]:
        with pytest.raises(MappingError, match=rf"^age_sex_weights: {message}"):
            parse_age_sex_weights({"meta": META, "weights": rows})


# --- panels ------------------------------------------------------------------------------------


WEIGHTS = AgeSexWeights(weights={("65-74", "female"): 2.0, ("30-44", "female"): 0.5})


def _panel_population() -> Population:
    encounters = [
        visit("e1", pid(1), doc(1), days_ago(10)),
        visit("e2", pid(2), doc(1), days_ago(10)),
        visit("e3", pid(3), doc(1), days_ago(10)),
        visit("e4", pid(4), doc(2), days_ago(10)),
    ]
    patients = [
        person(1, 70),
        person(2, 40),
        person(3, 10, "male"),
        person(4, 40),
        person(5, 50, active=False),
        person(6, 33),
    ]
    return build(encounters, patients, roles=pcp_roles(1, 2, 3))


def test_panel_size_risk_adjusted_size_capacity_and_tiers() -> None:
    pop = _panel_population()
    manual = {pid(6): ManualAssignment(pid(6), doc(9), confirmation="confirmed-by-clinician")}
    result = attribute(pop, manual=manual)
    summary = compute_panels(
        pop,
        result,
        AS_OF,
        CAPACITY,
        WEIGHTS,
        tiers={pid(1): 3, pid(2): 1, pid(3): 1, pid(4): 2, pid(6): 1},
    )
    panels = summary.by_practitioner()
    assert [p.practitioner for p in summary.panels] == [doc(1), doc(2), doc(3), doc(9)]
    d1 = panels[doc(1)]
    assert (d1.size, d1.risk_adjusted_size, d1.capacity) == (3, 2.0 + 0.5 + 1.0, 2200)
    assert d1.open_capacity == 2200 - 3.5
    assert d1.tiers == (("1", 2), ("2", 0), ("3", 1))
    assert d1.unconfirmed == 3 and d1.hcc_adjusted_size is None
    # an eligible clinician with nobody on the panel still has one
    assert (panels[doc(3)].size, panels[doc(3)].risk_adjusted_size) == (0, 0.0)
    # a manual assignment to a clinician outside the primary-care set gets a panel too
    assert (panels[doc(9)].size, panels[doc(9)].unconfirmed) == (1, 0)
    assert summary.weights is WEIGHTS


def test_hcc_adjusted_size_is_mean_normalised() -> None:
    pop = _panel_population()
    result = attribute(pop)
    # mean over scored patients = (3.0 + 1.0 + 0.5 + 1.5) / 4 = 1.5
    hcc = {pid(1): 3.0, pid(2): 1.0, pid(4): 1.5, pid(5): 0.5}
    panels = compute_panels(pop, result, AS_OF, CAPACITY, NEUTRAL, hcc_scores=hcc)
    by_doc = panels.by_practitioner()
    # d1: 3.0/1.5 + 1.0/1.5 + (p3 unscored: 1.0)
    assert by_doc[doc(1)].hcc_adjusted_size == pytest.approx(2.0 + 2 / 3 + 1.0)
    assert by_doc[doc(2)].hcc_adjusted_size == pytest.approx(1.0)
    assert by_doc[doc(3)].hcc_adjusted_size == 0.0
    assert by_doc[doc(1)].risk_adjusted_size == 3.0  # neutral weights


def test_suggestions_go_to_the_most_room_and_use_it_up() -> None:
    roles = pcp_roles(1, 2)
    pop = build(
        [visit("e1", pid(1), doc(1), days_ago(10))],
        [person(1, 40), person(2, 40), person(3, 70), person(4, 40)],
        roles,
    )
    result = attribute(pop)
    # d1 holds p1 (0.5) of 10, d2 nobody of 10. p2 (0.5) -> d2 (5% used after, d1 10%), p3 (2.0)
    # -> d1 (25% after, tie with d2: lowest id), p4 (0.5) -> d2 (10% after, d1 30%).
    summary = compute_panels(pop, result, AS_OF, capacities(d1=10, d2=10), WEIGHTS)
    assert [(s.patient, s.practitioner) for s in summary.suggestions] == [
        (pid(2), doc(2)),
        (pid(3), doc(1)),
        (pid(4), doc(2)),
    ]
    assert (
        summary.suggestions[0].reason
        == "most room: 10 of 10 open, 5.0% of capacity used with this patient"
    )
    # the panels themselves are not changed by suggestions; the changes say what would be
    assert summary.by_practitioner()[doc(2)].size == 0
    assert [(c.practitioner, c.size, c.size_after, c.load_after) for c in summary.changes] == [
        (doc(1), 1, 2, 2.5),
        (doc(2), 0, 2, 1.0),
    ]


def test_suggestions_send_children_to_pediatric_clinicians_and_adults_elsewhere() -> None:
    roles = [role("r1", doc(1), PEDIATRICS), role("r2", doc(2), FAMILY)]
    pop = build(
        patients=[person(1, 5), person(2, 17, "male"), person(3, 18), person(4, None)], roles=roles
    )
    result = attribute(pop)
    # the pediatrician has less open capacity, but is the only pediatric clinician
    summary = compute_panels(pop, result, AS_OF, capacities(d1=5, d2=100), NEUTRAL)
    got = {s.patient: (s.practitioner, s.reason.split(":")[0]) for s in summary.suggestions}
    assert got == {
        pid(1): (doc(1), "most room among pediatric clinicians"),
        pid(2): (doc(1), "most room among pediatric clinicians"),
        pid(3): (doc(2), "most room"),
        pid(4): (doc(2), "most room"),  # age unknown: adult pool
    }


def test_without_a_pediatric_clinician_children_go_to_anyone_eligible() -> None:
    pop = build(patients=[person(1, 5)], roles=pcp_roles(1, 2))
    summary = compute_panels(pop, attribute(pop), AS_OF, capacities(d1=5, d2=6), NEUTRAL)
    assert [(s.patient, s.practitioner) for s in summary.suggestions] == [(pid(1), doc(2))]


def test_no_eligible_clinician_means_no_suggestion() -> None:
    pop = build(patients=[person(1, 40)], roles=[role("r9", doc(9), CARDIOLOGY)])
    summary = compute_panels(pop, attribute(pop), AS_OF, CAPACITY, NEUTRAL)
    assert summary.suggestions == () and summary.panels == ()


# --- relative to peers ---------------------------------------------------------------------------


def sized(n: int, risk_adjusted: float, blended: float | None = None) -> Panel:
    return Panel(doc(n), 0, risk_adjusted, 100.0, 100.0 - risk_adjusted, blended_size=blended)


def test_each_panel_against_the_median_of_its_framework() -> None:
    panels = [
        sized(1, 10.0, 5.0),
        sized(2, 20.0, 20.0),
        sized(3, 30.0, 40.0),
        sized(4, 40.0, 30.0),
        sized(5, 12.0, 6.0),  # the one pediatric-only clinician
        sized(9, 99.0, 99.0),  # not eligible (an override's specialist): no peers
    ]
    eligible = [doc(n) for n in (1, 2, 3, 4, 5)]
    got = relative_to_peers(panels, eligible, pediatric_only=[doc(5)])
    assert sorted(got) == eligible
    # adults: risk-adjusted median (20 + 30) / 2 = 25, blended median (20 + 30) / 2 = 25
    assert got[doc(1)] == Relative(ADULT, 4, 10 / 25, 5 / 25, 12.5, 12.5)
    assert got[doc(3)] == Relative(ADULT, 4, 30 / 25, 40 / 25, 62.5, 87.5)
    assert got[doc(4)] == Relative(ADULT, 4, 40 / 25, 30 / 25, 87.5, 62.5)
    # alone in the framework: the median is its own
    assert got[doc(5)] == Relative(PEDIATRIC, 1, 1.0, 1.0, 50.0, 50.0)


def test_ties_empty_panels_and_no_blend() -> None:
    panels = [sized(1, 0.0), sized(2, 0.0), sized(3, 6.0)]
    got = relative_to_peers(panels, [doc(1), doc(2), doc(3)], pediatric_only=[])
    # median 0: no ratio; ties share the middle of their ranks
    assert got[doc(1)] == Relative(ADULT, 3, None, None, 100 / 3, None)
    assert got[doc(3)].percentile == pytest.approx(500 / 6)
    got = relative_to_peers([sized(1, 4.0), sized(2, 6.0)], [doc(1), doc(2)], [])
    assert got[doc(1)].risk_adjusted_ratio == 0.8 and got[doc(1)].blended_ratio is None


def test_compute_panels_sets_relative_for_eligible_clinicians() -> None:
    pop = _panel_population()
    manual = {pid(6): ManualAssignment(pid(6), doc(9))}
    panels = compute_panels(pop, attribute(pop, manual=manual), AS_OF, CAPACITY, WEIGHTS)
    by_doc = panels.by_practitioner()
    # d1 3.5 (p1 2.0, p2 0.5, p3 1.0), d2 0.5 (p4), d3 0: median 0.5
    assert by_doc[doc(1)].relative == Relative(ADULT, 3, 7.0, None, 500 / 6, None)
    assert by_doc[doc(3)].relative == Relative(ADULT, 3, 0.0, None, 100 / 6, None)
    assert by_doc[doc(9)].relative is None  # outside the primary-care set


# --- outreach ----------------------------------------------------------------------------------


def test_outreach_reasons() -> None:
    encounters = [
        # p1: seen recently, wellness 20 months ago: fine on both counts
        visit("a1", pid(1), doc(1), days_ago(30)),
        visit("a2", pid(1), doc(1), days_ago(600), types=[PREVENTIVE]),
        # p2: last seen 14 months ago, no physical ever
        visit("b1", pid(2), doc(1), days_ago(430)),
        # p3: seen by another PCP last month (counts), physical 30 months ago (too old)
        visit("c1", pid(3), doc(2), days_ago(30)),
        visit("c2", pid(3), doc(1), days_ago(300)),
        visit("c3", pid(3), doc(1), days_ago(310)),
        visit("c4", pid(3), doc(1), days_ago(915), types=[PREVENTIVE]),
    ]
    pop = build(encounters, patients=[pid(4)])
    result = attribute(pop, manual={pid(4): ManualAssignment(pid(4), doc(2))})
    items = outreach_list(pop, result, AS_OF, RULES)
    assert items == (
        OutreachItem(
            pid(2), doc(1), ("not-seen-12m", "no-sentinel-24m"), AS_OF - timedelta(days=430), None
        ),
        OutreachItem(
            pid(3),
            doc(1),
            ("no-sentinel-24m",),
            AS_OF - timedelta(days=30),
            AS_OF - timedelta(days=915),
        ),
        OutreachItem(pid(4), doc(2), ("not-seen-12m", "no-sentinel-24m"), None, None),
    )
    # other thresholds
    items = outreach_list(pop, result, AS_OF, RULES, not_seen_months=18, sentinel_months=36)
    assert [(i.patient, i.reasons) for i in items] == [
        (pid(2), ("no-sentinel-36m",)),
        (pid(4), ("not-seen-18m", "no-sentinel-36m")),
    ]


def test_outreach_leaves_out_unassigned_and_excluded_patients() -> None:
    pop = build(
        [visit("e1", pid(1), doc(1), days_ago(700))],
        patients=[PatientRecord(id=pid(2), active=False)],
    )
    assert outreach_list(pop, attribute(pop), AS_OF, RULES) == ()
