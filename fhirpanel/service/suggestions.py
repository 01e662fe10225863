"""Placement suggestions, a part of the review service: every unassigned patient's stored
suggestion (read once per stored run), how accepting them all would change each panel, and
accepting them (one audited override each, after checking each is still what the caller saw,
then one refresh)."""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from fhirpanel.domain.placement import ClinicianLoad, project
from fhirpanel.jobs.rows import stored_suggestions
from fhirpanel.service.errors import (
    IneligibleClinician,
    InvalidInput,
    NotUnassigned,
    OverridePending,
    PatientNotFound,
    ReviewError,
    SuggestionChanged,
    UnknownClinician,
)
from fhirpanel.service.outcomes import PlacementPreview, Refresh, Refusal, SuggestionsAccepted
from fhirpanel.service.references import require_reference
from fhirpanel.store import reads
from fhirpanel.store.repository import CHUNK, Store

# The review service's one logger, which the API escapes (fhirpanel/api/logsafe.py).
log = logging.getLogger("fhirpanel.service.review")

ACCEPTED = "placement suggestion accepted"  # an accepted suggestion's override reason starts so
# A placement suggestion accepted is an override asked for by the practice's staff.
ACCEPTED_BY = "staff"

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


class StoreForSuggestions(Protocol):
    """The store methods accepting suggestions uses (`fhirpanel.store.Store` has them)."""

    def patient_state(self, patient: str) -> dict[str, Any] | None: ...

    def clinicians(self) -> list[dict[str, Any]]: ...

    def add_override(
        self, patient: str, practitioner: str, *, reason: str, requested_by: str, actor: str
    ) -> dict[str, Any]: ...

    def override_for(self, patient: str) -> dict[str, Any] | None: ...


class PlacementSuggestions:
    """The placement-suggestion methods of `fhirpanel.service.review.ReviewService`, which
    supplies the store, its name (`_by`), the suggestion reader, the eligible clinicians and
    the refresh."""

    _store: StoreForSuggestions
    _by: str
    _read_suggestions: SuggestionReader | None

    @abstractmethod
    def eligible_clinicians(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def ask_refresh(self) -> Refresh: ...

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


__all__ = [
    "ACCEPTED",
    "ACCEPTED_BY",
    "PlacementSuggestions",
    "StoreForSuggestions",
    "SuggestionReader",
    "read_suggestions",
]
