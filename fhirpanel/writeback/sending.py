"""One write at a time: the request a planned write makes, sending it on its own with bounded
retries on a version conflict, and reading the server's answer.

Creates use conditional update (`PUT Type?identifier=system|value`) where the server advertises
it, else `POST` (with `If-None-Exist` where conditional create is advertised); updates are
`PUT Type/id` with `If-Match`, so a resource someone changed since it was read is re-read and the
change re-applied on top (409/412, a bounded number of times). A 200 to a create sent with
If-None-Exist is a match (nothing written); a write whose answer cannot be read, or a match, is
settled by a re-read. Writes sent together: `transactions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import requests

from fhirpanel.errors import FhirHttpError, SourceError, TransportError, VersionConflictError
from fhirpanel.writeback.identity import identifier_token
from fhirpanel.writeback.plan import (
    CONDITIONAL,
    PLAIN,
    PlannedWrite,
    entry_outcome,
    entry_status,
)
from fhirpanel.writeback.state import PassState, log


@dataclass
class WriteRequest:
    """One write as a transaction entry or a single HTTP request."""

    item: PlannedWrite
    kind: str  # update (PUT Type/id) | conditional (PUT Type?identifier=) | create (POST)
    method: str
    url: str
    if_match: str | None = None
    if_none_exist: str | None = None

    def entry(self) -> dict[str, Any]:
        request: dict[str, Any] = {"method": self.method, "url": self.url}
        if self.if_match:
            request["ifMatch"] = f'W/"{self.if_match}"'
        if self.if_none_exist:
            request["ifNoneExist"] = self.if_none_exist
        return {"resource": self.item.resource, "request": request}

    @property
    def conditional_create(self) -> bool:
        return self.kind == "create" and bool(self.if_none_exist)

    @property
    def batch_kind(self) -> str:
        """The kind of batch this entry makes: CONDITIONAL (a conditional update or create,
        which Medplum runs under strict isolation) or PLAIN."""
        return CONDITIONAL if self.kind == "conditional" or self.conditional_create else PLAIN


class Sender(PassState):
    """Single writes and their conflict and re-read paths (a mixin of `writer._Session`)."""

    def _create_strategy(self, rtype: str) -> str:
        if self.cfg.use_conditional_update and self.caps.conditional_update(rtype):
            return "conditional-update"
        resource = self.caps.resources.get(rtype)
        if resource is not None and resource.conditional_create:
            return "conditional-create"
        return "search-then-create"

    def _request_for(self, item: PlannedWrite) -> WriteRequest:
        rtype = item.rtype
        if item.action == "update" and item.current_id:
            if item.resource is not None:
                item.resource["id"] = item.current_id
            return WriteRequest(
                item,
                "update",
                "PUT",
                f"{rtype}/{quote(item.current_id, safe='')}",
                if_match=item.existing_version,
            )
        if item.resource is not None:
            item.resource.pop("id", None)
        query = f"identifier={quote(identifier_token(self.cfg, item.identifier), safe=':')}"
        strategy = self.summary.strategy.get(rtype) or self._create_strategy(rtype)
        if strategy == "conditional-update":
            return WriteRequest(item, "conditional", "PUT", f"{rtype}?{query}")
        if strategy == "conditional-create":
            return WriteRequest(item, "create", "POST", rtype, if_none_exist=query)
        return WriteRequest(item, "create", "POST", rtype)

    def _reconcile(
        self, rtype: str, items: Sequence[PlannedWrite], why: str, *, resend: bool = True
    ) -> None:
        """Re-read items whose write is not known to have happened (`unknown`) or that a
        conditional create found already there (`matched`), and decide again: the server holds
        what this run would build (a landed write gets its Provenance; a match counts as
        matched), or the write is sent on its own."""
        fresh = self._read_existing(rtype, [item.identifier for item in items])
        landed: list[PlannedWrite] = []
        for item in items:
            if not self._prepare(item, fresh.get(item.identifier, [])):
                self._unmark([item])
                continue
            if item.action == "unchanged":
                if why == "matched":
                    item.outcome = "matched"
                else:
                    landed.append(item)
            elif item.action in ("create", "update"):
                if resend:
                    self._send_with_retries(self._request_for(item), reconcile=False)
                else:
                    self._unmark([item])
                    self._fail(
                        item,
                        "the server's answers to this write could not be read"
                        if why == "unknown"
                        else "a conditional create matched a "
                        "resource that a search by identifier does not return",
                    )
            else:
                self._unmark([item])
        self._recover_provenance(landed)

    def _after_conflict(self, item: PlannedWrite, problem: str, *, attempt: int = 0) -> None:
        """A 409/412 for a transaction entry (`attempt` re-reads already made for it): re-read,
        re-apply, send on its own (bounded by writeback.max_conflict_retries)."""
        if attempt >= self.cfg.max_conflict_retries:
            self._fail(
                item,
                f"version conflict ({problem})"
                + (f" after {attempt} re-read(s)" if attempt else ""),
            )
            return
        if self._reapply(item) and item.action in ("create", "update"):
            self._send_with_retries(self._request_for(item), attempt=attempt + 1)

    def _send_each(self, requests_: Sequence[WriteRequest], *, attempt: int = 0) -> None:
        """One request each; `attempt`: conflict re-reads already made for them."""
        for request in requests_:
            self._send_with_retries(request, attempt=attempt)

    def _send_with_retries(
        self, request: WriteRequest, *, attempt: int = 0, reconcile: bool = True
    ) -> None:
        """One write; on a version conflict re-read, rebuild and try again (bounded). An answer
        that cannot be read is settled by a re-read (once)."""
        item = request.item
        while True:
            retries = self.client.stats.retries
            try:
                self._send_one(request)
            except VersionConflictError as exc:
                # After a retry (an answer lost, the PUT sent again), the conflict may be with
                # this very write: found as built, it landed, and gets its Provenance.
                resent = self.client.stats.retries > retries
                self._unmark([item])
                if attempt >= self.cfg.max_conflict_retries:
                    self._fail(
                        item, f"version conflict persisted after {attempt} re-read(s): {exc}"
                    )
                    return
                attempt += 1
                log.info("%s: version conflict, re-reading and re-applying", item.label)
                if not self._reapply(item):
                    return
                if item.action == "unchanged" and resent:
                    self._recover_provenance([item])
                if item.action not in ("create", "update"):
                    return
                request = self._request_for(item)
                continue
            except FhirHttpError as exc:
                self._unmark([item])
                self._fail(item, str(exc))
                return
            if item.outcome == "unknown":
                if reconcile:
                    self._reconcile(item.rtype, [item], "unknown", resend=False)
                else:
                    self._unmark([item])
                    self._fail(item, "the server's answers to this write could not be read")
            elif item.outcome == "matched":
                self._reconcile(item.rtype, [item], "matched", resend=reconcile)
            return

    def _reapply(self, item: PlannedWrite) -> bool:
        """Rebuild `item` on what the server holds now. False when it is no longer ours."""
        fresh = self._read_existing(item.rtype, [item.identifier]).get(item.identifier, [])
        if not self._prepare(item, fresh):
            return False
        self.summary.conflicts_resolved += 1
        return True

    def _send_one(self, request: WriteRequest) -> None:
        """Send one write and record what the server answered in `item.outcome`: written,
        matched (If-None-Exist found one), or unknown (a 2xx answer that cannot be read).
        Error statuses raise; a transport failure leaves the item unconfirmed and raises."""
        item, resource = request.item, request.item.resource
        assert resource is not None  # noqa: S101 - only built resources are sent
        self._mark([item])
        try:
            if request.kind == "update":
                written = self.client.update(resource, if_match=request.if_match)
                entry: dict[str, Any] = {"resource": written, "response": {"status": "200"}}
            elif request.kind == "conditional":
                entry = self._answer(
                    self.client.request(
                        "PUT",
                        request.url,
                        json=resource,
                        headers={"Prefer": "return=representation"},
                    )
                )
            elif request.if_none_exist:
                entry = self._answer(
                    self.client.request(
                        "POST",
                        item.rtype,
                        json=resource,
                        headers={
                            "If-None-Exist": request.if_none_exist,
                            "Prefer": "return=representation",
                        },
                    )
                )
            else:
                written = self.client.create(resource)
                entry = {"resource": written, "response": {"status": "201"}}
        except (FhirHttpError, TransportError):
            raise
        except SourceError as exc:  # 2xx, but the body is not a JSON object
            log.warning("%s: the answer to its write could not be read (%s)", item.label, exc)
            item.outcome = "unknown"
            return
        status = entry_status(entry)
        outcome = entry_outcome(status, conditional_create=request.conditional_create)
        record_written(item, item.rtype, entry)
        if outcome not in ("written", "matched") or not item.written_id:
            item.outcome = "unknown"
            return
        self._unmark([item])
        item.outcome = outcome
        if request.kind == "conditional" and status == 200 and item.action == "create":
            item.action = "update"

    @staticmethod
    def _answer(response: requests.Response) -> dict[str, Any]:
        """A single write's answer in the shape of a transaction-response entry."""
        body: Any = {}
        if response.content.strip():
            try:
                body = orjson.loads(response.content)
            except orjson.JSONDecodeError as exc:
                raise SourceError(f"answer to a write is not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise SourceError("answer to a write is not a JSON object")
        return {
            "resource": body,
            "response": {
                "status": str(response.status_code),
                "location": response.headers.get("Location", ""),
                "etag": response.headers.get("ETag", ""),
            },
        }


def record_written(item: PlannedWrite, rtype: str, entry: Mapping[str, Any]) -> None:
    """Id and version from a transaction-response entry (location, etag) or a returned body."""
    response = entry.get("response") if isinstance(entry.get("response"), Mapping) else {}
    assert isinstance(response, Mapping)  # noqa: S101 - narrowed above
    resource = entry.get("resource") if isinstance(entry.get("resource"), Mapping) else {}
    assert isinstance(resource, Mapping)  # noqa: S101 - narrowed above
    rid, version = _id_version_from_location(str(response.get("location") or ""), rtype)
    meta = resource.get("meta") if isinstance(resource.get("meta"), Mapping) else {}
    if resource.get("resourceType") not in (None, rtype):
        resource, meta = {}, {}  # e.g. an OperationOutcome: says nothing about the id
    rid = rid or (resource.get("id") if isinstance(resource.get("id"), str) else None)
    version = version or (meta.get("versionId") if isinstance(meta, Mapping) else None)
    etag = str(response.get("etag") or "")
    if not version and etag:
        version = etag.removeprefix("W/").strip('"') or None
    item.written_id = rid or item.current_id
    item.written_version = str(version) if version else None


def _id_version_from_location(location: str, rtype: str) -> tuple[str | None, str | None]:
    parts = [p for p in urlsplit(location).path.split("/") if p]
    if rtype not in parts:
        return None, None
    at = len(parts) - 1 - parts[::-1].index(rtype)
    rid = parts[at + 1] if at + 1 < len(parts) else None
    version = None
    if at + 3 < len(parts) and parts[at + 2] == "_history":
        version = parts[at + 3]
    return rid, version
