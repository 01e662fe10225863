"""The validation statistics and the calibration plot (domain/validation.py) pinned where mutation
testing found them loose: the record as it stood on a day at its boundaries, the metrics taken
from risk results, each `as_dict`, the canonical JSON and every element of the SVG chart."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date
from types import SimpleNamespace
from typing import cast

import pytest

from fhirpanel.domain.records import (
    ConditionRecord,
    Issue,
    OrganizationRecord,
    PatientRecord,
    Population,
    PractitionerRecord,
    PractitionerRoleRecord,
)
from fhirpanel.domain.risk import RiskResult
from fhirpanel.domain.validation import (
    Decile,
    MetricValidation,
    TierCapture,
    ValidationResult,
    calibration_svg,
    canonical_json,
    condition_as_of,
    condition_known_on,
    decile_table,
    population_on,
    risk_metrics,
    tier_capture,
    validate,
)

DAY = date(2025, 6, 30)


# --- the record on a day, at its boundaries ------------------------------------------------------


def test_a_condition_recorded_on_the_day_is_known_on_it() -> None:
    assert condition_known_on(ConditionRecord("c", "Patient/p", (), recorded=DAY), DAY)
    assert not condition_known_on(
        ConditionRecord("c", "Patient/p", (), onset=date(2025, 7, 1)), DAY
    )


def test_a_condition_that_ended_on_the_day_was_ended_on_it() -> None:
    ended = ConditionRecord("c", "Patient/p", (), clinical_status="resolved", abatement=DAY)
    assert condition_as_of(ended, DAY) is ended
    later = ConditionRecord(
        "c", "Patient/p", (), clinical_status="resolved", abatement=date(2025, 7, 1)
    )
    then = condition_as_of(later, DAY)
    assert (then.clinical_status, then.abatement) == ("active", None)


def test_population_on_the_day_of_a_birth_or_a_death() -> None:
    practitioner = PractitionerRecord("Practitioner/d")
    pop = Population(
        patients={
            "Patient/born-that-day": PatientRecord("Patient/born-that-day", birth_date=DAY),
            "Patient/born-later": PatientRecord("Patient/born-later", birth_date=date(2025, 7, 1)),
            "Patient/died-that-day": PatientRecord(
                "Patient/died-that-day", deceased=True, deceased_date=DAY
            ),
            "Patient/died-later": PatientRecord(
                "Patient/died-later", deceased=True, deceased_date=date(2025, 7, 1)
            ),
            "Patient/dead-undated": PatientRecord("Patient/dead-undated", deceased=True),
        },
        practitioners={"Practitioner/d": practitioner},
        roles={
            "PractitionerRole/r": PractitionerRoleRecord("PractitionerRole/r", "Practitioner/d")
        },
        organizations={"Organization/o": OrganizationRecord("Organization/o")},
        issues=[Issue("warning", "Patient/x", "a recorded issue")],
    )
    then = population_on(pop, DAY)
    # One born later is left out, and the patients after them are still looked at.
    assert sorted(then.patients) == [
        "Patient/born-that-day",
        "Patient/dead-undated",
        "Patient/died-later",
        "Patient/died-that-day",
    ]
    assert then.patients["Patient/died-that-day"].deceased is True
    assert then.patients["Patient/died-that-day"].deceased_date == DAY
    alive = then.patients["Patient/died-later"]
    assert (alive.deceased, alive.deceased_date) == (False, None)
    assert then.patients["Patient/dead-undated"].deceased is True
    # Clinicians, organisations and issues are kept, as copies.
    assert then.practitioners == {"Practitioner/d": practitioner}
    assert then.practitioners is not pop.practitioners
    assert list(then.organizations) == ["Organization/o"]
    assert list(then.roles) == ["PractitionerRole/r"]
    assert then.issues == pop.issues and then.issues is not pop.issues


# --- metrics from risk results -------------------------------------------------------------------


def _risk(pid: str, charlson: int, hcc: float | None, ed: int, ip: int, tier: int) -> RiskResult:
    fake = SimpleNamespace(
        patient=pid, charlson=charlson, hcc=hcc, ed_visits=ed, inpatient_stays=ip, tier=tier
    )
    return cast(RiskResult, fake)


def test_risk_metrics_per_patient_with_hcc_for_adults_only() -> None:
    pop = Population(
        patients={
            "a": PatientRecord("a", birth_date=date(2007, 6, 30)),  # 18 on the baseline date
            "c": PatientRecord("c", birth_date=date(2007, 7, 1)),  # 17
            "n": PatientRecord("n"),  # no birth date: no age
        }
    )
    risk = {
        "a": _risk("a", 2, 1.25, 1, 2, 3),
        "c": _risk("c", 1, 0.5, 0, 0, 1),
        "n": _risk("n", 0, 0.75, 0, 1, 2),
        "u": _risk("u", 4, None, 2, 0, 4),  # not in the population, no HCC score
    }
    out = risk_metrics(pop, risk, ["u", "n", "c", "a", "gone", "a"], DAY)
    assert out == {
        "charlson": {"a": 2.0, "c": 1.0, "n": 0.0, "u": 4.0},
        "hcc": {"a": 1.25},
        "utilisation": {"a": 3.0, "c": 0.0, "n": 1.0, "u": 2.0},
        "tier": {"a": 3.0, "c": 1.0, "n": 2.0, "u": 4.0},
    }
    assert all(isinstance(v, float) for m in out.values() for v in m.values())
    with_blend = risk_metrics(pop, risk, ["a", "c"], DAY, blended={"a": 1.5, "x": 2.0})
    assert with_blend["blended"] == {"a": 1.5}
    assert list(with_blend) == ["charlson", "hcc", "utilisation", "blended", "tier"]


# --- statistics and their dictionaries -----------------------------------------------------------


def test_tier_capture_counts_a_high_tier_patient_without_events_as_none() -> None:
    capture = tier_capture({"a": 3, "b": 4, "c": 1}, {"a": 2, "c": 5})
    assert capture == TierCapture(patients=3, high_tier_patients=2, events=7, high_tier_events=2)
    assert capture.as_dict() == {
        "tiers": [3, 4],
        "patients": 3,
        "high_tier_patients": 2,
        "patient_share": 0.666667,
        "events": 7,
        "high_tier_events": 2,
        "event_share": 0.285714,
    }
    assert TierCapture(0, 0, 0, 0).as_dict()["patient_share"] is None
    assert TierCapture(0, 0, 0, 0).as_dict()["event_share"] is None


def test_deciles_order_patients_by_score_not_by_id() -> None:
    deciles = decile_table({"a": 2.0, "b": 1.0}, {"a": 1}, groups=2)
    assert [(d.decile, d.mean_score, d.observed_rate) for d in deciles] == [
        (1, 1.0, 0.0),
        (2, 2.0, 1.0),
    ]


def test_validate_without_a_tier_metric_and_with_an_unknown_one() -> None:
    outcomes = {"a": (1, 0), "b": (0, 0), "c": (0, 2)}
    metrics = {"zeta": {"a": 1.0, "b": 0.0, "c": 2.0}, "charlson": {"q": 1.0}}
    result = validate(date(2026, 11, 22), metrics, outcomes)
    assert [(m.metric, m.patients, m.with_outcome) for m in result.metrics] == [
        ("charlson", 0, 0),
        ("zeta", 3, 2),
    ]
    assert result.metrics[0].deciles == () and result.metrics[0].c_statistic is None
    assert result.capture == TierCapture(0, 0, 0, 0)


def _result() -> ValidationResult:
    deciles = (
        Decile(decile=1, patients=2, mean_score=0.5, observed_rate=0.0, events_per_patient=0.0),
        Decile(
            decile=10,
            patients=2,
            mean_score=2.1234567,
            observed_rate=0.25,
            events_per_patient=1 / 3,
        ),
    )
    return ValidationResult(
        as_of=date(2026, 11, 22),
        baseline=date(2025, 11, 22),
        patients=8,
        with_outcome=2,
        ed_visits=3,
        inpatient_stays=1,
        metrics=(
            MetricValidation("charlson", 4, 1, 0.8123456789, deciles),
            MetricValidation("a<b>&c", 0, 0, None, ()),
        ),
        capture=TierCapture(8, 2, 4, 1),
    )


def test_the_result_as_a_dictionary() -> None:
    data = _result().as_dict()
    assert data == {
        "as_of": "2026-11-22",
        "baseline": "2025-11-22",
        "horizon_months": 12,
        "outcome": "any emergency visit or inpatient stay in (baseline, as_of]",
        "patients": 8,
        "with_outcome": 2,
        "outcome_rate": 0.25,
        "ed_visits": 3,
        "inpatient_stays": 1,
        "metrics": [
            {
                "metric": "charlson",
                "label": "Charlson index",
                "patients": 4,
                "with_outcome": 1,
                "c_statistic": 0.812346,
                "deciles": [
                    {
                        "decile": 1,
                        "patients": 2,
                        "mean_score": 0.5,
                        "observed_rate": 0.0,
                        "events_per_patient": 0.0,
                    },
                    {
                        "decile": 10,
                        "patients": 2,
                        "mean_score": 2.123457,
                        "observed_rate": 0.25,
                        "events_per_patient": 0.333333,
                    },
                ],
            },
            {
                "metric": "a<b>&c",
                "label": "a<b>&c",
                "patients": 0,
                "with_outcome": 0,
                "c_statistic": None,
                "deciles": [],
            },
        ],
        "tier_capture": TierCapture(8, 2, 4, 1).as_dict(),
    }
    empty = ValidationResult(
        date(2026, 1, 1), date(2025, 1, 1), 0, 0, 0, 0, (), TierCapture(0, 0, 0, 0)
    )
    assert empty.as_dict()["outcome_rate"] is None


def test_canonical_json_keeps_non_ascii_text() -> None:
    assert canonical_json({"label": "Zoë"}) == '{\n  "label": "Zoë"\n}\n'


# --- the calibration plot ------------------------------------------------------------------------

SVG = "{http://www.w3.org/2000/svg}"
# The chart's frame (780 x 360; plot from x=56, y=24, 454 wide and 292 high).
LEFT, TOP, PLOT_W, PLOT_H = 56, 24, 454, 292


def _elements(svg: str) -> list[tuple[str, dict[str, str], str | None]]:
    root = ET.fromstring(svg)  # noqa: S314 - our own output, not untrusted input
    assert root.tag == f"{SVG}svg"
    return [(e.tag.removeprefix(SVG), dict(e.attrib), e.text) for e in root]


def _y(rate: float, top: float) -> str:
    return f"{TOP + PLOT_H - rate / top * PLOT_H:.1f}"


def _x(decile: int) -> str:
    return f"{LEFT + (decile - 1) * PLOT_W / 9:.1f}"


def test_the_calibration_chart_element_by_element() -> None:
    svg = calibration_svg(_result())
    assert svg.endswith("</svg>\n")
    # One element (or a grid line with its label) per line; the metric's name escaped.
    lines = svg.splitlines()
    assert lines[1] == (
        "<title>Observed next-year ED or inpatient rate by decile of each risk metric</title>"
    )
    assert lines[2].startswith("<rect ") and len(lines) == 24
    assert ">a&lt;b&gt;&amp;c (c=n/a)</text>" in lines[-2]
    root = ET.fromstring(svg)  # noqa: S314 - our own output, not untrusted input
    assert root.attrib == {
        "width": "780",
        "height": "360",
        "viewBox": "0 0 780 360",
        "role": "img",
        "font-family": "sans-serif",
        "font-size": "11",
    }
    top = 0.3  # the highest observed rate, 0.25, rounded up to a tenth
    grid: list[tuple[str, dict[str, str], str | None]] = []
    for rate in (0.0, 0.1, 0.2, 0.3):
        y = _y(rate, top)
        grid.append(("line", {"x1": "56", "y1": y, "x2": "510", "y2": y, "stroke": "#eee"}, None))
        label_y = f"{TOP + PLOT_H - rate / top * PLOT_H + 4:.1f}"
        grid.append(("text", {"x": "50", "y": label_y, "text-anchor": "end"}, f"{rate:.1f}"))
    deciles = [
        ("text", {"x": _x(d), "y": "332", "text-anchor": "middle"}, str(d)) for d in range(1, 11)
    ]
    legend_y = TOP + 14 + 2 * 18
    expected = [
        ("title", {}, "Observed next-year ED or inpatient rate by decile of each risk metric"),
        (
            "rect",
            {
                "x": "56",
                "y": "24",
                "width": "454",
                "height": "292",
                "fill": "none",
                "stroke": "#999",
            },
            None,
        ),
        *grid,
        *deciles,
        (
            "text",
            {"x": "283.0", "y": "352", "text-anchor": "middle"},
            "decile of the metric (1 = lowest)",
        ),
        (
            "text",
            {"x": "14", "y": "170.0", "text-anchor": "middle", "transform": "rotate(-90 14 170.0)"},
            "observed rate",
        ),
        (
            "line",
            {
                "x1": "56",
                "y1": _y(0.25, top),
                "x2": "510",
                "y2": _y(0.25, top),
                "stroke": "#666",
                "stroke-dasharray": "4 3",
            },
            None,
        ),
        (
            "line",
            {
                "x1": "522",
                "y1": str(legend_y - 4),
                "x2": "540",
                "y2": str(legend_y - 4),
                "stroke": "#666",
                "stroke-dasharray": "4 3",
            },
            None,
        ),
        ("text", {"x": "544", "y": str(legend_y)}, "all patients"),
        (
            "polyline",
            {
                "points": f"{_x(1)},{_y(0.0, top)} {_x(10)},{_y(0.25, top)}",
                "fill": "none",
                "stroke": "#1f77b4",
                "stroke-width": "2",
            },
            None,
        ),
        (
            "line",
            {
                "x1": "522",
                "y1": "34",
                "x2": "540",
                "y2": "34",
                "stroke": "#1f77b4",
                "stroke-width": "2",
            },
            None,
        ),
        ("text", {"x": "544", "y": "38"}, "Charlson index (c=0.81)"),
        # The second metric has no deciles (no line) and a name that needs escaping.
        (
            "line",
            {
                "x1": "522",
                "y1": "52",
                "x2": "540",
                "y2": "52",
                "stroke": "#d62728",
                "stroke-width": "2",
            },
            None,
        ),
        ("text", {"x": "544", "y": "56"}, "a<b>&c (c=n/a)"),
    ]
    assert _elements(svg) == expected


def test_a_chart_without_patients_or_events_keeps_a_tenth_as_its_top() -> None:
    result = ValidationResult(
        date(2026, 1, 1), date(2025, 1, 1), 0, 0, 0, 0, (), TierCapture(0, 0, 0, 0)
    )
    elements = _elements(calibration_svg(result))
    grid = [a["y1"] for tag, a, _ in elements if tag == "line" and a.get("stroke") == "#eee"]
    assert grid == [_y(0.0, 0.1), _y(0.1, 0.1)]
    # No overall line without patients: only the legend's dashed line.
    assert sum(1 for _, a, _ in elements if a.get("stroke-dasharray")) == 1


def test_colours_cycle_after_six_metrics() -> None:
    metrics = tuple(MetricValidation(f"m{i}", 0, 0, None, ()) for i in range(7))
    result = ValidationResult(
        date(2026, 1, 1), date(2025, 1, 1), 0, 0, 0, 0, metrics, TierCapture(0, 0, 0, 0)
    )
    strokes = [
        a["stroke"]
        for tag, a, _ in _elements(calibration_svg(result))
        if tag == "line" and a.get("stroke-width") == "2"
    ]
    assert strokes == ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#1f77b4"]


@pytest.mark.parametrize(("rate", "top"), [(0.31, "0.4"), (0.4, "0.4"), (0.45, "0.5")])
def test_the_top_is_the_peak_rounded_up_to_a_tenth(rate: float, top: str) -> None:
    deciles = (Decile(1, 1, 0.0, rate, rate),)
    result = ValidationResult(
        date(2026, 1, 1),
        date(2025, 1, 1),
        0,
        0,
        0,
        0,
        (MetricValidation("charlson", 1, 1, None, deciles),),
        TierCapture(0, 0, 0, 0),
    )
    texts = [t for tag, a, t in _elements(calibration_svg(result)) if a.get("text-anchor") == "end"]
    assert texts[-1] == top
