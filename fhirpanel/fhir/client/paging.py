"""Searchset pages: each page's shape checked, entries told apart (match, include, outcome) and the
pages of one search tallied against the `total` the server gave."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fhirpanel.errors import SourceError
from fhirpanel.fhir.client.links import next_link

SearchParams = Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]]


@dataclass(frozen=True)
class SearchPage:
    """One searchset page, its shape checked: its entries (objects), `total` and `next` link."""

    entries: list[dict[str, Any]]
    total: int | None
    next: str | None


def _kind(value: Any) -> str:
    """What a JSON value is, for a message: `a string`, `a list`, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def checked_page(bundle: Any, where: str) -> SearchPage:
    """A search page as a `SearchPage`. Anything a searchset Bundle cannot be (not a Bundle;
    `entry` or `link` not a list; an entry, its `resource` or its `search` not an object; `total`
    not a whole number) is a SourceError naming `where`, never another exception: a page that is
    read wrongly must not be read as a short one. Entries without a resource are kept (and
    counted as no match)."""
    if not isinstance(bundle, Mapping):
        raise SourceError(f"{where}: the JSON is {_kind(bundle)}, not a Bundle")
    rtype = bundle.get("resourceType")
    if rtype != "Bundle":
        shown = repr(rtype)[:60] if isinstance(rtype, str) or rtype is None else _kind(rtype)
        raise SourceError(f"{where}: expected a Bundle, got {shown}")
    raw_entries = bundle.get("entry")
    if raw_entries is None:
        raw_entries = []
    if not isinstance(raw_entries, list):
        raise SourceError(f"{where}: Bundle.entry is {_kind(raw_entries)}, not a list")
    entries: list[dict[str, Any]] = []
    for n, entry in enumerate(raw_entries):
        if not isinstance(entry, dict):
            raise SourceError(f"{where}: Bundle.entry[{n}] is {_kind(entry)}, not an object")
        for key in ("resource", "search"):
            value = entry.get(key)
            if value is not None and not isinstance(value, dict):
                raise SourceError(
                    f"{where}: Bundle.entry[{n}].{key} is {_kind(value)}, not an object"
                )
        entries.append(entry)
    total = bundle.get("total")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise SourceError(f"{where}: Bundle.total is {_kind(total)}, not a whole number")
    links = bundle.get("link")
    if links is not None and not isinstance(links, list):
        raise SourceError(f"{where}: Bundle.link is {_kind(links)}, not a list")
    for n, link in enumerate(links or ()):
        if not isinstance(link, dict):
            raise SourceError(f"{where}: Bundle.link[{n}] is {_kind(link)}, not an object")
    return SearchPage(entries, total, next_link(bundle))


def entry_mode(entry: Mapping[str, Any], resource_type: str) -> str | None:
    """`match`, `include` or `outcome` for a search entry; None when it holds no resource. An
    entry without `search.mode` is a match when it is of the searched type (else an include);
    an OperationOutcome is an outcome unless OperationOutcomes were searched."""
    resource = entry.get("resource")
    if not isinstance(resource, Mapping):
        return None
    search = entry.get("search")
    mode = search.get("mode") if isinstance(search, Mapping) else None
    rtype = resource.get("resourceType")
    if mode == "outcome" or (rtype == "OperationOutcome" and resource_type != "OperationOutcome"):
        return "outcome"
    if mode == "include":
        return "include"
    if mode == "match" or rtype == resource_type:
        return "match"
    return "include"


def count_only(params: Sequence[tuple[str, str]]) -> bool:
    """A search that asks for the total alone (`_summary=count`, `_count=0`): no pages to
    check against it."""
    return any(
        (name == "_summary" and value.strip() == "count")
        or (name == "_count" and value.strip() == "0")
        for name, value in params
    )


@dataclass
class SearchTally:
    """The distinct match entries a search's pages delivered, against the first `total` a page
    gave. Resources repeated across pages count once; `_include` entries and OperationOutcomes
    not at all. After a restart (an expired page) the keyed ones are kept, and entries without
    an id are counted again from zero, since the server sends them again."""

    resource_type: str
    total: int | None = None
    keys: set[str] = field(default_factory=set)
    keyless: int = 0

    @property
    def delivered(self) -> int:
        return len(self.keys) + self.keyless

    def restart(self) -> None:
        self.keyless = 0

    def add_page(self, page: SearchPage, number: int) -> None:
        """Count one page; a page without a match before `total` is reached, or more distinct
        matches than `total`, is a SourceError."""
        if self.total is None:
            self.total = page.total
        matches = [e for e in page.entries if entry_mode(e, self.resource_type) == "match"]
        before = self.delivered
        for entry in matches:
            key = entry_key(entry)
            if key is None:
                self.keyless += 1
            else:
                self.keys.add(key)
        if self.total is None:
            return
        if not matches and before < self.total:
            raise self._short(f"page {number} came back empty")
        if self.delivered > self.total:
            raise self._short("more than the total: the result changed while it was read")

    def finish(self) -> None:
        """The `next` links have ended: the delivered matches must make up `total`."""
        if self.total is not None and self.delivered != self.total:
            why = (
                "a page came back short or the next links ended early"
                if self.delivered < self.total
                else "more than the total: the result changed while it was read"
            )
            raise self._short(why)

    def _short(self, why: str) -> SourceError:
        return SourceError(
            f"{self.resource_type} search: server said total {self.total} but its "
            f"pages held {self.delivered} ({why}); nothing from this search was "
            "used"
        )


def param_list(params: SearchParams | None) -> list[tuple[str, str]]:
    if params is None:
        return []
    if isinstance(params, Mapping):
        pairs: list[tuple[str, str]] = []
        for name, value in params.items():
            if isinstance(value, str):
                pairs.append((name, value))
            else:
                pairs.extend((name, v) for v in value)
        return pairs
    return [(name, value) for name, value in params]


def resource_key(resource: Mapping[str, Any]) -> str | None:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    return f"{rtype}/{rid}" if isinstance(rtype, str) and isinstance(rid, str) else None


def entry_key(entry: Mapping[str, Any]) -> str | None:
    resource = entry.get("resource")
    return resource_key(resource) if isinstance(resource, Mapping) else None
