"""The blended factor of children (pediatric framework: no HCC in their blend), pinned where
mutation testing found it loose: a child's blend names the child, the patients after a child
are still blended, and panels pass their children to the blend."""

from __future__ import annotations

import dataclasses

import pytest

from fhirpanel.domain.blend import BlendWeights, blend_factors
from fhirpanel.domain.panels import AgeSexWeights, compute_panels
from tests.unit.test_attribution import AS_OF, attribute, build, days_ago, doc, pid, visit
from tests.unit.test_blend import risk
from tests.unit.test_panels import CAPACITY, person

WEIGHTS = BlendWeights(age_sex=0.4, hcc=0.3, charlson=0.2, utilisation=0.1)


def test_a_childs_blend_names_the_child_and_the_patients_after_it_are_blended() -> None:
    metrics: dict[str, dict[str, float | None]] = {
        "age_sex": {"a": 2.0, "b": 1.0},
        "hcc": {"a": 3.0, "b": 1.0},
    }
    blend = blend_factors(["b", "a"], metrics, WEIGHTS, without_hcc={"a"})
    assert list(blend.patients) == ["a", "b"]
    child, adult = blend.patients["a"], blend.patients["b"]
    assert (child.patient, child.dropped, adult.patient, adult.dropped) == ("a", ("hcc",), "b", ())
    # a: age/sex 2.0 / 1.5 with weight 0.4 of the 0.7 left, the other metrics at the mean (1.0).
    assert child.factor == pytest.approx((0.4 * 2.0 / 1.5 + 0.3 * 1.0) / 0.7)
    assert adult.factor == pytest.approx(0.4 * 1.0 / 1.5 + 0.3 * 1.0 / 2.0 + 0.2 + 0.1)


def test_panels_leave_hcc_out_of_a_childs_blend() -> None:
    pop = build(
        [visit("e1", pid(1), doc(1), days_ago(10)), visit("e2", pid(2), doc(1), days_ago(10))],
        [person(1, 8), person(2, 40)],
    )
    child = dataclasses.replace(risk(pid(1), 0, 3.0, 0, 0), framework="pediatric")
    scores = {pid(1): child, pid(2): risk(pid(2), 0, 1.0, 0, 0)}
    summary = compute_panels(
        pop, attribute(pop), AS_OF, CAPACITY, AgeSexWeights(weights={}), risk=scores, blend=WEIGHTS
    )
    assert summary.blend is not None
    assert summary.blend.patients[pid(1)].dropped == ("hcc",)
    assert summary.blend.patients[pid(2)].dropped == ()
