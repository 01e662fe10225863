"""Conditions to the diagnosis codes risk scoring uses: status filters, ICD-10-CM normalisation, the
SNOMED CT to ICD-10-CM crosswalk and the chronic condition groups (docs/methods.md s.4)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from fhirpanel.domain.codes import verhoeff_valid
from fhirpanel.domain.records import ICD10, ICD10CM, SNOMED, ConditionRecord
from fhirpanel.errors import MappingError

# ICD-10-CM code shape (dots optional); U is reserved and never a valid first letter.
ICD10CM_PATTERN = re.compile(r"^[A-TV-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")
SNOMED_ID_PATTERN = re.compile(r"^[1-9][0-9]{5,17}$")
# A three-character ICD-10-CM category, as the bounds of a range of them.
_CATEGORY = re.compile(r"[A-TV-Z][0-9]{2}")

# How a diagnosis code was obtained.
VIA_ICD10CM = "icd10cm"
VIA_ICD10 = "icd10"
VIA_CROSSWALK = "snomed-crosswalk"
ICD_SYSTEMS = {ICD10CM: VIA_ICD10CM, ICD10: VIA_ICD10}


def is_snomed_id(code: str) -> bool:
    """A well-formed SNOMED CT concept id: 6-18 digits with a valid Verhoeff check digit."""
    return bool(SNOMED_ID_PATTERN.match(code)) and verhoeff_valid(code)


def is_icd10cm_code(code: str) -> bool:
    return bool(ICD10CM_PATTERN.match(code))


def normalise_icd10(code: str) -> str:
    """Dot-less, upper-case form used for matching (`E11.9` -> `E119`)."""
    return code.strip().replace(".", "").upper()


# --- status filters -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConditionFilter:
    """Which Conditions count (docs/methods.md s.4: active/recurrence/relapse or absent; not
    refuted or entered-in-error; problem-list items and encounter diagnoses alike)."""

    counted_clinical_status: frozenset[str]
    count_absent_clinical_status: bool
    skipped_verification_status: frozenset[str]

    def skip_reason(self, condition: ConditionRecord) -> str | None:
        """None when the Condition counts, else why it does not."""
        verification = condition.verification_status
        if verification is not None and verification in self.skipped_verification_status:
            return f"verificationStatus {verification}"
        status = condition.clinical_status
        if status is None:
            return None if self.count_absent_clinical_status else "no clinicalStatus"
        if status not in self.counted_clinical_status:
            return f"clinicalStatus {status}"
        return None


# --- crosswalk ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CrosswalkRow:
    snomed: str
    snomed_display: str
    icd10cm: str  # as written, with its dot
    icd10cm_display: str
    note: str | None = None

    @property
    def icd10cm_key(self) -> str:
        return normalise_icd10(self.icd10cm)


@dataclass(frozen=True)
class Crosswalk:
    """SNOMED CT concept -> one ICD-10-CM code (`mappings/snomed_icd10cm.toml`)."""

    rows: tuple[CrosswalkRow, ...]
    _by_snomed: Mapping[str, CrosswalkRow] = field(repr=False, compare=False)

    @classmethod
    def create(cls, rows: Sequence[CrosswalkRow]) -> Crosswalk:
        """The crosswalk, checked: valid SNOMED CT ids, well-formed ICD-10-CM codes, each
        concept once."""
        by_snomed: dict[str, CrosswalkRow] = {}
        for number, row in enumerate(rows, start=1):
            where = f"rows[{number}]"
            if not is_snomed_id(row.snomed):
                raise MappingError(f"{where}.snomed: {row.snomed!r} is not a valid SNOMED CT id")
            if not is_icd10cm_code(row.icd10cm):
                raise MappingError(
                    f"{where}.icd10cm: {row.icd10cm!r} is not a well-formed ICD-10-CM code"
                )
            if row.snomed in by_snomed:
                raise MappingError(f"{where}.snomed: SNOMED {row.snomed} appears twice")
            by_snomed[row.snomed] = row
        return cls(rows=tuple(rows), _by_snomed=by_snomed)

    def lookup(self, snomed_code: str) -> CrosswalkRow | None:
        return self._by_snomed.get(snomed_code)

    def __len__(self) -> int:
        return len(self.rows)


# --- diagnosis codes ------------------------------------------------------------------------------


class DiagnosisCode(NamedTuple):
    """One ICD-10-CM code a counted Condition contributes (a tuple: cheap to hash and sort)."""

    code: str  # dot-less, upper case: what matching uses
    condition: str  # Condition id
    via: str  # icd10cm | icd10 | snomed-crosswalk
    original: str  # the code as sent (ICD with its dot, or the SNOMED id that was crosswalked)


@dataclass(frozen=True, slots=True)
class PatientDiagnoses:
    codes: tuple[DiagnosisCode, ...]  # sorted
    skipped: tuple[tuple[str, str], ...] = ()  # (Condition id, reason) filtered out by status
    unmapped: tuple[str, ...] = ()  # counted Conditions with no ICD coding and no crosswalk row

    @property
    def code_set(self) -> frozenset[str]:
        return frozenset(d.code for d in self.codes)

    def conditions_for(self, codes: Iterable[str]) -> set[str]:
        wanted = set(codes)
        return {d.condition for d in self.codes if d.code in wanted}


def condition_codes(condition: ConditionRecord, crosswalk: Crosswalk) -> list[DiagnosisCode]:
    """ICD-10-CM (or WHO ICD-10) codings as sent; the crosswalk only when there are none."""
    found: list[DiagnosisCode] = []
    for coding in condition.codes:
        via = ICD_SYSTEMS.get(coding.system)
        if via is None or not coding.code:
            continue
        code = normalise_icd10(coding.code)
        if code:
            found.append(DiagnosisCode(code, condition.id, via, coding.code))
    if found:
        return found
    for coding in condition.codes:
        if coding.system != SNOMED:
            continue
        row = crosswalk.lookup(coding.code.strip())
        if row is not None:
            found.append(DiagnosisCode(row.icd10cm_key, condition.id, VIA_CROSSWALK, row.snomed))
    return found


def patient_diagnoses(
    conditions: Iterable[ConditionRecord], crosswalk: Crosswalk, condition_filter: ConditionFilter
) -> PatientDiagnoses:
    """Every diagnosis code of one patient's counted Conditions, in a stable order."""
    codes: set[DiagnosisCode] = set()
    skipped: list[tuple[str, str]] = []
    unmapped: list[str] = []
    for condition in conditions:
        reason = condition_filter.skip_reason(condition)
        if reason is not None:
            skipped.append((condition.id, reason))
            continue
        found = condition_codes(condition, crosswalk)
        if not found:
            unmapped.append(condition.id)
        codes.update(found)
    return PatientDiagnoses(
        codes=tuple(sorted(codes)), skipped=tuple(sorted(skipped)), unmapped=tuple(sorted(unmapped))
    )


