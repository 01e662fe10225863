"""The `fhirpanel run --report` JSON document (stable keys, docs/architecture.md) and the terminal
summary a practice manager reads."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from fhirpanel.domain.attribution import Assignment, AttributionResult
from fhirpanel.domain.blend import Blend, PatientBlend
from fhirpanel.domain.capacity import YEAR_MONTHS, PracticeCapacity
from fhirpanel.domain.members import assigned_by_list
from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.domain.panels import Panel, Relative, median
from fhirpanel.domain.placement import CAPACITY, DECLARED_PCP, NO_ROOM, VISIT_HISTORY, Suggestion

REPORT_VERSION = 1


def patient_entry(assignment: Assignment, outcome: RunOutcome) -> dict[str, Any]:
    entry: dict[str, Any] = {"patient": assignment.patient, "status": assignment.status}
    if assignment.status == "excluded":
        entry["reason"] = assignment.reason
        return entry
    if assignment.status == "assigned":
        entry.update(
            {
                "practitioner": assignment.practitioner,
                "rule": assignment.rule,
                "step": assignment.step,
                "tie_broken": assignment.tie_broken,
            }
        )
        if assignment.practitioner_role:
            entry["practitioner_role"] = assignment.practitioner_role
        if assignment.sentinel_exam:
            entry["sentinel_exam"] = assignment.sentinel_exam
        if assignment.last_visit:
            entry["last_visit"] = assignment.last_visit.isoformat()
        entry["confirmation"] = assignment.confirmation
    else:
        entry["reason"] = assignment.reason
    entry["visits"] = dict(assignment.visits)
    entry["evidence"] = list(assignment.evidence)
    risk = outcome.risk.get(assignment.patient)
    if risk is not None:
        entry["risk"] = risk.as_report()
    blend = outcome.panels.blend
    if blend is not None and assignment.patient in blend.patients:
        entry["blend"] = _patient_blend(blend.patients[assignment.patient])
    return entry


def build_report(outcome: RunOutcome) -> dict[str, Any]:
    """The report as plain data. Deterministic: no clock, sorted throughout."""
    att = outcome.attribution
    panels = []
    for panel in outcome.panels.panels:
        doc = outcome.population.practitioners.get(panel.practitioner)
        item: dict[str, Any] = {
            "practitioner": panel.practitioner,
            "name": doc.name if doc else None,
            "size": panel.size,
            "risk_adjusted_size": round(panel.risk_adjusted_size, 1),
            "capacity": round(panel.capacity),
            "open_capacity": round(panel.open_capacity, 1),
            "tiers": {tier: n for tier, n in panel.tiers},
        }
        if panel.hcc_adjusted_size is not None:
            item["hcc_adjusted_size"] = round(panel.hcc_adjusted_size, 1)
        item.update(_capacity_figures(panel))
        if panel.blended_size is not None:
            item["blended_size"] = round(panel.blended_size, 1)
        item["relative"] = relative_entry(panel.relative)
        panels.append(item)
    blend = outcome.panels.blend
    patients = [patient_entry(a, outcome) for a in att.assignments]
    statuses = Counter(a.status for a in att.assignments)
    rules = Counter(a.rule for a in att.assignments if a.status == "assigned")
    elig = att.eligibility
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "as_of": outcome.as_of.isoformat(),
        "pipeline": att.pipeline,
        "summary": {
            "patients": len(att.assignments),
            "assigned": statuses.get("assigned", 0),
            "unassigned": statuses.get("unassigned", 0),
            "excluded": statuses.get("excluded", 0),
            "by_rule": dict(sorted((str(k), v) for k, v in rules.items())),
            "tie_broken": sum(1 for a in att.assignments if a.tie_broken),
            "resources_read": outcome.population.counts(),
            "issues": len(outcome.population.issues),
            "tiers": outcome.tier_distribution,
        },
        "eligibility": {
            "by_code": len(elig.by_code),
            "by_text": len(elig.by_text),
            "not_matched": len(elig.not_matched),
            "fallback_all_on_visits": elig.fallback_all_on_visits,
        },
        "patients": patients,
        "panels": panels,
        "capacity": _practice_capacity(outcome.panels.capacity),
        "blend": _blend(blend),
        "suggestions": [_suggestion(s) for s in outcome.panels.suggestions],
        "placement": [
            {
                "practitioner": c.practitioner,
                "size": c.size,
                "size_after": c.size_after,
                "risk_adjusted_size": round(c.load, 1),
                "risk_adjusted_size_after": round(c.load_after, 1),
                "capacity": round(c.capacity),
                "share_used": _share(c.share),
                "share_used_after": _share(c.share_after),
            }
            for c in outcome.panels.changes
        ],
        "outreach": [
            {
                "patient": o.patient,
                "practitioner": o.practitioner,
                "reasons": list(o.reasons),
                "last_visit": o.last_visit.isoformat() if o.last_visit else None,
                "last_sentinel_exam": (
                    o.last_sentinel_exam.isoformat() if o.last_sentinel_exam else None
                ),
            }
            for o in outcome.outreach
        ],
        "proposed_moves": _proposed_moves(att),
        "warnings": list(outcome.warnings),
        "issues": [i.as_dict() for i in outcome.population.issues],
    }
    if outcome.members is not None:
        report["summary"]["risk_product_list"] = _member_list(outcome)
    return report


def _member_list(outcome: RunOutcome) -> dict[str, Any]:
    """The payer's member list: what it held and how many patients it assigned (rule
    `risk-product`; the rest went through the pipeline's other steps)."""
    members = outcome.members
    assert members is not None  # noqa: S101 - checked by the caller
    return {
        "list": members.label,
        "entries": members.entries,
        "members": len(members.members),
        "assigned": assigned_by_list(outcome.attribution),
    }


