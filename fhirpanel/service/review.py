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
tests run on an in-memory fake. It is composed of parts, one module each: the proposed moves
(`fhirpanel.service.moves`) and the placement suggestions (`fhirpanel.service.suggestions`); what
its changes return is in `fhirpanel.service.outcomes`, the explanation in
`fhirpanel.service.explanation`, the check of a reference in `fhirpanel.service.references`. Every
name is importable from here too.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, Protocol

from fhirpanel.domain.confirmations import DEFAULT_MONTHS, METHODS, expires_on, is_current
from fhirpanel.errors import FhirpanelError
from fhirpanel.service.errors import (
    AssignmentMoved,
    IneligibleClinician,
    InvalidChoice,
    InvalidInput,
    MissingText,
    NoOverride,
    NoStatus,
    NotAssigned,
    PatientExcluded,
    PatientNotFound,
    RecordExcludes,
    UnknownClinician,
)
from fhirpanel.service.explanation import Explanation, Patient
from fhirpanel.service.moves import ProposedMoves, StoreForMoves
from fhirpanel.service.outcomes import (
    MoveDecided,
    Overridden,
    OverrideRemoved,
    PlacementPreview,
    Refresh,
    Refusal,
    StatusCleared,
    StatusSet,
    SuggestionsAccepted,
)
from fhirpanel.service.references import reference, require_reference
from fhirpanel.service.suggestions import (
    ACCEPTED,
    ACCEPTED_BY,
    PlacementSuggestions,
    StoreForSuggestions,
    SuggestionReader,
    read_suggestions,
)
from fhirpanel.store import reads
from fhirpanel.store.repository import (
    CONFIRMERS,
    REQUESTERS,
    STATUSES,
    AssignmentChanged,
    Store,
)
from fhirpanel.vocabulary import RunKind
from fhirpanel.writeback.identity import CARE_PLAN_KIND, CARE_TEAM_KIND, identifier_value

log = logging.getLogger(__name__)

Trigger = Callable[[str, str], int | None]  # (kind, trigger) → run id, or None when busy
AUDIT_LIMIT = 50  # audit entries in a patient's explanation
# Exclusions the patient's own record makes (docs/methods.md s.1.2): a status adds nothing.
RECORD_EXCLUSIONS = ("merged", "deceased", "inactive")
# What a patient may have had written for them, by resource type.
WRITTEN = (("CareTeam", CARE_TEAM_KIND), ("CarePlan", CARE_PLAN_KIND))


# ---------------------------------------------------------------- what the service needs


class StoreForReview(StoreForMoves, StoreForSuggestions, Protocol):
    """The store methods the review service uses (`fhirpanel.store.Store` has them): those of
    its parts and these."""

    def clinician(self, practitioner: str) -> dict[str, Any] | None: ...

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

    def set_status(
        self, patient: str, status: str, *, reason: str, actor: str
    ) -> dict[str, Any]: ...

    def clear_status(self, patient: str, actor: str) -> bool: ...


class PatientReader(Protocol):
    """A patient's whole record in one read (`fhirpanel.store.reads.patient_record`)."""

    def __call__(
        self, patient: str, *, ledger: Sequence[tuple[str, str]], audit_limit: int
    ) -> dict[str, Any] | None: ...


def _day(value: Any) -> date | None:
    try:
        return date.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


# ---------------------------------------------------------------- the service


class ReviewService(ProposedMoves, PlacementSuggestions):
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
        self._store: StoreForReview = store
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
    "StoreForMoves",
    "StoreForReview",
    "StoreForSuggestions",
    "SuggestionReader",
    "SuggestionsAccepted",
    "Trigger",
    "read_suggestions",
    "reference",
    "require_reference",
]
