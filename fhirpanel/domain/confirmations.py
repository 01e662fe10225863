"""Confirmations of an assignment and the moves they hold back (docs/methods.md s.2.9).

An assignment is confirmed twice over: by the clinician and by the patient (or family), each on a
day, and each expires `months` calendar months later, so both are renewed at the panel's review
(the practice-transformation milestone asks that assignments be "confirmed with providers and
patients" and reviewed "on a regular basis"). A confirmation is current on an as-of date when it
was made after `months_before(as_of, months)`, the same bound a look-back window uses; one made
after the as-of date (a demo or replay with a fixed as-of) is current too.

While either confirmation is current, the pass keeps the patient with the confirmed clinician
when the rules would move them, and proposes the move for a person to accept or dismiss. A
dismissed move is not raised again while its evidence is the same: the same clinicians, from and
to, and the same qualifying-visit counts per clinician in the deciding window. A new visit (or
one leaving the window) is new evidence and raises it again; an expired confirmation holds
nothing, so the patient then moves as the rules say.

Pure: dates in, decisions out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal, get_args

from fhirpanel.domain.dates import months_before

ConfirmedBy = Literal["clinician", "patient"]
CONFIRMERS: tuple[str, ...] = get_args(ConfirmedBy)
# How the confirmation was obtained.
ConfirmationMethod = Literal["visit", "portal", "phone", "letter", "in-person"]
METHODS: tuple[str, ...] = get_args(ConfirmationMethod)
DEFAULT_MONTHS = 12
# The rule (and step) a held assignment is stored under.
CONFIRMED = "confirmed"


def is_current(day: date, as_of: date, months: int) -> bool:
    """True when a confirmation made on `day` still holds on `as_of`."""
    if months < 1:
        raise ValueError("confirmation months must be >= 1")
    return day > months_before(as_of, months)


def expires_on(day: date, months: int) -> date:
    """The first as-of date on which a confirmation made on `day` no longer holds."""
    if months < 1:
        raise ValueError("confirmation months must be >= 1")
    # months_before(x, months) >= day first happens at day + months (clamped to the month's
    # end); searching a few days covers the clamping.
    year, index = divmod(day.year * 12 + (day.month - 1) + months, 12)
    probe = date(year, index + 1, 1)
    while months_before(probe, months) < day:
        probe = date.fromordinal(probe.toordinal() + 1)
    return probe


@dataclass(frozen=True)
class ConfirmedAssignment:
    """A patient's current clinician and the day each side last confirmed it (None: never,
    since this assignment began)."""

    patient: str
    practitioner: str
    clinician_on: date | None = None
    patient_on: date | None = None

    def current(self, as_of: date, months: int) -> tuple[str, ...]:
        """Who confirmed it and still holds: () when neither does."""
        return tuple(
            kind
            for kind, day in (("clinician", self.clinician_on), ("patient", self.patient_on))
            if day is not None and is_current(day, as_of, months)
        )


@dataclass(frozen=True)
class DismissedMove:
    """A move a person dismissed, with the evidence they saw."""

    patient: str
    from_practitioner: str
    to_practitioner: str
    visits: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class ProposedMove:
    """A move the rules would make, held back by a current confirmation."""

    patient: str
    from_practitioner: str
    to_practitioner: str
    rule: str  # the rule that would have moved the patient (e.g. plurality)
    step: str | None
    window_months: int | None
    visits: tuple[tuple[str, int], ...]  # qualifying visits per clinician in that window
    evidence: tuple[str, ...]  # the Encounter ids behind the rule's decision
    held_by: tuple[str, ...]  # the current confirmations: clinician and/or patient

    def same_as(self, dismissed: DismissedMove | None) -> bool:
        """The move a person already dismissed, on the same evidence."""
        return (
            dismissed is not None
            and dismissed.from_practitioner == self.from_practitioner
            and dismissed.to_practitioner == self.to_practitioner
            and tuple(dismissed.visits) == tuple(self.visits)
        )


__all__ = [
    "CONFIRMED",
    "CONFIRMERS",
    "DEFAULT_MONTHS",
    "METHODS",
    "ConfirmationMethod",
    "ConfirmedAssignment",
    "ConfirmedBy",
    "DismissedMove",
    "ProposedMove",
    "expires_on",
    "is_current",
]
