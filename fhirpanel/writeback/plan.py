"""The write-back plan: what exists, what should exist, and which requests that takes.

Pure: no HTTP here. The writer reads what the server holds, hands it to `choose_existing` and a
builder, and `decide` says whether to create, update or leave the resource alone. `WriteCounts`
keeps the tally the run report and the terminal show.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fhirpanel.config import WritebackSettings
from fhirpanel.fhir.build import Resource, has_managed_tag, same_content

Action = Literal["create", "update", "unchanged", "skipped", "failed", "none"]
# Actions the report counts, in the order it lists them.
COUNTED_ACTIONS: tuple[str, ...] = ("create", "update", "unchanged", "skipped", "failed")
Builder = Callable[[Mapping[str, Any] | None], Resource | None]


@dataclass(eq=False)
class PlannedWrite:
    """One resource fhirpanel manages: how to build it, what the server holds, what to do."""

    rtype: str
    identifier: str  # our business identifier value
    subject: str  # the Patient or Organization it is about, for messages
    build: Builder
    existing: dict[str, Any] | None = None
    resource: Resource | None = None
    action: Action = "none"
    written_id: str | None = None
    written_version: str | None = None

    @property
    def label(self) -> str:
        """How issues name it: by server id when known, else by identifier."""
        if self.existing and isinstance(self.existing.get("id"), str):
            return f"{self.rtype}/{self.existing['id']}"
        return f"{self.rtype}?identifier={self.identifier}"

    @property
    def current_id(self) -> str | None:
        """The server id after writing (or of the unchanged resource)."""
        if self.written_id:
            return self.written_id
        if self.existing and isinstance(self.existing.get("id"), str):
            return str(self.existing["id"])
        return None

    @property
    def existing_version(self) -> str | None:
        meta = (self.existing or {}).get("meta")
        version = meta.get("versionId") if isinstance(meta, Mapping) else None
        return version if isinstance(version, str) and version else None

    def prepare(self, existing: dict[str, Any] | None) -> None:
        """Build against `existing` and decide."""
        self.existing = existing
        self.resource = self.build(existing)
        self.action = decide(self.resource, existing)


def decide(built: Mapping[str, Any] | None, existing: Mapping[str, Any] | None) -> Action:
    """create, update or unchanged; `none` when there is nothing to write (no resource built and
    none exists, or a builder declined to touch one)."""
    if built is None:
        return "none"
    if existing is None:
        return "create"
    return "unchanged" if same_content(built, existing) else "update"


@dataclass(frozen=True)
class ExistingChoice:
    resource: dict[str, Any] | None
    problems: tuple[str, ...] = ()
    foreign: bool = False  # carries our identifier but not our tag: never modified


def choose_existing(found: Sequence[dict[str, Any]], cfg: WritebackSettings) -> ExistingChoice:
    """The one resource with our identifier to work on. Several (a server that let duplicates
    in): the tagged one with the smallest id, reported. Only untagged ones: foreign, left alone."""
    if not found:
        return ExistingChoice(None)
    managed = sorted((r for r in found if has_managed_tag(r, cfg)), key=lambda r: str(r.get("id")))
    problems: list[str] = []
    if len(found) > 1:
        ids = ", ".join(sorted(str(r.get("id")) for r in found))
        problems.append(f"{len(found)} resources share this identifier ({ids}); "
                        "only one is maintained")
    if not managed:
        return ExistingChoice(found[0], tuple(problems), foreign=True)
    return ExistingChoice(managed[0], tuple(problems))


@dataclass
class WriteCounts:
    """type -> action -> count."""

    by_type: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, rtype: str, action: str, n: int = 1) -> None:
        row = self.by_type.setdefault(rtype, dict.fromkeys(COUNTED_ACTIONS, 0))
        row[action] = row.get(action, 0) + n

    def get(self, rtype: str, action: str) -> int:
        return self.by_type.get(rtype, {}).get(action, 0)

    def total(self, action: str) -> int:
        return sum(row.get(action, 0) for row in self.by_type.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {rtype: dict(row) for rtype, row in self.by_type.items()}
