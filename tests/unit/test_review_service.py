"""The review service on an in-memory fake store (a small class that keeps rows in dicts and
audits like the real one): overrides, their removal, confirmations with the clinician the page
showed, accepting placement suggestions (each checked against what was shown) and their
preview, the explanation from one read, the refresh asked for after a change, and one check of
references. Each refusal is a typed error, and a refused change stores, audits and triggers
nothing."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import date
from typing import Any

import pytest

from fhirpanel.errors import ConfigError
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
from fhirpanel.service.review import AUDIT_LIMIT, Refresh, ReviewService, reference
from fhirpanel.store.moves import MoveNotOpen
from fhirpanel.store.repository import AssignmentChanged

ANN, BOB, CAL = "Practitioner/prac-ann", "Practitioner/prac-bob", "Practitioner/prac-cal"
PAT, LOOSE, GONE = "Patient/pat-1", "Patient/pat-2", "Patient/pat-3"
TODAY = date(2026, 12, 5)


class FakeStore:
    """The store methods the service uses, over dicts. Changes audit and queue as the real
    store does; `confirm` refuses an assignment that no longer holds (AssignmentChanged)."""

    def __init__(self) -> None:
        self.patients: dict[str, dict[str, Any]] = {
            PAT: state(
                PAT,
                "assigned",
                ANN,
                detail={
                    "visits": {ANN: 3, BOB: 1},
                    "evidence": ["Encounter/e1", "Encounter/e2"],
                    "tie_broken": False,
                    "risk": {"tier": 2},
                    "practitioner_role": None,
                },
            ),
            LOOSE: state(LOOSE, "unassigned", None, suggested=BOB, suggestion_reason="most room"),
            GONE: state(GONE, "excluded", None, reason="deceased"),
        }
        self.clinician_rows = {
            ANN: clinician(ANN, "Dr Ann", True, size=1, load=1.0, capacity=4),
            BOB: clinician(BOB, "Dr Bob", True, size=0, load=0.0, capacity=2),
            CAL: clinician(CAL, "Dr Cal", False, size=0, load=0.0, capacity=10),
        }
        self.override_rows: list[dict[str, Any]] = []
        self.confirmation_rows: list[dict[str, Any]] = []
        self.status_rows: list[dict[str, Any]] = []
        # PAT is held with ANN by a confirmation; the rules would move them to BOB (move 1)
        # or to CAL (move 2, not eligible any more); move 3 was dismissed already.
        self.move_rows: list[dict[str, Any]] = [
            {"id": 1, "patient": PAT, "from": ANN, "to": BOB, "status": "open"},
            {"id": 2, "patient": PAT, "from": ANN, "to": CAL, "status": "open"},
            {"id": 3, "patient": PAT, "from": ANN, "to": BOB, "status": "dismissed"},
        ]
        self.audit_rows: list[dict[str, Any]] = []
        self.pending: set[str] = set()
        self.ledger: dict[tuple[str, str], dict[str, Any]] = {}
        self.history_rows: dict[str, list[dict[str, Any]]] = {
            PAT: [
                {
                    "status": "assigned",
                    "practitioner": ANN,
                    "rule": "plurality",
                    "step": "four-cut-18m",
                    "valid_from": "2026-01-01T00:00:00Z",
                    "valid_to": None,
                    "run_id": 1,
                }
            ]
        }
        self.reads: list[tuple[str, tuple[tuple[str, str], ...], int]] = []
        self.state_reads = 0

    # ------------------------------------------------------------ StoreForReview

    def patient_state(self, patient: str) -> dict[str, Any] | None:
        self.state_reads += 1
        found = self.patients.get(patient)
        return copy.deepcopy(found) if found is not None else None

    def clinician(self, practitioner: str) -> dict[str, Any] | None:
        found = self.clinician_rows.get(practitioner)
        return dict(found) if found is not None else None

    def clinicians(self) -> list[dict[str, Any]]:
        return [dict(c) for _, c in sorted(self.clinician_rows.items())]

    def add_override(
        self, patient: str, practitioner: str, *, reason: str, requested_by: str, actor: str
    ) -> dict[str, Any]:
        for row in self.override_rows:
            if row["patient"] == patient and row["removed_at"] is None:
                row.update(removed_at="now", removed_by=actor)
        row = {
            "id": len(self.override_rows) + 1,
            "patient": patient,
            "practitioner": practitioner,
            "reason": reason,
            "requested_by": requested_by,
            "actor": actor,
            "created_at": "now",
            "removed_at": None,
            "removed_by": None,
            "applied_run": None,
        }
        self.override_rows.append(row)
        self.pending.add(patient)
        self.audit(
            actor,
            "override",
            patient,
            {"practitioner": practitioner, "reason": reason, "requested_by": requested_by},
        )
        return dict(row)

    def remove_override(self, patient: str, actor: str) -> bool:
        active = [
            r for r in self.override_rows if r["patient"] == patient and r["removed_at"] is None
        ]
        for row in active:
            row.update(removed_at="now", removed_by=actor)
        if active:
            self.pending.add(patient)
            self.audit(actor, "override-removed", patient, {})
        return bool(active)

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
    ) -> dict[str, Any]:
        row = self.patients.get(patient) or {}
        if row.get("status") != "assigned" or row.get("practitioner") != practitioner:
            raise AssignmentChanged(f"{patient} is not assigned to {practitioner} (any more)")
        row["confirmation"] = confirmed_by
        done = {
            "patient": patient,
            "practitioner": practitioner,
            "confirmed_by": confirmed_by,
            "note": note,
            "actor": actor,
            "created_at": "now",
            "method": method,
            "confirmed_on": (confirmed_on or TODAY).isoformat(),
        }
        self.confirmation_rows.append(done)
        self.audit(
            actor,
            "confirm",
            patient,
            {"practitioner": practitioner, "confirmed_by": confirmed_by, "note": note},
        )
        return dict(done)

    # proposed moves, as the real store keeps them
    def proposed_moves(
        self, status: str | None = "open", patient: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        return [
            dict(m)
            for m in reversed(self.move_rows)
            if (status is None or m["status"] == status)
            and (patient is None or m["patient"] == patient)
        ][:limit]

    def proposed_move(self, move_id: int) -> dict[str, Any] | None:
        return next((dict(m) for m in self.move_rows if m["id"] == move_id), None)

    def _decide(self, move_id: int, status: str, actor: str) -> dict[str, Any]:
        move = next(m for m in self.move_rows if m["id"] == move_id)
        if move["status"] != "open":
            raise MoveNotOpen(move_id, move["status"])
        move.update(status=status, decided_by=actor)
        return move

    def accept_move(self, move_id: int, *, actor: str, note: str = "") -> dict[str, Any]:
        move = self._decide(move_id, "accepted", actor)
        row = self.patients.get(move["patient"]) or {}
        if row.get("practitioner") != move["from"]:
            move["status"] = "open"  # the real store rolls back
            raise AssignmentChanged(f"{move['patient']} is no longer with {move['from']}")
        override = self.add_override(
            move["patient"],
            move["to"],
            reason="proposed move accepted",
            requested_by="staff",
            actor=actor,
        )
        self.audit(actor, "move-accepted", move["patient"], {"move": move_id, "note": note})
        return {**move, "override": override}

    def dismiss_move(self, move_id: int, *, actor: str, note: str = "") -> dict[str, Any]:
        move = self._decide(move_id, "dismissed", actor)
        self.audit(actor, "move-dismissed", move["patient"], {"move": move_id, "note": note})
        return dict(move)

    def override_for(self, patient: str) -> dict[str, Any] | None:
        active = [
            r for r in self.override_rows if r["patient"] == patient and r["removed_at"] is None
        ]
        return dict(active[0]) if active else None

    def set_status(self, patient: str, status: str, *, reason: str, actor: str) -> dict[str, Any]:
        for row in self.status_rows:
            if row["patient"] == patient and row["cleared_at"] is None:
                row.update(cleared_at="now", cleared_by=actor)
        row = {
            "id": len(self.status_rows) + 1,
            "patient": patient,
            "status": status,
            "reason": reason,
            "actor": actor,
            "created_at": "now",
            "cleared_at": None,
            "cleared_by": None,
        }
        self.status_rows.append(row)
        self.pending.add(patient)
        self.audit(actor, "status", patient, {"status": status, "reason": reason})
        return dict(row)

    def clear_status(self, patient: str, actor: str) -> bool:
        active = [
            r for r in self.status_rows if r["patient"] == patient and r["cleared_at"] is None
        ]
        for row in active:
            row.update(cleared_at="now", cleared_by=actor)
        if active:
            self.pending.add(patient)
            self.audit(actor, "status-cleared", patient, {})
        return bool(active)

    # ------------------------------------------------------------ SuggestionReader

    def read_suggestions(self) -> list[dict[str, Any]]:
        rows = [
            dict(r, weight=r.get("weight", 1.0), pending=r["patient"] in self.pending)
            for r in self.patients.values()
            if r["status"] == "unassigned"
        ]
        return sorted(rows, key=lambda r: (-(r["tier"] or 0), r["patient"]))

    # ------------------------------------------------------------ PatientReader

    def read_patient(
        self, patient: str, *, ledger: Sequence[tuple[str, str]], audit_limit: int
    ) -> dict[str, Any] | None:
        self.reads.append((patient, tuple(ledger), audit_limit))
        found = self.patients.get(patient)
        if found is None:
            return None
        overrides = [dict(o) for o in self.override_rows if o["patient"] == patient]
        return {
            "state": copy.deepcopy(found),
            "history": list(self.history_rows.get(patient, [])),
            "overrides": overrides,
            "active_override": next((o for o in overrides if o["removed_at"] is None), None),
            "confirmations": [c for c in self.confirmation_rows if c["patient"] == patient],
            "statuses": [dict(x) for x in self.status_rows if x["patient"] == patient],
            "active_status": next(
                (
                    dict(x)
                    for x in self.status_rows
                    if x["patient"] == patient and x["cleared_at"] is None
                ),
                None,
            ),
            "pending": patient in self.pending,
            "audit": [a for a in reversed(self.audit_rows) if a["patient"] == patient][
                :audit_limit
            ],
            "ledger": {rtype: self.ledger.get((rtype, ident)) for rtype, ident in ledger},
        }

    # ------------------------------------------------------------ helpers

    def audit(self, actor: str, action: str, patient: str, detail: dict[str, Any]) -> None:
        self.audit_rows.append(
            {"actor": actor, "action": action, "patient": patient, "detail": detail}
        )

    def refresh_moves(self, patient: str, practitioner: str) -> None:
        """What a refresh committing a new assignment does to the stored row."""
        self.patients[patient].update(practitioner=practitioner, confirmation="proposed")


def clinician(
    ref: str, name: str, eligible: bool, *, size: int, load: float, capacity: float
) -> dict[str, Any]:
    return {
        "practitioner": ref,
        "name": name,
        "eligible": eligible,
        "size": size,
        "risk_adjusted_size": load,
        "capacity": capacity,
    }


def state(
    patient: str,
    status: str,
    practitioner: str | None,
    *,
    reason: str | None = None,
    suggested: str | None = None,
    suggestion_reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "patient": patient,
        "status": status,
        "practitioner": practitioner,
        "rule": "plurality" if practitioner else None,
        "step": "four-cut-18m" if practitioner else None,
        "reason": reason,
        "tier": 2,
        "confirmation": "proposed",
        "override": False,
        "outreach": [],
        "suggested": suggested,
        "suggestion_reason": suggestion_reason,
        "detail": detail or {},
        "run_id": 1,
    }


class Trigger:
    """Stands in for the app's trigger: records (kind, by); answers a run id, None (busy), or
    raises."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.answer: int | None = 7
        self.error: Exception | None = None

    def __call__(self, kind: str, by: str) -> int | None:
        self.calls.append((kind, by))
        if self.error is not None:
            raise self.error
        return self.answer


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def trigger() -> Trigger:
    return Trigger()


