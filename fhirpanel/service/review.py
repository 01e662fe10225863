"""Reviewing assignments, once for the JSON API and the dashboard: assign a patient to a
clinician by hand (an override), remove an override, record or clear a patient's status (moved
away, transferred care, dismissed, deceased: off every panel while it holds), confirm the
current clinician with the clinician or the patient, explain a patient's assignment, accept the
placement suggestions for unassigned patients (one override each, after checking each is still
what the caller saw) and show how they would change the panels, and ask for a refresh so a
change shows soon.

The rules live here; the entry points only parse requests and word the typed errors of
`fhirpanel.service.errors`. Changes go through the store's audited methods (the actor is the
signed-in account). An override, a status, or their removal asks for an incremental refresh,
best effort: a busy lock or a refresh that cannot start leaves the patient queued for the next
one. A confirmation changes no attribution, so it asks for none; it is refused when the
clinician the caller saw is no longer the patient's (a refresh moved the patient since the page
loaded).

The service needs only the store methods of `StoreForReview`, a `PatientReader` (one read of a
patient's whole record) and a `SuggestionReader` (every unassigned patient's suggestion), so its
tests run on an in-memory fake.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol

from fhirpanel.domain.confirmations import DEFAULT_MONTHS, METHODS, expires_on, is_current
from fhirpanel.domain.placement import ClinicianLoad, PanelChange, project
from fhirpanel.errors import FhirpanelError
from fhirpanel.jobs.rows import stored_suggestions
from fhirpanel.service.errors import (
    AssignmentMoved,
    IneligibleClinician,
    InvalidChoice,
    InvalidInput,
    InvalidReference,
    MissingText,
    MoveClosed,
    MoveNotFound,
    NoOverride,
    NoStatus,
    NotAssigned,
    NotUnassigned,
    OverridePending,
    PatientExcluded,
    PatientNotFound,
    RecordExcludes,
    ReviewError,
    SuggestionChanged,
    UnknownClinician,
)
from fhirpanel.store import reads
from fhirpanel.store.moves import MOVE_STATUSES, MoveNotOpen
from fhirpanel.store.repository import (
    CHUNK,
    CONFIRMERS,
    REQUESTERS,
    STATUSES,
    AssignmentChanged,
    Store,
)
from fhirpanel.vocabulary import FHIR_ID, RunKind
from fhirpanel.writeback.identity import CARE_PLAN_KIND, CARE_TEAM_KIND, identifier_value

log = logging.getLogger(__name__)

Trigger = Callable[[str, str], int | None]  # (kind, trigger) → run id, or None when busy
AUDIT_LIMIT = 50  # audit entries in a patient's explanation
ACCEPTED = "placement suggestion accepted"  # an accepted suggestion's override reason starts so
# A placement suggestion accepted is an override asked for by the practice's staff.
ACCEPTED_BY = "staff"
# Exclusions the patient's own record makes (docs/methods.md s.1.2): a status adds nothing.
RECORD_EXCLUSIONS = ("merged", "deceased", "inactive")
# What a patient may have had written for them, by resource type.
WRITTEN = (("CareTeam", CARE_TEAM_KIND), ("CarePlan", CARE_PLAN_KIND))


# ---------------------------------------------------------------- references


def reference(rtype: str, raw: str) -> str | None:
    """`pat-1` or `Patient/pat-1` → `Patient/pat-1`; None when it is not a FHIR id (the one
    check of a reference, for paths, bodies, forms and query parameters alike)."""
    value = raw[len(rtype) + 1 :] if raw.startswith(rtype + "/") else raw
    return f"{rtype}/{value}" if FHIR_ID.fullmatch(value) else None


def require_reference(rtype: str, raw: str, field: str) -> str:
    ref = reference(rtype, raw)
    if ref is None:
        raise InvalidReference(field, rtype, raw)
    return ref


# ---------------------------------------------------------------- what the service needs


class StoreForReview(Protocol):
    """The store methods the review service uses (`fhirpanel.store.Store` has them)."""

    def patient_state(self, patient: str) -> dict[str, Any] | None: ...

    def clinician(self, practitioner: str) -> dict[str, Any] | None: ...

    def clinicians(self) -> list[dict[str, Any]]: ...

    def add_override(
        self, patient: str, practitioner: str, *, reason: str, requested_by: str, actor: str
    ) -> dict[str, Any]: ...

    def remove_override(self, patient: str, actor: str) -> bool: ...

    def confirm(
        self,
        patient: str,
        practitioner: str,
        *,
        confirmed_by: str,
        actor: str,
        note: str = "",
        method: str | None = None,
        confirmed_on: date | None = None,
    ) -> dict[str, Any]: ...

    def override_for(self, patient: str) -> dict[str, Any] | None: ...

    def set_status(
        self, patient: str, status: str, *, reason: str, actor: str
    ) -> dict[str, Any]: ...

    def clear_status(self, patient: str, actor: str) -> bool: ...

    def proposed_moves(
        self, status: str | None = "open", patient: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]: ...

    def proposed_move(self, move_id: int) -> dict[str, Any] | None: ...

    def accept_move(self, move_id: int, *, actor: str, note: str = "") -> dict[str, Any]: ...

    def dismiss_move(self, move_id: int, *, actor: str, note: str = "") -> dict[str, Any]: ...


class PatientReader(Protocol):
    """A patient's whole record in one read (`fhirpanel.store.reads.patient_record`)."""

    def __call__(
        self, patient: str, *, ledger: Sequence[tuple[str, str]], audit_limit: int
    ) -> dict[str, Any] | None: ...


