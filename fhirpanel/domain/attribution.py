"""Attribution: active patients, qualifying visits, eligible clinicians, the Four Cut method and
attribution pipelines, with an explanation for every assignment (docs/methods.md s.1-2).

Pure: takes a `Population`, an as-of date and typed rules built from `mappings/` tables, returns
immutable results sorted by id. The same input in any order gives the same output.

Look-back windows: a window of N months ending on the as-of date starts at `months_before(as_of,
N)` (as-of minus N calendar months, the day clamped to the month's end) and a visit counts when
`window_start < visit day <= as_of`. So 18 months ending 2026-11-22 covers 2025-05-23 to
2026-11-22, and no visit is counted in two back-to-back windows. The visit day is the UTC date
of `Encounter.period.start`; an Encounter without a start cannot be placed and never counts.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Literal, get_args

from fhirpanel.domain.codes import verhoeff_valid
from fhirpanel.domain.confirmations import (
    CONFIRMED,
    DEFAULT_MONTHS,
    ConfirmedAssignment,
    DismissedMove,
    ProposedMove,
)
from fhirpanel.domain.dates import months_before
from fhirpanel.domain.records import (
    CPT,
    HCPCS,
    NUCC,
    SNOMED,
    EncounterRecord,
    PatientRecord,
    Population,
)
from fhirpanel.errors import MappingError

StepKind = Literal["manual", "declared-pcp", "risk-product", "four-cut"]
STEP_KINDS: tuple[str, ...] = get_args(StepKind)
AssignmentStatus = Literal["assigned", "unassigned", "excluded"]
# Guards against typos such as 180 for 18; the white paper's windows are 12 to 36 months.
MAX_WINDOW_MONTHS = 120


# --- month arithmetic -------------------------------------------------------------------------


def in_window(day: date, as_of: date, months: int | None) -> bool:
    """True when `window_start < day <= as_of`; `months=None` means no lower bound."""
    if day > as_of:
        return False
    return months is None or day > months_before(as_of, months)


# --- checks on rules from mapping tables --------------------------------------------------------
# fhirpanel.tables has checked each file's shape (types, required keys, non-empty lists); these
# are the checks a schema cannot make. `where` is a key path in the file: list positions count
# from 1, as a reader counts [[rows]].

_CODE_PATTERNS: dict[str, re.Pattern[str]] = {
    NUCC: re.compile(r"^[0-9]{3}[0-9A-Z]{6}X$"),
    SNOMED: re.compile(r"^[1-9][0-9]{5,17}$"),
    CPT: re.compile(r"^[0-9]{4}[0-9A-Z]$"),
    HCPCS: re.compile(r"^[A-V][0-9]{4}$"),
}
_ANY_CODE = re.compile(r"^\S+$")
_SYSTEM = re.compile(r"^(https?://\S+|urn:\S+)$")


def check_code(system: str, code: str, where: str) -> None:
    """Raise MappingError unless (system, code) is well formed for its code system."""
    if not _SYSTEM.match(system):
        raise MappingError(f"{where}: code system {system!r} is not a URI")
    pattern = _CODE_PATTERNS.get(system, _ANY_CODE)
    if not pattern.match(code):
        raise MappingError(f"{where}: {code!r} is not a well-formed code of {system}")
    if system == SNOMED and not verhoeff_valid(code):
        raise MappingError(f"{where}: {code!r} fails the SNOMED CT check digit")


def _unique(values: Sequence[str], where: str) -> tuple[str, ...]:
    dupes = sorted(v for v, n in Counter(values).items() if n > 1)
    if dupes:
        raise MappingError(f"{where}: duplicate entries {', '.join(dupes)}")
    return tuple(values)


@lru_cache(maxsize=65536)
def normalise_label(text: str) -> str:
    """Case-insensitive, whitespace-collapsed form used for every text-label comparison."""
    return " ".join(text.casefold().split())


def _labels(values: Sequence[str], where: str) -> frozenset[str]:
    labels = [normalise_label(v) for v in _unique(values, where)]
    if len(set(labels)) != len(labels):
        raise MappingError(f"{where}: duplicate labels (compared case-insensitively)")
    return frozenset(labels)


def _codes(codes: Sequence[tuple[str, str]], where: str) -> frozenset[tuple[str, str]]:
    """Well-formed, distinct (system, code) pairs."""
    seen: set[tuple[str, str]] = set()
    for number, (system, code) in enumerate(codes, start=1):
        check_code(system, code, f"{where}[{number}]")
        if (system, code) in seen:
            raise MappingError(f"{where}: duplicate code {system}|{code}")
        seen.add((system, code))
    return frozenset(seen)


# --- rules built from mapping tables -----------------------------------------------------------


@dataclass(frozen=True)
class VisitRules:
    """What makes an Encounter a qualifying visit (docs/methods.md s.1;
    mappings/qualifying_visits)."""

    statuses: frozenset[str]
    classes: frozenset[str]
    excluded_codes: frozenset[tuple[str, str]] = frozenset()
    excluded_texts: frozenset[str] = frozenset()  # normalised labels

    @classmethod
    def create(
        cls,
        *,
        statuses: Sequence[str],
        classes: Sequence[str],
        not_qualifying: Sequence[str] = (),
        excluded_codes: Sequence[tuple[str, str]] = (),
        excluded_texts: Sequence[str] = (),
    ) -> VisitRules:
        """The rules, checked: no duplicates, no class both qualifying and not qualifying (the
        file lists the latter for the reader), well-formed codes."""
        qualifying_statuses = _unique(statuses, "statuses.qualifying")
        qualifying = _unique(classes, "classes.qualifying")
        both = sorted(set(qualifying) & set(_unique(not_qualifying, "classes.not_qualifying")))
        if both:
            raise MappingError(f"classes: {', '.join(both)} both qualifying and not")
        return cls(
            statuses=frozenset(qualifying_statuses),
            classes=frozenset(qualifying),
            excluded_codes=_codes(excluded_codes, "excluded_codes"),
            excluded_texts=_labels(excluded_texts, "excluded_texts.labels"),
        )

    def is_excluded_type(self, encounter: EncounterRecord) -> bool:
        """Visit type on the exclusion list: Encounter.type / serviceType codes, or type texts."""
        for code in encounter.types + encounter.service_types:
            if code.key in self.excluded_codes:
                return True
        return any(normalise_label(t) in self.excluded_texts for t in encounter.type_texts)

    def qualifies(self, encounter: EncounterRecord) -> bool:
        """Status, class and visit type qualify and the visit has a start (clinician aside)."""
        return (
            encounter.start is not None
            and encounter.status in self.statuses
            and encounter.class_code in self.classes
            and not self.is_excluded_type(encounter)
        )


@dataclass(frozen=True)
class SentinelExamCodes:
    """Codes marking a physical or health check, Four Cut step 3 (mappings/sentinel_exams)."""

    codes: frozenset[tuple[str, str]]

    @classmethod
    def create(
        cls, *, codes: Sequence[tuple[str, str]], not_sentinel: Sequence[tuple[str, str]] = ()
    ) -> SentinelExamCodes:
        """The codes, checked; `not_sentinel` lists look-alikes kept out on purpose, and a code
        may not be in both."""
        sentinel = _codes(codes, "codes")
        both = sorted(f"{s}|{c}" for s, c in sentinel & _codes(not_sentinel, "not_sentinel"))
        if both:
            raise MappingError(f"not_sentinel: listed as sentinel and not: {', '.join(both)}")
        return cls(codes=sentinel)

    def is_sentinel(self, encounter: EncounterRecord) -> bool:
        # Encounter.type, serviceType and reasonCode all count (docs/methods.md s.2).
        return any(code.key in self.codes for code in encounter.codes)


@dataclass(frozen=True)
class PrimaryCareSpecialties:
    """Primary-care role/specialty codes and text labels, with the pediatric subset
    (docs/methods.md s.1; mappings/primary_care)."""

    codes: frozenset[tuple[str, str]]
    labels: frozenset[str]  # normalised
    pediatric_codes: frozenset[tuple[str, str]] = frozenset()
    pediatric_labels: frozenset[str] = frozenset()

    @classmethod
    def create(
        cls,
        *,
        codes: Sequence[tuple[str, str]],
        labels: Sequence[str],
        pediatric_codes: Sequence[tuple[str, str]] = (),
        pediatric_labels: Sequence[str] = (),
    ) -> PrimaryCareSpecialties:
        """The codes and labels, checked; the pediatric ones must be among them."""
        all_codes = _codes(codes, "codes")
        stray_codes = sorted(f"{s}|{c}" for s, c in set(pediatric_codes) - all_codes)
        if stray_codes:
            raise MappingError(f"codes: pediatric codes not in codes: {stray_codes}")
        all_labels = _labels(labels, "texts.labels")
        pediatric = _labels(pediatric_labels, "texts.pediatric_labels")
        stray = sorted(pediatric - all_labels)
        if stray:
            raise MappingError(f"texts: pediatric labels not in labels: {stray}")
        return cls(
            codes=all_codes,
            labels=all_labels,
            pediatric_codes=frozenset(pediatric_codes),
            pediatric_labels=pediatric,
        )


@dataclass(frozen=True)
class AttributionRules:
    visits: VisitRules
    sentinel: SentinelExamCodes
    primary_care: PrimaryCareSpecialties


# --- pipelines ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineStep:
    """One step of an attribution pipeline (white paper, Exhibit Two)."""

    kind: StepKind
    window_months: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "four-cut":
            return f"four-cut-{self.window_months}m"
        return self.kind


@dataclass(frozen=True)
class Pipeline:
    """Ordered steps; the first that decides wins. A manual assignment outranks every step."""

    name: str
    steps: tuple[PipelineStep, ...]

    def __post_init__(self) -> None:
        for number, step in enumerate(self.steps, start=1):
            if step.kind == "four-cut" and step.window_months is None:
                raise MappingError(f"steps[{number}]: a four-cut step needs window_months")
            if step.kind == "manual" and step.window_months is not None:
                raise MappingError(f"steps[{number}]: a manual step takes no window_months")
            if step.kind == "manual" and number > 1:
                raise MappingError(
                    f"steps[{number}]: a manual step outranks all others and may only come first"
                )
        names = [s.name for s in self.steps]
        dupes = sorted(n for n, c in Counter(names).items() if c > 1)
        if dupes:
            raise MappingError(f"steps: duplicate step(s) {', '.join(dupes)}")

    @property
    def widest_window(self) -> int | None:
        """The longest look-back of any step (None when no step has one)."""
        windows = [s.window_months for s in self.steps if s.window_months is not None]
        return max(windows) if windows else None


# --- inputs and results ------------------------------------------------------------------------


@dataclass(frozen=True)
class ManualAssignment:
    """A clinician's or patient's choice; outranks every pipeline step until removed."""

    patient: str
    practitioner: str
    practitioner_role: str | None = None
    reason: str = ""
    requested_by: str = "clinician"  # clinician | patient | family | staff
    confirmation: str = "proposed"


# Statuses a person records for a patient (docs/methods.md s.2.8), and the exclusion reason each
# gives. "deceased" is for a death the EHR does not show yet: its own reason, so a record that
# says so later is told apart.
PERSON_STATUSES: Mapping[str, str] = {
    "moved-away": "moved-away",
    "transferred-care": "transferred-care",
    "dismissed": "dismissed",
    "deceased": "deceased-recorded",
}


@dataclass(frozen=True)
class Assignment:
    patient: str
    status: AssignmentStatus
    practitioner: str | None = None
    practitioner_role: str | None = None  # the role seen on the deciding visits, when known
    rule: str | None = None  # single-provider | plurality | sentinel-exam | last-visit |
    #                          declared-pcp | manual | risk-product | confirmed
    step: str | None = None  # the pipeline step that decided, e.g. "four-cut-18m"
    window_months: int | None = None
    tie_broken: bool = False
    visits: tuple[tuple[str, int], ...] = ()  # (practitioner, qualifying visits in window)
    evidence: tuple[str, ...] = ()  # Encounter ids behind the decision, sorted
    sentinel_exam: str | None = None  # the Encounter id when the sentinel cut decided
    last_visit: date | None = None  # last qualifying visit with the assigned clinician
    reason: str | None = None  # excluded: inactive | deceased | merged, or a PERSON_STATUSES
    #                            reason; unassigned: why
    confirmation: str = "proposed"


@dataclass(frozen=True)
class EligibilityReport:
    """Which clinicians may be attributed patients, and how each was recognised."""

    by_code: tuple[str, ...]
    by_text: tuple[str, ...]
    not_matched: tuple[str, ...]
    fallback_all_on_visits: bool
    # With no PractitionerRole data: the clinicians on a qualifying visit, all eligible.
    on_visits: tuple[str, ...] = ()
    pediatric: tuple[str, ...] = ()  # eligible clinicians with a pediatric role
    pediatric_only: tuple[str, ...] = ()  # ... and no other primary-care role
    # Left the practice as of the as-of date: Practitioner.active false, or every primary-care
    # role inactive or past its period's end. Not eligible; a subset of not_matched.
    departed: tuple[str, ...] = ()
    _eligible: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        members = self.on_visits if self.fallback_all_on_visits else self.by_code + self.by_text
        object.__setattr__(self, "_eligible", frozenset(members))

    @property
    def eligible(self) -> tuple[str, ...]:
        return tuple(sorted(self._eligible))

    def is_eligible(self, practitioner: str) -> bool:
        return practitioner in self._eligible


@dataclass(frozen=True)
class AttributionResult:
    as_of: date
    pipeline: str
    assignments: tuple[Assignment, ...]  # sorted by patient id; every patient once
    eligibility: EligibilityReport
    # The qualifying visits per patient the decision used; panels and outreach reuse them
    # rather than classify every encounter again.
    visits: Mapping[str, tuple[QualifyingVisit, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # Moves the rules would make that a current confirmation held back, by patient id; and the
    # patients held whose same move a person had dismissed (not proposed again).
    proposed_moves: tuple[ProposedMove, ...] = ()
    dismissed_kept: tuple[str, ...] = ()

    def by_patient(self) -> dict[str, Assignment]:
        return {a.patient: a for a in self.assignments}


@dataclass(frozen=True, order=True)
class QualifyingVisit:
    """A qualifying visit reduced to what attribution needs; orders by time, then id."""

    day: date
    start: datetime
    encounter: str
    practitioner: str
    practitioner_role: str | None = field(default=None, compare=False)
    sentinel: bool = field(default=False, compare=False)


# --- who counts --------------------------------------------------------------------------------


def exclusion_reason(patient: PatientRecord, as_of: date) -> str | None:
    """merged, deceased or inactive (docs/methods.md s.1), in that order of precedence; else
    None."""
    if patient.replaced_by is not None:
        return "merged"
    if patient.deceased and (patient.deceased_date is None or patient.deceased_date <= as_of):
        return "deceased"
    if not patient.active:
        return "inactive"
    return None


def _role_match(
    codes: Iterable[tuple[str, str]],
    texts: Iterable[str],
    code_set: frozenset[tuple[str, str]],
    label_set: frozenset[str],
) -> Literal["code", "text"] | None:
    if any(key in code_set for key in codes):
        return "code"
    if any(normalise_label(t) in label_set for t in texts):
        return "text"
    return None


def assess_eligibility(
    population: Population, as_of: date, rules: AttributionRules
) -> EligibilityReport:
    """A clinician is eligible when a PractitionerRole they hold on the as-of date (active, and
    within its period) matches a primary-care code, else a text label, and their Practitioner
    is not `active: false` (docs/methods.md s.1). A clinician who left (inactive, or every
    primary-care role ended) is listed as `departed`: their earlier visits stay in the record but
    decide nothing. With no PractitionerRole at all, every active clinician on a qualifying visit
    on or before the as-of date is eligible and the report says so."""
    specialties = rules.primary_care
    clinicians: set[str] = set(population.practitioners)
    clinicians.update(r.practitioner for r in population.roles.values() if r.practitioner)
    clinicians.update(e.practitioner for e in population.encounters if e.practitioner)
    inactive = {p.id for p in population.practitioners.values() if not p.active}
    if not population.roles:
        on_visits = {
            e.practitioner
            for e in population.encounters
            if e.practitioner
            and e.practitioner not in inactive
            and e.day is not None
            and e.day <= as_of
            and rules.visits.qualifies(e)
        }
        return EligibilityReport(
            by_code=(),
            by_text=(),
            not_matched=tuple(sorted(clinicians - on_visits)),
            fallback_all_on_visits=True,
            on_visits=tuple(sorted(on_visits)),
            departed=tuple(sorted(inactive & clinicians)),
        )
    matches: dict[str, set[str]] = {}
    pediatric_roles: dict[str, set[bool]] = {}
    primary_care_once: set[str] = set()  # held a primary-care role at some time
    for role in population.roles.values():
        if role.practitioner is None:
            continue
        keys = [c.key for c in role.codes + role.specialties]
        how = _role_match(keys, role.texts, specialties.codes, specialties.labels)
        if how is None:
            continue
        primary_care_once.add(role.practitioner)
        # A role that is inactive, ended or not yet begun is not one the clinician holds now.
        if not role.held_on(as_of) or role.practitioner in inactive:
            continue
        matches.setdefault(role.practitioner, set()).add(how)
        is_pediatric = (
            _role_match(keys, role.texts, specialties.pediatric_codes, specialties.pediatric_labels)
            is not None
        )
        pediatric_roles.setdefault(role.practitioner, set()).add(is_pediatric)
    by_code = sorted(p for p, how in matches.items() if "code" in how)
    by_text = sorted(p for p, how in matches.items() if "code" not in how)
    pediatric = sorted(p for p, flags in pediatric_roles.items() if True in flags)
    pediatric_only = sorted(p for p, flags in pediatric_roles.items() if flags == {True})
    return EligibilityReport(
        by_code=tuple(by_code),
        by_text=tuple(by_text),
        not_matched=tuple(sorted(clinicians - set(matches))),
        fallback_all_on_visits=False,
        pediatric=tuple(pediatric),
        pediatric_only=tuple(pediatric_only),
        departed=tuple(sorted((primary_care_once | (inactive & clinicians)) - set(matches))),
    )


def qualifying_visits(
    population: Population, as_of: date, rules: AttributionRules, eligibility: EligibilityReport
) -> dict[str, tuple[QualifyingVisit, ...]]:
    """Per patient, qualifying visits to eligible clinicians on or before the as-of date,
    oldest first (ties by start time, then Encounter id)."""
    out: dict[str, list[QualifyingVisit]] = {}
    for enc in population.encounters:
        if enc.practitioner is None or enc.start is None or not rules.visits.qualifies(enc):
            continue
        day = enc.start.date()
        if day > as_of or not eligibility.is_eligible(enc.practitioner):
            continue
        out.setdefault(enc.patient, []).append(
            QualifyingVisit(
                day=day,
                start=enc.start,
                encounter=enc.id,
                practitioner=enc.practitioner,
                practitioner_role=enc.practitioner_role,
                sentinel=rules.sentinel.is_sentinel(enc),
            )
        )
    return {patient: tuple(sorted(visits)) for patient, visits in out.items()}


def visits_in_window(
    visits: Sequence[QualifyingVisit], as_of: date, months: int | None
) -> tuple[QualifyingVisit, ...]:
    return tuple(v for v in visits if in_window(v.day, as_of, months))


def visit_counts(visits: Iterable[QualifyingVisit]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(Counter(v.practitioner for v in visits).items()))


# --- the Four Cut method -----------------------------------------------------------------------


@dataclass(frozen=True)
class FourCutDecision:
    practitioner: str
    rule: Literal["single-provider", "plurality", "sentinel-exam", "last-visit"]
    evidence: tuple[str, ...]
    tie_broken: bool = False
    sentinel_exam: str | None = None


def _latest_on_same_day(candidates: Sequence[QualifyingVisit]) -> tuple[QualifyingVisit, bool]:
    """Among visits on one day: one clinician wins outright; several are a remaining tie,
    broken by the latest start time, then the lowest clinician id, and flagged (docs/methods.md
    s.2). Returns the deciding visit and whether a tie was broken."""
    clinicians = {v.practitioner for v in candidates}
    latest_start = max(v.start for v in candidates)
    winner = min(v.practitioner for v in candidates if v.start == latest_start)
    # The winner's own latest visit that day, then the lowest Encounter id.
    own = [v for v in candidates if v.practitioner == winner]
    own_latest = max(v.start for v in own)
    visit = min((v for v in own if v.start == own_latest), key=lambda v: v.encounter)
    return visit, len(clinicians) > 1


def four_cut(visits: Sequence[QualifyingVisit]) -> FourCutDecision | None:
    """The Four Cut method (Murray; MGMA; empanelment white paper) over visits already limited
    to the window and to eligible clinicians. None when there are no visits."""
    if not visits:
        return None
    counts = Counter(v.practitioner for v in visits)

    def visits_of(practitioner: str) -> tuple[str, ...]:
        return tuple(sorted(v.encounter for v in visits if v.practitioner == practitioner))

    # Four Cut, step 1: seen only one provider.
    if len(counts) == 1:
        (only,) = counts
        return FourCutDecision(only, "single-provider", visits_of(only))
    # Four Cut, step 2: plurality of qualifying visits.
    most = max(counts.values())
    tied = {p for p, n in counts.items() if n == most}
    if len(tied) == 1:
        (top,) = tied
        return FourCutDecision(top, "plurality", visits_of(top))
    # Four Cut, step 3: the most recent sentinel exam, counted among the tied providers only.
    sentinels = [v for v in visits if v.sentinel and v.practitioner in tied]
    if sentinels:
        last_day = max(v.day for v in sentinels)
        visit, broken = _latest_on_same_day([v for v in sentinels if v.day == last_day])
        return FourCutDecision(
            visit.practitioner,
            "sentinel-exam",
            (visit.encounter,),
            tie_broken=broken,
            sentinel_exam=visit.encounter,
        )
    # Four Cut, step 4: the tied provider seen last.
    tied_visits = [v for v in visits if v.practitioner in tied]
    last_day = max(v.day for v in tied_visits)
    on_last_day = [v for v in tied_visits if v.day == last_day]
    visit, broken = _latest_on_same_day(on_last_day)
    evidence = tuple(
        sorted(v.encounter for v in on_last_day if v.practitioner == visit.practitioner)
    )
    return FourCutDecision(visit.practitioner, "last-visit", evidence, tie_broken=broken)


# --- the pipeline ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Choice:
    """What a non-Four-Cut step decided, before the explanation is added."""

    practitioner: str
    practitioner_role: str | None
    rule: str
    confirmation: str = "proposed"


def clinician_from_reference(
    reference: str, population: Population, eligibility: EligibilityReport
) -> tuple[str, str | None] | None:
    """An eligible clinician named by a Practitioner or PractitionerRole reference; an
    Organization, an unknown role or an ineligible clinician gives None."""
    if reference.startswith("PractitionerRole/"):
        role = population.roles.get(reference)
        if role is None or role.practitioner is None:
            return None
        if eligibility.is_eligible(role.practitioner):
            return role.practitioner, reference
        return None
    if reference.startswith("Practitioner/") and eligibility.is_eligible(reference):
        return reference, None
    return None


def _latest_role(visits: Sequence[QualifyingVisit], practitioner: str) -> str | None:
    for visit in reversed(visits):
        if visit.practitioner == practitioner and visit.practitioner_role:
            return visit.practitioner_role
    return None


def _last_day(visits: Sequence[QualifyingVisit], practitioner: str) -> date | None:
    days = [v.day for v in visits if v.practitioner == practitioner]
    return max(days) if days else None


def _explained(
    patient: str, choice: _Choice, step: str, window: int | None, visits: Sequence[QualifyingVisit]
) -> Assignment:
    """A manual, declared-PCP or risk-product choice with the visits behind it for review."""
    return Assignment(
        patient=patient,
        status="assigned",
        practitioner=choice.practitioner,
        practitioner_role=choice.practitioner_role or _latest_role(visits, choice.practitioner),
        rule=choice.rule,
        step=step,
        window_months=window,
        visits=visit_counts(visits),
        last_visit=_last_day(visits, choice.practitioner),
        confirmation=choice.confirmation,
    )


def _unassigned_reason(
    population_visits: Sequence[EncounterRecord],
    rules: AttributionRules,
    as_of: date,
    window: int | None,
) -> str:
    span = f"in the last {window} months" if window is not None else "on or before the as-of date"
    qualifying = [
        e
        for e in population_visits
        if e.practitioner
        and e.day is not None
        and in_window(e.day, as_of, window)
        and rules.visits.qualifies(e)
    ]
    if qualifying:
        return f"qualifying visits {span} were only with clinicians not eligible for primary care"
    return f"no qualifying visit {span}"


def attribute_patients(
    population: Population,
    as_of: date,
    pipeline: Pipeline,
    rules: AttributionRules,
    manual: Mapping[str, ManualAssignment] | None = None,
    risk_product_members: Mapping[str, str] | None = None,
    statuses: Mapping[str, str] | None = None,
    confirmed: Mapping[str, ConfirmedAssignment] | None = None,
    dismissed: Mapping[str, DismissedMove] | None = None,
    confirmation_months: int = DEFAULT_MONTHS,
) -> AttributionResult:
    """Attribute every patient in the population: excluded (with the reason), assigned (with the
    step, rule and evidence) or unassigned (with why). Manual assignments outrank every step;
    then the pipeline's steps in order, first match wins (white paper, Exhibit Two).

    - declared-pcp: Patient.generalPractitioner naming an eligible Practitioner, or a
      PractitionerRole of one; an Organization is ignored. With window_months, only for a
      patient who had a qualifying visit in that window (an active patient, docs/methods.md s.1).
    - risk-product: the payer's member list (patient -> Practitioner or PractitionerRole),
      followed when it names an eligible clinician; skipped when no list is passed.
      window_months, if set, works as for declared-pcp.
    - four-cut: the Four Cut method over the step's window.

    `statuses`: patient -> a status a person recorded (a key of PERSON_STATUSES); the patient is
    excluded with its reason, after the record's own reasons and before any override.

    `confirmed`: patient -> their current clinician and the days it was confirmed. When the
    steps would move the patient elsewhere (or leave them unassigned) while a confirmation is
    current (`confirmation_months`) and the clinician is still eligible, the patient stays
    (rule `confirmed`) and the move is proposed (`AttributionResult.proposed_moves`), unless
    `dismissed` holds the same move on the same visit counts (docs/methods.md s.2.9).
    Overrides and statuses outrank confirmations.
    """
    eligibility = assess_eligibility(population, as_of, rules)
    visits_by_patient = qualifying_visits(population, as_of, rules, eligibility)
    encounters_by_patient = population.encounters_by_patient()
    manual = manual or {}
    statuses = statuses or {}
    confirmed = confirmed or {}
    dismissed = dismissed or {}
    moves: list[ProposedMove] = []
    kept: list[str] = []
    unknown = sorted(set(statuses.values()) - set(PERSON_STATUSES))
    if unknown:
        raise ValueError(f"unknown patient status {unknown[0]!r}")
    # Visit counts shown with a non-Four-Cut choice cover the pipeline's widest window.
    explain_window = pipeline.widest_window
    assignments = []
    for patient_id in sorted(population.patients):
        patient = population.patients[patient_id]
        reason = exclusion_reason(patient, as_of)
        if reason is None and patient_id in statuses:
            reason = PERSON_STATUSES[statuses[patient_id]]
        if reason is not None:
            assignments.append(Assignment(patient=patient_id, status="excluded", reason=reason))
            continue
        visits = visits_by_patient.get(patient_id, ())
        override = manual.get(patient_id)
        if override is not None:
            choice = _Choice(
                override.practitioner, override.practitioner_role, "manual", override.confirmation
            )
            assignments.append(
                _explained(
                    patient_id,
                    choice,
                    "manual",
                    explain_window,
                    visits_in_window(visits, as_of, explain_window),
                )
            )
            continue
        assignment = _run_steps(
            patient, visits, pipeline, population, eligibility, as_of, risk_product_members
        )
        held = confirmed.get(patient_id)
        by = held.current(as_of, confirmation_months) if held is not None else ()
        if (
            held is not None
            and by
            and eligibility.is_eligible(held.practitioner)
            and (assignment is None or assignment.practitioner != held.practitioner)
        ):
            # A current confirmation holds: the patient stays; a move to another clinician is
            # proposed for a person to decide (unless they dismissed it on the same evidence).
            if assignment is not None and assignment.practitioner is not None:
                move = ProposedMove(
                    patient=patient_id,
                    from_practitioner=held.practitioner,
                    to_practitioner=assignment.practitioner,
                    rule=assignment.rule or "",
                    step=assignment.step,
                    window_months=assignment.window_months,
                    visits=assignment.visits,
                    evidence=assignment.evidence,
                    held_by=by,
                )
                if move.same_as(dismissed.get(patient_id)):
                    kept.append(patient_id)
                else:
                    moves.append(move)
            choice = _Choice(held.practitioner, None, "confirmed", "confirmed")
            assignments.append(
                _explained(
                    patient_id,
                    choice,
                    CONFIRMED,
                    explain_window,
                    visits_in_window(visits, as_of, explain_window),
                )
            )
            continue
        if assignment is None:
            window_visits = visits_in_window(visits, as_of, explain_window)
            assignment = Assignment(
                patient=patient_id,
                status="unassigned",
                window_months=explain_window,
                visits=visit_counts(window_visits),
                reason=_unassigned_reason(
                    encounters_by_patient.get(patient_id, ()), rules, as_of, explain_window
                ),
            )
        assignments.append(assignment)
    return AttributionResult(
        as_of=as_of,
        pipeline=pipeline.name,
        assignments=tuple(assignments),
        eligibility=eligibility,
        visits=visits_by_patient,
        proposed_moves=tuple(moves),
        dismissed_kept=tuple(kept),
    )


def _run_steps(
    patient: PatientRecord,
    visits: tuple[QualifyingVisit, ...],
    pipeline: Pipeline,
    population: Population,
    eligibility: EligibilityReport,
    as_of: date,
    risk_product_members: Mapping[str, str] | None,
) -> Assignment | None:
    for step in pipeline.steps:
        window_visits = visits_in_window(visits, as_of, step.window_months)
        if step.kind == "four-cut":
            decision = four_cut(window_visits)
            if decision is None:
                continue
            on_deciding = [v for v in window_visits if v.encounter in decision.evidence]
            role = _latest_role(on_deciding, decision.practitioner) or _latest_role(
                window_visits, decision.practitioner
            )
            return Assignment(
                patient=patient.id,
                status="assigned",
                practitioner=decision.practitioner,
                practitioner_role=role,
                rule=decision.rule,
                step=step.name,
                window_months=step.window_months,
                tie_broken=decision.tie_broken,
                visits=visit_counts(window_visits),
                evidence=decision.evidence,
                sentinel_exam=decision.sentinel_exam,
                last_visit=_last_day(window_visits, decision.practitioner),
            )
        if step.kind == "manual":
            continue  # applied before the steps, whatever its place
        if step.window_months is not None and not window_visits:
            continue  # not an active patient for this step's window
        choice: _Choice | None = None
        if step.kind == "declared-pcp":
            for reference in patient.general_practitioners:
                found = clinician_from_reference(reference, population, eligibility)
                if found is not None:
                    choice = _Choice(found[0], found[1], "declared-pcp")
                    break
        elif step.kind == "risk-product" and risk_product_members:
            member_of = risk_product_members.get(patient.id)
            # Read as a declared PCP is: a clinician who is not eligible (not primary care, or
            # unknown) does not take the patient; the pipeline goes on.
            found = (
                clinician_from_reference(member_of, population, eligibility)
                if member_of is not None
                else None
            )
            if found is not None:
                choice = _Choice(found[0], found[1], "risk-product")
        if choice is not None:
            window = (
                step.window_months if step.window_months is not None else (pipeline.widest_window)
            )
            return _explained(
                patient.id, choice, step.name, window, visits_in_window(visits, as_of, window)
            )
    return None


__all__ = [
    "PERSON_STATUSES",
    "STEP_KINDS",
    "Assignment",
    "AttributionResult",
    "AttributionRules",
    "ConfirmedAssignment",
    "DismissedMove",
    "EligibilityReport",
    "FourCutDecision",
    "ManualAssignment",
    "Pipeline",
    "PipelineStep",
    "PrimaryCareSpecialties",
    "ProposedMove",
    "QualifyingVisit",
    "SentinelExamCodes",
    "VisitRules",
    "assess_eligibility",
    "attribute_patients",
    "check_code",
    "exclusion_reason",
    "four_cut",
    "in_window",
    "months_before",
    "normalise_label",
    "qualifying_visits",
    "verhoeff_valid",
    "visit_counts",
    "visits_in_window",
]