def _proposed_moves(att: AttributionResult) -> dict[str, Any]:
    """Moves a current confirmation held back (docs/methods.md s.2.9): the patient stays, the
    move waits for a person. `dismissed_kept`: held patients whose same move was dismissed."""
    return {
        "count": len(att.proposed_moves),
        "dismissed_kept": len(att.dismissed_kept),
        "rows": [
            {
                "patient": m.patient,
                "from": m.from_practitioner,
                "to": m.to_practitioner,
                "rule": m.rule,
                "step": m.step,
                "visits": dict(m.visits),
                "evidence": list(m.evidence),
                "held_by": list(m.held_by),
            }
            for m in att.proposed_moves
        ],
    }


def _suggestion(s: Suggestion) -> dict[str, Any]:
    """One suggestion; `practitioner` null when no clinician has room (then `shortfall`)."""
    entry: dict[str, Any] = {
        "patient": s.patient,
        "practitioner": s.practitioner,
        "reason": s.reason,
        "basis": s.basis,
        "weight": round(s.weight, 3),
    }
    if s.shortfall is not None:
        entry["shortfall"] = round(s.shortfall, 1)
    return entry


def _share(share: float | None) -> float | None:
    return round(share, 3) if share is not None else None


def _round(value: float | None, digits: int) -> float | None:
    return round(value, digits) if value is not None else None


def _capacity_figures(panel: Panel) -> dict[str, Any]:
    """Supply, demand and how capacity was found (docs/methods.md s.3.2)."""
    return {
        "supply": _round(panel.supply, 1),
        "demand": _round(panel.demand, 3),
        "expected_visits": _round(panel.expected_visits, 1),
        "share_used": _share(panel.share_used),
        "capacity_method": panel.capacity_method,
        "capacity_basis": panel.capacity_basis,
    }


def relative_entry(relative: Relative | None) -> dict[str, Any] | None:
    """The panel against its peers (docs/methods.md s.3.6); None when not eligible."""
    if relative is None:
        return None
    return {
        "framework": relative.framework,
        "peers": relative.peers,
        "risk_adjusted_ratio": _round(relative.risk_adjusted_ratio, 3),
        "blended_ratio": _round(relative.blended_ratio, 3),
        "percentile": round(relative.percentile, 1),
        "blended_percentile": _round(relative.blended_percentile, 1),
    }


def _practice_capacity(capacity: PracticeCapacity | None) -> dict[str, Any] | None:
    if capacity is None:
        return None
    demand = capacity.demand
    return {
        "method": capacity.method,
        "requested": capacity.requested,
        "reason": capacity.reason,
        "window_months": YEAR_MONTHS,
        "encounters_from": (
            capacity.encounters_from.isoformat() if capacity.encounters_from else None
        ),
        "demand": {
            "visits": demand.visits,
            "patients": demand.patients,
            "patients_seen": demand.patients_seen,
            "per_patient": _round(demand.per_patient, 3),
            "per_patient_seen": _round(demand.per_patient_seen, 3),
        },
    }


def _patient_blend(blend: PatientBlend) -> dict[str, float]:
    """The factor and each metric over its practice mean (docs/methods.md s.3.4)."""
    return {
        "factor": round(blend.factor, 3),
        **{metric: round(value, 3) for metric, value in blend.as_dict().items()},
    }