SuggestionReader = Callable[[], list[dict[str, Any]]]
"""Every unassigned patient as stored, in placement order: `patient`, `tier`, `suggested`,
`suggestion_reason`, `weight`, `pending` (a change waits for the next refresh)."""


_stored: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
_stored_lock = threading.Lock()


def read_suggestions(store: Store) -> list[dict[str, Any]]:
    """`SuggestionReader` on the state store. Suggestions and weights change only when a run
    stores its results, so they are read once per such run (the read takes a second or more on
    a large practice); which patients wait for a refresh is read every time."""
    newest = store.last_run(statuses=reads.STORED)
    key = (store.url, newest["id"] if newest is not None else None)
    with _stored_lock:
        rows = _stored.get(key)
    if rows is None:
        rows = stored_suggestions(store)
        with _stored_lock:
            if len(_stored) > 8:  # bounded: one entry per store and run
                _stored.clear()
            _stored[key] = rows
    ids = [r["patient"] for r in rows]
    pending: set[str] = set()
    for start in range(0, len(ids), CHUNK):
        pending |= reads.pending_among(store, ids[start : start + CHUNK])
    return [dict(r, pending=r["patient"] in pending) for r in rows]


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Patient:
    """A patient as the last refresh stored them."""

    ref: str
    state: Mapping[str, Any]

    @property
    def status(self) -> str:
        return str(self.state["status"])

    @property
    def practitioner(self) -> str | None:
        return self.state.get("practitioner") or None


@dataclass(frozen=True)
class Refresh:
    """What asking for a refresh did."""

    run_id: int | None
    started: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "started": self.started, "detail": self.detail}


@dataclass(frozen=True)
class Overridden:
    override: dict[str, Any]  # as stored
    clinician: Mapping[str, Any]  # the clinician the patient goes to
    refresh: Refresh


@dataclass(frozen=True)
class OverrideRemoved:
    patient: str
    refresh: Refresh


@dataclass(frozen=True)
class StatusSet:
    status: dict[str, Any]  # as stored
    refresh: Refresh


@dataclass(frozen=True)
class StatusCleared:
    patient: str
    refresh: Refresh


@dataclass(frozen=True)
class MoveDecided:
    """A proposed move accepted (with its override, `move["override"]`) or dismissed; the
    refresh asked for (None for a dismissal: nothing changes)."""

    move: dict[str, Any]
    refresh: Refresh | None


@dataclass(frozen=True)
class PlacementPreview:
    """The stored suggestions and what accepting them all would do to each panel."""

    changes: tuple[PanelChange, ...]  # eligible clinicians and any receiving a patient
    pairs: tuple[tuple[str, str], ...]  # (patient, practitioner) to accept, placement order
    no_room: int  # unassigned patients no clinician has room for
    pending: int  # unassigned patients whose change already waits for a refresh (left out)

    @property
    def over_capacity_after(self) -> list[PanelChange]:
        return [c for c in self.changes if c.added and c.load_after > c.capacity]


