"""A payer's member attribution list for a risk-based product (white paper, Exhibit Two, case
study 1: "assign all patients in a risk-based product"), as the `risk-product` step reads it.

The reader (fhir/member_list.py) turns a Da Vinci ATR Group, a server Group or a CSV file into a
`MemberList`: patient id -> the clinician the payer attributed (a Practitioner or
PractitionerRole reference), with what it could not use as issues. What only the population
knows (is the patient ours, is the clinician eligible for primary care) is checked here, against
the pass's population and eligibility: issues, never failures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fhirpanel.domain.attribution import AttributionResult, EligibilityReport
from fhirpanel.domain.records import Issue, Population

RISK_PRODUCT_RULE = "risk-product"


@dataclass(frozen=True)
class MemberList:
    """The members the list assigns and what the reader left out."""

    label: str  # where it came from: a file name or `Group/ID`
    members: Mapping[str, str] = field(default_factory=dict)  # Patient/x -> clinician ref
    issues: tuple[Issue, ...] = ()
    entries: int = 0  # members or rows read, used or not

    def subset(self, patients: Iterable[str]) -> MemberList:
        """The members among `patients` (an incremental pass's), without the reader's issues
        (the full pass records those once)."""
        wanted = set(patients)
        return MemberList(
            self.label,
            {p: c for p, c in self.members.items() if p in wanted},
            (),
            self.entries,
        )


def member_issues(
    members: MemberList, population: Population, eligibility: EligibilityReport
) -> list[Issue]:
    """Members the list names that the step cannot follow: a patient not in the population, or
    a clinician who is not eligible for primary care (unknown, not primary care, departed, or a
    PractitionerRole with no such clinician). The patient still goes through the rest of the
    pipeline."""
    where = f"risk-product list {members.label}"
    issues: list[Issue] = []
    for patient, clinician in sorted(members.members.items()):
        if patient not in population.patients:
            issues.append(Issue(patient, f"{where}: not in the population", "skipped"))
            continue
        reason = _ineligible(clinician, population, eligibility)
        if reason is not None:
            issues.append(
                Issue(
                    patient,
                    f"{where}: {clinician} {reason}: attributed by the next step",
                    "skipped",
                )
            )
    return issues


def _ineligible(
    clinician: str, population: Population, eligibility: EligibilityReport
) -> str | None:
    if clinician.startswith("PractitionerRole/"):
        role = population.roles.get(clinician)
        if role is None:
            return "is not a known PractitionerRole"
        if role.practitioner is None:
            return "names no Practitioner"
        clinician = role.practitioner
    if eligibility.is_eligible(clinician):
        return None
    if clinician in eligibility.departed:
        return "has left the practice"
    if clinician not in population.practitioners:
        return "is not a known clinician"
    return "is not eligible for primary-care attribution"


def assigned_by_list(attribution: AttributionResult) -> int:
    """Patients the list assigned (rule `risk-product`)."""
    return sum(
        1 for a in attribution.assignments if a.status == "assigned" and a.rule == RISK_PRODUCT_RULE
    )


__all__ = ["RISK_PRODUCT_RULE", "MemberList", "assigned_by_list", "member_issues"]