# --- chronic conditions (CCM) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChronicGroup:
    key: str
    label: str
    prefixes: tuple[str, ...]
    ranges: tuple[tuple[str, str], ...] = ()  # inclusive ranges of three-character categories

    def matches(self, code: str) -> bool:
        if code.startswith(self.prefixes):
            return True
        category = code[:3]
        return any(low <= category <= high for low, high in self.ranges)


@dataclass(frozen=True)
class ChronicConditions:
    """Chronic condition groups and the CCM threshold (`mappings/chronic_conditions.toml`)."""

    groups: tuple[ChronicGroup, ...]
    min_for_ccm: int
    _cache: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for number, group in enumerate(self.groups, start=1):
            where, key = f"groups[{number}]", group.key
            if key in seen:
                raise MappingError(f"{where}: key {key!r} appears twice")
            seen.add(key)
            if not group.prefixes and not group.ranges:
                raise MappingError(f"{where}: {key} has no icd10cm_prefixes or icd10cm_ranges")
            for prefix in group.prefixes:
                check_icd10_prefix(prefix, f"{where}.icd10cm_prefixes")
            if len(set(group.prefixes)) != len(group.prefixes):
                raise MappingError(f"{where}.icd10cm_prefixes: {key} lists a prefix twice")
            for low, high in group.ranges:
                if not (_CATEGORY.fullmatch(low) and _CATEGORY.fullmatch(high)) or low > high:
                    raise MappingError(
                        f"{where}.icd10cm_ranges: bad entry {[low, high]!r}: expected two "
                        "three-character ICD-10-CM categories, low to high"
                    )

    def groups_for_code(self, code: str) -> tuple[str, ...]:
        cached = self._cache.get(code)
        if cached is None:
            cached = tuple(g.key for g in self.groups if g.matches(code))
            self._cache[code] = cached
        return cached

    def groups_for(self, codes: Iterable[str]) -> tuple[str, ...]:
        """The distinct groups the codes fall into, in file order."""
        hit: set[str] = set()
        for code in codes:
            hit.update(self.groups_for_code(code))
        return tuple(g.key for g in self.groups if g.key in hit)


# --- checks on mapping tables ---------------------------------------------------------------------


def check_icd10_prefix(prefix: str, where: str) -> None:
    # A prefix is the start of a dot-less code: letter, digit, then up to five more characters.
    if not re.fullmatch(r"[A-TV-Z][0-9][0-9A-Z]{0,5}", prefix):
        raise MappingError(f"{where}: {prefix!r} is not a dot-less ICD-10 prefix")