@dataclass(frozen=True)
class Refusal:
    """A suggestion not accepted, and why (a typed error)."""

    patient: str
    practitioner: str | None
    error: ReviewError


@dataclass(frozen=True)
class SuggestionsAccepted:
    """What accepting placement suggestions did: one override per accepted suggestion, the
    refusals, and the refresh asked for (None when nothing was accepted)."""

    overrides: list[dict[str, Any]]
    refused: list[Refusal]
    refresh: Refresh | None


@dataclass(frozen=True)
class Explanation:
    """Why a patient is where they are, and what was done about it, from one read."""

    patient: str
    state: Mapping[str, Any]  # as `Store.patient_state`, with its `detail`
    written: Mapping[str, Mapping[str, Any] | None]  # CareTeam, CarePlan: ledger entries
    history: list[dict[str, Any]]
    overrides: list[dict[str, Any]]
    active_override: dict[str, Any] | None
    confirmations: list[dict[str, Any]]
    pending: bool  # a change waits for the next refresh
    audit: list[dict[str, Any]]  # newest first
    statuses: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # oldest first
    active_status: dict[str, Any] | None = None

    @property
    def current_confirmations(self) -> dict[str, dict[str, Any] | None]:
        """Per side (clinician, patient): the confirmation of the current clinician that
        counts (its day is the one stored for the assignment), expired or not; None when the
        side has not confirmed this assignment."""
        out: dict[str, dict[str, Any] | None] = {}
        practitioner = self.state.get("practitioner")
        for side in CONFIRMERS:
            day = self.state.get(f"{side}_confirmed")
            out[side] = next(
                (
                    c
                    for c in reversed(self.confirmations)
                    if day
                    and c["confirmed_by"] == side
                    and c["practitioner"] == practitioner
                    and c["confirmed_on"] == day
                    and not c.get("ended_at")
                ),
                None,
            )
        return out

    @property
    def detail(self) -> Mapping[str, Any]:
        return self.state.get("detail") or {}

    @property
    def visits(self) -> dict[str, int]:
        """Qualifying visits in the window, per clinician."""
        return {str(k): int(v) for k, v in (self.detail.get("visits") or {}).items()}

    @property
    def visits_ranked(self) -> list[tuple[str, int]]:
        """Most visits first, then by clinician."""
        return sorted(self.visits.items(), key=lambda item: (-item[1], item[0]))

    @property
    def evidence(self) -> list[str]:
        return list(self.detail.get("evidence") or [])

    @property
    def risk(self) -> Mapping[str, Any] | None:
        return self.detail.get("risk")

    def as_dict(self) -> dict[str, Any]:
        """The explanation as `GET /api/patients/{patient}` serves it."""
        state = {
            k: v
            for k, v in self.state.items()
            if k not in ("detail", "suggested", "suggestion_reason")
        }
        suggested, why = self.state.get("suggested"), self.state.get("suggestion_reason")
        detail = self.detail
        return {
            **state,
            # practitioner None with a reason: no clinician has room for the patient
            "suggested": ({"practitioner": suggested, "reason": why} if suggested or why else None),
            "tie_broken": bool(detail.get("tie_broken", False)),
            "sentinel_exam": detail.get("sentinel_exam"),
            "practitioner_role": detail.get("practitioner_role"),
            "visits": self.visits,
            "evidence": self.evidence,
            "risk": self.risk,
            "written": {
                rtype: None
                if entry is None
                else {
                    "reference": f"{rtype}/{entry['id']}",
                    "version": entry["version"],
                    "identifier": entry["identifier"],
                    "updated_at": entry["updated_at"],
                }
                for rtype, entry in self.written.items()
            },
            "history": self.history,
            "active_override": self.active_override,
            "overrides": self.overrides,
            "confirmations": self.confirmations,
            "current_confirmations": self.current_confirmations,
            "active_status": self.active_status,
            "statuses": self.statuses,
            "pending": self.pending,
            "audit": self.audit,
        }


def _day(value: Any) -> date | None:
    try:
        return date.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


# ---------------------------------------------------------------- the service


