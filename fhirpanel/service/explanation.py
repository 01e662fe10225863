"""A stored patient and the explanation of their assignment (`ReviewService.patient` and
`ReviewService.explain`): where the last refresh put them, why, and what was done about it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhirpanel.store.repository import CONFIRMERS


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

    @property
    def blend(self) -> Mapping[str, Any] | None:
        """The blended adjustment factor and each metric over its practice mean."""
        return self.detail.get("blend")

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
            "blend": self.blend,
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


__all__ = ["Explanation", "Patient"]