@pytest.fixture
def service(store: FakeStore, trigger: Trigger) -> ReviewService:
    return ReviewService(
        store, store.read_patient, trigger, "dashboard", store.read_suggestions, today=lambda: TODAY
    )


def nothing_changed(store: FakeStore, trigger: Trigger) -> bool:
    return (
        store.override_rows == []
        and store.confirmation_rows == []
        and store.status_rows == []
        and store.audit_rows == []
        and store.pending == set()
        and trigger.calls == []
    )


# ---------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("rtype", "raw", "expected"),
    [
        ("Patient", "pat-1", "Patient/pat-1"),
        ("Patient", "Patient/pat-1", "Patient/pat-1"),
        ("Patient", "A.b-9", "Patient/A.b-9"),
        ("Patient", "x" * 64, "Patient/" + "x" * 64),
        ("Practitioner", "Practitioner/prac-1", "Practitioner/prac-1"),
        ("Patient", "x" * 65, None),
        ("Patient", "", None),
        ("Patient", "Patient/", None),
        ("Patient", "Practitioner/prac-1", None),
        ("Patient", "Patient/Patient/pat-1", None),
        ("Patient", "pat 1", None),
        ("Patient", "pat-1\n", None),
        ("Patient", "pat_1", None),
        ("Practitioner", "Patient/pat-1", None),
    ],
)
def test_one_check_of_references(rtype: str, raw: str, expected: str | None) -> None:
    assert reference(rtype, raw) == expected


