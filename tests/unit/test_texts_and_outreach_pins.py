"""Rule texts and outreach behaviour that mutation testing (`make mutation`) showed no test
pinned: the words for a known, an unknown and no rule; step names that are not a window; outreach
from an attribution that carries no visits, and past an unassigned patient."""

from __future__ import annotations

import dataclasses

import pytest

from fhirpanel.domain.attribution import PipelineStep
from fhirpanel.domain.outreach import outreach_list
from fhirpanel.domain.records import Population
from fhirpanel.domain.texts import RULES, parse_step, rule_label, rule_text
from tests.unit.test_attribution import (
    AS_OF,
    PREVENTIVE,
    attribute,
    build,
    days_ago,
    doc,
    pid,
    visit,
)
from tests.unit.test_attribution import (
    RULES as ATTRIBUTION_RULES,
)


def test_a_known_rule_has_its_words_and_an_unknown_one_is_shown_as_is() -> None:
    plurality = RULES["plurality"]
    assert (rule_label("plurality"), rule_text("plurality")) == (plurality.label, plurality.text)
    assert (rule_label("coin-toss"), rule_text("coin-toss")) == ("coin-toss", "coin-toss")
    assert (rule_label(None), rule_text(None)) == ("–", "")
    assert (rule_label(""), rule_text("")) == ("–", "")


@pytest.mark.parametrize("name", ["four-cut-18", "four-cut-m", "four-cut-x8m", "18m", "manual-3m"])
def test_a_step_name_without_a_window_in_months_is_not_a_four_cut_step(name: str) -> None:
    assert parse_step(name) is None


def test_step_names_parse_to_their_steps() -> None:
    assert parse_step("four-cut-18m") == PipelineStep("four-cut", 18)
    step = parse_step("declared-pcp")
    assert step is not None and (step.kind, step.window_months) == ("declared-pcp", None)
    assert parse_step(None) is None and parse_step("four-cut") is None


def _outreach_population() -> Population:
    return build(
        [
            visit("b1", pid(2), doc(1), days_ago(430)),  # last seen 14 months ago
            visit("c1", pid(3), doc(1), days_ago(30), types=(PREVENTIVE,)),  # up to date
        ],
        patients=[pid(1)],  # never seen: unassigned, and first by id
    )


def test_outreach_goes_on_past_an_unassigned_patient() -> None:
    pop = _outreach_population()
    result = attribute(pop)
    assert result.by_patient()[pid(1)].status == "unassigned"
    items = outreach_list(pop, result, AS_OF, ATTRIBUTION_RULES)
    assert [(i.patient, i.reasons) for i in items] == [
        (pid(2), ("not-seen-12m", "no-sentinel-24m"))
    ]


def test_outreach_finds_the_visits_itself_when_the_attribution_carries_none() -> None:
    pop = _outreach_population()
    result = attribute(pop)
    bare = dataclasses.replace(result, visits={})
    assert outreach_list(pop, bare, AS_OF, ATTRIBUTION_RULES) == outreach_list(
        pop, result, AS_OF, ATTRIBUTION_RULES
    )
    (item,) = outreach_list(pop, bare, AS_OF, ATTRIBUTION_RULES)
    assert item.last_visit == days_ago(430).date()
