"""The panel review cycle and the practice's readiness measures (fhirpanel issue 17 item 6;
docs/methods.md s.3.8).

The practice-transformation milestone asks that the practice "reviews and updates panel
assignments on a regular basis" and "has assigned all patients to a provider panel and
confirmed the assignments with providers and patients". Here:

- each eligible clinician's panel is due for review `months` (`review.panel_review_months`,
  default 3: quarterly) after its last review; a panel never reviewed is due now;
- due: the due date is today or past, or never reviewed; overdue: the due date is past;
- readiness: the share of active patients (not excluded) assigned, the share of assigned
  patients confirmed with their clinician, and with the patient (or family), by a
  confirmation for the clinician they are with now.

Pure: today is a parameter (a review is a matter of the calendar, not of the data's as-of).
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

NEVER = "never-reviewed"
DUE = "due"
OVERDUE = "overdue"
CURRENT = "current"
REVIEW_STATES = (NEVER, OVERDUE, DUE, CURRENT)


def months_after(day: date, months: int) -> date:
    """`day` plus `months` calendar months, the day clamped to the month's end (2026-11-30
    plus 3 months is 2027-02-28)."""
    if months < 0:
        raise ValueError("months must be >= 0")
    year, month_index = divmod(day.year * 12 + (day.month - 1) + months, 12)
    last = calendar.monthrange(year, month_index + 1)[1]
    return date(year, month_index + 1, min(day.day, last))


@dataclass(frozen=True)
class ReviewDue:
    """When one panel is next due for review, and where it stands today."""

    practitioner: str
    last_reviewed: date | None
    due_on: date | None  # None: never reviewed (due now)
    state: str  # one of REVIEW_STATES

    @property
    def is_due(self) -> bool:
        return self.state != CURRENT


def review_due(
    practitioner: str, last_reviewed: date | None, months: int, today: date
) -> ReviewDue:
    if months < 1:
        raise ValueError("panel_review_months must be at least 1")
    if last_reviewed is None:
        return ReviewDue(practitioner, None, None, NEVER)
    due_on = months_after(last_reviewed, months)
    state = OVERDUE if due_on < today else DUE if due_on == today else CURRENT
    return ReviewDue(practitioner, last_reviewed, due_on, state)


def reviews_due(
    practitioners: Sequence[str], last: Mapping[str, date], months: int, today: date
) -> tuple[ReviewDue, ...]:
    """Every panel's review state, the most pressing first: never reviewed, then by due date,
    then by clinician."""
    states = [review_due(p, last.get(p), months, today) for p in sorted(set(practitioners))]
    return tuple(
        sorted(states, key=lambda r: (r.due_on is not None, r.due_on or today, r.practitioner))
    )


@dataclass(frozen=True)
class Readiness:
    """The milestone's measures for the practice."""

    active: int  # patients not excluded
    assigned: int
    confirmed_by_clinician: int  # assigned, confirmed for their current clinician by them
    confirmed_by_patient: int  # ... by the patient or family
    panels: int  # eligible clinicians' panels
    panels_due: int  # due, overdue or never reviewed
    panels_overdue: int  # past their due date
    panels_never_reviewed: int

    @staticmethod
    def _share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    @property
    def share_assigned(self) -> float | None:
        return self._share(self.assigned, self.active)

    @property
    def share_confirmed_by_clinician(self) -> float | None:
        return self._share(self.confirmed_by_clinician, self.assigned)

    @property
    def share_confirmed_by_patient(self) -> float | None:
        return self._share(self.confirmed_by_patient, self.assigned)


def readiness(
    active: int,
    assigned: int,
    confirmed_by_clinician: int,
    confirmed_by_patient: int,
    reviews: Sequence[ReviewDue],
) -> Readiness:
    if not 0 <= assigned <= active:
        raise ValueError("assigned patients must be between 0 and the active patients")
    return Readiness(
        active=active,
        assigned=assigned,
        confirmed_by_clinician=min(confirmed_by_clinician, assigned),
        confirmed_by_patient=min(confirmed_by_patient, assigned),
        panels=len(reviews),
        panels_due=sum(1 for r in reviews if r.is_due),
        panels_overdue=sum(1 for r in reviews if r.state == OVERDUE),
        panels_never_reviewed=sum(1 for r in reviews if r.state == NEVER),
    )


__all__ = [
    "CURRENT",
    "DUE",
    "NEVER",
    "OVERDUE",
    "REVIEW_STATES",
    "Readiness",
    "ReviewDue",
    "months_after",
    "readiness",
    "review_due",
    "reviews_due",
]
