"""The write-back ledger (`writeback_ledger`): what the writer last wrote or read of each
outgoing resource (its server id, version, content hash and a compressed copy), so a later pass
can skip a resource that has not changed without reading it from the server again.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from fhirpanel.store.engine import CHUNK, StoreEngine, iso, now_utc
from fhirpanel.store.models import LedgerEntry


class LedgerStore(StoreEngine):
    """The ledger: the writer's view (`ledger`), and one entry as stored (`ledger_entry`)."""

    def ledger(self, run_id: int | None) -> StoreLedger:
        return StoreLedger(self, run_id)

    def ledger_entry(self, rtype: str, identifier: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(LedgerEntry, (rtype, identifier))
            if row is None:
                return None
            return {
                "rtype": rtype,
                "identifier": identifier,
                "id": row.server_id,
                "version": row.version,
                "hash": row.content_hash,
                "updated_at": iso(row.updated_at),
            }


@dataclass
class StoreLedger:
    """The writer's view of the ledger. Lookups read the store; records are buffered and
    written by `flush(session)` in the run's final transaction, so the ledger never claims a
    write the rest of the run did not commit."""

    store: StoreEngine
    run_id: int | None
    pending: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def lookup(self, rtype: str, identifiers: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        unique = sorted(set(identifiers))
        with self.store.session() as s:
            for start in range(0, len(unique), CHUNK):
                rows = s.scalars(
                    select(LedgerEntry).where(
                        LedgerEntry.rtype == rtype,
                        LedgerEntry.identifier.in_(unique[start : start + CHUNK]),
                    )
                )
                for row in rows:
                    try:
                        resource = orjson.loads(zlib.decompress(row.resource))
                    except (zlib.error, orjson.JSONDecodeError):
                        continue  # unreadable: the writer reads the server instead
                    if isinstance(resource, dict):
                        found[row.identifier] = resource
        return found

    def record(self, rtype: str, identifier: str, resource: Mapping[str, Any]) -> None:
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid:
            return
        meta = resource.get("meta")
        version = meta.get("versionId") if isinstance(meta, Mapping) else None
        raw = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
        self.pending[(rtype, identifier)] = {
            "rtype": rtype,
            "identifier": identifier,
            "server_id": rid,
            "version": str(version) if version else None,
            "content_hash": hashlib.sha256(raw).hexdigest(),
            "resource": zlib.compress(raw, 6),
            "run_id": self.run_id,
        }

    def forget(self, rtype: str, identifier: str) -> None:
        """A resource that could not be written: drop any record so the next pass re-reads."""
        self.pending[(rtype, identifier)] = {
            "rtype": rtype,
            "identifier": identifier,
            "forget": True,
        }

    def flush(self, s: Session) -> int:
        now = now_utc()
        items = list(self.pending.values())
        self.pending.clear()
        by_type: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            by_type.setdefault(item["rtype"], []).append(item)
        for rtype, rows in by_type.items():
            keys = [r["identifier"] for r in rows]
            for start in range(0, len(keys), CHUNK):
                s.execute(
                    delete(LedgerEntry).where(
                        LedgerEntry.rtype == rtype,
                        LedgerEntry.identifier.in_(keys[start : start + CHUNK]),
                    )
                )
            keep = [dict(r, updated_at=now) for r in rows if not r.get("forget")]
            if keep:
                s.execute(insert(LedgerEntry), keep)
        return len(items)
