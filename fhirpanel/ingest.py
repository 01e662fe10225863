"""Read a source into a `Population`: parse, de-duplicate, resolve roles, check references.

Every resource that cannot be used becomes an `Issue` with the action taken; nothing stops the run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from typing import TypeVar

from fhirpanel.config import Settings
from fhirpanel.domain.dates import months_before
from fhirpanel.domain.records import (
    ConditionRecord,
    EncounterRecord,
    Issue,
    OrganizationRecord,
    PatientRecord,
    Population,
    PractitionerRecord,
    PractitionerRoleRecord,
)
from fhirpanel.fhir.parse import RESOURCE_TYPES, Record, parse_resource
from fhirpanel.fhir.referenced import REFERENCED_TYPES
from fhirpanel.fhir.source import FhirSource, Item
from fhirpanel.tables import MethodTables

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Record)

# Clinicians and organisations first (they are few), unless the source names its own order
# (`read_order`: server sources read patients first, to follow references from them).
READ_ORDER = (
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Patient",
    "Encounter",
    "Condition",
)
Progress = Callable[[str, int], None]  # (resource type, resources read so far of that type)


def read_population(
    source: FhirSource, progress: Progress | None = None, patients: Sequence[str] | None = None
) -> Population:
    """Everything a run needs, in the source's `read_order`. With `patients`, only those
    patients' Patient, Encounter and Condition resources (plus the clinicians and organisations:
    all of them, or those referenced from a source that reads them by reference)."""
    builder = PopulationBuilder()
    for rtype in read_order(source):
        if patients is not None and rtype in ("Patient", "Encounter", "Condition"):
            items: Iterable[Item] = source.read_for_patients(rtype, patients)
        else:
            items = source.read(rtype)
        builder.add_items(rtype, items, progress)
    return builder.finish()


def read_order(source: FhirSource) -> tuple[str, ...]:
    """The source's own order (`read_order`: a server source reads patients first, so the
    clinicians they reference are known when a server will only be asked for those), else
    READ_ORDER. Types READ_ORDER has and the source's order lacks (a type added later) come
    before the clinicians, so what references them is still read first. The records come out
    the same in any order."""
    order = getattr(source, "read_order", None)
    if not isinstance(order, tuple):
        return READ_ORDER
    known = [t for t in order if t in READ_ORDER]
    missing = [t for t in READ_ORDER if t not in known]
    cut = next((n for n, t in enumerate(known) if t in REFERENCED_TYPES), len(known))
    return (*known[:cut], *missing, *known[cut:])


# compute_age_sex_weights counts visits over its default 12 months (domain/panels.py).
PANEL_WEIGHT_MONTHS = 12


def read_window_months(settings: Settings, tables: MethodTables) -> int | None:
    """The longest look-back the pass decides with, in months: the pipeline's widest window,
    the risk utilisation window, the outreach windows, the panel weights', the suggestions'
    continuity window. None (read every encounter) with `fhir.encounter_floor = "none"`, or
    when no pipeline step has a window (its explanations then count visits of any date)."""
    widest = tables.pipeline.widest_window
    if settings.fhir.encounter_floor == "none" or widest is None:
        return None
    placement = getattr(tables.capacities, "placement", None)  # suggestion rules, when set
    return max(
        widest,
        tables.risk.utilisation.lookback_months,
        settings.attribution.outreach_not_seen_months,
        settings.attribution.outreach_sentinel_months,
        PANEL_WEIGHT_MONTHS,
        int(getattr(placement, "continuity_months", 0) or 0),
    )


def encounter_floor(as_of: date, months: int) -> date:
    """The first day a roster read asks encounters from: `months` before the as-of date (the
    longest look-back window the pass uses: `read_window_months`)."""
    return months_before(as_of, months)


def configure_read(source: FhirSource, as_of: date, months: int | None) -> None:
    """Tell a roster source its encounter date floor (`fhir.encounter_floor = "window"`:
    `months` before `as_of`; None: no floor). Other sources read everything."""
    setter = getattr(source, "set_encounter_floor", None)
    if callable(setter):
        setter(None if months is None else encounter_floor(as_of, months))


class PopulationBuilder:
    """Collects records; `finish()` resolves roles, drops dangling references, sorts."""

    def __init__(self) -> None:
        self.pop = Population()
        self._encounters: dict[str, EncounterRecord] = {}
        self._conditions: dict[str, ConditionRecord] = {}

    def add_items(
        self, rtype: str, items: Iterable[Item], progress: Progress | None = None
    ) -> None:
        count = 0
        for item in items:
            count += 1
            if progress is not None and count % 1000 == 0:
                progress(rtype, count)
            if isinstance(item, Issue):
                self.pop.issues.append(item)
                continue
            out = parse_resource(item, expected_type=rtype)
            if isinstance(out, Issue):
                self.pop.issues.append(out)
            else:
                self.add_record(out)
        if progress is not None:
            progress(rtype, count)

    def add_record(self, record: Record) -> None:
        if isinstance(record, PatientRecord):
            self._keep(self.pop.patients, record)
        elif isinstance(record, EncounterRecord):
            self._keep(self._encounters, record)
        elif isinstance(record, ConditionRecord):
            self._keep(self._conditions, record)
        elif isinstance(record, PractitionerRecord):
            self._keep(self.pop.practitioners, record)
        elif isinstance(record, PractitionerRoleRecord):
            self._keep(self.pop.roles, record)
        elif isinstance(record, OrganizationRecord):
            self._keep(self.pop.organizations, record)

    def _keep(self, table: dict[str, R], record: R) -> None:
        """The same id twice (an export with overlapping files, a page read twice): keep the
        newer by meta.lastUpdated, else the later one, and say so."""
        previous = table.get(record.id)
        if previous is not None:
            newer = _newer(previous, record)
            self.pop.issues.append(Issue(record.id, "duplicate id in source", "deduplicated"))
            record = newer
        table[record.id] = record

    def finish(self) -> Population:
        pop = self.pop
        pop.encounters = self._checked_encounters()
        pop.conditions = self._checked_conditions()
        for patient in pop.patients.values():
            if patient.replaced_by == "Patient/?":
                pop.issues.append(
                    Issue(patient.id, "replaced-by link without a Patient reference", "recorded")
                )
        pop.issues.sort(key=lambda i: (i.resource, i.problem))
        return pop

    def _checked_encounters(self) -> list[EncounterRecord]:
        pop = self.pop
        out = []
        for enc in sorted(self._encounters.values(), key=lambda e: e.id):
            if enc.patient not in pop.patients:
                pop.issues.append(Issue(enc.id, f"unknown subject {enc.patient}"))
                continue
            if enc.practitioner is None and enc.practitioner_role is not None:
                role = pop.roles.get(enc.practitioner_role)
                if role is None or role.practitioner is None:
                    why = "unknown" if role is None else "has no practitioner"
                    pop.issues.append(
                        Issue(
                            enc.id,
                            f"participant {enc.practitioner_role} {why}; "
                            "not counted for attribution",
                            "recorded",
                        )
                    )
                else:
                    enc = dataclasses.replace(enc, practitioner=role.practitioner)
            elif enc.practitioner is None:
                pop.issues.append(
                    Issue(
                        enc.id, "no clinician participant; not counted for attribution", "recorded"
                    )
                )
            out.append(enc)
        return out

    def _checked_conditions(self) -> list[ConditionRecord]:
        pop = self.pop
        out = []
        for cond in sorted(self._conditions.values(), key=lambda c: c.id):
            if cond.patient not in pop.patients:
                pop.issues.append(Issue(cond.id, f"unknown subject {cond.patient}"))
                continue
            if not cond.codes:
                pop.issues.append(Issue(cond.id, "no coded code.coding"))
                continue
            out.append(cond)
        return out


# Encounter statuses that say the visit has not happened: a booking after the as-of date is
# expected, not a wrong date (the committed population holds a dozen planned visits after it).
NOT_YET_STATUSES = frozenset({"planned", "cancelled"})
BIRTH_IN_FUTURE = "birth date after the as-of date"
ENCOUNTER_IN_FUTURE = "encounter starts after the as-of date"


def future_date_issues(population: Population, as_of: date) -> list[Issue]:
    """Records dated after the as-of date, as `recorded` issues: a Patient born after it, an
    Encounter (not planned or cancelled) whose period starts after it (its UTC day, the day the
    domain uses). The records are kept, not skipped: the domain already leaves such dates out
    where they matter (no age from a future birth date; a visit after the as-of date counts for
    neither attribution, utilisation nor panel weights), and skipping the Patient would make a
    refresh remove them from the store."""
    issues = [
        Issue(pid, BIRTH_IN_FUTURE, "recorded")
        for pid, patient in sorted(population.patients.items())
        if patient.birth_date is not None and patient.birth_date > as_of
    ]
    issues.extend(
        Issue(enc.id, ENCOUNTER_IN_FUTURE, "recorded")
        for enc in sorted(population.encounters, key=lambda e: e.id)
        if enc.day is not None and enc.day > as_of and enc.status not in NOT_YET_STATUSES
    )
    return issues


def add_future_date_issues(population: Population, as_of: date) -> None:
    """`future_date_issues` added to the population's issues (once, however often it is called),
    which stay sorted."""
    known = set(population.issues)
    new = [i for i in future_date_issues(population, as_of) if i not in known]
    if new:
        population.issues.extend(new)
        population.issues.sort(key=lambda i: (i.resource, i.problem))


def _newer(a: R, b: R) -> R:
    a_time: datetime | None = getattr(a, "last_updated", None)
    b_time: datetime | None = getattr(b, "last_updated", None)
    if a_time is not None and b_time is not None and a_time > b_time:
        return a
    return b


__all__ = [
    "READ_ORDER",
    "RESOURCE_TYPES",
    "PopulationBuilder",
    "add_future_date_issues",
    "configure_read",
    "encounter_floor",
    "future_date_issues",
    "read_order",
    "read_population",
    "read_window_months",
]