# ---------------------------------------------------------------- overrides


def test_an_override_is_stored_audited_and_asks_for_a_refresh(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    done = service.override(
        "pat-1", "prac-bob", reason="  moved \n closer ", requested_by="family", actor="boss"
    )
    assert done.override["patient"] == PAT and done.override["practitioner"] == BOB
    assert done.override["reason"] == "moved closer" and done.override["actor"] == "boss"
    assert done.clinician["name"] == "Dr Bob"
    assert store.audit_rows == [
        {
            "actor": "boss",
            "action": "override",
            "patient": PAT,
            "detail": {"practitioner": BOB, "reason": "moved closer", "requested_by": "family"},
        }
    ]
    assert store.pending == {PAT}
    assert trigger.calls == [("incremental", "dashboard")]
    assert type(trigger.calls[0][0]) is str  # a plain string, as the trigger's callers expect
    assert done.refresh == Refresh(7, True, "a refresh has started")
    assert done.refresh.as_dict() == {
        "run_id": 7,
        "started": True,
        "detail": "a refresh has started",
    }


def test_an_unassigned_patient_can_be_assigned_by_hand(
    service: ReviewService, store: FakeStore
) -> None:
    done = service.override(LOOSE, BOB, reason="asked", requested_by="patient", actor="boss")
    assert done.override["patient"] == LOOSE
    assert [r["removed_at"] for r in store.override_rows] == [None]


def test_a_second_override_replaces_the_first(service: ReviewService, store: FakeStore) -> None:
    service.override(PAT, BOB, reason="one", requested_by="patient", actor="boss")
    service.override(PAT, ANN, reason="two", requested_by="clinician", actor="eve")
    assert [(r["practitioner"], r["removed_by"]) for r in store.override_rows] == [
        (BOB, "eve"),
        (ANN, None),
    ]


@pytest.mark.parametrize(
    ("patient", "practitioner", "requested_by", "reason", "error", "field"),
    [
        ("pat-404", BOB, "family", "x", PatientNotFound, None),
        ("pat 1", BOB, "family", "x", PatientNotFound, None),
        (PAT, "", "family", "x", InvalidReference, "practitioner"),
        (PAT, "prac bob", "family", "x", InvalidReference, "practitioner"),
        (PAT, "Patient/prac-bob", "family", "x", InvalidReference, "practitioner"),
        (PAT, "prac-nobody", "family", "x", UnknownClinician, "practitioner"),
        (PAT, CAL, "family", "x", IneligibleClinician, "practitioner"),
        (PAT, BOB, "neighbour", "x", InvalidChoice, "requested_by"),
        (PAT, BOB, "family", " \n ", MissingText, "reason"),
        (GONE, BOB, "family", "x", PatientExcluded, None),
        # The order of the checks: the clinician before who asked and the reason.
        (PAT, "prac-nobody", "neighbour", "", UnknownClinician, "practitioner"),
        (PAT, BOB, "neighbour", "", InvalidChoice, "requested_by"),
        (GONE, "prac-nobody", "family", "x", UnknownClinician, "practitioner"),
    ],
)
def test_an_override_is_refused_with_a_typed_error_and_changes_nothing(
    service: ReviewService,
    store: FakeStore,
    trigger: Trigger,
    patient: str,
    practitioner: str,
    requested_by: str,
    reason: str,
    error: type[ReviewError],
    field: str | None,
) -> None:
    with pytest.raises(error) as caught:
        service.override(
            patient, practitioner, reason=reason, requested_by=requested_by, actor="boss"
        )
    assert type(caught.value) is error
    assert getattr(caught.value, "field", None) == field
    assert nothing_changed(store, trigger)


def test_refusals_carry_what_the_message_needs(service: ReviewService) -> None:
    with pytest.raises(IneligibleClinician) as ineligible:
        service.override(PAT, "prac-cal", reason="x", requested_by="staff", actor="boss")
    assert (ineligible.value.practitioner, ineligible.value.name) == (CAL, "Dr Cal")
    assert str(ineligible.value) == (
        f"practitioner: {CAL} is not eligible for a primary-care panel"
    )
    with pytest.raises(PatientExcluded) as excluded:
        service.override(GONE, BOB, reason="x", requested_by="staff", actor="boss")
    assert excluded.value.reason == "deceased"
    assert str(excluded.value) == (
        f"{GONE} is not an active patient (deceased): there is nothing to assign"
    )
    with pytest.raises(InvalidChoice) as choice:
        service.override(PAT, BOB, reason="x", requested_by="nobody", actor="boss")
    assert choice.value.choices == ("clinician", "patient", "family", "staff")
    with pytest.raises(PatientNotFound) as missing:
        service.override("pat-404", BOB, reason="x", requested_by="staff", actor="boss")
    assert str(missing.value) == "no Patient/pat-404 in the last refresh"


def test_an_override_when_the_refresh_is_busy_or_cannot_start(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    trigger.answer = None
    busy = service.override(PAT, BOB, reason="x", requested_by="patient", actor="boss")
    assert busy.refresh == Refresh(
        None, False, "a refresh is running; the next one applies the change"
    )
    trigger.error = ConfigError("no source configured")
    ours = service.override(PAT, BOB, reason="x", requested_by="patient", actor="boss")
    assert ours.refresh == Refresh(None, False, "no source configured")
    trigger.error = RuntimeError("a secret path /var/x")
    other = service.override(PAT, BOB, reason="x", requested_by="patient", actor="boss")
    assert other.refresh == Refresh(
        None, False, "the refresh could not start; the next one applies the change"
    )
    # Stored every time: the next refresh applies the last one.
    assert [a["action"] for a in store.audit_rows] == ["override"] * 3
    assert len(trigger.calls) == 3


def test_a_patient_looked_up_once_serves_the_change(
    service: ReviewService, store: FakeStore
) -> None:
    target = service.patient("Patient/pat-1")
    reads = store.state_reads
    service.override(target, ANN, reason="x", requested_by="patient", actor="boss")
    assert store.state_reads == reads  # the entry point read it first (a 404 before the body)


# ---------------------------------------------------------------- removing an override


def test_removing_an_override(service: ReviewService, store: FakeStore, trigger: Trigger) -> None:
    with pytest.raises(NoOverride) as none:
        service.remove_override(PAT, actor="boss")
    assert str(none.value) == f"{PAT} has no override in force"
    assert nothing_changed(store, trigger)
    service.override(PAT, BOB, reason="x", requested_by="patient", actor="boss")
    done = service.remove_override("pat-1", actor="eve")
    assert done.patient == PAT and done.refresh.run_id == 7
    assert [a["action"] for a in store.audit_rows] == ["override", "override-removed"]
    assert store.audit_rows[-1]["actor"] == "eve"
    assert store.override_rows[0]["removed_by"] == "eve"
    assert trigger.calls == [("incremental", "dashboard")] * 2
    with pytest.raises(NoOverride):
        service.remove_override(PAT, actor="eve")
    with pytest.raises(PatientNotFound):
        service.remove_override("pat-404", actor="eve")


# ---------------------------------------------------------------- confirmations


def test_a_confirmation_is_stored_and_audited_and_asks_for_no_refresh(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    done = service.confirm(
        PAT,
        confirmed_by="clinician",
        actor="boss",
        shown="prac-ann",
        note=" seen at the\n meeting ",
    )
    assert done == {
        "patient": PAT,
        "practitioner": ANN,
        "confirmed_by": "clinician",
        "note": "seen at the meeting",
        "actor": "boss",
        "created_at": "now",
        "method": None,
        "confirmed_on": TODAY.isoformat(),
        "expires_on": "2027-12-05",
        "expired": False,
    }
    assert store.patients[PAT]["confirmation"] == "clinician"
    assert store.audit_rows == [
        {
            "actor": "boss",
            "action": "confirm",
            "patient": PAT,
            "detail": {
                "practitioner": ANN,
                "confirmed_by": "clinician",
                "note": "seen at the meeting",
            },
        }
    ]
    assert trigger.calls == [] and store.pending == set()


def test_a_confirmation_without_the_shown_clinician_confirms_the_current_one(
    service: ReviewService, store: FakeStore
) -> None:
    service.confirm("Patient/pat-1", confirmed_by="patient", actor="boss")
    assert store.confirmation_rows[0]["practitioner"] == ANN


def test_a_patient_moved_since_the_page_loaded_is_not_confirmed(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    store.refresh_moves(PAT, BOB)  # the page showed Ann; a refresh moved the patient to Bob
    with pytest.raises(AssignmentMoved) as moved:
        service.confirm(PAT, confirmed_by="clinician", actor="boss", shown=ANN)
    assert (moved.value.current, moved.value.shown) == (BOB, ANN)
    assert str(moved.value) == (
        f"{PAT} is assigned to {BOB}, not {ANN}: reload and confirm the current assignment"
    )
    assert store.patients[PAT]["confirmation"] == "proposed"
    assert nothing_changed(store, trigger)


def test_a_move_committed_between_the_read_and_the_write_is_not_confirmed(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    target = service.patient(PAT)  # read: assigned to Ann
    store.refresh_moves(PAT, BOB)  # a refresh commits before the confirmation is written
    with pytest.raises(AssignmentMoved) as moved:
        service.confirm(target, confirmed_by="clinician", actor="boss", shown=ANN)
    assert moved.value.current is None and moved.value.shown == ANN
    assert isinstance(moved.value.__cause__, AssignmentChanged)
    assert str(moved.value) == str(moved.value.__cause__)
    assert nothing_changed(store, trigger)


@pytest.mark.parametrize(
    ("patient", "confirmed_by", "shown", "error"),
    [
        ("pat-404", "clinician", None, PatientNotFound),
        (PAT, "family", None, InvalidChoice),
        (PAT, "", ANN, InvalidChoice),
        (LOOSE, "patient", None, NotAssigned),
        (GONE, "patient", None, NotAssigned),
        (PAT, "patient", "prac ann", InvalidReference),
        (PAT, "patient", "Patient/prac-ann", InvalidReference),
        (PAT, "patient", "prac-bob", AssignmentMoved),
        # Who confirmed is checked first, then that there is a clinician to confirm.
        (LOOSE, "family", None, InvalidChoice),
        (LOOSE, "patient", "prac-bob", NotAssigned),
    ],
)
def test_a_confirmation_is_refused_with_a_typed_error(
    service: ReviewService,
    store: FakeStore,
    trigger: Trigger,
    patient: str,
    confirmed_by: str,
    shown: str | None,
    error: type[ReviewError],
) -> None:
    with pytest.raises(error) as caught:
        service.confirm(patient, confirmed_by=confirmed_by, actor="boss", shown=shown)
    assert type(caught.value) is error
    assert nothing_changed(store, trigger)


def test_not_assigned_names_the_status(service: ReviewService) -> None:
    with pytest.raises(NotAssigned) as caught:
        service.confirm(LOOSE, confirmed_by="patient", actor="boss")
    assert caught.value.status == "unassigned"
    assert str(caught.value) == f"{LOOSE} is unassigned: only an assigned patient can be confirmed"


# ---------------------------------------------------------------- the explanation


def test_the_explanation_comes_from_one_read(service: ReviewService, store: FakeStore) -> None:
    store.ledger[("CareTeam", "careteam-pcp.pat-1")] = {
        "rtype": "CareTeam",
        "identifier": "careteam-pcp.pat-1",
        "id": "ct-9",
        "version": "2",
        "hash": "abc",
        "updated_at": "2026-02-01T00:00:00Z",
    }
    service.override(PAT, BOB, reason="asked", requested_by="patient", actor="boss")
    reads_before = store.state_reads
    explained = service.explain("pat-1")
    assert store.reads == [
        (PAT, (("CareTeam", "careteam-pcp.pat-1"), ("CarePlan", "careplan-cm.pat-1")), AUDIT_LIMIT)
    ]
    assert store.state_reads == reads_before  # nothing read beside the one record
    assert explained.patient == PAT and explained.pending is True
    assert explained.visits_ranked == [(ANN, 3), (BOB, 1)]
    body = explained.as_dict()
    assert body["patient"] == PAT and body["practitioner"] == ANN
    assert "detail" not in body and "suggestion_reason" not in body
    assert body["suggested"] is None
    assert body["visits"] == {ANN: 3, BOB: 1}
    assert body["evidence"] == ["Encounter/e1", "Encounter/e2"]
    assert body["risk"] == {"tier": 2} and body["tie_broken"] is False
    assert body["sentinel_exam"] is None and body["practitioner_role"] is None
    assert body["written"] == {
        "CareTeam": {
            "reference": "CareTeam/ct-9",
            "version": "2",
            "identifier": "careteam-pcp.pat-1",
            "updated_at": "2026-02-01T00:00:00Z",
        },
        "CarePlan": None,
    }
    assert body["active_override"]["practitioner"] == BOB
    assert [o["practitioner"] for o in body["overrides"]] == [BOB]
    assert [a["action"] for a in body["audit"]] == ["override"]
    assert [h["practitioner"] for h in body["history"]] == [ANN]
    assert body["confirmations"] == [] and body["pending"] is True


def test_an_unassigned_patient_is_explained_with_the_suggestion(service: ReviewService) -> None:
    body = service.explain(LOOSE).as_dict()
    assert body["suggested"] == {"practitioner": BOB, "reason": "most room"}
    assert body["visits"] == {} and body["evidence"] == [] and body["risk"] is None
    assert body["written"] == {"CareTeam": None, "CarePlan": None}
    assert body["pending"] is False and body["active_override"] is None


def test_an_unknown_patient_has_no_explanation(service: ReviewService, store: FakeStore) -> None:
    with pytest.raises(PatientNotFound) as caught:
        service.explain("pat-404")
    assert caught.value.patient == "Patient/pat-404"
    with pytest.raises(PatientNotFound):
        service.explain("Practitioner/prac-ann")
    assert [r[0] for r in store.reads] == ["Patient/pat-404"]  # a malformed id is not read


def test_eligible_clinicians_are_the_ones_an_override_may_choose(service: ReviewService) -> None:
    assert [c["practitioner"] for c in service.eligible_clinicians()] == [ANN, BOB]


# ---------------------------------------------------------------- placement suggestions

P4, P5 = "Patient/pat-4", "Patient/pat-5"


def more_unassigned(store: FakeStore) -> None:
    """pat-4 (tier 3, weight 1.5) suggested to Ann; pat-5: no clinician has room."""
    store.patients[P4] = state(P4, "unassigned", None, suggested=ANN, suggestion_reason="seen")
    store.patients[P4].update(tier=3, weight=1.5)
    store.patients[P5] = state(
        P5, "unassigned", None, suggestion_reason="no room: practice over capacity (short 1.0)"
    )


def test_accepting_suggestions_makes_one_audited_override_each_and_one_refresh(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    more_unassigned(store)
    done = service.assign_suggested([("pat-2", "prac-bob"), (P4, ANN)], actor="boss")
    assert [(o["patient"], o["practitioner"]) for o in done.overrides] == [(LOOSE, BOB), (P4, ANN)]
    assert [o["reason"] for o in done.overrides] == [
        "placement suggestion accepted: most room",
        "placement suggestion accepted: seen",
    ]
    assert {o["requested_by"] for o in done.overrides} == {"staff"}
    assert [(a["action"], a["patient"], a["actor"]) for a in store.audit_rows] == [
        ("override", LOOSE, "boss"),
        ("override", P4, "boss"),
    ]
    assert done.refused == [] and trigger.calls == [("incremental", "dashboard")]
    assert done.refresh == Refresh(7, True, "a refresh has started")


def test_a_suggestion_that_is_no_longer_as_shown_is_refused_and_named(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    more_unassigned(store)
    store.patients[P4]["suggested"] = BOB  # a refresh placed pat-4 again since
    store.add_override(P5, ANN, reason="by hand", requested_by="staff", actor="someone")
    store.audit_rows.clear()
    done = service.assign_suggested(
        [
            ("pat-2", "prac-bob"),
            (P4, ANN),  # stale
            (PAT, ANN),  # assigned meanwhile
            (GONE, ANN),  # excluded
            ("pat-404", ANN),  # not in the last refresh
            (P5, ANN),  # an override already waits (and no suggestion: stale first)
            ("pat-2", "prac-bob"),  # twice
        ],
        actor="boss",
    )
    assert [o["patient"] for o in done.overrides] == [LOOSE]
    refused = {(r.patient, type(r.error)) for r in done.refused}
    assert refused == {
        (P4, SuggestionChanged),
        (PAT, NotUnassigned),
        (GONE, NotUnassigned),
        ("Patient/pat-404", PatientNotFound),
        (P5, SuggestionChanged),
        (LOOSE, InvalidInput),  # listed twice
    }
    stale = next(r.error for r in done.refused if r.patient == P4)
    assert isinstance(stale, SuggestionChanged) and (stale.shown, stale.current) == (ANN, BOB)
    assert str(stale) == (
        "Patient/pat-4's suggested clinician changed since it was shown "
        "(Practitioner/prac-ann, now Practitioner/prac-bob): reload and check the new suggestion"
    )
    assert str(next(r.error for r in done.refused if r.patient == PAT)) == (
        "Patient/pat-1 is no longer unassigned (assigned to Practitioner/prac-ann): "
        "nothing to place"
    )
    assert [a["patient"] for a in store.audit_rows] == [LOOSE]  # refusals store nothing


def test_an_override_already_waiting_is_not_doubled(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    first = service.assign_suggested([("pat-2", "prac-bob")], actor="boss")
    again = service.assign_suggested([("pat-2", "prac-bob")], actor="boss")
    assert len(first.overrides) == 1 and again.overrides == []
    assert [type(r.error) for r in again.refused] == [OverridePending]
    assert again.refresh is None and len(trigger.calls) == 1  # nothing new: no refresh


def test_a_suggested_clinician_no_longer_eligible_is_refused(
    service: ReviewService, store: FakeStore
) -> None:
    store.clinician_rows[BOB]["eligible"] = False
    done = service.assign_suggested([("pat-2", "prac-bob")], actor="boss")
    assert [type(r.error) for r in done.refused] == [IneligibleClinician]
    del store.clinician_rows[BOB]
    done = service.assign_suggested([("pat-2", "prac-bob")], actor="boss")
    assert [type(r.error) for r in done.refused] == [UnknownClinician]


def test_all_accepts_every_stored_suggestion_as_it_is(
    service: ReviewService, store: FakeStore
) -> None:
    more_unassigned(store)
    done = service.assign_suggested(None, actor="boss")
    # highest tier first; pat-5 has no suggestion to accept
    assert [(o["patient"], o["practitioner"]) for o in done.overrides] == [(P4, ANN), (LOOSE, BOB)]
    assert done.refused == []


def test_a_pair_that_is_no_reference_refuses_the_whole_request(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    with pytest.raises(InvalidReference) as caught:
        service.assign_suggested([("pat-2", "prac-bob"), ("pat 3", "prac-bob")], actor="boss")
    assert caught.value.field == "suggestions[1].patient"
    assert nothing_changed(store, trigger)


def test_the_preview_shows_each_panel_before_and_after(
    service: ReviewService, store: FakeStore
) -> None:
    more_unassigned(store)
    preview = service.placement_preview()
    assert preview.pairs == ((P4, ANN), (LOOSE, BOB))
    assert (preview.no_room, preview.pending) == (1, 0)
    figures = [(c.practitioner, c.size, c.size_after, c.load_after) for c in preview.changes]
    assert figures == [(ANN, 1, 2, 2.5), (BOB, 0, 1, 1.0)]
    assert preview.over_capacity_after == []
    service.assign_suggested([(P4, ANN)], actor="boss")  # now pending: left out
    preview = service.placement_preview()
    assert preview.pairs == ((LOOSE, BOB),) and preview.pending == 1


def test_an_unassigned_patient_without_room_is_explained_with_the_reason(
    service: ReviewService, store: FakeStore
) -> None:
    more_unassigned(store)
    body = service.explain(P5).as_dict()
    assert body["suggested"] == {
        "practitioner": None,
        "reason": "no room: practice over capacity (short 1.0)",
    }


# ---------------------------------------------------------------- patient statuses


def test_a_status_is_stored_audited_explained_and_asks_for_a_refresh(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    done = service.set_status("pat-1", "moved-away", reason="  letter\nreturned ", actor="clerk")
    assert (done.status["status"], done.status["reason"]) == ("moved-away", "letter returned")
    assert done.refresh == Refresh(7, True, "a refresh has started")
    assert trigger.calls == [("incremental", "dashboard")]
    assert store.pending == {PAT}
    assert store.audit_rows[-1]["detail"] == {"status": "moved-away", "reason": "letter returned"}
    body = service.explain(PAT).as_dict()
    assert body["active_status"]["status"] == "moved-away"
    assert [x["status"] for x in body["statuses"]] == ["moved-away"]
    # A patient a status excluded may get another status (it replaces the first).
    store.patients[PAT].update(status="excluded", practitioner=None, reason="moved-away")
    service.set_status(PAT, "deceased", reason="family called", actor="clerk")
    assert [x["cleared_by"] for x in store.status_rows] == ["clerk", None]


def test_clearing_a_status_asks_for_a_refresh_and_a_second_clear_is_refused(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    service.set_status(PAT, "dismissed", reason="conduct", actor="manager")
    done = service.clear_status("pat-1", actor="manager")
    assert done.patient == PAT and done.refresh.run_id == 7
    assert [a["action"] for a in store.audit_rows] == ["status", "status-cleared"]
    with pytest.raises(NoStatus) as caught:
        service.clear_status(PAT, actor="manager")
    assert caught.value.patient == PAT
    assert len(trigger.calls) == 2  # the refused clear asked for none


@pytest.mark.parametrize(
    ("patient", "status", "reason", "error"),
    [
        ("pat-9", "moved-away", "x", PatientNotFound),
        (PAT, "on-holiday", "x", InvalidChoice),
        (PAT, "moved-away", "  ", MissingText),
        (GONE, "moved-away", "x", RecordExcludes),  # the record says deceased already
    ],
)
def test_a_status_is_refused_with_a_typed_error_and_changes_nothing(
    service: ReviewService,
    store: FakeStore,
    trigger: Trigger,
    patient: str,
    status: str,
    reason: str,
    error: type[ReviewError],
) -> None:
    with pytest.raises(error):
        service.set_status(patient, status, reason=reason, actor="clerk")
    assert nothing_changed(store, trigger)


# ---------------------------------------------------------------- confirmations and moves


def test_a_confirmation_takes_how_and_when_and_refuses_a_future_or_expired_day(
    service: ReviewService, store: FakeStore
) -> None:
    done = service.confirm(
        PAT, confirmed_by="patient", actor="nurse", method="portal", confirmed_on="2026-03-01"
    )
    assert (done["method"], done["confirmed_on"], done["expires_on"], done["expired"]) == (
        "portal",
        "2026-03-01",
        "2027-03-01",
        False,
    )
    for field, kwargs, message in (
        ("method", {"method": "fax"}, "must be one of"),
        ("confirmed_on", {"confirmed_on": "2026-12-06"}, "future"),
        ("confirmed_on", {"confirmed_on": "2025-11-05"}, "expired"),
        ("confirmed_on", {"confirmed_on": "5 March"}, "YYYY-MM-DD"),
    ):
        with pytest.raises(InvalidInput, match=message) as refused:
            service.confirm(PAT, confirmed_by="clinician", actor="nurse", **kwargs)
        assert refused.value.field == field
    assert len(store.confirmation_rows) == 1  # the refused ones stored nothing


def test_a_confirmation_expires_after_the_configured_months(store: FakeStore) -> None:
    short = ReviewService(
        store, store.read_patient, Trigger(), "api", confirmation_months=3, today=lambda: TODAY
    )
    entry = {"confirmed_on": "2026-08-01"}
    assert short.annotate_confirmation(entry) == {
        "confirmed_on": "2026-08-01",
        "expires_on": "2026-11-01",
        "expired": True,
    }
    with pytest.raises(InvalidInput, match="3 months"):
        short.confirm(PAT, confirmed_by="clinician", actor="x", confirmed_on="2026-09-05")


def test_accepting_a_move_overrides_to_the_new_clinician_and_asks_for_a_refresh(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    done = service.accept_move(1, actor="boss", note="agreed at the huddle")
    assert done.move["status"] == "accepted"
    assert done.move["override"]["practitioner"] == BOB
    assert done.refresh is not None and done.refresh.started
    assert [a["action"] for a in store.audit_rows] == ["override", "move-accepted"]
    with pytest.raises(MoveClosed, match="accepted"):
        service.accept_move(1, actor="boss")


def test_a_move_to_a_clinician_no_longer_eligible_or_from_a_moved_patient_is_refused(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    with pytest.raises(IneligibleClinician):
        service.accept_move(2, actor="boss")
    store.patients[PAT]["practitioner"] = BOB  # a refresh moved the patient since
    with pytest.raises(AssignmentMoved):
        service.accept_move(1, actor="boss")
    assert store.override_rows == [] and trigger.calls == []
    assert store.proposed_move(1)["status"] == "open"  # type: ignore[index]


def test_dismissing_a_move_keeps_the_patient_and_asks_for_no_refresh(
    service: ReviewService, store: FakeStore, trigger: Trigger
) -> None:
    done = service.dismiss_move(1, actor="boss")
    assert (done.move["status"], done.refresh) == ("dismissed", None)
    assert store.override_rows == [] and trigger.calls == []
    with pytest.raises(MoveClosed, match="dismissed"):
        service.dismiss_move(3, actor="boss")
    with pytest.raises(MoveNotFound):
        service.dismiss_move(99, actor="boss")
    assert [m["id"] for m in service.proposed_moves()] == [2]
    assert [m["id"] for m in service.proposed_moves(None)] == [3, 2, 1]
    with pytest.raises(InvalidChoice):
        service.proposed_moves("maybe")
