"""What the review service's changes did, as the entry points word them: the override or status
stored, the refresh asked for, a proposed move decided, placement suggestions accepted or
refused, and the preview of accepting them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhirpanel.domain.placement import PanelChange
from fhirpanel.service.errors import ReviewError


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


__all__ = [
    "MoveDecided",
    "Overridden",
    "OverrideRemoved",
    "PlacementPreview",
    "Refresh",
    "Refusal",
    "StatusCleared",
    "StatusSet",
    "SuggestionsAccepted",
]
