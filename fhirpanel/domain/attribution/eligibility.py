"""Who counts: which patients are excluded (merged, deceased, inactive), which clinicians are
eligible for a primary-care panel, and each patient's qualifying visits, in or out of a
look-back window (docs/methods.md s.1; the window is explained in
`fhirpanel.domain.attribution`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Literal

from fhirpanel.domain.attribution.results import EligibilityReport, QualifyingVisit
from fhirpanel.domain.attribution.rules import AttributionRules, normalise_label
from fhirpanel.domain.dates import months_before
from fhirpanel.domain.records import PatientRecord, Population


def in_window(day: date, as_of: date, months: int | None) -> bool:
    """True when `window_start < day <= as_of`; `months=None` means no lower bound."""
    if day > as_of:
        return False
    return months is None or day > months_before(as_of, months)


def exclusion_reason(patient: PatientRecord, as_of: date) -> str | None:
    """merged, deceased or inactive (docs/methods.md s.1), in that order of precedence; else
    None."""
    if patient.replaced_by is not None:
        return "merged"
    if patient.deceased and (patient.deceased_date is None or patient.deceased_date <= as_of):
        return "deceased"
    if not patient.active:
        return "inactive"
    return None


def _role_match(
    codes: Iterable[tuple[str, str]],
    texts: Iterable[str],
    code_set: frozenset[tuple[str, str]],
    label_set: frozenset[str],
) -> Literal["code", "text"] | None:
    if any(key in code_set for key in codes):
        return "code"
    if any(normalise_label(t) in label_set for t in texts):
        return "text"
    return None


def assess_eligibility(
    population: Population, as_of: date, rules: AttributionRules
) -> EligibilityReport:
    """A clinician is eligible when a PractitionerRole they hold on the as-of date (active, and
    within its period) matches a primary-care code, else a text label, and their Practitioner
    is not `active: false` (docs/methods.md s.1). A clinician who left (inactive, or every
    primary-care role ended) is listed as `departed`: their earlier visits stay in the record but
    decide nothing. With no PractitionerRole at all, every active clinician on a qualifying visit
    on or before the as-of date is eligible and the report says so."""
    specialties = rules.primary_care
    clinicians: set[str] = set(population.practitioners)
    clinicians.update(r.practitioner for r in population.roles.values() if r.practitioner)
    clinicians.update(e.practitioner for e in population.encounters if e.practitioner)
    inactive = {p.id for p in population.practitioners.values() if not p.active}
    if not population.roles:
        on_visits = {
            e.practitioner
            for e in population.encounters
            if e.practitioner
            and e.practitioner not in inactive
            and e.day is not None
            and e.day <= as_of
            and rules.visits.qualifies(e)
        }
        return EligibilityReport(
            by_code=(),
            by_text=(),
            not_matched=tuple(sorted(clinicians - on_visits)),
            fallback_all_on_visits=True,
            on_visits=tuple(sorted(on_visits)),
            departed=tuple(sorted(inactive & clinicians)),
        )
    matches: dict[str, set[str]] = {}
    pediatric_roles: dict[str, set[bool]] = {}
    primary_care_once: set[str] = set()  # held a primary-care role at some time
    for role in population.roles.values():
        if role.practitioner is None:
            continue
        keys = [c.key for c in role.codes + role.specialties]
        how = _role_match(keys, role.texts, specialties.codes, specialties.labels)
        if how is None:
            continue
        primary_care_once.add(role.practitioner)
        # A role that is inactive, ended or not yet begun is not one the clinician holds now.
        if not role.held_on(as_of) or role.practitioner in inactive:
            continue
        matches.setdefault(role.practitioner, set()).add(how)
        is_pediatric = (
            _role_match(keys, role.texts, specialties.pediatric_codes, specialties.pediatric_labels)
            is not None
        )
        pediatric_roles.setdefault(role.practitioner, set()).add(is_pediatric)
    by_code = sorted(p for p, how in matches.items() if "code" in how)
    by_text = sorted(p for p, how in matches.items() if "code" not in how)
    pediatric = sorted(p for p, flags in pediatric_roles.items() if True in flags)
    pediatric_only = sorted(p for p, flags in pediatric_roles.items() if flags == {True})
    return EligibilityReport(
        by_code=tuple(by_code),
        by_text=tuple(by_text),
        not_matched=tuple(sorted(clinicians - set(matches))),
        fallback_all_on_visits=False,
        pediatric=tuple(pediatric),
        pediatric_only=tuple(pediatric_only),
        departed=tuple(sorted((primary_care_once | (inactive & clinicians)) - set(matches))),
    )


def qualifying_visits(
    population: Population, as_of: date, rules: AttributionRules, eligibility: EligibilityReport
) -> dict[str, tuple[QualifyingVisit, ...]]:
    """Per patient, qualifying visits to eligible clinicians on or before the as-of date,
    oldest first (ties by start time, then Encounter id)."""
    out: dict[str, list[QualifyingVisit]] = {}
    for enc in population.encounters:
        if enc.practitioner is None or enc.start is None or not rules.visits.qualifies(enc):
            continue
        day = enc.start.date()
        if day > as_of or not eligibility.is_eligible(enc.practitioner):
            continue
        out.setdefault(enc.patient, []).append(
            QualifyingVisit(
                day=day,
                start=enc.start,
                encounter=enc.id,
                practitioner=enc.practitioner,
                practitioner_role=enc.practitioner_role,
                sentinel=rules.sentinel.is_sentinel(enc),
            )
        )
    return {patient: tuple(sorted(visits)) for patient, visits in out.items()}


def visits_in_window(
    visits: Sequence[QualifyingVisit], as_of: date, months: int | None
) -> tuple[QualifyingVisit, ...]:
    return tuple(v for v in visits if in_window(v.day, as_of, months))


def visit_counts(visits: Iterable[QualifyingVisit]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(Counter(v.practitioner for v in visits).items()))


__all__ = [
    "assess_eligibility",
    "exclusion_reason",
    "in_window",
    "qualifying_visits",
    "visit_counts",
    "visits_in_window",
]
