"""The brake on sudden change: figures for what one pass would remove, end or change, and the
decision to hold it before anything is written.

A short read that slipped past every completeness check still looks like a practice that lost a
page of patients at once; no real practice does. So a pass whose changes exceed `[safety]` is
held: nothing written, nothing stored, the run recorded `held` with these figures, until an
operator lets it through (`--accept-change`, or accepting the held run in the API/dashboard,
which lets through a pass no larger than the one they read).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fhirpanel.config import SafetySettings
from fhirpanel.domain.attribution import Assignment
from fhirpanel.errors import ChangeHeld

# Decided by a person (an override, e.g. accepted placement suggestions): not a sudden change
# the brake must question.
BY_A_PERSON = "manual"

LABELS = {
    "removed_patients": ("remove", "stored patients"),
    "ended_participations": ("end", "active PCP participations"),
    "changed_assignments": ("change", "stored assignments"),
}


@dataclass(frozen=True)
class Change:
    name: str  # a key of LABELS
    count: int
    of: int
    limit: float  # the allowed share

    @property
    def share(self) -> float:
        return self.count / self.of if self.of else 0.0

    def exceeds(self, min_count: int) -> bool:
        return self.of > 0 and self.count >= max(1, min_count) and self.share > self.limit

    def describe(self) -> str:
        verb, noun = LABELS[self.name]
        return f"{verb} {self.count} of {self.of} {noun} ({self.share:.1%}, limit {self.limit:.0%})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "of": self.of,
            "share": round(self.share, 4),
            "limit": self.limit,
        }


def changed_assignments(
    assignments: Iterable[Assignment], stored: Mapping[str, tuple[str, str | None]]
) -> int:
    """Stored patients whose status or clinician the rules would change; changes a person made
    (the `manual` rule: overrides, accepted suggestions and proposed moves) do not count, nor
    do moves a confirmation held back (the patient keeps their clinician: no change)."""
    return sum(
        1
        for a in assignments
        if a.patient in stored
        and stored[a.patient] != (a.status, a.practitioner)
        and a.rule != BY_A_PERSON
    )


def figures(
    settings: SafetySettings,
    *,
    removed: tuple[int, int] | None = None,
    ended: tuple[int, int] | None = None,
    changed: tuple[int, int] | None = None,
) -> list[Change]:
    """Changes as (count, out of); a figure not known for this pass is left out."""
    limits = {
        "removed_patients": settings.max_removed_patients,
        "ended_participations": settings.max_ended_participations,
        "changed_assignments": settings.max_changed_assignments,
    }
    given = {
        "removed_patients": removed,
        "ended_participations": ended,
        "changed_assignments": changed,
    }
    return [
        Change(name, count, of, limits[name])
        for name, pair in given.items()
        if pair is not None
        for count, of in [pair]
    ]


def check(
    changes: list[Change],
    settings: SafetySettings,
    *,
    what: str,
    accept_all: bool = False,
    accepted: Mapping[str, Any] | None = None,
) -> None:
    """Raise ChangeHeld when a change exceeds its limit, unless `accept_all` (the operator said
    `--accept-change`) or `accepted` (figures of a held run an operator accepted) covers it."""
    over = [c for c in changes if c.exceeds(settings.min_count)]
    if not over or accept_all:
        return
    if accepted is not None and all(_covered(c, accepted) for c in over):
        return
    detail = {c.name: c.as_dict() for c in changes}
    message = (
        f"{what} held: it would {'; '.join(c.describe() for c in over)}. Nothing was "
        "written. If this is real, let it through with --accept-change (or accept the "
        "held run on the dashboard's runs page)"
    )
    raise ChangeHeld(message, detail)


def _covered(change: Change, accepted: Mapping[str, Any]) -> bool:
    """Accepted figures let through the same pass again, give or take 5% (data moves between
    reading the numbers and the rerun), never a larger one."""
    seen = accepted.get(change.name)
    if not isinstance(seen, Mapping) or not isinstance(seen.get("count"), int):
        return False
    count = int(seen["count"])
    return change.count <= count + max(1, math.ceil(count * 0.05))
