"""Provenance for what a write-back wrote: one per confirmed batch, and one recovered for a
write an earlier run sent without getting the answer, once a read shows it landed (unless one of
fhirpanel's already targets that version: the lost answer may have been the Provenance's own).
A Provenance the server refused is owed: its targets stay unconfirmed for the next run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from fhirpanel.domain.records import Issue
from fhirpanel.errors import FhirHttpError, SourceError, TransportError
from fhirpanel.writeback.builders import build_provenance
from fhirpanel.writeback.identity import has_managed_tag
from fhirpanel.writeback.plan import PlannedWrite
from fhirpanel.writeback.state import PassState, log


class ProvenanceWriter(PassState):
    """Writing and recovering Provenance (a mixin of `writer._Session`)."""

    def _record_provenance(self, written: Sequence[PlannedWrite]) -> None:
        targets = [_versioned(item) for item in written if item.written_id]
        if not targets:
            return
        activity = "CREATE" if all(i.action == "create" for i in written) else "UPDATE"
        provenance = build_provenance(
            targets, self.now, self.cfg, codes=self.tables.codes, activity=activity
        )
        self._mark(written)  # until the Provenance is confirmed
        try:
            self.client.create(provenance)
        except FhirHttpError as exc:
            # The writes stand; their Provenance is owed: the targets stay marked, and the next
            # run that finds them as written writes it.
            problem = f"{str(exc)[:260]}; written by the next run"
        except TransportError:
            raise  # the Provenance may or may not exist: its targets stay unconfirmed
        except SourceError as exc:  # 2xx that cannot be read: checked by the next run
            problem = f"the answer could not be read ({str(exc)[:200]}); checked next run"
        else:
            self.summary.provenance += 1
            self._unmark(written)
            return
        self.summary.issues.append(
            Issue(
                resource=f"Provenance ({len(targets)} targets)", problem=problem, action="recorded"
            )
        )

    def _settle_carried(self, rtype: str, items: Sequence[PlannedWrite]) -> None:
        """Writes an earlier run sent without an answer: one the server now holds as this run
        would build it landed, and gets its missing Provenance; one still to write is settled
        when this run's write is answered; one no longer ours (or no longer built) is done."""
        landed: list[PlannedWrite] = []
        for item in items:
            key = (item.rtype, item.identifier)
            if key not in self.carried or item.action in ("create", "update"):
                continue
            if item.action == "unchanged" and item.existing is not None:
                landed.append(item)
            else:
                self._unmark([item])
        self._recover_provenance(landed)

    def _recover_provenance(self, items: Sequence[PlannedWrite]) -> None:
        """A Provenance per resource whose write landed without an answer (found with the
        content fhirpanel builds), for its version on the server, unless one of ours already
        targets that version (the lost answer may have been the Provenance's own)."""
        for item in items:
            existing = item.existing or {}
            rid = existing.get("id")
            if not self.cfg.provenance or not isinstance(rid, str) or not rid:
                self._unmark([item])
                continue
            version = item.existing_version
            target = f"{item.rtype}/{rid}/_history/{version}" if version else f"{item.rtype}/{rid}"
            if self._has_provenance(item.rtype, rid, target):
                self._unmark([item])
                continue
            meta = existing.get("meta") if isinstance(existing.get("meta"), Mapping) else {}
            recorded = _instant(meta.get("lastUpdated") if isinstance(meta, Mapping) else None)
            provenance = build_provenance(
                [target],
                recorded or self.now,
                self.cfg,
                codes=self.tables.codes,
                activity="CREATE" if version == "1" else "UPDATE",
            )
            try:
                self.client.create(provenance)
                self.summary.provenance_recovered += 1
                log.info(
                    "%s: its earlier write landed without an answer; Provenance written", item.label
                )
            except FhirHttpError as exc:
                self.summary.issues.append(
                    Issue(
                        resource=f"Provenance ({target})", problem=str(exc)[:300], action="skipped"
                    )
                )
            except TransportError:
                raise
            except SourceError:  # 2xx that cannot be read: checked again by the next run
                continue
            self._unmark([item])

    def _has_provenance(self, rtype: str, rid: str, target: str) -> bool:
        """Whether one of fhirpanel's Provenance already targets `target` (a server that cannot
        search Provenance by target: no, and one is written)."""
        try:
            found = list(self.client.search("Provenance", [("target", f"{rtype}/{rid}")]))
        except FhirHttpError:
            return False
        return any(
            has_managed_tag(p, self.cfg)
            and any(
                isinstance(t, Mapping) and _reference_tail(t.get("reference")) == target
                for t in p.get("target") or ()
            )
            for p in found
        )


def _reference_tail(reference: Any) -> str:
    """`CareTeam/1/_history/2` from an absolute or relative reference."""
    if not isinstance(reference, str):
        return ""
    parts = [p for p in urlsplit(reference).path.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        return "/".join(parts[-4:])
    return "/".join(parts[-2:])


def _instant(value: Any) -> datetime | None:
    """A FHIR instant as an aware datetime, or None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _versioned(item: PlannedWrite) -> str:
    base = f"{item.rtype}/{item.written_id}"
    return f"{base}/_history/{item.written_version}" if item.written_version else base
