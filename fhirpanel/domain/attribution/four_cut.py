"""The Four Cut method (Murray; MGMA; empanelment white paper; docs/methods.md s.2): one
patient's qualifying visits in a window -> the clinician, the cut that decided and the visits
behind it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from fhirpanel.domain.attribution.results import QualifyingVisit


@dataclass(frozen=True)
class FourCutDecision:
    practitioner: str
    rule: Literal["single-provider", "plurality", "sentinel-exam", "last-visit"]
    evidence: tuple[str, ...]
    tie_broken: bool = False
    sentinel_exam: str | None = None


def _latest_on_same_day(candidates: Sequence[QualifyingVisit]) -> tuple[QualifyingVisit, bool]:
    """Among visits on one day: one clinician wins outright; several are a remaining tie,
    broken by the latest start time, then the lowest clinician id, and flagged (docs/methods.md
    s.2). Returns the deciding visit and whether a tie was broken."""
    clinicians = {v.practitioner for v in candidates}
    latest_start = max(v.start for v in candidates)
    winner = min(v.practitioner for v in candidates if v.start == latest_start)
    # The winner's own latest visit that day, then the lowest Encounter id.
    own = [v for v in candidates if v.practitioner == winner]
    own_latest = max(v.start for v in own)
    visit = min((v for v in own if v.start == own_latest), key=lambda v: v.encounter)
    return visit, len(clinicians) > 1


def four_cut(visits: Sequence[QualifyingVisit]) -> FourCutDecision | None:
    """The Four Cut method (Murray; MGMA; empanelment white paper) over visits already limited
    to the window and to eligible clinicians. None when there are no visits."""
    if not visits:
        return None
    counts = Counter(v.practitioner for v in visits)

    def visits_of(practitioner: str) -> tuple[str, ...]:
        return tuple(sorted(v.encounter for v in visits if v.practitioner == practitioner))

    # Four Cut, step 1: seen only one provider.
    if len(counts) == 1:
        (only,) = counts
        return FourCutDecision(only, "single-provider", visits_of(only))
    # Four Cut, step 2: plurality of qualifying visits.
    most = max(counts.values())
    tied = {p for p, n in counts.items() if n == most}
    if len(tied) == 1:
        (top,) = tied
        return FourCutDecision(top, "plurality", visits_of(top))
    # Four Cut, step 3: the most recent sentinel exam, counted among the tied providers only.
    sentinels = [v for v in visits if v.sentinel and v.practitioner in tied]
    if sentinels:
        last_day = max(v.day for v in sentinels)
        visit, broken = _latest_on_same_day([v for v in sentinels if v.day == last_day])
        return FourCutDecision(
            visit.practitioner,
            "sentinel-exam",
            (visit.encounter,),
            tie_broken=broken,
            sentinel_exam=visit.encounter,
        )
    # Four Cut, step 4: the tied provider seen last.
    tied_visits = [v for v in visits if v.practitioner in tied]
    last_day = max(v.day for v in tied_visits)
    on_last_day = [v for v in tied_visits if v.day == last_day]
    visit, broken = _latest_on_same_day(on_last_day)
    evidence = tuple(
        sorted(v.encounter for v in on_last_day if v.practitioner == visit.practitioner)
    )
    return FourCutDecision(visit.practitioner, "last-visit", evidence, tie_broken=broken)


__all__ = ["FourCutDecision", "four_cut"]
