"""The write-back plan: what exists, what should exist, and which requests that takes.

Pure: no HTTP here. The writer reads what the server holds, hands it to `choose_existing` and a
builder, and `decide` says whether to create, update or leave the resource alone. `WriteCounts`
keeps the tally the run report and the terminal show.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fhirpanel.config import WritebackSettings
from fhirpanel.writeback.identity import Resource, has_managed_tag, same_content

Action = Literal["create", "update", "unchanged", "skipped", "failed", "none"]
# Actions the report counts, in the order it lists them. `matched`: a conditional create
# (If-None-Exist) found the resource already there, so nothing was written.
COUNTED_ACTIONS: tuple[str, ...] = ("create", "update", "matched", "unchanged", "skipped", "failed")
# What became of one write, as far as the server confirmed it:
#   written: a 2xx answer for this write; matched: If-None-Exist found one (200, no write);
#   conflict: 409/412; failed: any other error status; unknown: no usable answer (a response
#   that is not a transaction-response, has the wrong number of entries, or no status).
Outcome = Literal["written", "matched", "conflict", "failed", "unknown"]
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
    # What the server confirmed for this run's write ("" until one is sent and answered).
    outcome: Outcome | Literal[""] = ""
    # Problems the builder found (a managed resource that grew), reported as issues.
    problems: list[str] = field(default_factory=list)

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
        """Build against `existing` and decide. A rebuild forgets what an earlier write of this
        item returned: only a write answered after it counts."""
        self.existing = existing
        self.problems.clear()
        self.resource = self.build(existing)
        self.action = decide(self.resource, existing)
        self.outcome = ""
        self.written_id = self.written_version = None


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
        problems.append(
            f"{len(found)} resources share this identifier ({ids}); only one is maintained"
        )
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


# --------------------------------------------------------------------------- server answers


def entry_status(entry: Mapping[str, Any]) -> int | None:
    """The HTTP status of a transaction/batch-response entry: `response.status` is "201",
    "201 Created" or "HTTP/1.1 201 Created"; None when missing or not a status."""
    response = entry.get("response")
    status = response.get("status") if isinstance(response, Mapping) else None
    if isinstance(status, int) and not isinstance(status, bool):
        return status if 100 <= status <= 599 else None
    if not isinstance(status, str):
        return None
    match = _STATUS.match(status.strip())
    return int(match.group(1)) if match else None


_STATUS = re.compile(r"(?:HTTP/\d(?:\.\d)?\s+)?([1-5]\d\d)\b")


def entry_outcome(status: int | None, *, conditional_create: bool) -> Outcome:
    """What one entry's status says about its write. A 200 to a create sent with If-None-Exist
    is a match: the server found the resource and wrote nothing."""
    if status is None:
        return "unknown"
    if 200 <= status < 300:
        return "matched" if conditional_create and status == 200 else "written"
    if status in (409, 412):
        return "conflict"
    return "failed"


RESPONSE_TYPES = frozenset({"transaction-response", "batch-response"})


def response_problem(bundle: Mapping[str, Any], sent: int) -> str | None:
    """Why a transaction's answer cannot be read entry by entry (then no entry is taken as
    written), or None when it can: a Bundle of type transaction-response or batch-response
    with one entry object per entry sent."""
    if bundle.get("resourceType") != "Bundle":
        return f"the answer is a {bundle.get('resourceType')!r}, not a Bundle"
    kind = bundle.get("type")
    if kind not in RESPONSE_TYPES:
        return f"the answer is a Bundle of type {kind!r}, not a transaction-response"
    entries = bundle.get("entry")
    if entries is None:
        entries = []
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        return "the answer's entries are not a list of objects"
    if len(entries) != sent:
        return f"the answer has {len(entries)} entries for the {sent} sent"
    return None


# Transaction sizes are kept apart for two kinds of batch: with at least one conditional entry
# (PUT Type?identifier=..., POST with ifNoneExist) and without (updates by id, plain creates).
CONDITIONAL = "conditional"
PLAIN = "plain"
BATCH_KINDS: tuple[str, ...] = (CONDITIONAL, PLAIN)

# Medplum's router (@medplum/fhir-router 5.2.13, packages/fhir-router/src/batch.ts), with
# transactions turned on, refuses before writing anything (HTTP 400, `invalid`, the text in
# `details.text`) a transaction of more than MEDPLUM_MAX_UPDATES update entries (PUT Type/id and
# PUT Type?search; batch.ts:30, 268-269), then one of more than MEDPLUM_MAX_STRICT_ENTRIES
# entries when any entry is conditional (batch.ts:31, 271-275, 482-496). Either text names
# Medplum's router, whose two limits are constants checked in that order: a batch with a
# conditional entry refused for its updates would next be refused for its isolation, so both
# texts give both limits.
MEDPLUM_MAX_UPDATES = 50
MEDPLUM_MAX_STRICT_ENTRIES = 8
MEDPLUM_LIMITS: Mapping[str, int] = {
    CONDITIONAL: MEDPLUM_MAX_STRICT_ENTRIES,
    PLAIN: MEDPLUM_MAX_UPDATES,
}
KNOWN_LIMIT_TEXTS: tuple[tuple[str, Mapping[str, int]], ...] = (
    ("transaction contains more update operations than allowed", MEDPLUM_LIMITS),
    ("transaction requires strict isolation but has too many entries", MEDPLUM_LIMITS),
)


def known_limits(
    status: int, outcome: Mapping[str, Any] | None, message: str = ""
) -> Mapping[str, int] | None:
    """The transaction sizes (batch kind -> entries) a refusal names when its text is one
    fhirpanel knows (Medplum's two), else None (a size refusal then halves the size)."""
    if status not in (400, 422):
        return None
    text = " ".join(_refusal_texts(outcome, message)[1]).lower()
    for known, limits in KNOWN_LIMIT_TEXTS:
        if known in text:
            return limits
    return None


def _refusal_texts(outcome: Mapping[str, Any] | None, message: str) -> tuple[set[str], list[str]]:
    """(issue codes, texts) of an error answer: the message, each issue's details.text and
    diagnostics."""
    codes: set[str] = set()
    texts = [message]
    for issue in (outcome or {}).get("issue") or ():
        if not isinstance(issue, Mapping):
            continue
        if isinstance(issue.get("code"), str):
            codes.add(issue["code"])
        details = issue.get("details")
        if isinstance(details, Mapping) and isinstance(details.get("text"), str):
            texts.append(details["text"])
        if isinstance(issue.get("diagnostics"), str):
            texts.append(issue["diagnostics"])
    return codes, texts


# Refusals of a transaction for its size, or of transactions altogether. Medplum answers 400
# with an `invalid` issue and these texts (packages/fhir-router/src/batch.ts); HAPI and others
# use 413, or the `too-costly` / `not-supported` issue codes.
_SIZE_TEXT = re.compile(
    r"too (many|large|big)|more \w+( \w+)? (entries|operations|resources) than|exceed|"
    r"maximum (number|size|of)|limit",
    re.IGNORECASE,
)
_UNSUPPORTED_TEXT = re.compile(
    r"transactions? (are |is )?(not (supported|allowed|enabled|permitted))|"
    r"(not|un)supported (bundle|transaction)|(bundle|transaction) type .*not supported",
    re.IGNORECASE,
)


def refusal_kind(
    status: int, outcome: Mapping[str, Any] | None, message: str = ""
) -> Literal["size", "unsupported"] | None:
    """Whether an error answer to a transaction refuses it for its size ("size": send smaller
    ones), refuses transactions altogether ("unsupported": send single requests), or is some
    other refusal (None: the entries are retried one by one, the size stays)."""
    if status == 413:
        return "size"
    if status not in (400, 403, 405, 422, 501):
        return None
    codes, texts = _refusal_texts(outcome, message)
    text = " ".join(texts)
    if "too-costly" in codes or _SIZE_TEXT.search(text):
        return "size"
    if "not-supported" in codes or _UNSUPPORTED_TEXT.search(text) or status in (405, 501):
        return "unsupported"
    return None
