"""The practice's panels as a whole, once for the JSON API and the dashboard (fhirpanel issue 17
items 4-6): transition a clinician's panel onto the others, open or closed panels, care teams
with their members' panels summed, the panel review cycle and the readiness report.

The rules live in the domain (`transition`, `review_cycle`, `teams`); this reads the store and
the mapping tables, and makes changes through the store's audited methods: accepting a
transition is one override per patient (asked for by staff, with the plan's reason), each
checked against the plan as it is now, then one refresh asked for through the review service.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from fhirpanel.config import Settings
from fhirpanel.domain.panels import PEDIATRIC
from fhirpanel.domain.placement import ClinicianLoad, PanelChange, PlacementRules
from fhirpanel.domain.review_cycle import Readiness, ReviewDue, readiness, reviews_due
from fhirpanel.domain.teams import Team, Teams
from fhirpanel.domain.transition import (
    Clinicians,
    PanelPatient,
    TransitionPlan,
    plan_transition,
)
from fhirpanel.service.errors import (
    InvalidInput,
    OverridePending,
    PatientNotFound,
    ReviewError,
    UnknownClinician,
)
from fhirpanel.service.review import (
    ACCEPTED_BY,
    Refresh,
    Refusal,
    ReviewService,
    require_reference,
)
from fhirpanel.store import panels as stored
from fhirpanel.store import reads
from fhirpanel.store.repository import Store

log = logging.getLogger(__name__)

TRANSITION = "panel transition accepted"  # an accepted move's override reason starts so
NOTE_LIMIT = 2000


class NotOnPanel(ReviewError):
    """A planned move for a patient no longer on the clinician's panel (a refresh or an
    override moved them since the plan was shown)."""

    def __init__(self, patient: str, practitioner: str, current: str | None) -> None:
        self.patient = patient
        self.practitioner = practitioner
        self.current = current
        now = f"now with {current}" if current else "no longer assigned"
        super().__init__(f"{patient} is no longer on {practitioner}'s panel ({now})")


class PlanChanged(ReviewError):
    """The clinician planned for a patient (`shown`) is no longer the plan's (`current`; None:
    nobody has room now)."""

    def __init__(self, patient: str, *, shown: str, current: str | None) -> None:
        self.patient = patient
        self.shown = shown
        self.current = current
        now = f"now {current}" if current else "now nobody has room"
        super().__init__(
            f"{patient}'s planned clinician changed since it was shown ({shown}, {now}): "
            "reload and check the new plan"
        )


@dataclass(frozen=True)
class TransitionView:
    """A clinician's transition plan, with who is waiting for a refresh already."""

    clinician: Mapping[str, Any]
    plan: TransitionPlan
    reasons: Mapping[str, str]  # patient -> the plan's reason
    pending: frozenset[str]  # patients whose change waits for a refresh (not accepted again)
    closed: frozenset[str]

    @property
    def practitioner(self) -> str:
        return self.plan.departing

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """(patient, clinician) moves to accept: placed, and not waiting for a refresh."""
        return tuple(
            (m.patient, m.practitioner)
            for m in self.plan.moves
            if m.practitioner is not None and m.patient not in self.pending
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "practitioner": self.practitioner,
            "name": self.clinician.get("name"),
            "eligible": bool(self.clinician.get("eligible")),
            "patients": len(self.plan.moves),
            "placed": len(self.plan.placed),
            "no_room": len(self.plan.moves) - len(self.plan.placed),
            "pending": sum(1 for m in self.plan.moves if m.patient in self.pending),
            "moves": [
                {
                    "patient": m.patient,
                    "to": m.practitioner,
                    "basis": m.basis,
                    "reason": m.reason,
                    "weight": round(m.weight, 3),
                    "pending": m.patient in self.pending,
                }
                for m in self.plan.moves
            ],
            "panels": [change_dict(c, self.closed) for c in self.plan.changes],
        }


