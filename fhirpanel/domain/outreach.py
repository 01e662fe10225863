"""Outreach: assigned patients a practice should contact, not seen lately or overdue for a
physical / health check (the sentinel exam of the Four Cut method, docs/methods.md s.2)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from fhirpanel.domain.attribution import (
    AttributionResult,
    AttributionRules,
    in_window,
    qualifying_visits,
)
from fhirpanel.domain.records import Population


@dataclass(frozen=True)
class OutreachItem:
    patient: str
    practitioner: str
    reasons: tuple[str, ...]  # "not-seen-12m", "no-sentinel-24m"
    last_visit: date | None
    last_sentinel_exam: date | None


def outreach_list(
    population: Population,
    attribution: AttributionResult,
    as_of: date,
    rules: AttributionRules,
    not_seen_months: int = 12,
    sentinel_months: int = 24,
) -> tuple[OutreachItem, ...]:
    """Every assigned patient with no qualifying visit to an eligible (primary-care) clinician in
    the last `not_seen_months`, or no sentinel exam in the last `sentinel_months`. Visits to any
    eligible clinician count, not only the patient's PCP: the practice has seen them. Sorted by
    clinician, then patient, as a per-clinician worklist."""
    visits = attribution.visits or qualifying_visits(
        population, as_of, rules, attribution.eligibility
    )
    items = []
    for assignment in attribution.assignments:
        if assignment.status != "assigned" or assignment.practitioner is None:
            continue
        seen = visits.get(assignment.patient, ())
        last_visit = seen[-1].day if seen else None
        sentinel_days = [v.day for v in seen if v.sentinel]
        last_sentinel = max(sentinel_days) if sentinel_days else None
        reasons = []
        if last_visit is None or not in_window(last_visit, as_of, not_seen_months):
            reasons.append(f"not-seen-{not_seen_months}m")
        if last_sentinel is None or not in_window(last_sentinel, as_of, sentinel_months):
            reasons.append(f"no-sentinel-{sentinel_months}m")
        if reasons:
            items.append(
                OutreachItem(
                    patient=assignment.patient,
                    practitioner=assignment.practitioner,
                    reasons=tuple(reasons),
                    last_visit=last_visit,
                    last_sentinel_exam=last_sentinel,
                )
            )
    return tuple(sorted(items, key=lambda item: (item.practitioner, item.patient)))


__all__ = ["OutreachItem", "outreach_list"]
