"""Clinicians and organisations read by the references to them, not listed: for servers that
refuse `Practitioner?`, `PractitionerRole?` and `Organization?` population searches (Epic,
Oracle Health: docs/profiles.md), for roster reads, and for a Bulk Group export without them.

A source notes the references in what it passes on (`References.note`): a Patient's
generalPractitioner and managingOrganization, an Encounter's participants and serviceProvider, a
PractitionerRole's practitioner and organization, an Organization's partOf. `ReferencedReads` then
reads them by id (`Type?_id=a,b,c`, else one read each), and a practitioner's roles with
`PractitionerRole?practitioner=a,b,c`. A reference that cannot be read is an `Issue`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fhirpanel.domain.records import Issue
from fhirpanel.errors import AuthError, FhirHttpError, InvalidRequestError
from fhirpanel.fhir.batching import BatchReader, Item
from fhirpanel.fhir.parse import reference_id

log = logging.getLogger(__name__)

REFERENCED_TYPES = ("PractitionerRole", "Practitioner", "Organization")
MAX_PART_OF_DEPTH = 10  # Organization.partOf chains followed this far up
# What a server answers to a search it will not run for a whole population.
REFUSED_STATUSES = frozenset({400, 403, 405, 422})


def refused_search(exc: FhirHttpError) -> bool:
    """A search the server will not run as asked (too broad, not allowed), as opposed to a
    failure: 400, 403, 405 or 422 (a 403 that blamed the token was renewed by the client)."""
    return exc.status in REFUSED_STATUSES


class References:
    """`Type/id` references to clinicians and organisations seen in the resources read so far.
    Thread-safe: batches note what they return from worker threads."""

    def __init__(self) -> None:
        self._ids: dict[str, dict[str, None]] = {t: {} for t in REFERENCED_TYPES}
        self._lock = threading.Lock()

    def ids(self, resource_type: str) -> list[str]:
        with self._lock:
            return list(self._ids[resource_type])

    def add(self, reference: str | None) -> None:
        if reference is None:
            return
        rtype, _, rid = reference.partition("/")
        table = self._ids.get(rtype)
        if table is not None and rid:
            with self._lock:
                table.setdefault(rid, None)

    def note(self, resource: Mapping[str, Any]) -> None:
        """The references fhirpanel follows in one resource (plain JSON, as read)."""
        for ref in _references(resource):
            self.add(ref)

    def noting(self, items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            if isinstance(item, dict):
                self.note(item)
            yield item


def _references(resource: Mapping[str, Any]) -> Iterator[str | None]:
    rtype = resource.get("resourceType")
    if rtype == "Encounter":
        for part in _list(resource.get("participant")):
            yield reference_id(part.get("individual"))
        yield reference_id(resource.get("serviceProvider"), "Organization")
    elif rtype == "Patient":
        for gp in _list(resource.get("generalPractitioner")):
            yield reference_id(gp)
        yield reference_id(resource.get("managingOrganization"), "Organization")
    elif rtype == "PractitionerRole":
        yield reference_id(resource.get("practitioner"), "Practitioner")
        yield reference_id(resource.get("organization"), "Organization")
    elif rtype == "Organization":
        yield reference_id(resource.get("partOf"), "Organization")


def _list(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


class ReferencedReads:
    """Reads of what `references` names, through a `BatchReader`. Ask for PractitionerRole
    first, then Practitioner, then Organization (ingest's order for these sources): each read
    notes the references of what it returns, so roles bring in their practitioners and
    organisations, and organisations their parents."""

    def __init__(self, reader: BatchReader, references: References) -> None:
        self.reader = reader
        self.references = references
        self._done: dict[str, set[str]] = {t: set() for t in REFERENCED_TYPES}

    def read(self, resource_type: str) -> Iterator[Item]:
        if resource_type == "PractitionerRole":
            yield from self._roles()
        elif resource_type == "Organization":
            yield from self._organisations()
        else:
            yield from self._by_id(resource_type, self.references.ids(resource_type))

    def _by_id(self, rtype: str, ids: list[str]) -> Iterator[Item]:
        done = self._done[rtype]
        todo = [i for i in ids if i not in done]
        done.update(todo)
        yield from self.references.noting(self.reader.read_ids(rtype, todo))

    def _roles(self) -> Iterator[Item]:
        """Roles named directly, then every role of the practitioners known by then (those
        roles name: a visit's PractitionerRole brings its practitioner's other roles)."""
        yield from self._by_id("PractitionerRole", self.references.ids("PractitionerRole"))
        practitioners = self.references.ids("Practitioner")
        if not practitioners:
            return
        done = self._done["PractitionerRole"]
        try:
            found = self.reader.search("PractitionerRole", "practitioner", practitioners)
            for role in self.references.noting(found):
                rid = role.get("id") if isinstance(role, dict) else None
                if isinstance(rid, str) and rid in done:
                    continue
                if isinstance(rid, str):
                    done.add(rid)
                yield role
        except (AuthError, InvalidRequestError) as exc:
            # Roles named by visits were read above; others of the same clinicians are not.
            log.warning("PractitionerRole?practitioner= refused (HTTP %d)", exc.status)
            yield Issue(
                "PractitionerRole/?",
                f"PractitionerRole?practitioner= refused (HTTP {exc.status}): only the roles "
                "visits and patients name were read",
                "recorded",
            )

    def _organisations(self) -> Iterator[Item]:
        for _ in range(MAX_PART_OF_DEPTH):
            todo = [
                i
                for i in self.references.ids("Organization")
                if i not in self._done["Organization"]
            ]
            if not todo:
                return
            yield from self._by_id("Organization", todo)
