"""What one pass produced: the population read and every result computed from it.

A plain container of domain results, so the layers below the pass (the report, the write-back,
the store's row mapping) can name it without importing the service that makes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from fhirpanel.domain.attribution import AttributionResult
from fhirpanel.domain.members import MemberList
from fhirpanel.domain.panels import OutreachItem, PanelSummary
from fhirpanel.domain.records import Population
from fhirpanel.domain.risk import RiskResult


@dataclass
class RunOutcome:
    as_of: date
    source: str
    population: Population
    attribution: AttributionResult
    risk: dict[str, RiskResult]
    panels: PanelSummary
    outreach: tuple[OutreachItem, ...]
    tier_distribution: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    members: MemberList | None = None  # the payer's list the risk-product step followed
