"""The attribution pipeline: every patient excluded, assigned or unassigned, each with why. An
override outranks every step; then the pipeline's steps in order, first match wins (white
paper, Exhibit Two); a current confirmation holds a patient the steps would move and proposes
the move instead (docs/methods.md s.2)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from fhirpanel.domain.attribution.eligibility import (
    assess_eligibility,
    exclusion_reason,
    in_window,
    qualifying_visits,
    visit_counts,
    visits_in_window,
)
from fhirpanel.domain.attribution.four_cut import four_cut
from fhirpanel.domain.attribution.results import (
    PERSON_STATUSES,
    Assignment,
    AttributionResult,
    EligibilityReport,
    ManualAssignment,
    QualifyingVisit,
)
from fhirpanel.domain.attribution.rules import AttributionRules, Pipeline
from fhirpanel.domain.confirmations import (
    CONFIRMED,
    DEFAULT_MONTHS,
    ConfirmedAssignment,
    DismissedMove,
    ProposedMove,
)
from fhirpanel.domain.records import EncounterRecord, PatientRecord, Population


@dataclass(frozen=True)
class _Choice:
    """What a non-Four-Cut step decided, before the explanation is added."""

    practitioner: str
    practitioner_role: str | None
    rule: str
    confirmation: str = "proposed"


def clinician_from_reference(
    reference: str, population: Population, eligibility: EligibilityReport
) -> tuple[str, str | None] | None:
    """An eligible clinician named by a Practitioner or PractitionerRole reference; an
    Organization, an unknown role or an ineligible clinician gives None."""
    if reference.startswith("PractitionerRole/"):
        role = population.roles.get(reference)
        if role is None or role.practitioner is None:
            return None
        if eligibility.is_eligible(role.practitioner):
            return role.practitioner, reference
        return None
    if reference.startswith("Practitioner/") and eligibility.is_eligible(reference):
        return reference, None
    return None


def _latest_role(visits: Sequence[QualifyingVisit], practitioner: str) -> str | None:
    for visit in reversed(visits):
        if visit.practitioner == practitioner and visit.practitioner_role:
            return visit.practitioner_role
    return None


def _last_day(visits: Sequence[QualifyingVisit], practitioner: str) -> date | None:
    days = [v.day for v in visits if v.practitioner == practitioner]
    return max(days) if days else None


def _explained(
    patient: str, choice: _Choice, step: str, window: int | None, visits: Sequence[QualifyingVisit]
) -> Assignment:
    """A manual, declared-PCP or risk-product choice with the visits behind it for review."""
    return Assignment(
        patient=patient,
        status="assigned",
        practitioner=choice.practitioner,
        practitioner_role=choice.practitioner_role or _latest_role(visits, choice.practitioner),
        rule=choice.rule,
        step=step,
        window_months=window,
        visits=visit_counts(visits),
        last_visit=_last_day(visits, choice.practitioner),
        confirmation=choice.confirmation,
    )


def _unassigned_reason(
    population_visits: Sequence[EncounterRecord],
    rules: AttributionRules,
    as_of: date,
    window: int | None,
    eligibility: EligibilityReport,
) -> str:
    span = f"in the last {window} months" if window is not None else "on or before the as-of date"
    qualifying = [
        e
        for e in population_visits
        if e.practitioner
        and e.day is not None
        and in_window(e.day, as_of, window)
        and rules.visits.qualifies(e)
    ]
    if not qualifying:
        return f"no qualifying visit {span}"
    # A pipeline whose steps do not look at every visit in its widest window (no Four Cut step,
    # or Four Cut over a shorter window than another step's) can leave a patient with visits
    # to eligible clinicians unassigned: say so, rather than blame the clinicians.
    if any(e.practitioner and eligibility.is_eligible(e.practitioner) for e in qualifying):
        return f"no step of the pipeline chose among the qualifying visits {span}"
    return f"qualifying visits {span} were only with clinicians not eligible for primary care"


def attribute_patients(
    population: Population,
    as_of: date,
    pipeline: Pipeline,
    rules: AttributionRules,
    manual: Mapping[str, ManualAssignment] | None = None,
    risk_product_members: Mapping[str, str] | None = None,
    statuses: Mapping[str, str] | None = None,
    confirmed: Mapping[str, ConfirmedAssignment] | None = None,
    dismissed: Mapping[str, DismissedMove] | None = None,
    confirmation_months: int = DEFAULT_MONTHS,
) -> AttributionResult:
    """Attribute every patient in the population: excluded (with the reason), assigned (with the
    step, rule and evidence) or unassigned (with why). Manual assignments outrank every step;
    then the pipeline's steps in order, first match wins (white paper, Exhibit Two).

    - declared-pcp: Patient.generalPractitioner naming an eligible Practitioner, or a
      PractitionerRole of one; an Organization is ignored. With window_months, only for a
      patient who had a qualifying visit in that window (an active patient, docs/methods.md s.1).
    - risk-product: the payer's member list (patient -> Practitioner or PractitionerRole),
      followed when it names an eligible clinician; skipped when no list is passed.
      window_months, if set, works as for declared-pcp.
    - four-cut: the Four Cut method over the step's window.

    `statuses`: patient -> a status a person recorded (a key of PERSON_STATUSES); the patient is
    excluded with its reason, after the record's own reasons and before any override.

    `confirmed`: patient -> their current clinician and the days it was confirmed. When the
    steps would move the patient elsewhere (or leave them unassigned) while a confirmation is
    current (`confirmation_months`) and the clinician is still eligible, the patient stays
    (rule `confirmed`) and the move is proposed (`AttributionResult.proposed_moves`), unless
    `dismissed` holds the same move on the same visit counts (docs/methods.md s.2.9).
    Overrides and statuses outrank confirmations.
    """
    eligibility = assess_eligibility(population, as_of, rules)
    visits_by_patient = qualifying_visits(population, as_of, rules, eligibility)
    encounters_by_patient = population.encounters_by_patient()
    manual = manual or {}
    statuses = statuses or {}
    confirmed = confirmed or {}
    dismissed = dismissed or {}
    moves: list[ProposedMove] = []
    kept: list[str] = []
    unknown = sorted(set(statuses.values()) - set(PERSON_STATUSES))
    if unknown:
        raise ValueError(f"unknown patient status {unknown[0]!r}")
    # Visit counts shown with a non-Four-Cut choice cover the pipeline's widest window.
    explain_window = pipeline.widest_window
    assignments = []
    for patient_id in sorted(population.patients):
        patient = population.patients[patient_id]
        reason = exclusion_reason(patient, as_of)
        if reason is None and patient_id in statuses:
            reason = PERSON_STATUSES[statuses[patient_id]]
        if reason is not None:
            assignments.append(Assignment(patient=patient_id, status="excluded", reason=reason))
            continue
        visits = visits_by_patient.get(patient_id, ())
        override = manual.get(patient_id)
        if override is not None:
            choice = _Choice(
                override.practitioner, override.practitioner_role, "manual", override.confirmation
            )
            assignments.append(
                _explained(
                    patient_id,
                    choice,
                    "manual",
                    explain_window,
                    visits_in_window(visits, as_of, explain_window),
                )
            )
            continue
        assignment = _run_steps(
            patient, visits, pipeline, population, eligibility, as_of, risk_product_members
        )
        held = confirmed.get(patient_id)
        by = held.current(as_of, confirmation_months) if held is not None else ()
        if (
            held is not None
            and by
            and eligibility.is_eligible(held.practitioner)
            and (assignment is None or assignment.practitioner != held.practitioner)
        ):
            # A current confirmation holds: the patient stays; a move to another clinician is
            # proposed for a person to decide (unless they dismissed it on the same evidence).
            if assignment is not None and assignment.practitioner is not None:
                move = ProposedMove(
                    patient=patient_id,
                    from_practitioner=held.practitioner,
                    to_practitioner=assignment.practitioner,
                    rule=assignment.rule or "",
                    step=assignment.step,
                    window_months=assignment.window_months,
                    visits=assignment.visits,
                    evidence=assignment.evidence,
                    held_by=by,
                )
                if move.same_as(dismissed.get(patient_id)):
                    kept.append(patient_id)
                else:
                    moves.append(move)
            choice = _Choice(held.practitioner, None, "confirmed", "confirmed")
            assignments.append(
                _explained(
                    patient_id,
                    choice,
                    CONFIRMED,
                    explain_window,
                    visits_in_window(visits, as_of, explain_window),
                )
            )
            continue
        if assignment is None:
            window_visits = visits_in_window(visits, as_of, explain_window)
            assignment = Assignment(
                patient=patient_id,
                status="unassigned",
                window_months=explain_window,
                visits=visit_counts(window_visits),
                reason=_unassigned_reason(
                    encounters_by_patient.get(patient_id, ()),
                    rules,
                    as_of,
                    explain_window,
                    eligibility,
                ),
            )
        assignments.append(assignment)
    return AttributionResult(
        as_of=as_of,
        pipeline=pipeline.name,
        assignments=tuple(assignments),
        eligibility=eligibility,
        visits=visits_by_patient,
        proposed_moves=tuple(moves),
        dismissed_kept=tuple(kept),
    )


def _run_steps(
    patient: PatientRecord,
    visits: tuple[QualifyingVisit, ...],
    pipeline: Pipeline,
    population: Population,
    eligibility: EligibilityReport,
    as_of: date,
    risk_product_members: Mapping[str, str] | None,
) -> Assignment | None:
    for step in pipeline.steps:
        window_visits = visits_in_window(visits, as_of, step.window_months)
        if step.kind == "four-cut":
            decision = four_cut(window_visits)
            if decision is None:
                continue
            on_deciding = [v for v in window_visits if v.encounter in decision.evidence]
            role = _latest_role(on_deciding, decision.practitioner) or _latest_role(
                window_visits, decision.practitioner
            )
            return Assignment(
                patient=patient.id,
                status="assigned",
                practitioner=decision.practitioner,
                practitioner_role=role,
                rule=decision.rule,
                step=step.name,
                window_months=step.window_months,
                tie_broken=decision.tie_broken,
                visits=visit_counts(window_visits),
                evidence=decision.evidence,
                sentinel_exam=decision.sentinel_exam,
                last_visit=_last_day(window_visits, decision.practitioner),
            )
        if step.kind == "manual":
            continue  # applied before the steps, whatever its place
        if step.window_months is not None and not window_visits:
            continue  # not an active patient for this step's window
        choice: _Choice | None = None
        if step.kind == "declared-pcp":
            for reference in patient.general_practitioners:
                found = clinician_from_reference(reference, population, eligibility)
                if found is not None:
                    choice = _Choice(found[0], found[1], "declared-pcp")
                    break
        elif step.kind == "risk-product" and risk_product_members:
            member_of = risk_product_members.get(patient.id)
            # Read as a declared PCP is: a clinician who is not eligible (not primary care, or
            # unknown) does not take the patient; the pipeline goes on.
            found = (
                clinician_from_reference(member_of, population, eligibility)
                if member_of is not None
                else None
            )
            if found is not None:
                choice = _Choice(found[0], found[1], "risk-product")
        if choice is not None:
            window = (
                step.window_months if step.window_months is not None else (pipeline.widest_window)
            )
            return _explained(
                patient.id, choice, step.name, window, visits_in_window(visits, as_of, window)
            )
    return None


__all__ = ["attribute_patients", "clinician_from_reference"]