class ReviewService:
    """One entry point's view of reviewing: `by` names it on the runs it starts and in the
    log (`api`, `dashboard`)."""

    def __init__(
        self,
        store: StoreForReview,
        read_patient: PatientReader,
        trigger: Trigger,
        by: str,
        read_suggestions: SuggestionReader | None = None,
        confirmation_months: int = DEFAULT_MONTHS,
        today: Callable[[], date] | None = None,
    ) -> None:
        self._store = store
        self._read_patient = read_patient
        self._trigger = trigger
        self._by = by
        self._read_suggestions = read_suggestions
        self._months = confirmation_months
        self._today = today or (lambda: datetime.now(UTC).date())

    @classmethod
    def over(
        cls, store: Store, trigger: Trigger, by: str, confirmation_months: int = DEFAULT_MONTHS
    ) -> ReviewService:
        """The service on the state store."""
        return cls(
            store,
            functools.partial(reads.patient_record, store),
            trigger,
            by,
            functools.partial(read_suggestions, store),
            confirmation_months=confirmation_months,
        )

    # ------------------------------------------------------------ reads

    def patient(self, patient: str) -> Patient:
        """The stored patient (`Patient/id` or `id`); PatientNotFound when the reference is
        no FHIR id or the last refresh has no such patient."""
        ref = reference("Patient", patient)
        if ref is None:
            raise PatientNotFound(patient)
        state = self._store.patient_state(ref)
        if state is None:
            raise PatientNotFound(ref)
        return Patient(ref, state)

    def explain(self, patient: str) -> Explanation:
        """Everything about the patient's assignment, from one read of the store."""
        ref = reference("Patient", patient)
        if ref is None:
            raise PatientNotFound(patient)
        ledger = [(rtype, identifier_value(kind, ref)) for rtype, kind in WRITTEN]
        record = self._read_patient(ref, ledger=ledger, audit_limit=AUDIT_LIMIT)
        if record is None:
            raise PatientNotFound(ref)
        written = record["ledger"]
        as_of = _day(record.get("as_of"))
        return Explanation(
            patient=ref,
            state=record["state"],
            written={rtype: written.get(rtype) for rtype, _ in WRITTEN},
            history=record["history"],
            overrides=record["overrides"],
            active_override=record["active_override"],
            confirmations=[self.annotate_confirmation(c, as_of) for c in record["confirmations"]],
            pending=bool(record["pending"]),
            audit=record["audit"],
            statuses=record.get("statuses", []),
            active_status=record.get("active_status"),
        )

    def eligible_clinicians(self) -> list[dict[str, Any]]:
        """The clinicians an override may choose (as `Store.clinicians`)."""
        return [c for c in self._store.clinicians() if c["eligible"]]

    def eligible_clinician(self, practitioner: str) -> Mapping[str, Any]:
        """A clinician the last refresh found eligible for a primary-care panel."""
        ref = require_reference("Practitioner", practitioner, "practitioner")
        clinician = self._store.clinician(ref)
        if clinician is None:
            raise UnknownClinician(ref)
        if not clinician["eligible"]:
            raise IneligibleClinician(ref, clinician.get("name"))
        return clinician

    def _suggestions(self) -> list[dict[str, Any]]:
        if self._read_suggestions is None:
            raise TypeError("this review service was made without a SuggestionReader")
        return self._read_suggestions()

    def placement_preview(self) -> PlacementPreview:
        """Every panel now and with every stored suggestion accepted (patients whose change
        already waits for a refresh left out), and the pairs to accept."""
        rows = self._suggestions()
        ready = [r for r in rows if r["suggested"] and not r["pending"]]
        loads = [
            ClinicianLoad(c["practitioner"], c["size"], c["risk_adjusted_size"], c["capacity"])
            for c in self.eligible_clinicians()
        ]
        return PlacementPreview(
            changes=project(loads, [(r["suggested"], float(r["weight"])) for r in ready]),
            pairs=tuple((r["patient"], r["suggested"]) for r in ready),
            no_room=sum(1 for r in rows if not r["suggested"]),
            pending=sum(1 for r in rows if r["pending"]),
        )

    # ------------------------------------------------------------ changes

    def override(
        self,
        patient: str | Patient,
        practitioner: str,
        *,
        reason: str,
        requested_by: str,
        actor: str,
    ) -> Overridden:
        """Assign the patient to an eligible clinician by hand; it takes effect at the next
        refresh, which is asked for. Checked in this order: the patient, the clinician, who
        asked, the reason, and that the patient is active."""
        target = patient if isinstance(patient, Patient) else self.patient(patient)
        clinician = self.eligible_clinician(practitioner)
        if requested_by not in REQUESTERS:
            raise InvalidChoice("requested_by", REQUESTERS)
        reason = " ".join(reason.split())
        if not reason:
            raise MissingText("reason")
        if target.status == "excluded":
            raise PatientExcluded(target.ref, target.state.get("reason"))
        ref = str(clinician["practitioner"])
        stored = self._store.add_override(
            target.ref, ref, reason=reason, requested_by=requested_by, actor=actor
        )
        log.info("%s: %s overrode %s to %s", self._by, actor, target.ref, ref)
        return Overridden(stored, clinician, self.ask_refresh())

    def remove_override(self, patient: str | Patient, *, actor: str) -> OverrideRemoved:
        """The usual rules decide again at the next refresh, which is asked for."""
        target = patient if isinstance(patient, Patient) else self.patient(patient)
        if not self._store.remove_override(target.ref, actor):
            raise NoOverride(target.ref)
        log.info("%s: %s removed the override of %s", self._by, actor, target.ref)
        return OverrideRemoved(target.ref, self.ask_refresh())

    def set_status(
        self, patient: str | Patient, status: str, *, reason: str, actor: str
    ) -> StatusSet:
        """Record that the patient moved away, transferred care, was dismissed or died (a
        death the record does not show yet): the next refresh, which is asked for, takes them
        off every panel and ends their CareTeam's PCP participation. Checked in this order:
        the patient, the status, the reason, and that the record does not exclude them
        already. It replaces any status in force."""
        target = patient if isinstance(patient, Patient) else self.patient(patient)
        if status not in STATUSES:
            raise InvalidChoice("status", STATUSES)
        reason = " ".join(reason.split())
        if not reason:
            raise MissingText("reason")
        if target.status == "excluded" and target.state.get("reason") in RECORD_EXCLUSIONS:
            raise RecordExcludes(target.ref, target.state.get("reason"))
        stored = self._store.set_status(target.ref, status, reason=reason, actor=actor)
        log.info("%s: %s set %s's status to %s", self._by, actor, target.ref, status)
        return StatusSet(stored, self.ask_refresh())

    def clear_status(self, patient: str | Patient, *, actor: str) -> StatusCleared:
        """The patient counts again from the next refresh, which is asked for."""
        target = patient if isinstance(patient, Patient) else self.patient(patient)
        if not self._store.clear_status(target.ref, actor):
            raise NoStatus(target.ref)
        log.info("%s: %s cleared the status of %s", self._by, actor, target.ref)
        return StatusCleared(target.ref, self.ask_refresh())

    def confirm(
        self,
        patient: str | Patient,
        *,
        confirmed_by: str,
        actor: str,
        shown: str | None = None,
        note: str = "",
        method: str | None = None,
        confirmed_on: date | str | None = None,
    ) -> dict[str, Any]:
        """Confirm the patient's current clinician with the clinician or the patient (each
        side's confirmation is kept; both may hold at once). `method`: how (visit, portal,
        phone, letter, in-person); `confirmed_on`: the day it was given (today when not
        given; not in the future, and not so long ago it has already expired).
        `shown`: the clinician the caller saw; when a refresh has moved the patient since,
        nothing is confirmed (AssignmentMoved), and the same when a refresh commits a move
        while this writes."""
        target = patient if isinstance(patient, Patient) else self.patient(patient)
        if confirmed_by not in CONFIRMERS:
            raise InvalidChoice("confirmed_by", CONFIRMERS)
        if method is not None and method not in METHODS:
            raise InvalidChoice("method", METHODS)
        day = self._confirmation_day(confirmed_on)
        current = target.practitioner
        if target.status != "assigned" or current is None:
            raise NotAssigned(target.ref, target.status)
        if shown is not None:
            seen = require_reference("Practitioner", shown, "practitioner")
            if seen != current:
                raise AssignmentMoved(target.ref, current=current, shown=seen)
        try:
            confirmation = self._store.confirm(
                target.ref,
                current,
                confirmed_by=confirmed_by,
                actor=actor,
                note=" ".join(note.split()),
                method=method,
                confirmed_on=day,
            )
        except AssignmentChanged as exc:
            raise AssignmentMoved(
                target.ref, current=None, shown=current, message=str(exc)
            ) from exc
        log.info("%s: %s confirmed %s with the %s", self._by, actor, target.ref, confirmed_by)
        return self.annotate_confirmation(confirmation)

    def _confirmation_day(self, given: date | str | None) -> date | None:
        if given is None or given == "":
            return None
        if isinstance(given, str):
            try:
                given = date.fromisoformat(given)
            except ValueError:
                raise InvalidInput("confirmed_on", "must be a date (YYYY-MM-DD)") from None
        today = self._today()
        if given > today:
            raise InvalidInput("confirmed_on", "must not be in the future")
        if not is_current(given, today, self._months):
            raise InvalidInput(
                "confirmed_on", f"is more than {self._months} months ago: it has expired"
            )
        return given

    def annotate_confirmation(
        self, confirmation: Mapping[str, Any], as_of: date | None = None
    ) -> dict[str, Any]:
        """A stored confirmation with `expires_on` and `expired` (on `as_of`, today when not
        given)."""
        out = dict(confirmation)
        day = out.get("confirmed_on")
        try:
            given = date.fromisoformat(str(day)) if day else None
        except ValueError:
            given = None
        on = as_of or self._today()
        if given is None:
            out.update(expires_on=None, expired=None)
        else:
            out.update(
                expires_on=expires_on(given, self._months).isoformat(),
                expired=not is_current(given, on, self._months),
            )
        return out

    # ------------------------------------------------------------ proposed moves

    def proposed_moves(
        self, status: str | None = "open", limit: int = 500, patient: str | None = None
    ) -> list[dict[str, Any]]:
        """Moves a confirmation held back, newest first (`status` None: all; `patient`: one
        patient's)."""
        if status is not None and status not in MOVE_STATUSES:
            raise InvalidChoice("status", MOVE_STATUSES)
        return self._store.proposed_moves(status, patient=patient, limit=limit)

    def proposed_move(self, move_id: int) -> dict[str, Any]:
        move = self._store.proposed_move(move_id)
        if move is None:
            raise MoveNotFound(move_id)
        return move

    def accept_move(self, move_id: int, *, actor: str, note: str = "") -> MoveDecided:
        """Accept a proposed move: an audited override to the clinician the rules chose (so
        the next refresh, which is asked for, moves the patient) and the confirmations of the
        clinician they leave ended. Refused when the move is not open, its clinician is no
        longer eligible, or the patient is no longer with the clinician it starts from."""
        move = self.proposed_move(move_id)
        if move["status"] != "open":
            raise MoveClosed(move_id, str(move["status"]))
        self.eligible_clinician(str(move["to"]))
        try:
            decided = self._store.accept_move(move_id, actor=actor, note=" ".join(note.split()))
        except MoveNotOpen as exc:
            raise MoveClosed(move_id, exc.status) from exc
        except AssignmentChanged as exc:
            raise AssignmentMoved(
                str(move["patient"]), current=None, shown=str(move["from"]), message=str(exc)
            ) from exc
        log.info("%s: %s accepted proposed move %d", self._by, actor, move_id)
        return MoveDecided(decided, self.ask_refresh())

    def dismiss_move(self, move_id: int, *, actor: str, note: str = "") -> MoveDecided:
        """Dismiss a proposed move: the patient stays, and the same move is not proposed
        again until its evidence (the visit counts) changes. No refresh is needed."""
        move = self.proposed_move(move_id)
        if move["status"] != "open":
            raise MoveClosed(move_id, str(move["status"]))
        try:
            decided = self._store.dismiss_move(move_id, actor=actor, note=" ".join(note.split()))
        except MoveNotOpen as exc:
            raise MoveClosed(move_id, exc.status) from exc
        log.info("%s: %s dismissed proposed move %d", self._by, actor, move_id)
        return MoveDecided(decided, None)

    def assign_suggested(
        self, pairs: Sequence[tuple[str, str]] | None, *, actor: str
    ) -> SuggestionsAccepted:
        """Accept placement suggestions: one audited override per patient, to the suggested
        clinician, asked for by staff, with the reason "placement suggestion accepted: <the
        suggestion's reason>"; then one refresh is asked for.

        `pairs`: the (patient, practitioner) suggestions the caller saw, each checked against
        the store: refused (and listed) when the patient is gone, no longer unassigned, already
        has an override waiting, is listed twice, or when the suggestion changed since (a
        refresh placed the patient again) or its clinician is no longer eligible. None: every
        stored suggestion as it is now. A pair that is no reference refuses the whole request
        (InvalidReference), before anything is stored."""
        if pairs is None:
            wanted = [
                (r["patient"], str(r["suggested"])) for r in self._suggestions() if r["suggested"]
            ]
        else:
            wanted = [
                (
                    require_reference("Patient", patient, f"suggestions[{n}].patient"),
                    require_reference(
                        "Practitioner", practitioner, f"suggestions[{n}].practitioner"
                    ),
                )
                for n, (patient, practitioner) in enumerate(pairs)
            ]
        clinicians = {c["practitioner"]: c for c in self._store.clinicians()}
        overrides: list[dict[str, Any]] = []
        refused: list[Refusal] = []
        seen: set[str] = set()
        for n, (patient, practitioner) in enumerate(wanted):
            try:
                if patient in seen:
                    raise InvalidInput(f"suggestions[{n}].patient", f"{patient} is listed twice")
                seen.add(patient)
                reason = self._check_suggestion(patient, practitioner, clinicians)
                overrides.append(
                    self._store.add_override(
                        patient,
                        practitioner,
                        reason=f"{ACCEPTED}: {reason}",
                        requested_by=ACCEPTED_BY,
                        actor=actor,
                    )
                )
            except ReviewError as exc:
                refused.append(Refusal(patient, practitioner, exc))
        log.info(
            "%s: %s accepted %d placement suggestion(s), %d refused",
            self._by,
            actor,
            len(overrides),
            len(refused),
        )
        return SuggestionsAccepted(overrides, refused, self.ask_refresh() if overrides else None)

    def _check_suggestion(
        self, patient: str, practitioner: str, clinicians: Mapping[str, Mapping[str, Any]]
    ) -> str:
        """The stored suggestion's reason, when the patient may still go to `practitioner` as
        suggested; else the typed refusal."""
        state = self._store.patient_state(patient)
        if state is None:
            raise PatientNotFound(patient)
        if state["status"] != "unassigned":
            raise NotUnassigned(patient, str(state["status"]), state.get("practitioner"))
        if state.get("suggested") != practitioner:
            raise SuggestionChanged(patient, shown=practitioner, current=state.get("suggested"))
        clinician = clinicians.get(practitioner)
        if clinician is None:
            raise UnknownClinician(practitioner)
        if not clinician["eligible"]:
            raise IneligibleClinician(practitioner, clinician.get("name"))
        if self._store.override_for(patient) is not None:
            raise OverridePending(patient)
        return str(state.get("suggestion_reason") or "suggested clinician")

    def ask_refresh(self) -> Refresh:
        """Start an incremental refresh so a change shows soon. Best effort: when the lock is
        busy or the refresh cannot start, the patient stays queued for the next one."""
        try:
            run_id = self._trigger(RunKind.INCREMENTAL.value, self._by)
        except Exception as exc:  # the change is stored either way
            log.warning("could not start a refresh after a change: %s", type(exc).__name__)
            # Our own errors say what to fix (no source configured, say); others stay in the
            # log.
            detail = (
                str(exc)
                if isinstance(exc, FhirpanelError)
                else "the refresh could not start; the next one applies the change"
            )
            return Refresh(None, False, detail)
        if run_id is None:
            return Refresh(None, False, "a refresh is running; the next one applies the change")
        return Refresh(run_id, True, "a refresh has started")


__all__ = [
    "ACCEPTED",
    "ACCEPTED_BY",
    "AUDIT_LIMIT",
    "RECORD_EXCLUSIONS",
    "Explanation",
    "MoveDecided",
    "Overridden",
    "OverrideRemoved",
    "Patient",
    "PatientReader",
    "PlacementPreview",
    "Refresh",
    "Refusal",
    "ReviewService",
    "StatusCleared",
    "StatusSet",
    "StoreForReview",
    "SuggestionReader",
    "SuggestionsAccepted",
    "Trigger",
    "read_suggestions",
    "reference",
    "require_reference",
]