def _blend(blend: Blend | None) -> dict[str, Any] | None:
    if blend is None:
        return None
    factors = sorted(p.factor for p in blend.patients.values())
    spread = (
        {
            "min": round(factors[0], 3),
            "median": round(median(factors), 3),
            "max": round(factors[-1], 3),
        }
        if factors
        else None
    )
    return {
        "weights": blend.weights.as_dict(),
        "means": {metric: round(mean, 4) for metric, mean in blend.means.items()},
        "patients": len(factors),
        "factors": spread,
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    tmp.replace(path)  # never leave a half-written report behind


def render_summary(report: dict[str, Any], source: str, console: Console) -> None:
    """Panels as a table, then the counts a practice manager checks first (from the report
    already built, so the run pays for it once)."""
    summary = report["summary"]
    console.print(
        f"[bold]fhirpanel[/bold] as of {report['as_of']} - pipeline {report['pipeline']} - "
        f"source {source}"
    )
    table = Table(
        title="Panels (vs peers: risk-adjusted size over the peers' median; T1-T4: patients per "
        "risk tier)",
        header_style="bold",
    )
    for column in (
        "Clinician",
        "Id",
        "Patients",
        "Risk-adj.",
        "Blended",
        "Capacity",
        "Open",
        "% used",
        "vs peers",
        "T1",
        "T2",
        "T3",
        "T4",
    ):
        table.add_column(
            column, justify="left" if column in ("Clinician", "Id") else "right", no_wrap=True
        )
    for panel in report["panels"]:
        capacity = panel["capacity"] or 0
        used = f"{100 * panel['risk_adjusted_size'] / capacity:.0f}%" if capacity else "-"
        tiers = panel["tiers"]
        blended = panel.get("blended_size")
        ratio = (panel.get("relative") or {}).get("risk_adjusted_ratio")
        table.add_row(
            panel["name"] or "-",
            panel["practitioner"].removeprefix("Practitioner/"),
            str(panel["size"]),
            f"{panel['risk_adjusted_size']:.1f}",
            f"{blended:.1f}" if blended is not None else "-",
            str(capacity),
            f"{panel['open_capacity']:.0f}",
            used,
            f"{ratio:.2f}x" if ratio is not None else "-",
            *(str(tiers.get(t, 0)) for t in ("1", "2", "3", "4")),
        )
    console.print(table)
    capacity = report.get("capacity")
    if capacity is not None:
        demand = capacity["demand"]
        if capacity["method"] == "observed":
            console.print(
                f"Capacity: observed over {capacity['window_months']} months, "
                f"{demand['per_patient']} visits per patient-year "
                f"({demand['visits']:,} visits / {demand['patients']:,} active patients)"
            )
        else:
            why = f" ({capacity['reason']})" if capacity["reason"] else ""
            console.print(f"Capacity: configured{why}")
    by_rule = ", ".join(f"{k} {v}" for k, v in summary["by_rule"].items()) or "none"
    console.print(
        f"Patients: {summary['patients']}  assigned {summary['assigned']}  "
        f"unassigned {summary['unassigned']}  excluded {summary['excluded']}  "
        f"(tie-broken, to review: {summary['tie_broken']})"
    )
    console.print(f"Assigned by: {by_rule}")
    listed = summary.get("risk_product_list")
    if listed is not None:
        console.print(
            f"Risk-product list {listed['list']}: {listed['members']} members of "
            f"{listed['entries']} entries; patients it assigned: {listed['assigned']}"
        )
    elig = report["eligibility"]
    console.print(
        f"Clinicians eligible by code {elig['by_code']}, by text {elig['by_text']}, "
        f"not matched {elig['not_matched']}"
    )
    tiers = summary["tiers"]
    console.print(
        "Tiers (assigned patients): "
        + ", ".join(f"{t}: {tiers.get(t, 0)}" for t in ("1", "2", "3", "4"))
    )
    bases = Counter(s["basis"] for s in report["suggestions"])
    console.print(
        f"Outreach: {len(report['outreach'])} patients to contact; "
        f"suggestions for unassigned: {len(report['suggestions'])} (named PCP "
        f"{bases[DECLARED_PCP]}, seen before {bases[VISIT_HISTORY]}, most room "
        f"{bases[CAPACITY]}, no room {bases[NO_ROOM]})"
    )
    moves = report.get("proposed_moves") or {}
    if moves.get("count"):
        console.print(
            f"Proposed moves: {moves['count']} confirmed patients the rules would move, kept "
            "for a person to accept or dismiss"
        )
    read = ", ".join(f"{k} {v}" for k, v in summary["resources_read"].items())
    console.print(f"Read: {read}; {summary['issues']} input issues recorded")
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