def change_dict(c: PanelChange, closed: frozenset[str]) -> dict[str, Any]:
    return {
        "practitioner": c.practitioner,
        "open": c.practitioner not in closed,
        "size": c.size,
        "size_after": c.size_after,
        "risk_adjusted_size": round(c.load, 1),
        "risk_adjusted_size_after": round(c.load_after, 1),
        "capacity": round(c.capacity),
        "share_used_after": round(c.share_after, 3) if c.share_after is not None else None,
    }


@dataclass(frozen=True)
class TransitionAccepted:
    overrides: list[dict[str, Any]]
    refused: list[Refusal]
    refresh: Refresh | None


@dataclass(frozen=True)
class TeamView:
    team: Team
    members: list[dict[str, Any]]  # each member's panel row (as `Store.clinicians`) and role

    def totals(self) -> dict[str, Any]:
        """The members' panels summed (a clinician not in the last refresh counts nothing)."""
        panels = [m for m in self.members if m.get("size") is not None]
        capacity = sum(float(m["capacity"] or 0) for m in panels)
        load = sum(float(m["risk_adjusted_size"] or 0) for m in panels)
        return {
            "size": sum(int(m["size"]) for m in panels),
            "risk_adjusted_size": round(load, 1),
            "capacity": round(capacity),
            "open_capacity": round(capacity - load, 1),
            "share_used": round(load / capacity, 3) if capacity > 0 else None,
            "unconfirmed": sum(int(m["unconfirmed"] or 0) for m in panels),
        }

    def as_dict(self, *, summary: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.team.id,
            "name": self.team.name,
            "totals": self.totals(),
        }
        if summary:
            body["members"] = len(self.members)
        else:
            body["members"] = self.members
        return body


@dataclass(frozen=True)
class ReviewRow:
    due: ReviewDue
    clinician: Mapping[str, Any]
    last: Mapping[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "practitioner": self.due.practitioner,
            "name": self.clinician.get("name"),
            "size": self.clinician.get("size"),
            "state": self.due.state,
            "due": self.due.is_due,
            "last_reviewed": self.due.last_reviewed.isoformat() if self.due.last_reviewed else None,
            "due_on": self.due.due_on.isoformat() if self.due.due_on else None,
            "last_review": dict(self.last) if self.last is not None else None,
        }


def today() -> date:
    return datetime.now(UTC).date()


def _day(stamp: str | None) -> date | None:
    return date.fromisoformat(stamp[:10]) if stamp else None


