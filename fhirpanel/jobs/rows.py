"""A pass's outcome as the store's plain rows: the one place a `RunOutcome` becomes
`PatientRow`s and `ClinicianRow`s, so the store never sees the domain's outcome; and the
stored suggestions read back whole (`stored_suggestions`), for placement and its review."""

from __future__ import annotations

from typing import Any

from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.store import Store
from fhirpanel.store.queries import unassigned_patients
from fhirpanel.store.results import ClinicianRow, MoveRow, PatientRow, ResultRows

SUGGESTION_PAGE = 1000  # unassigned patients read per query


def result_rows(outcome: RunOutcome, *, clinicians: bool) -> ResultRows:
    """Every patient the pass attributed, and with `clinicians` (a full pass) every panel."""
    return ResultRows(
        patients=patient_rows(outcome),
        clinicians=clinician_rows(outcome) if clinicians else None,
        moves=move_rows(outcome),
    )


def move_rows(outcome: RunOutcome) -> tuple[MoveRow, ...]:
    """The moves a confirmation held back (`AttributionResult.proposed_moves`)."""
    return tuple(
        MoveRow(
            patient=m.patient,
            from_practitioner=m.from_practitioner,
            to_practitioner=m.to_practitioner,
            rule=m.rule,
            step=m.step,
            window_months=m.window_months,
            visits=dict(m.visits),
            evidence=m.evidence,
            held_by=m.held_by,
        )
        for m in outcome.attribution.proposed_moves
    )


def patient_rows(outcome: RunOutcome) -> tuple[PatientRow, ...]:
    # Imported here: the report (and rich) stay out of processes that never store a pass.
    from fhirpanel.report import patient_entry

    suggestions = {sg.patient: sg for sg in outcome.panels.suggestions}
    outreach = {o.patient: tuple(o.reasons) for o in outcome.outreach}
    weights = outcome.panels.weights
    rows = []
    for a in outcome.attribution.assignments:
        risk = outcome.risk.get(a.patient)
        suggestion = suggestions.get(a.patient)
        person = outcome.population.patients.get(a.patient)
        rows.append(
            PatientRow(
                patient=a.patient,
                status=a.status,
                practitioner=a.practitioner,
                rule=a.rule,
                step=a.step,
                reason=a.reason,
                tier=risk.tier if risk is not None else None,
                charlson=risk.charlson if risk is not None else None,
                hcc=risk.hcc if risk is not None else None,
                ccm_eligible=bool(risk.ccm_eligible) if risk is not None else False,
                # A patient the population does not hold counts as one (weight 1.0).
                weight=(
                    weights.weight(person.birth_date, person.sex, outcome.as_of)
                    if person is not None
                    else 1.0
                ),
                last_visit=a.last_visit.isoformat() if a.last_visit else None,
                outreach=outreach.get(a.patient, ()),
                suggested=suggestion.practitioner if suggestion else None,
                suggestion_reason=suggestion.reason if suggestion else None,
                detail=patient_entry(a, outcome),
            )
        )
    return tuple(rows)


def clinician_rows(outcome: RunOutcome) -> tuple[ClinicianRow, ...]:
    from fhirpanel.report import relative_entry

    eligibility = outcome.attribution.eligibility
    eligible, pediatric = set(eligibility.eligible), set(eligibility.pediatric)
    practitioners = outcome.population.practitioners
    return tuple(
        ClinicianRow(
            practitioner=panel.practitioner,
            name=practitioners[panel.practitioner].name
            if panel.practitioner in practitioners
            else None,
            eligible=panel.practitioner in eligible,
            pediatric=panel.practitioner in pediatric,
            size=panel.size,
            risk_adjusted_size=panel.risk_adjusted_size,
            hcc_adjusted_size=panel.hcc_adjusted_size,
            capacity=panel.capacity,
            open_capacity=panel.open_capacity,
            tiers={t: n for t, n in panel.tiers},
            supply=panel.supply,
            demand=panel.demand,
            expected_visits=panel.expected_visits,
            blended_size=panel.blended_size,
            capacity_method=panel.capacity_method,
            # The column holds 256 characters (PostgreSQL refuses more); the report keeps it all.
            capacity_basis=panel.capacity_basis[:256] if panel.capacity_basis else None,
            relative=relative_entry(panel.relative),
        )
        for panel in outcome.panels.panels
    )


def stored_suggestions(store: Store) -> list[dict[str, Any]]:
    """Every unassigned patient as the store holds them, highest tier first, then by id
    (placement's order): `patient`, `tier`, `suggested` (None: no room), `suggestion_reason`,
    `weight` (age/sex weight), ... as `queries.unassigned_patients` lists them."""
    rows: list[dict[str, Any]] = []
    page = 1
    while True:
        found = unassigned_patients(store, sort="-tier", page=page, page_size=SUGGESTION_PAGE)
        rows.extend(found.rows)
        if page >= found.pages:
            break
        page += 1
    for row in rows:
        row["weight"] = float(row["weight"]) if row.get("weight") is not None else 1.0
    return rows
