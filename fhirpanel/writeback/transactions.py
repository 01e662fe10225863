"""Writes sent together in transaction Bundles, where the server supports them.

Only what the server confirmed counts. A transaction's answer is read entry by entry (a server
may run a `transaction` as a batch and answer 200 with a failed entry): a 2xx entry is written, a
409/412 entry goes through the conflict path, any other status is sent again on its own, and an
answer that cannot be read entry by entry (not a transaction-response, another number of
entries, no status) makes every entry "unknown": it is re-read before anything is decided. A 200
to a create sent with If-None-Exist is a match (nothing written). The counts, the ledger, the
failed patients and Provenance follow only confirmed writes.

Transactions have two sizes: one for batches with a conditional entry (a conditional update or
create) and one for batches without (updates by id, plain creates); while they are equal a batch
mixes both. A transaction refused for its size lowers the size of its kind for the rest of the
run (never raised within a run) and the refused entries are sent again: straight to the limit a
refusal names when fhirpanel knows its text (Medplum's, plan.known_limits), else halved, down to
single requests; transactions refused altogether mean single requests. The sizes in use are
`summary.batch_sizes`, which a caller keeps and passes to the next run (`write_back(batch_sizes=
...)`) so that it starts there. A transaction refused whole for a version conflict (409/412 with
no entry named: an atomic transaction) is re-read in one search, re-applied and sent again as
one; only when that conflicts again do its entries go one by one (each with its own bounded
conflict path). Entries a transaction-response answers 409/412 are likewise re-read together and
sent again together. Other refusals are retried entry by entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fhirpanel.domain.records import Issue
from fhirpanel.errors import FhirHttpError, SourceError, TransportError
from fhirpanel.fhir.client import outcome_messages
from fhirpanel.writeback.plan import (
    BATCH_KINDS,
    CONDITIONAL,
    PLAIN,
    PlannedWrite,
    entry_outcome,
    entry_status,
    known_limits,
    refusal_kind,
    response_problem,
)
from fhirpanel.writeback.sending import Sender, WriteRequest, record_written
from fhirpanel.writeback.state import log


class TransactionSender(Sender):
    """Batching into transactions of two kinds, shrinking on refusals, reading a
    transaction-response (a mixin of `writer._Session`)."""

    transactions: bool
    batch_size: int
    sizes: dict[str, int]
    refusal: tuple[int, str] | None  # (size refused, why), the first time
    refusals: int  # transactions refused for their size (or refused altogether)

    def _start_transactions(self, batch_sizes: Mapping[str, int] | None) -> None:
        """Whether to send transactions, and their sizes at the start of the run."""
        self.transactions = self.cfg.use_transactions and self.caps.transaction
        # Resources per write batch (one Provenance each), and entries per transaction for each
        # kind of batch: from `batch_sizes` (an earlier run's), never above the batch size;
        # lowered for the rest of the run when the server refuses a transaction for its size.
        self.batch_size = max(1, self.cfg.batch_size)
        self.sizes = start_sizes(self.batch_size, batch_sizes)
        self.refusal = None
        self.refusals = 0

    def _end_transactions(self) -> None:
        """The sizes in use at the end of the run into the summary, and the first refusal."""
        self.summary.batch_size = max(self.sizes.values()) if self.transactions else 1
        sent = self.transactions and not self.dry_run
        self.summary.batch_sizes = dict(self.sizes) if sent else {}
        if self.refusal is not None:
            size, why = self.refusal
            more = f" ({self.refusals} refusals in all)" if self.refusals > 1 else ""
            self.summary.issues.append(
                Issue(
                    resource="write-back",
                    problem=f"the server refused a transaction of {size} entries ({why}){more};"
                    f" {sizes_text(self.sizes)} for the rest of the run (the run's "
                    "batch_sizes: the next run starts there when given them)",
                    action="recorded",
                )
            )

    def _send_items(
        self, rtype: str, items: Sequence[PlannedWrite], *, retried: bool = False
    ) -> None:
        """Transactions where possible, else one request each. Batches with a conditional entry
        and batches without have their own size (`self.sizes`), and mix while the two are equal.
        A transaction refused for its size lowers the size of its kind for the rest of the run
        and its entries are sent again; one refused whole for a version conflict is re-read and
        sent again as one (`retried`: this already is that second try, so its entries go one by
        one); another refusal is retried entry by entry."""
        pending = [self._request_for(item) for item in items]
        attempt = 1 if retried else 0
        while pending:
            part, kind = self._next_part(pending)
            taken = {id(r) for r in part}
            if not self.transactions or len(part) == 1:
                self._send_each(part, attempt=attempt)
            else:
                try:
                    self._send_transaction(rtype, part, retried=retried)
                except FhirHttpError as exc:
                    refusal = refusal_kind(exc.status, exc.outcome, str(exc))
                    if refusal is not None:
                        self._shrink(kind, len(part), refusal, exc)
                        continue  # the same entries again, at the new size
                    if exc.status in (409, 412):
                        self._whole_conflict(rtype, part, exc, retried=retried)
                    else:
                        log.warning(
                            "%s transaction of %d entries refused (%s); retrying one by one",
                            rtype,
                            len(part),
                            str(exc)[:200],
                        )
                        self._send_each(part, attempt=attempt)
            pending = [r for r in pending if id(r) not in taken]

    def _next_part(self, pending: Sequence[WriteRequest]) -> tuple[list[WriteRequest], str]:
        """The next entries to send together, and the kind of batch they make: the first
        pending ones while both sizes are equal, else the first pending entry's kind only."""
        if not self.transactions:
            return list(pending), PLAIN
        if len(set(self.sizes.values())) == 1:
            part = list(pending[: self.sizes[PLAIN]])
            kind = CONDITIONAL if any(r.batch_kind == CONDITIONAL for r in part) else PLAIN
            return part, kind
        kind = pending[0].batch_kind
        return [r for r in pending if r.batch_kind == kind][: self.sizes[kind]], kind

    def _shrink(self, kind: str, size: int, refusal: str, exc: FhirHttpError) -> None:
        """Lower the size of the refused batch's kind for the rest of the run: to the limits
        the refusal names (plan.known_limits), else half the refused size (a batch without
        conditional entries never gets less room than one with them); single requests when
        the server refuses transactions altogether."""
        why = "; ".join(outcome_messages(exc.outcome or {})) or str(exc)
        why = f"HTTP {exc.status}: {' '.join(why.split())[:200]}"
        sizes = dict(self.sizes)
        if refusal == "unsupported":
            sizes = dict.fromkeys(sizes, 1)
        else:
            for limited, limit in (known_limits(exc.status, exc.outcome, str(exc)) or {}).items():
                if limited in sizes:
                    sizes[limited] = max(1, min(sizes[limited], limit))
            if sizes[kind] >= size:  # not named, or the named limit does not bring it under
                sizes[kind] = max(1, size // 2)
                if kind == PLAIN:
                    sizes[CONDITIONAL] = min(sizes[CONDITIONAL], sizes[PLAIN])
        self.sizes = sizes
        log.warning(
            "transaction of %d entries (%s) refused (%s); %s from now on",
            size,
            kind,
            why,
            sizes_text(sizes),
        )
        self.refusals += 1
        if self.refusal is None:
            self.refusal = (size, why)

    def _whole_conflict(
        self, rtype: str, requests_: Sequence[WriteRequest], exc: FhirHttpError, *, retried: bool
    ) -> None:
        """A transaction refused whole for a version conflict (409/412; an atomic transaction
        names no entry): re-read its resources in one search, re-apply, send them again as one.
        Refused so again (`retried`), its entries go one by one, each on its own conflict path."""
        problem = f"HTTP {exc.status} for the whole transaction"
        if retried:
            log.info(
                "%s transaction of %d entries: %s again after a re-read; sending them one by one",
                rtype,
                len(requests_),
                problem,
            )
            self._send_each(requests_, attempt=1)
            return
        log.info(
            "%s transaction of %d entries: %s; re-reading and re-applying them",
            rtype,
            len(requests_),
            problem,
        )
        self._reapply_together(rtype, [r.item for r in requests_], problem, named=False)

    def _reapply_together(
        self, rtype: str, items: Sequence[PlannedWrite], problem: str, *, named: bool
    ) -> None:
        """Re-read items after a version conflict (one search for all), rebuild them on what
        the server holds now, and send those still to write again together (the first of the
        bounded conflict retries). `named`: the server said each of them conflicted; else only
        those found changed since they were read count as conflicts resolved."""
        if self.cfg.max_conflict_retries < 1:
            for item in items:
                self._fail(item, f"version conflict ({problem})")
            return
        before = {id(item): (item.current_id, item.existing_version) for item in items}
        fresh = self._read_existing(rtype, [item.identifier for item in items])
        again: list[PlannedWrite] = []
        for item in items:
            if not self._prepare(item, fresh.get(item.identifier, [])):
                continue
            if named or (item.current_id, item.existing_version) != before[id(item)]:
                self.summary.conflicts_resolved += 1
            if item.action in ("create", "update"):
                again.append(item)
        if again:
            self._send_items(rtype, again, retried=True)

    def _send_transaction(
        self, rtype: str, requests_: Sequence[WriteRequest], *, retried: bool = False
    ) -> None:
        """One transaction; every entry ends written, matched, re-sent or re-read. Raises the
        FhirHttpError of a refused transaction (nothing was written). Entries answered 409/412
        are re-read together and sent again together, or (`retried`: they were just re-read)
        each on its own conflict path."""
        items = [r.item for r in requests_]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [r.entry() for r in requests_],
        }
        self._mark(items)
        try:
            response = self.client.transaction(bundle)
        except FhirHttpError:
            self._unmark(items)  # a refused transaction writes nothing
            raise
        except TransportError:
            raise  # the answer is lost: the entries stay unconfirmed
        except SourceError as exc:  # a 2xx answer that is not a JSON object
            self._unknown_answer(rtype, items, str(exc))
            return
        problem = response_problem(response, len(requests_))
        if problem is not None:
            self._unknown_answer(rtype, items, problem)
            return
        conflicts: list[tuple[WriteRequest, int]] = []
        resend: list[tuple[WriteRequest, int]] = []
        matched: list[PlannedWrite] = []
        unknown: list[PlannedWrite] = []
        for request, entry in zip(requests_, response["entry"], strict=True):
            item = request.item
            status = entry_status(entry)
            outcome = entry_outcome(status, conditional_create=request.conditional_create)
            if outcome in ("written", "matched"):
                record_written(item, rtype, entry)
                if not item.written_id:  # 2xx, but where? read it back
                    unknown.append(item)
                    continue
                self._unmark([item])
                if outcome == "matched":
                    matched.append(item)
                    continue
                item.outcome = "written"
                if request.kind == "conditional" and status == 200 and item.action == "create":
                    item.action = "update"  # the server found one and updated it
            elif outcome == "unknown":
                unknown.append(item)
            else:
                self._unmark([item])
                assert status is not None  # noqa: S101 - conflict/failed have a status
                (conflicts if outcome == "conflict" else resend).append((request, status))
        if conflicts and not retried:
            log.info(
                "%s transaction: %d entries answered 409/412; re-reading and re-applying",
                rtype,
                len(conflicts),
            )
            self._reapply_together(
                rtype, [r.item for r, _ in conflicts], "409/412 in a transaction answer", named=True
            )
        for request, status in conflicts if retried else ():
            log.info(
                "%s: %d in the transaction answer again; re-reading and re-applying",
                request.item.label,
                status,
            )
            self._after_conflict(request.item, f"HTTP {status} in a transaction answer", attempt=1)
        for request, status in resend:
            log.info(
                "%s: %d in the transaction answer; sending it on its own",
                request.item.label,
                status,
            )
            self._send_with_retries(request)
        if matched:
            self._reconcile(rtype, matched, "matched")
        if unknown:
            self._reconcile(rtype, unknown, "unknown")

    def _unknown_answer(self, rtype: str, items: Sequence[PlannedWrite], problem: str) -> None:
        self.summary.issues.append(
            Issue(
                resource=f"{rtype} transaction ({len(items)} entries)",
                problem=f"{problem}; every entry was re-read before anything was counted",
                action="recorded",
            )
        )
        log.warning("%s transaction of %d entries: %s; re-reading them", rtype, len(items), problem)
        self._reconcile(rtype, items, "unknown")


def start_sizes(batch_size: int, given: Mapping[str, int] | None) -> dict[str, int]:
    """Entries per transaction for each kind of batch at the start of a run: `given` (an earlier
    run's `summary.batch_sizes`) where it holds a usable size, capped at `batch_size`."""
    sizes = dict.fromkeys(BATCH_KINDS, batch_size)
    for kind, size in (given or {}).items():
        if kind in sizes and isinstance(size, int) and not isinstance(size, bool):
            sizes[kind] = max(1, min(batch_size, size))
    return sizes


def sizes_text(sizes: Mapping[str, int]) -> str:
    """`transactions of at most 8 entries with a conditional entry, 50 without`."""
    conditional, plain = sizes[CONDITIONAL], sizes[PLAIN]
    if conditional == plain:
        return "single requests" if plain == 1 else f"transactions of at most {plain} entries"
    with_ = (
        "conditional entries one by one"
        if conditional == 1
        else f"at most {conditional} entries with a conditional entry"
    )
    without = "single requests without" if plain == 1 else f"{plain} without"
    return f"transactions of {with_}, {without}"
