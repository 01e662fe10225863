"""What a write-back reports: `WriteSummary` (counts, issues, what stays unconfirmed, the
transaction sizes learned), `WriteBackInterrupted` when it stops part way, and the `Ledger` the
writer keeps in the state store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fhirpanel.domain.records import Issue
from fhirpanel.errors import WriteBackError
from fhirpanel.writeback.plan import WriteCounts

Key = tuple[str, str]  # (resource type, business identifier value)


class Ledger(Protocol):
    """What the writer needs of the state store's write-back ledger."""

    def lookup(self, rtype: str, identifiers: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    def record(self, rtype: str, identifier: str, resource: Mapping[str, Any]) -> None: ...

    def forget(self, rtype: str, identifier: str) -> None: ...


# The methods `WriteSummary.write_requests` counts.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class WriteBackInterrupted(WriteBackError):
    """The write-back stopped part way: a transport failure (the server could not be reached, or
    the answer to a write was lost). The message is one line. `summary` is
    what was done and confirmed up to then; its `unconfirmed` holds the writes whose outcome is
    unknown, for the caller to keep and pass to the next run's `write_back(unconfirmed=...)`."""

    def __init__(self, message: str, summary: WriteSummary | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.summary = summary


@dataclass
class WriteSummary:
    """What a write-back did (or, dry run, would do). Counts, `failed_subjects` and Provenance
    follow only what the server confirmed."""

    dry_run: bool
    counts: WriteCounts = field(default_factory=WriteCounts)
    issues: list[Issue] = field(default_factory=list)
    strategy: dict[str, str] = field(default_factory=dict)
    transactions: bool = False
    batches: int = 0
    provenance: int = 0
    conflicts_resolved: int = 0
    foreign: int = 0  # resources carrying our identifier without our tag, left alone
    ledger_hits: int = 0  # resources taken from the store's ledger instead of a read
    failed_subjects: set[str] = field(default_factory=set)  # patients with a failed write
    requests: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    # Writes sent whose answer was lost (rtype, identifier value): the whole set to keep for
    # the next run, those given in and not settled by this run included.
    unconfirmed: set[Key] = field(default_factory=set)
    # Provenance written for earlier writes whose answer was lost, once a read confirmed them.
    provenance_recovered: int = 0
    # Entries per transaction in use at the end of the run (1: single requests); lower than
    # writeback.batch_size when the server refused larger transactions.
    batch_size: int = 0
    # Entries per transaction in use at the end of the run, per kind of batch: "conditional"
    # (with a conditional create or update) and "plain" (without). Empty when the run sent no
    # transactions (dry run, transactions off or not declared). Pass it to the next run's
    # `write_back(batch_sizes=...)` to start from what this one learned.
    batch_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def written(self) -> int:
        return self.counts.total("create") + self.counts.total("update")

    @property
    def write_requests(self) -> int:
        by_method: Mapping[str, int] = self.requests.get("by_method", {})
        return sum(n for method, n in by_method.items() if method in WRITE_METHODS)

    def as_report(self) -> dict[str, Any]:
        """The `writeback` object of the run report."""
        return {
            "dry_run": self.dry_run,
            "counts": self.counts.as_dict(),
            "written": self.written,
            "provenance": self.provenance,
            "provenance_recovered": self.provenance_recovered,
            "batches": self.batches,
            "transactions": self.transactions,
            "batch_size": self.batch_size,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "strategy": dict(sorted(self.strategy.items())),
            "conflicts_resolved": self.conflicts_resolved,
            "foreign_left_alone": self.foreign,
            "ledger_hits": self.ledger_hits,
            "unconfirmed": [list(key) for key in sorted(self.unconfirmed)],
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "issues": [i.as_dict() for i in self.issues],
        }

    def lines(self) -> list[str]:
        """A few lines for the terminal."""
        head = "write-back (dry run, nothing written)" if self.dry_run else "write-back"
        verbs = (
            {"create": "to create", "update": "to update"}
            if self.dry_run
            else {"create": "created", "update": "updated"}
        )
        out = [
            f"{head}: {self.written} resource(s) "
            f"{'to write' if self.dry_run else 'written'} in {self.seconds:.1f}s"
        ]
        for rtype, row in self.counts.by_type.items():
            parts = [
                f"{row.get('create', 0)} {verbs['create']}",
                f"{row.get('update', 0)} {verbs['update']}",
                f"{row.get('unchanged', 0)} unchanged",
            ]
            parts += [f"{row[a]} {a}" for a in ("matched", "skipped", "failed") if row.get(a)]
            out.append(f"  {rtype}: " + ", ".join(parts))
        if not self.dry_run:
            recovered = (
                f" (+{self.provenance_recovered} for earlier writes)"
                if self.provenance_recovered
                else ""
            )
            out.append(
                f"  {self.provenance} Provenance{recovered}, "
                f"{self.requests.get('total', 0)} requests ({self.write_requests} writes)"
            )
        if self.unconfirmed:
            out.append(
                f"  {len(self.unconfirmed)} write(s) unconfirmed (answer lost): "
                "checked by the next run"
            )
        if self.issues:
            out.append(
                f"  {len(self.issues)} issue(s), first: {self.issues[0].resource}: "
                f"{self.issues[0].problem}"
            )
        return out
