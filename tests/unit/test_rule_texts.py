"""Every rule and step code the attribution can produce has words for people
(`fhirpanel.domain.texts`): the codes are enumerated from the domain itself (its Literal types,
its step kinds, the rule names its source hands to a decision) and from every pipeline file, so a
new rule or step without a text fails here."""

from __future__ import annotations

import ast
import inspect
import tomllib
from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from fhirpanel.domain import attribution, texts
from fhirpanel.domain.attribution import STEP_KINDS, FourCutDecision, Pipeline, PipelineStep

PIPELINES = sorted((Path(__file__).resolve().parents[2] / "mappings" / "pipelines").glob("*.toml"))


def rules_in_source() -> set[str]:
    """Rule names written into `_Choice(...)` (third argument) and `FourCutDecision(...)`
    (second) anywhere in the attribution package."""
    sources = sorted(Path(inspect.getfile(attribution)).parent.glob("*.py"))
    assert len(sources) > 1  # the package's modules, not only its __init__
    nodes = [node for path in sources for node in ast.walk(ast.parse(path.read_text()))]
    found: set[str] = set()
    for node in nodes:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        position = {"_Choice": 2, "FourCutDecision": 1}.get(node.func.id)
        if position is None or len(node.args) <= position:
            continue
        arg = node.args[position]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            found.add(arg.value)
    return found


def domain_rules() -> set[str]:
    four_cut = set(get_args(get_type_hints(FourCutDecision)["rule"]))
    # The other step kinds decide under their own name (`rule == step.kind`).
    return four_cut | (set(STEP_KINDS) - {"four-cut"}) | rules_in_source()


def test_the_enumeration_finds_the_known_rules() -> None:
    # A guard on the enumeration itself: an AST or typing change must not make it empty.
    assert {
        "single-provider",
        "plurality",
        "sentinel-exam",
        "last-visit",
        "declared-pcp",
        "risk-product",
        "manual",
    } <= domain_rules()
    assert {"risk-product", "declared-pcp", "manual"} <= rules_in_source()


@pytest.mark.parametrize("rule", sorted(domain_rules()))
def test_every_rule_has_a_label_and_a_text(rule: str) -> None:
    assert rule in texts.RULES, f"rule {rule!r} has no text in fhirpanel/domain/texts.py"
    assert texts.rule_label(rule) not in ("", rule)
    assert texts.rule_text(rule).endswith(".") and len(texts.rule_text(rule)) > 20


def test_no_text_for_a_rule_the_domain_cannot_produce() -> None:
    assert set(texts.RULES) <= domain_rules()


def test_unknown_or_missing_rules_show_as_they_are() -> None:
    assert texts.rule_label(None) == "–" and texts.rule_text(None) == ""
    assert texts.rule_label("new-rule") == "new-rule"
    assert texts.rule_text("new-rule") == "new-rule"


@pytest.mark.parametrize("kind", STEP_KINDS)
def test_every_step_kind_has_a_text(kind: str) -> None:
    step = PipelineStep(kind=kind, window_months=18 if kind == "four-cut" else None)  # type: ignore[arg-type]
    assert texts.parse_step(step.name) == step
    assert texts.step_text(step.name) not in ("", step.name)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_pipeline_step_has_a_text(path: Path) -> None:
    # The steps as written in the file, into the domain's own types (which check them).
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    pipeline = Pipeline(
        data["name"],
        tuple(
            PipelineStep(kind=row["kind"], window_months=row.get("window_months"))
            for row in data["steps"]
        ),
    )
    assert pipeline.steps
    for step in pipeline.steps:
        parsed = texts.parse_step(step.name)  # a name keeps a four-cut window only
        assert parsed is not None and (parsed.kind, parsed.name) == (step.kind, step.name)
        text = texts.step_text(step.name)
        assert text and text != step.name, f"{path.name}: step {step.name} has no text"
        if step.window_months is not None and step.kind == "four-cut":
            assert f"{step.window_months} months" in text


def test_pipelines_exist() -> None:
    assert {p.stem for p in PIPELINES} >= {"mgma", "case_study_1", "case_study_2", "case_study_3"}


def test_step_texts() -> None:
    assert texts.step_text("four-cut-18m") == "Four Cut method, visits in the last 18 months"
    assert texts.step_text("risk-product") == "Payer's member list for a risk-based product"
    for unknown in ("four-cut-m", "four-cut-x1m", "four-cut", "later", ""):
        assert texts.parse_step(unknown) is None
        assert texts.step_text(unknown) == unknown
    assert texts.step_text(None) == ""


def test_outreach_texts() -> None:
    assert texts.outreach_text("not-seen-12m") == "Not seen in 12 months"
    assert texts.outreach_text("no-sentinel-24m") == "No check-up in 24 months"
    assert texts.outreach_text("no-sentinel-m") == "no-sentinel-m"
    assert texts.outreach_text("elsewhere") == "elsewhere"
