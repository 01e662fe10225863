"""The monthly snapshot (domain/snapshot.py) pinned field by field: what `freeze` keeps and
drops, how `differences` reads missing keys, and the bounds of a month (mutation testing)."""

from __future__ import annotations

import json
from datetime import date
from types import SimpleNamespace
from typing import Any, cast

import pytest

from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.domain.snapshot import (
    SNAPSHOT_VERSION,
    differences,
    freeze,
    parse_month,
    snapshot_bytes,
)
from fhirpanel.errors import ConfigError


def _panel(who: str, size: int, relative: Any = None) -> SimpleNamespace:
    return SimpleNamespace(
        practitioner=who,
        size=size,
        risk_adjusted_size=size * 1.1234567891,
        hcc_adjusted_size=size * 0.9,
        blended_size=None,
        capacity=10,
        tiers={"1": size},
        relative=relative,
    )


def _assignment(patient: str, status: str, practitioner: str | None) -> SimpleNamespace:
    rule = "plurality" if practitioner else None
    return SimpleNamespace(patient=patient, status=status, practitioner=practitioner, rule=rule)


def _outcome() -> RunOutcome:
    """A fake of the pass's outcome: only the fields `freeze` reads."""
    relative = SimpleNamespace(
        framework="adult", peers=2, risk_adjusted_ratio=1.5, blended_ratio=None, percentile=50.0
    )
    fake = SimpleNamespace(
        as_of=date(2026, 11, 30),
        panels=SimpleNamespace(
            panels=[_panel("Practitioner/b", 1, relative), _panel("Practitioner/a", 2)]
        ),
        attribution=SimpleNamespace(
            assignments=[
                _assignment("p3", "excluded", None),
                _assignment("p2", "assigned", "Practitioner/a"),
                _assignment("p1", "assigned", "Practitioner/a"),
                _assignment("p4", "unassigned", None),
                _assignment("p5", "assigned", "Practitioner/b"),
            ]
        ),
        risk={"p1": SimpleNamespace(tier=2), "p5": SimpleNamespace(tier=1)},
        tier_distribution={"2": 1, "1": 1},
    )
    return cast(RunOutcome, fake)


def test_freeze_keeps_every_panel_and_active_patient_and_counts_every_status() -> None:
    content = freeze(_outcome(), "2026-11")
    assert content == {
        "version": SNAPSHOT_VERSION,
        "month": "2026-11",
        "as_of": "2026-11-30",
        "counts": {"assigned": 3, "excluded": 1, "unassigned": 1},
        "tiers": {"2": 1, "1": 1},
        "panels": [
            {
                "practitioner": "Practitioner/a",
                "size": 2,
                "risk_adjusted_size": pytest.approx(2.246914, abs=1e-6),
                "hcc_adjusted_size": 1.8,
                "blended_size": None,
                "capacity": 10,
                "tiers": {"1": 2},
                "relative": None,
            },
            {
                "practitioner": "Practitioner/b",
                "size": 1,
                "risk_adjusted_size": pytest.approx(1.123457, abs=1e-6),
                "hcc_adjusted_size": 0.9,
                "blended_size": None,
                "capacity": 10,
                "tiers": {"1": 1},
                "relative": {
                    "framework": "adult",
                    "peers": 2,
                    "risk_adjusted_ratio": 1.5,
                    "blended_ratio": None,
                    "percentile": 50.0,
                },
            },
        ],
        "patients": {
            "p1": {
                "status": "assigned",
                "practitioner": "Practitioner/a",
                "rule": "plurality",
                "tier": 2,
            },
            "p2": {
                "status": "assigned",
                "practitioner": "Practitioner/a",
                "rule": "plurality",
                "tier": None,
            },
            "p4": {"status": "unassigned", "practitioner": None, "rule": None, "tier": None},
            "p5": {
                "status": "assigned",
                "practitioner": "Practitioner/b",
                "rule": "plurality",
                "tier": 1,
            },
        },
    }
    # Patients in id order, floats rounded (canonical): the bytes do not depend on input order.
    assert list(content["patients"]) == ["p1", "p2", "p4", "p5"]
    assert list(content["counts"]) == ["assigned", "excluded", "unassigned"]
    assert content["panels"][0]["risk_adjusted_size"] == round(2 * 1.1234567891, 6)


def test_snapshot_bytes_are_the_canonical_json_of_the_content() -> None:
    content = freeze(_outcome(), "2026-11")
    data = snapshot_bytes(content)
    assert json.loads(data) == content
    assert data.endswith(b"\n") and data.index(b'"as_of"') < data.index(b'"counts"')


def test_differences_count_a_key_missing_on_either_side_as_zero() -> None:
    # Each side lacks what the other has: missing counts, tiers, panels and patients read as none.
    full = {
        "counts": {"assigned": 1},
        "tiers": {"1": 1},
        "panels": [{"practitioner": "Practitioner/a", "size": 1}],
        "patients": {"p1": {"tier": 1}},
    }
    assert differences({}, full) == [
        "count assigned: 0 -> 1",
        "tier 1: 0 -> 1",
        "panel Practitioner/a: 0 -> 1 patients",
        "patients: 0 changed, 1 added, 0 removed",
    ]
    assert differences(full, {}) == [
        "count assigned: 1 -> 0",
        "tier 1: 1 -> 0",
        "panel Practitioner/a: 1 -> 0 patients",
        "patients: 0 changed, 0 added, 1 removed",
    ]


def test_differences_name_a_clinician_on_one_side_only() -> None:
    old = {"panels": [{"practitioner": "Practitioner/a", "size": 2}]}
    new = {"panels": [{"practitioner": "Practitioner/b", "size": 2}]}
    assert differences(old, new) == [
        "panel Practitioner/a: 2 -> 0 patients",
        "panel Practitioner/b: 0 -> 2 patients",
    ]


def test_a_patient_added_without_one_changed_is_reported() -> None:
    old = {"patients": {"p1": {"tier": 1}}}
    new = {"patients": {"p1": {"tier": 1}, "p2": {"tier": 1}}}
    assert differences(old, new) == ["patients: 0 changed, 1 added, 0 removed"]


def test_same_counts_but_other_ratios_say_so() -> None:
    old = {"panels": [{"practitioner": "Practitioner/a", "size": 2, "risk_adjusted_size": 2.0}]}
    new = {"panels": [{"practitioner": "Practitioner/a", "size": 2, "risk_adjusted_size": 2.5}]}
    assert differences(old, new) == ["panel sizes or ratios differ (same counts)"]


@pytest.mark.parametrize("text", ["2026-01", "2026-12", "0001-06", " 2026-03 "])
def test_months_at_the_bounds_are_months(text: str) -> None:
    year, month = (int(part) for part in text.strip().split("-"))
    assert parse_month(text) == (year, month)


@pytest.mark.parametrize("text", ["0000-06", "2026-00", "2026-13"])
def test_a_month_out_of_range_is_refused_and_named(text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        parse_month(text)


def test_a_zero_on_one_side_and_nothing_on_the_other_is_no_difference_in_count() -> None:
    old = {
        "counts": {},
        "tiers": {"4": 0},
        "panels": [{"practitioner": "Practitioner/a", "size": 0}],
    }
    new = {"counts": {"excluded": 0}, "tiers": {}, "panels": []}
    assert differences(old, new) == ["panel sizes or ratios differ (same counts)"]
    assert differences(new, old) == ["panel sizes or ratios differ (same counts)"]
