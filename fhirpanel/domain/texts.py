"""The attribution codes in words for people: a label and an explanation for every rule
`attribution` can decide by, the text of every pipeline step, and the outreach reasons. They sit
beside the rules so a new rule or step comes with its words (`tests/unit/test_rule_texts.py`
fails for a code without them); the dashboard shows them. Tier labels are data, not code: they
stay in `mappings/tiers.toml` (`TierRules.labels`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from fhirpanel.domain.attribution import STEP_KINDS, PipelineStep, StepKind
from fhirpanel.domain.confirmations import CONFIRMED


@dataclass(frozen=True)
class RuleText:
    label: str  # a few words, for a table cell
    text: str  # how the rule decided, one or two sentences


# Keyed by `Assignment.rule`: the Four Cut cuts, and the non-Four-Cut step kinds, which decide
# under their own name.
RULES: Mapping[str, RuleText] = {
    "single-provider": RuleText(
        "Only clinician seen",
        "Every qualifying visit in the look-back window was with this clinician (Four Cut, cut 1).",
    ),
    "plurality": RuleText(
        "Seen most often",
        "Most qualifying visits in the look-back window were with this clinician "
        "(Four Cut, cut 2: plurality).",
    ),
    "sentinel-exam": RuleText(
        "Did the last check-up",
        "Visits were tied; this clinician did the most recent physical or wellness exam "
        "(Four Cut, cut 3: sentinel exam).",
    ),
    "last-visit": RuleText(
        "Seen last",
        "Visits were tied and no check-up decided; this clinician saw the patient last "
        "(Four Cut, cut 4).",
    ),
    "declared-pcp": RuleText(
        "Patient's named clinician",
        "The patient's record names this clinician as their primary-care clinician.",
    ),
    "risk-product": RuleText(
        "Payer's member list",
        "The payer's member list for a risk-based product places the patient with this "
        "clinician; the list is taken as given.",
    ),
    "manual": RuleText(
        "Override",
        "Assigned by hand at the request of the clinician, the patient, the family or staff; "
        "it holds until removed.",
    ),
    "confirmed": RuleText(
        "Confirmed, kept",
        "The clinician or the patient confirmed this assignment within the confirmation "
        "period; the rules would move the patient, so the move waits as a proposal for a "
        "person to accept or dismiss.",
    ),
}

# Keyed by `PipelineStep.kind`; a Four Cut step's text names its window.
STEPS: Mapping[str, str] = {
    "manual": "Override entered by hand, ahead of every pipeline step",
    "declared-pcp": "Primary-care clinician named in the patient's record",
    "risk-product": "Payer's member list for a risk-based product",
    "four-cut": "Four Cut method, visits in the last {months} months",
}
_FOUR_CUT_PREFIX, _MONTHS_SUFFIX = "four-cut-", "m"
_OUTREACH = {
    "not-seen": "Not seen in {months} months",
    "no-sentinel": "No check-up in {months} months",
}


def rule_label(rule: str | None) -> str:
    """The rule's label; an unknown code as it is, none as a dash."""
    found = RULES.get(rule or "")
    return found.label if found else (rule or "–")


def rule_text(rule: str | None) -> str:
    found = RULES.get(rule or "")
    return found.text if found else (rule or "")


def parse_step(name: str | None) -> PipelineStep | None:
    """The step a `PipelineStep.name` (`four-cut-18m`, `declared-pcp`) names (only a Four Cut
    step's name carries its window)."""
    if not name:
        return None
    if name in STEP_KINDS and name != "four-cut":
        return PipelineStep(kind=cast(StepKind, name))
    months = _months(name, _FOUR_CUT_PREFIX)
    return PipelineStep(kind="four-cut", window_months=months) if months else None


def step_text(step: str | None) -> str:
    """The step in words; an unknown name as it is."""
    if step == CONFIRMED:
        return "Kept by a current confirmation, ahead of the pipeline's steps"
    parsed = parse_step(step)
    if parsed is None or parsed.kind not in STEPS:
        return step or ""
    return STEPS[parsed.kind].format(months=parsed.window_months)


def outreach_text(reason: str) -> str:
    """`not-seen-12m` → `Not seen in 12 months` (`outreach_list`'s reasons)."""
    for kind, text in _OUTREACH.items():
        months = _months(reason, kind + "-")
        if months:
            return text.format(months=months)
    return reason


def _months(name: str, prefix: str) -> int | None:
    """`<prefix><digits>m` → the number, else None."""
    if not (name.startswith(prefix) and name.endswith(_MONTHS_SUFFIX)):
        return None
    digits = name[len(prefix) : -len(_MONTHS_SUFFIX)]
    return int(digits) if digits.isascii() and digits.isdigit() else None


__all__ = [
    "RULES",
    "STEPS",
    "RuleText",
    "outreach_text",
    "parse_step",
    "rule_label",
    "rule_text",
    "step_text",
]
