"""Testing the risk method on the practice's own history (docs/methods.md s.8), and the frozen
monthly snapshot of panels, sizes and tiers.

Validation: every patient is scored as of a baseline date (the as-of date minus 12 months) from
what was on record on that day only (`population_on`), and each score is compared with what
happened in the following 12 months: emergency visits and inpatient stays in (baseline, as-of].
The statistics are the usual ones for a risk score's discrimination and calibration:

- the c-statistic (area under the ROC curve) of each metric against "any emergency visit or
  inpatient stay in the next 12 months", computed as the Mann-Whitney U over the two groups with
  tied scores counted as half (Hanley & McNeil, Radiology 1982;143:29-36);
- the share of next-year events, and of patients, in tiers 3-4 (how much of the coming
  utilisation the care-management tiers would have reached);
- calibration by decile: patients ordered by the metric (ties by patient id), cut into ten
  groups of near-equal size, each with its mean score and its observed rate.

Pure and deterministic: sorted inputs, integer rank sums, no clock.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhirpanel.domain.dates import age_on, months_before
from fhirpanel.domain.records import ConditionRecord, Population
from fhirpanel.domain.risk import RiskResult, UtilisationRules

HORIZON_MONTHS = 12  # the paper's "prior-year utilisation", forward: the next 12 months
HIGH_TIERS = (3, 4)
DECILES = 10
ADULT_AGE = 18  # CMS-HCC is a Medicare (adult) model: children are left out of its c-statistic
# Clinical statuses that say the condition ended; one that ended after the baseline was still
# going on the baseline date.
ENDED_STATUSES = frozenset({"inactive", "remission", "resolved"})
# The metrics compared, in the order tables and plots show them.
METRICS: tuple[str, ...] = ("charlson", "hcc", "utilisation", "blended", "tier")
METRIC_LABELS = {
    "charlson": "Charlson index",
    "hcc": "CMS-HCC score (adults)",
    "utilisation": "Prior-year ED + inpatient",
    "blended": "Blended factor",
    "tier": "Tier",
}
FLOAT_DECIMALS = 6  # canonical JSON: every float rounded to this many places


# --- the record as it stood on a day ------------------------------------------------------------


def condition_known_on(condition: ConditionRecord, day: date) -> bool:
    """On record on `day`: recorded on or before it (else, without a recorded date, an onset on
    or before it). A Condition with neither date cannot be placed in time and is kept."""
    known = condition.recorded or condition.onset
    return known is None or known <= day


def condition_as_of(condition: ConditionRecord, day: date) -> ConditionRecord:
    """The Condition as it stood on `day`: one that ended (abatement) after that day was still
    active then, whatever its status says now."""
    if (
        condition.abatement is not None
        and condition.abatement > day
        and condition.clinical_status in ENDED_STATUSES
    ):
        return dataclasses.replace(condition, clinical_status="active", abatement=None)
    return condition


def population_on(population: Population, day: date) -> Population:
    """A new population holding only what was on record on `day` (the original is not changed):

    - encounters that started on or before `day` (undated ones cannot be placed: left out);
    - Conditions known on `day` (`condition_known_on`), ended ones as they stood then
      (`condition_as_of`);
    - patients born on or before `day`; one who died after `day` was alive on it.

    Clinicians, roles and organisations are kept as they are: their history is not in the data.
    """
    patients = {}
    for pid, patient in population.patients.items():
        if patient.birth_date is not None and patient.birth_date > day:
            continue
        if patient.deceased_date is not None and patient.deceased_date > day:
            patient = dataclasses.replace(patient, deceased=False, deceased_date=None)
        patients[pid] = patient
    encounters = [e for e in population.encounters if e.day is not None and e.day <= day]
    conditions = [
        condition_as_of(c, day) for c in population.conditions if condition_known_on(c, day)
    ]
    return Population(
        patients=patients,
        encounters=encounters,
        conditions=conditions,
        practitioners=dict(population.practitioners),
        roles=dict(population.roles),
        organizations=dict(population.organizations),
        issues=list(population.issues),
    )


def baseline_of(as_of: date) -> date:
    """The scoring date: `as_of` minus 12 months (day clamped to the month's end)."""
    return months_before(as_of, HORIZON_MONTHS)


def next_year_events(
    population: Population, patients: Iterable[str], as_of: date, rules: UtilisationRules
) -> dict[str, tuple[int, int]]:
    """(emergency visits, inpatient stays) of each patient that started in (as_of - 12 months,
    as_of], counted by the same rules as prior-year utilisation (statuses, classes)."""
    horizon = dataclasses.replace(rules, lookback_months=HORIZON_MONTHS)
    wanted = set(patients)
    by_patient: dict[str, list[Any]] = {p: [] for p in wanted}
    for enc in population.encounters:
        if enc.patient in wanted:
            by_patient[enc.patient].append(enc)
    return {p: horizon.count(by_patient[p], as_of) for p in sorted(wanted)}


def risk_metrics(
    population: Population,
    risk: Mapping[str, RiskResult],
    patients: Iterable[str],
    baseline: date,
    blended: Mapping[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Each metric's score per patient (of `patients`; a patient without a value for a metric is
    left out of that metric): Charlson, CMS-HCC (adults on the baseline date only), prior-year
    emergency visits plus inpatient stays, the blended factor (when given) and the tier."""
    out: dict[str, dict[str, float]] = {m: {} for m in METRICS}
    for pid in sorted(set(patients)):
        result = risk.get(pid)
        if result is None:
            continue
        out["charlson"][pid] = float(result.charlson)
        patient = population.patients.get(pid)
        age = age_on(patient.birth_date if patient else None, baseline)
        if result.hcc is not None and age is not None and age >= ADULT_AGE:
            out["hcc"][pid] = result.hcc
        out["utilisation"][pid] = float(result.ed_visits + result.inpatient_stays)
        out["tier"][pid] = float(result.tier)
        if blended is not None and pid in blended:
            out["blended"][pid] = blended[pid]
    if blended is None:
        del out["blended"]
    return out


# --- statistics ---------------------------------------------------------------------------------


def c_statistic(scores: Sequence[float], outcomes: Sequence[bool]) -> float | None:
    """The probability that a patient with the outcome scores higher than one without (ties
    count half): the Mann-Whitney U over n1 * n0. None when either group is empty."""
    if len(scores) != len(outcomes):
        raise ValueError("scores and outcomes differ in length")
    positives = sum(1 for o in outcomes if o)
    negatives = len(outcomes) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    # Twice the mid-rank of each tied run (ranks from 1): first + last position, an integer.
    doubled_rank_sum = 0
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        doubled = (start + 1) + (end + 1)
        doubled_rank_sum += doubled * sum(1 for i in order[start : end + 1] if outcomes[i])
        start = end + 1
    # U = R1 - n1(n1+1)/2, all doubled to stay in integers.
    doubled_u = doubled_rank_sum - positives * (positives + 1)
    return doubled_u / (2 * positives * negatives)


@dataclass(frozen=True)
class Decile:
    decile: int  # 1 (lowest scores) .. 10
    patients: int
    mean_score: float
    observed_rate: float  # share with any emergency visit or inpatient stay next year
    events_per_patient: float  # next-year emergency visits plus inpatient stays, per patient

    def as_dict(self) -> dict[str, Any]:
        return {
            "decile": self.decile,
            "patients": self.patients,
            "mean_score": _round(self.mean_score),
            "observed_rate": _round(self.observed_rate),
            "events_per_patient": _round(self.events_per_patient),
        }


def decile_table(
    scores: Mapping[str, float], events: Mapping[str, int], groups: int = DECILES
) -> tuple[Decile, ...]:
    """Patients ordered by score (ties by patient id) and cut into `groups` of near-equal size
    (patient k of n goes to group floor(k * groups / n)); empty groups (fewer patients than
    groups) are left out. `events`: each patient's next-year events (absent = none)."""
    ordered = sorted(scores, key=lambda p: (scores[p], p))
    n = len(ordered)
    members: list[list[str]] = [[] for _ in range(groups)]
    for k, pid in enumerate(ordered):
        members[k * groups // n].append(pid)
    out = []
    for index, group in enumerate(members, start=1):
        if not group:
            continue
        counts = [events.get(p, 0) for p in group]
        out.append(
            Decile(
                decile=index,
                patients=len(group),
                mean_score=math.fsum(scores[p] for p in group) / len(group),
                observed_rate=sum(1 for c in counts if c > 0) / len(group),
                events_per_patient=sum(counts) / len(group),
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class MetricValidation:
    metric: str
    patients: int  # with a value for this metric
    with_outcome: int  # of them, with any next-year emergency visit or inpatient stay
    c_statistic: float | None
    deciles: tuple[Decile, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "label": METRIC_LABELS.get(self.metric, self.metric),
            "patients": self.patients,
            "with_outcome": self.with_outcome,
            "c_statistic": None if self.c_statistic is None else _round(self.c_statistic),
            "deciles": [d.as_dict() for d in self.deciles],
        }


@dataclass(frozen=True)
class TierCapture:
    """How much of next year's utilisation tiers 3-4 held."""

    patients: int
    high_tier_patients: int
    events: int  # next-year emergency visits plus inpatient stays, everyone
    high_tier_events: int

    @property
    def patient_share(self) -> float | None:
        return self.high_tier_patients / self.patients if self.patients else None

    @property
    def event_share(self) -> float | None:
        return self.high_tier_events / self.events if self.events else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tiers": list(HIGH_TIERS),
            "patients": self.patients,
            "high_tier_patients": self.high_tier_patients,
            "patient_share": _round_or_none(self.patient_share),
            "events": self.events,
            "high_tier_events": self.high_tier_events,
            "event_share": _round_or_none(self.event_share),
        }


def tier_capture(tiers: Mapping[str, int], events: Mapping[str, int]) -> TierCapture:
    """The share of next-year events (and of patients) in tiers 3-4, over the patients with a
    tier."""
    high = [p for p in tiers if tiers[p] in HIGH_TIERS]
    return TierCapture(
        patients=len(tiers),
        high_tier_patients=len(high),
        events=sum(events.get(p, 0) for p in tiers),
        high_tier_events=sum(events.get(p, 0) for p in high),
    )


@dataclass(frozen=True)
class ValidationResult:
    as_of: date  # the end of the outcome year
    baseline: date  # the scoring date, 12 months earlier
    patients: int  # the cohort: the practice's patients on the baseline date
    with_outcome: int
    ed_visits: int  # next-year totals over the cohort
    inpatient_stays: int
    metrics: tuple[MetricValidation, ...]
    capture: TierCapture

    def c_statistics(self) -> dict[str, float | None]:
        return {m.metric: m.c_statistic for m in self.metrics}

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "baseline": self.baseline.isoformat(),
            "horizon_months": HORIZON_MONTHS,
            "outcome": "any emergency visit or inpatient stay in (baseline, as_of]",
            "patients": self.patients,
            "with_outcome": self.with_outcome,
            "outcome_rate": _round_or_none(
                self.with_outcome / self.patients if self.patients else None
            ),
            "ed_visits": self.ed_visits,
            "inpatient_stays": self.inpatient_stays,
            "metrics": [m.as_dict() for m in self.metrics],
            "tier_capture": self.capture.as_dict(),
        }


def validate(
    as_of: date,
    metrics: Mapping[str, Mapping[str, float]],
    outcomes: Mapping[str, tuple[int, int]],
) -> ValidationResult:
    """The statistics over the cohort (the keys of `outcomes`: patient -> next-year (emergency
    visits, inpatient stays)); `metrics`: metric -> patient -> baseline score."""
    events = {p: ed + ip for p, (ed, ip) in outcomes.items()}
    results = []
    for metric in [m for m in METRICS if m in metrics] + sorted(set(metrics) - set(METRICS)):
        values = {p: v for p, v in metrics[metric].items() if p in events}
        ordered = sorted(values)
        flags = [events[p] > 0 for p in ordered]
        results.append(
            MetricValidation(
                metric=metric,
                patients=len(ordered),
                with_outcome=sum(flags),
                c_statistic=c_statistic([values[p] for p in ordered], flags),
                deciles=decile_table(values, events) if values else (),
            )
        )
    tiers = {p: int(v) for p, v in metrics.get("tier", {}).items() if p in events}
    return ValidationResult(
        as_of=as_of,
        baseline=baseline_of(as_of),
        patients=len(outcomes),
        with_outcome=sum(1 for e in events.values() if e > 0),
        ed_visits=sum(ed for ed, _ in outcomes.values()),
        inpatient_stays=sum(ip for _, ip in outcomes.values()),
        metrics=tuple(results),
        capture=tier_capture(tiers, events),
    )


# --- the calibration plot ------------------------------------------------------------------------

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 780, 360, 56, 270, 24, 44


def calibration_svg(result: ValidationResult) -> str:
    """An SVG line chart, written by hand: the observed next-year rate (y) in each decile (x)
    of each metric, one line per metric, with the cohort's overall rate as a dashed line. A
    metric that separates well rises from left to right."""
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    peak = max(
        [d.observed_rate for m in result.metrics for d in m.deciles] + [0.0],
    )
    top = max(0.1, math.ceil(peak * 10) / 10)

    def x(decile: float) -> float:
        return _LEFT + (decile - 1) * plot_w / (DECILES - 1)

    def y(rate: float) -> float:
        return _TOP + plot_h - rate / top * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" font-family="sans-serif" font-size="11">',
        "<title>Observed next-year ED or inpatient rate by decile of each risk metric</title>",
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#999"/>',
    ]
    for step in range(round(top * 10) + 1):
        rate = step / 10
        parts.append(
            f'<line x1="{_LEFT}" y1="{y(rate):.1f}" x2="{_LEFT + plot_w}" y2="{y(rate):.1f}" '
            'stroke="#eee"/>'
            f'<text x="{_LEFT - 6}" y="{y(rate) + 4:.1f}" text-anchor="end">{rate:.1f}</text>'
        )
    for decile in range(1, DECILES + 1):
        parts.append(
            f'<text x="{x(decile):.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle">'
            f"{decile}</text>"
        )
    parts.append(
        f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_H - 8}" text-anchor="middle">'
        "decile of the metric (1 = lowest)</text>"
        f'<text x="14" y="{_TOP + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_TOP + plot_h / 2:.1f})">observed rate</text>'
    )
    if result.patients:
        overall = result.with_outcome / result.patients
        parts.append(
            f'<line x1="{_LEFT}" y1="{y(overall):.1f}" x2="{_LEFT + plot_w}" '
            f'y2="{y(overall):.1f}" stroke="#666" stroke-dasharray="4 3"/>'
        )
    legend_y = _TOP + 14 + len(result.metrics) * 18
    parts.append(
        f'<line x1="{_W - _RIGHT + 12}" y1="{legend_y - 4}" x2="{_W - _RIGHT + 30}" '
        f'y2="{legend_y - 4}" stroke="#666" stroke-dasharray="4 3"/>'
        f'<text x="{_W - _RIGHT + 34}" y="{legend_y}">all patients</text>'
    )
    for index, metric in enumerate(result.metrics):
        colour = _COLOURS[index % len(_COLOURS)]
        points = " ".join(f"{x(d.decile):.1f},{y(d.observed_rate):.1f}" for d in metric.deciles)
        if points:
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        label = METRIC_LABELS.get(metric.metric, metric.metric)
        c = "n/a" if metric.c_statistic is None else f"{metric.c_statistic:.2f}"
        ly = _TOP + 14 + index * 18
        parts.append(
            f'<line x1="{_W - _RIGHT + 12}" y1="{ly - 4}" x2="{_W - _RIGHT + 30}" y2="{ly - 4}" '
            f'stroke="{colour}" stroke-width="2"/>'
            f'<text x="{_W - _RIGHT + 34}" y="{ly}">{_escape(label)} (c={c})</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- canonical JSON -----------------------------------------------------------------------------


def canonical(value: Any) -> Any:
    """Floats rounded to FLOAT_DECIMALS (integral ones kept as floats), recursively; for output
    whose bytes must not depend on float noise."""
    if isinstance(value, float):
        return _round(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """Sorted keys, two-space indent, floats fixed by `canonical`, a final newline."""
    return json.dumps(canonical(value), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def _round(value: float) -> float:
    rounded = round(value, FLOAT_DECIMALS)
    return 0.0 if rounded == 0 else rounded  # no "-0.0"


def _round_or_none(value: float | None) -> float | None:
    return None if value is None else _round(value)