class PracticeService:
    """Transitions, teams, reviews and readiness over the state store and the loaded tables."""

    def __init__(
        self,
        store: Store,
        review: ReviewService,
        settings: Settings,
        rules: PlacementRules,
        teams: Teams,
    ) -> None:
        self._store = store
        self._review = review
        self._settings = settings
        self._rules = rules
        self._teams = teams

    @property
    def closed(self) -> frozenset[str]:
        return self._rules.closed

    def is_open(self, practitioner: str) -> bool:
        return practitioner not in self._rules.closed

    # ------------------------------------------------------------ transitions

    def clinician(self, practitioner: str) -> Mapping[str, Any]:
        ref = require_reference("Practitioner", practitioner, "practitioner")
        found = self._store.clinician(ref)
        if found is None:
            raise UnknownClinician(ref)
        return found

    def transition_plan(self, practitioner: str) -> TransitionView:
        """Every patient on the clinician's panel, planned onto the other eligible clinicians
        (`domain.transition`), against the panels as the last refresh left them."""
        clinician = self.clinician(practitioner)
        ref = str(clinician["practitioner"])
        rows = self._store.clinicians()
        eligible = tuple(c["practitioner"] for c in rows if c["eligible"])
        members = stored.panel_members(self._store, ref)
        plan = plan_transition(
            ref,
            [PanelPatient(m["patient"], m["visits"], m["weight"], m["tier"]) for m in members],
            Clinicians(
                eligible=eligible,
                loads=tuple(
                    ClinicianLoad(
                        c["practitioner"], c["size"], c["risk_adjusted_size"], c["capacity"]
                    )
                    for c in rows
                    if c["eligible"]
                ),
                pediatric=tuple(
                    c["practitioner"] for c in rows if c["eligible"] and c["pediatric"]
                ),
                pediatric_only=tuple(
                    c["practitioner"]
                    for c in rows
                    if c["eligible"] and (c.get("relative") or {}).get("framework") == PEDIATRIC
                ),
            ),
            self._rules,
        )
        ids = [m["patient"] for m in members]
        pending: set[str] = set()
        for start in range(0, len(ids), 500):
            pending |= reads.pending_among(self._store, ids[start : start + 500])
        return TransitionView(
            clinician,
            plan,
            {m.patient: m.reason for m in plan.moves},
            frozenset(pending),
            self._rules.closed,
        )

    def accept_transition(
        self, practitioner: str, pairs: Sequence[tuple[str, str]] | None, *, actor: str
    ) -> TransitionAccepted:
        """Accept planned moves: one audited override per patient, to the planned clinician,
        asked for by staff, reason "panel transition accepted: <the plan's reason>"; then one
        refresh. `pairs`: the (patient, clinician) moves the caller saw, each refused (and
        listed) when the patient is listed twice, is no longer on the panel, already has an
        override waiting, or the plan for them changed since. None: every move as planned
        now. A pair that is no reference refuses the whole request, before anything is
        stored."""
        view = self.transition_plan(practitioner)
        ref = view.practitioner
        if pairs is None:
            wanted = list(view.pairs)
        else:
            wanted = [
                (
                    require_reference("Patient", patient, f"moves[{n}].patient"),
                    require_reference("Practitioner", to, f"moves[{n}].to"),
                )
                for n, (patient, to) in enumerate(pairs)
            ]
        planned = {m.patient: m for m in view.plan.moves}
        overrides: list[dict[str, Any]] = []
        refused: list[Refusal] = []
        seen: set[str] = set()
        for n, (patient, to) in enumerate(wanted):
            try:
                if patient in seen:
                    raise InvalidInput(f"moves[{n}].patient", f"{patient} is listed twice")
                seen.add(patient)
                move = planned.get(patient)
                if move is None:
                    state = self._store.patient_state(patient)
                    if state is None:
                        raise PatientNotFound(patient)
                    raise NotOnPanel(patient, ref, state.get("practitioner"))
                if move.practitioner != to:
                    raise PlanChanged(patient, shown=to, current=move.practitioner)
                if self._store.override_for(patient) is not None:
                    raise OverridePending(patient)
                overrides.append(
                    self._store.add_override(
                        patient,
                        to,
                        reason=f"{TRANSITION} from {ref}: {move.reason}",
                        requested_by=ACCEPTED_BY,
                        actor=actor,
                    )
                )
            except ReviewError as exc:
                refused.append(Refusal(patient, to, exc))
        log.info(
            "%s accepted %d move(s) of %s's panel, %d refused",
            actor,
            len(overrides),
            ref,
            len(refused),
        )
        return TransitionAccepted(
            overrides, refused, self._review.ask_refresh() if overrides else None
        )

    # ------------------------------------------------------------ teams

    def teams(self) -> list[TeamView]:
        rows = {c["practitioner"]: c for c in self._store.clinicians()}
        return [self._team_view(t, rows) for t in self._teams.teams]

    def team(self, team_id: str) -> TeamView | None:
        team = self._teams.get(team_id)
        if team is None:
            return None
        return self._team_view(team, {c["practitioner"]: c for c in self._store.clinicians()})

    def _team_view(self, team: Team, rows: Mapping[str, Mapping[str, Any]]) -> TeamView:
        members = []
        for member in team.members:
            row = rows.get(member.practitioner)
            members.append(
                {
                    "practitioner": member.practitioner,
                    "role": member.role.as_coding(),
                    "name": row.get("name") if row else None,
                    "eligible": bool(row["eligible"]) if row else False,
                    "open": self.is_open(member.practitioner),
                    "size": row["size"] if row else None,
                    "risk_adjusted_size": row["risk_adjusted_size"] if row else None,
                    "capacity": row["capacity"] if row else None,
                    "share_used": row["share_used"] if row else None,
                    "unconfirmed": row["unconfirmed"] if row else None,
                }
            )
        return TeamView(team, members)

    def teams_of(self, practitioner: str) -> list[dict[str, str]]:
        return [{"id": t.id, "name": t.name} for t in self._teams.of(practitioner)]

    # ------------------------------------------------------------ reviews

    @property
    def review_months(self) -> int:
        return self._settings.review.panel_review_months

    def reviews(self, on: date | None = None) -> list[ReviewRow]:
        """Every eligible clinician's panel review state, the most pressing first."""
        clinicians = {c["practitioner"]: c for c in self._store.clinicians() if c["eligible"]}
        last = stored.last_reviews(self._store)
        days = {p: d for p, r in last.items() if (d := _day(r["reviewed_at"])) is not None}
        due = reviews_due(list(clinicians), days, self.review_months, on or today())
        return [ReviewRow(d, clinicians[d.practitioner], last.get(d.practitioner)) for d in due]

    def review_of(self, practitioner: str, on: date | None = None) -> ReviewRow:
        clinician = self.clinician(practitioner)
        ref = str(clinician["practitioner"])
        last = stored.last_reviews(self._store).get(ref)
        due = reviews_due(
            [ref],
            {ref: d} if last and (d := _day(last["reviewed_at"])) else {},
            self.review_months,
            on or today(),
        )[0]
        return ReviewRow(due, clinician, last)

    def review_history(self, practitioner: str) -> list[dict[str, Any]]:
        return stored.reviews_of(self._store, str(self.clinician(practitioner)["practitioner"]))

    def since_last_review(self, practitioner: str) -> dict[str, int]:
        return stored.pending_activity(
            self._store, str(self.clinician(practitioner)["practitioner"])
        )

    def record_review(self, practitioner: str, *, actor: str, note: str = "") -> dict[str, Any]:
        """Record a review of the clinician's panel now (audited), with the patients confirmed,
        moved and removed since the last one."""
        ref = str(self.clinician(practitioner)["practitioner"])
        note = " ".join(note.split())
        if len(note) > NOTE_LIMIT:
            raise InvalidInput("note", f"must be at most {NOTE_LIMIT} characters")
        review = stored.record_review(self._store, ref, actor=actor, note=note)
        log.info("%s recorded a review of %s's panel", actor, ref)
        return review

    # ------------------------------------------------------------ readiness

    def readiness(self, on: date | None = None) -> tuple[Readiness, list[ReviewRow]]:
        counts = stored.readiness_counts(self._store)
        rows = self.reviews(on)
        return (
            readiness(
                counts["active"],
                counts["assigned"],
                counts["confirmed_by_clinician"],
                counts["confirmed_by_patient"],
                [r.due for r in rows],
            ),
            rows,
        )


def readiness_dict(measures: Readiness, rows: Sequence[ReviewRow], months: int) -> dict[str, Any]:
    def share(value: float | None) -> float | None:
        return round(value, 4) if value is not None else None

    return {
        "active_patients": measures.active,
        "assigned": measures.assigned,
        "share_assigned": share(measures.share_assigned),
        "confirmed_by_clinician": measures.confirmed_by_clinician,
        "share_confirmed_by_clinician": share(measures.share_confirmed_by_clinician),
        "confirmed_by_patient": measures.confirmed_by_patient,
        "share_confirmed_by_patient": share(measures.share_confirmed_by_patient),
        "panel_review_months": months,
        "panels": measures.panels,
        "panels_due": measures.panels_due,
        "panels_overdue": measures.panels_overdue,
        "panels_never_reviewed": measures.panels_never_reviewed,
        "reviews": [r.as_dict() for r in rows],
    }


__all__ = [
    "TRANSITION",
    "NotOnPanel",
    "PlanChanged",
    "PracticeService",
    "ReviewRow",
    "TeamView",
    "TransitionAccepted",
    "TransitionView",
    "readiness_dict",
]
