"""What attribution takes besides the population and the rules (a manual assignment, the
statuses a person records) and what it returns: each patient's assignment with its explanation,
the eligibility report, the qualifying visits it used."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

from fhirpanel.domain.confirmations import ProposedMove

AssignmentStatus = Literal["assigned", "unassigned", "excluded"]


@dataclass(frozen=True)
class ManualAssignment:
    """A clinician's or patient's choice; outranks every pipeline step until removed."""

    patient: str
    practitioner: str
    practitioner_role: str | None = None
    reason: str = ""
    requested_by: str = "clinician"  # clinician | patient | family | staff
    confirmation: str = "proposed"


# Statuses a person records for a patient (docs/methods.md s.2.8), and the exclusion reason each
# gives. "deceased" is for a death the EHR does not show yet: its own reason, so a record that
# says so later is told apart.
PERSON_STATUSES: Mapping[str, str] = {
    "moved-away": "moved-away",
    "transferred-care": "transferred-care",
    "dismissed": "dismissed",
    "deceased": "deceased-recorded",
}


@dataclass(frozen=True)
class Assignment:
    patient: str
    status: AssignmentStatus
    practitioner: str | None = None
    practitioner_role: str | None = None  # the role seen on the deciding visits, when known
    rule: str | None = None  # single-provider | plurality | sentinel-exam | last-visit |
    #                          declared-pcp | manual | risk-product | confirmed
    step: str | None = None  # the pipeline step that decided, e.g. "four-cut-18m"
    window_months: int | None = None
    tie_broken: bool = False
    visits: tuple[tuple[str, int], ...] = ()  # (practitioner, qualifying visits in window)
    evidence: tuple[str, ...] = ()  # Encounter ids behind the decision, sorted
    sentinel_exam: str | None = None  # the Encounter id when the sentinel cut decided
    last_visit: date | None = None  # last qualifying visit with the assigned clinician
    reason: str | None = None  # excluded: inactive | deceased | merged, or a PERSON_STATUSES
    #                            reason; unassigned: why
    confirmation: str = "proposed"


@dataclass(frozen=True)
class EligibilityReport:
    """Which clinicians may be attributed patients, and how each was recognised."""

    by_code: tuple[str, ...]
    by_text: tuple[str, ...]
    not_matched: tuple[str, ...]
    fallback_all_on_visits: bool
    # With no PractitionerRole data: the clinicians on a qualifying visit, all eligible.
    on_visits: tuple[str, ...] = ()
    pediatric: tuple[str, ...] = ()  # eligible clinicians with a pediatric role
    pediatric_only: tuple[str, ...] = ()  # ... and no other primary-care role
    # Left the practice as of the as-of date: Practitioner.active false, or every primary-care
    # role inactive or past its period's end. Not eligible; a subset of not_matched.
    departed: tuple[str, ...] = ()
    _eligible: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        members = self.on_visits if self.fallback_all_on_visits else self.by_code + self.by_text
        object.__setattr__(self, "_eligible", frozenset(members))

    @property
    def eligible(self) -> tuple[str, ...]:
        return tuple(sorted(self._eligible))

    def is_eligible(self, practitioner: str) -> bool:
        return practitioner in self._eligible


@dataclass(frozen=True)
class AttributionResult:
    as_of: date
    pipeline: str
    assignments: tuple[Assignment, ...]  # sorted by patient id; every patient once
    eligibility: EligibilityReport
    # The qualifying visits per patient the decision used; panels and outreach reuse them
    # rather than classify every encounter again.
    visits: Mapping[str, tuple[QualifyingVisit, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # Moves the rules would make that a current confirmation held back, by patient id; and the
    # patients held whose same move a person had dismissed (not proposed again).
    proposed_moves: tuple[ProposedMove, ...] = ()
    dismissed_kept: tuple[str, ...] = ()

    def by_patient(self) -> dict[str, Assignment]:
        return {a.patient: a for a in self.assignments}


@dataclass(frozen=True, order=True)
class QualifyingVisit:
    """A qualifying visit reduced to what attribution needs; orders by time, then id."""

    day: date
    start: datetime
    encounter: str
    practitioner: str
    practitioner_role: str | None = field(default=None, compare=False)
    sentinel: bool = field(default=False, compare=False)


__all__ = [
    "PERSON_STATUSES",
    "Assignment",
    "AssignmentStatus",
    "AttributionResult",
    "EligibilityReport",
    "ManualAssignment",
    "QualifyingVisit",
]
