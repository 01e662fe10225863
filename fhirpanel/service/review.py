"""Reviewing assignments, once for the JSON API and the dashboard: assign a patient to a
clinician by hand (an override), remove an override, confirm the current clinician with the
clinician or the patient, explain a patient's assignment, and ask for a refresh so a change
shows soon.

The rules live here; the entry points only parse requests and word the typed errors of
`fhirpanel.service.errors`. Changes go through the store's audited methods (the actor is the
signed-in account). An override or its removal asks for an incremental refresh, best effort:
a busy lock or a refresh that cannot start leaves the patient queued for the next one. A
confirmation changes no attribution, so it asks for none; it is refused when the clinician the
caller saw is no longer the patient's (a refresh moved the patient since the page loaded).

The service needs only the store methods of `StoreForReview` and a `PatientReader` (one read of a
patient's whole record), so its tests run on an in-memory fake.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fhirpanel.errors import FhirpanelError
from fhirpanel.service.errors import (
    AssignmentMoved,
    IneligibleClinician,
    InvalidChoice,
    InvalidReference,
    MissingText,
    NoOverride,
    NotAssigned,
    PatientExcluded,
    PatientNotFound,
    UnknownClinician,
)
from fhirpanel.store import reads
from fhirpanel.store.repository import CONFIRMERS, REQUESTERS, AssignmentChanged, Store
from fhirpanel.vocabulary import FHIR_ID, RunKind
from fhirpanel.writeback.identity import CARE_PLAN_KIND, CARE_TEAM_KIND, identifier_value

log = logging.getLogger(__name__)

Trigger = Callable[[str, str], int | None]  # (kind, trigger) → run id, or None when busy
AUDIT_LIMIT = 50  # audit entries in a patient's explanation
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
        self, patient: str, practitioner: str, *, confirmed_by: str, actor: str, note: str = ""
    ) -> dict[str, Any]: ...


class PatientReader(Protocol):
    """A patient's whole record in one read (`fhirpanel.store.reads.patient_record`)."""

    def __call__(
        self, patient: str, *, ledger: Sequence[tuple[str, str]], audit_limit: int
    ) -> dict[str, Any] | None: ...


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
        suggested = self.state.get("suggested")
        detail = self.detail
        return {
            **state,
            "suggested": (
                {"practitioner": suggested, "reason": self.state.get("suggestion_reason")}
                if suggested
                else None
            ),
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
            "pending": self.pending,
            "audit": self.audit,
        }


# ---------------------------------------------------------------- the service


class ReviewService:
    """One entry point's view of reviewing: `by` names it on the runs it starts and in the
    log (`api`, `dashboard`)."""

    def __init__(
        self, store: StoreForReview, read_patient: PatientReader, trigger: Trigger, by: str
    ) -> None:
        self._store = store
        self._read_patient = read_patient
        self._trigger = trigger
        self._by = by

    @classmethod
    def over(cls, store: Store, trigger: Trigger, by: str) -> ReviewService:
        """The service on the state store."""
        return cls(store, functools.partial(reads.patient_record, store), trigger, by)

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
        return Explanation(
            patient=ref,
            state=record["state"],
            written={rtype: written.get(rtype) for rtype, _ in WRITTEN},
            history=record["history"],
            overrides=record["overrides"],
            active_override=record["active_override"],
            confirmations=record["confirmations"],
            pending=bool(record["pending"]),
            audit=record["audit"],
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

    def confirm(
        self,
        patient: str | Patient,
        *,
        confirmed_by: str,
        actor: str,
        shown: str | None = None,
        note: str = "",
    ) -> dict[str, Any]:
        """Confirm the patient's current clinician with the clinician or the patient.
        `shown`: the clinician the caller saw; when a refresh has moved the patient since,
        nothing is confirmed (AssignmentMoved), and the same when a refresh commits a move
        while this writes."""
        target = patient if isinstance(patient, Patient) else self.patient(patient)
        if confirmed_by not in CONFIRMERS:
            raise InvalidChoice("confirmed_by", CONFIRMERS)
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
            )
        except AssignmentChanged as exc:
            raise AssignmentMoved(
                target.ref, current=None, shown=current, message=str(exc)
            ) from exc
        log.info("%s: %s confirmed %s with the %s", self._by, actor, target.ref, confirmed_by)
        return confirmation

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
    "AUDIT_LIMIT",
    "Explanation",
    "Overridden",
    "OverrideRemoved",
    "Patient",
    "PatientReader",
    "Refresh",
    "ReviewService",
    "StoreForReview",
    "Trigger",
    "reference",
    "require_reference",
]
