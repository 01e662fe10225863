"""The monthly snapshot (docs/methods.md s.8.2): panels, their sizes and tiers frozen as of a
month's last day, as St. Luke's reviewed panels monthly and paid relative to peers.

The snapshot of a month is computed from what was on record on its last day only
(`validation.population_on`), so data dated later (a late-arriving encounter of the next month)
does not change a closed month. Its content is canonical (sorted keys, floats rounded, no time of
the run inside), so a rerun on the same data gives the same bytes. Pure.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from fhirpanel.domain.outcome import RunOutcome
from fhirpanel.domain.validation import canonical, canonical_json
from fhirpanel.errors import ConfigError

SNAPSHOT_VERSION = 1
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def parse_month(text: str) -> tuple[int, int]:
    """`YYYY-MM` as (year, month); a usage error otherwise."""
    match = _MONTH.match(text.strip())
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1:
        raise ConfigError(f"not a month (YYYY-MM): {text!r}")
    return int(match.group(1)), int(match.group(2))


def month_end(year: int, month: int) -> date:
    return date(year, month, calendar.monthrange(year, month)[1])


def is_closed(year: int, month: int, today: date) -> bool:
    """A month is closed once its last day is before `today`."""
    return month_end(year, month) < today


def freeze(outcome: RunOutcome, month: str) -> dict[str, Any]:
    """The snapshot's content: each clinician's panel (size, the age/sex-adjusted, HCC-adjusted
    and blended sizes, capacity, tiers, against peers), the practice's totals and each active
    patient's assignment and tier. Canonical: floats rounded (`validation.canonical`)."""
    panels = []
    for panel in outcome.panels.panels:
        relative = panel.relative
        panels.append(
            {
                "practitioner": panel.practitioner,
                "size": panel.size,
                "risk_adjusted_size": panel.risk_adjusted_size,
                "hcc_adjusted_size": panel.hcc_adjusted_size,
                "blended_size": panel.blended_size,
                "capacity": panel.capacity,
                "tiers": dict(panel.tiers),
                "relative": None
                if relative is None
                else {
                    "framework": relative.framework,
                    "peers": relative.peers,
                    "risk_adjusted_ratio": relative.risk_adjusted_ratio,
                    "blended_ratio": relative.blended_ratio,
                    "percentile": relative.percentile,
                },
            }
        )
    patients = {}
    counts: dict[str, int] = {}
    for assignment in sorted(outcome.attribution.assignments, key=lambda a: a.patient):
        counts[assignment.status] = counts.get(assignment.status, 0) + 1
        if assignment.status == "excluded":
            continue
        risk = outcome.risk.get(assignment.patient)
        patients[assignment.patient] = {
            "status": assignment.status,
            "practitioner": assignment.practitioner,
            "rule": assignment.rule,
            "tier": risk.tier if risk is not None else None,
        }
    content = {
        "version": SNAPSHOT_VERSION,
        "month": month,
        "as_of": outcome.as_of.isoformat(),
        "counts": dict(sorted(counts.items())),
        "tiers": dict(outcome.tier_distribution),
        "panels": sorted(panels, key=lambda p: str(p["practitioner"])),
        "patients": patients,
    }
    return canonical(content)  # type: ignore[no-any-return]


def snapshot_bytes(content: Mapping[str, Any]) -> bytes:
    """The snapshot file's bytes (canonical JSON)."""
    return canonical_json(content).encode()


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """How two snapshots of one month differ, in counts people can read: assignment counts,
    tier counts, panel sizes and the patients whose assignment or tier changed."""
    lines = []
    for key in ("counts", "tiers"):
        a, b = old.get(key, {}), new.get(key, {})
        for name in sorted(set(a) | set(b)):
            if a.get(name, 0) != b.get(name, 0):
                lines.append(f"{key[:-1]} {name}: {a.get(name, 0)} -> {b.get(name, 0)}")
    sizes_a = {p["practitioner"]: p["size"] for p in old.get("panels", [])}
    sizes_b = {p["practitioner"]: p["size"] for p in new.get("panels", [])}
    for who in sorted(set(sizes_a) | set(sizes_b)):
        if sizes_a.get(who, 0) != sizes_b.get(who, 0):
            lines.append(f"panel {who}: {sizes_a.get(who, 0)} -> {sizes_b.get(who, 0)} patients")
    pa, pb = old.get("patients", {}), new.get("patients", {})
    moved = sum(1 for p in set(pa) & set(pb) if pa[p] != pb[p])
    if moved or set(pa) != set(pb):
        lines.append(
            f"patients: {moved} changed, {len(set(pb) - set(pa))} added, "
            f"{len(set(pa) - set(pb))} removed"
        )
    if not lines and old != new:
        lines.append("panel sizes or ratios differ (same counts)")
    return lines
