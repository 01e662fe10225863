"""The blended adjustment factor (docs/methods.md s.3.4): each metric over its practice mean,
weighted by `mappings/blend.toml`; hand-computed factors, the edge cases (a metric nobody has, a
patient without an HCC score, the practice means of a full run), the file and its checks, and
the blended panel size."""

from __future__ import annotations

from typing import Any

import pytest

from fhirpanel.domain.blend import METRICS, BlendWeights, blend_factors, practice_means
from fhirpanel.domain.panels import AgeSexWeights, compute_panels
from fhirpanel.domain.records import PatientRecord
from fhirpanel.domain.risk import RiskResult
from fhirpanel.errors import MappingError
from fhirpanel.tables.files import load_mapping_ref
from fhirpanel.tables.loader import parse_blend
from tests.unit.test_attribution import AS_OF, META, attribute, build, days_ago, doc, pid, visit
from tests.unit.test_panels import CAPACITY, person

EVEN = BlendWeights(age_sex=0.25, hcc=0.25, charlson=0.25, utilisation=0.25)


def metrics(**by_metric: dict[str, float | None]) -> dict[str, dict[str, float | None]]:
    return dict(by_metric)


def test_factors_are_weighted_metrics_over_their_practice_means() -> None:
    patients = ["a", "b"]
    values = metrics(
        age_sex={"a": 0.5, "b": 1.5},  # mean 1.0
        hcc={"a": 2.0, "b": 1.0},  # mean 1.5
        charlson={"a": 0.0, "b": 4.0},  # mean 2.0
        utilisation={"a": 1.0, "b": 1.0},  # mean 1.0
    )
    weights = BlendWeights(age_sex=0.4, hcc=0.3, charlson=0.15, utilisation=0.15)
    blend = blend_factors(patients, values, weights)
    assert blend.means == {"age_sex": 1.0, "hcc": 1.5, "charlson": 2.0, "utilisation": 1.0}
    a, b = blend.patients["a"], blend.patients["b"]
    assert a.as_dict() == pytest.approx(
        {"age_sex": 0.5, "hcc": 4 / 3, "charlson": 0.0, "utilisation": 1.0}
    )
    assert a.factor == pytest.approx(0.4 * 0.5 + 0.3 * 4 / 3 + 0.15 * 0.0 + 0.15 * 1.0)
    assert b.factor == pytest.approx(0.4 * 1.5 + 0.3 * 2 / 3 + 0.15 * 2.0 + 0.15 * 1.0)
    # the weights add up to 1, so the practice's mean factor is 1.0
    assert (a.factor + b.factor) / 2 == pytest.approx(1.0)
    assert blend.factor("nobody") == 1.0


def test_a_metric_nobody_has_and_a_missing_score_count_as_the_mean() -> None:
    values = metrics(
        age_sex={"a": 1.0, "b": 1.0},
        hcc={"a": 0.6, "b": None},  # b unscored: mean over a only; b counts 1.0
        charlson={"a": 0.0, "b": 0.0},  # mean 0: tells nothing apart
        utilisation={"a": 0.0, "b": 0.0},
    )
    blend = blend_factors(["a", "b"], values, EVEN)
    assert blend.means["hcc"] == 0.6
    assert blend.patients["b"].as_dict() == {m: 1.0 for m in METRICS}
    assert blend.patients["a"].factor == 1.0


def test_practice_means_from_a_full_run_are_used_as_given() -> None:
    values = metrics(age_sex={"a": 2.0}, hcc={"a": 2.0}, charlson={"a": 2.0}, utilisation={})
    means = {"age_sex": 1.0, "hcc": 4.0, "charlson": 1.0, "utilisation": 0.5}
    blend = blend_factors(["a"], values, EVEN, means=means)
    # utilisation unknown for "a": 1.0
    assert blend.patients["a"].as_dict() == {
        "age_sex": 2.0,
        "hcc": 0.5,
        "charlson": 2.0,
        "utilisation": 1.0,
    }
    assert practice_means(["a"], values)["utilisation"] == 0.0


def test_same_input_same_factors_whatever_the_order() -> None:
    values = metrics(
        age_sex={"a": 0.3, "b": 0.7, "c": 1.1},
        hcc={"c": 0.1, "a": 0.2, "b": 0.3},
        charlson={"b": 1.0, "a": 2.0, "c": 0.0},
        utilisation={"a": 3.0, "c": 0.0, "b": 1.0},
    )
    one = blend_factors(["a", "b", "c"], values, EVEN)
    two = blend_factors(["c", "a", "b"], values, EVEN)
    assert one == two


# --- the file ------------------------------------------------------------------------------------


def test_the_shipped_weights() -> None:
    weights = parse_blend(load_mapping_ref("blend"))
    assert weights == BlendWeights(age_sex=0.4, hcc=0.3, charlson=0.15, utilisation=0.15)


def shipped(**weights: Any) -> dict[str, Any]:
    base = {"age_sex": 0.4, "hcc": 0.3, "charlson": 0.15, "utilisation": 0.15}
    return {"meta": META, "weights": {**base, **weights}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (shipped(hcc=0.4), r"weights: must add up to 1 \(they add up to 1\.1\)$"),
        (shipped(hcc=1.5), r"weights\.hcc: Input should be less than or equal to 1 \(got 1\.5\)"),
        (shipped(hcc=-0.1), r"weights\.hcc: Input should be greater than or equal to 0"),
        (shipped(frailty=0.1), r"weights\.frailty: Extra inputs are not permitted"),
        ({"meta": META, "weights": {"age_sex": 1.0}}, r"weights\.hcc: Field required"),
    ],
)
def test_the_file_is_checked(data: dict[str, Any], message: str) -> None:
    with pytest.raises(MappingError, match=rf"^blend: {message}"):
        parse_blend(data)


def test_the_domain_refuses_a_negative_weight() -> None:
    with pytest.raises(MappingError, match=r"^weights\.charlson: must not be negative$"):
        BlendWeights(age_sex=0.6, hcc=0.3, charlson=-0.1, utilisation=0.2)


# --- the blended panel size ----------------------------------------------------------------------


def risk(patient: str, charlson: int, hcc: float | None, ed: int, inpatient: int) -> RiskResult:
    return RiskResult(
        patient=patient,
        charlson=charlson,
        charlson_categories=(),
        hcc=hcc,
        hccs=(),
        interactions=(),
        ed_visits=ed,
        inpatient_stays=inpatient,
        chronic_conditions=(),
        ccm_eligible=False,
        tier=1,
        tier_rule="default",
        basis_conditions=(),
    )


def test_blended_size_is_the_sum_of_the_panel_factors() -> None:
    pop = build(
        [
            visit("e1", pid(1), doc(1), days_ago(10)),
            visit("e2", pid(2), doc(1), days_ago(10)),
            visit("e3", pid(3), doc(2), days_ago(10)),
            visit("e4", pid(4), doc(2), days_ago(10)),
        ],
        [person(1, 70), person(2, 40), person(3, 40), PatientRecord(id=pid(4), active=False)],
    )
    scores = {
        pid(1): risk(pid(1), 3, 2.0, 1, 1),
        pid(2): risk(pid(2), 0, None, 0, 0),
        pid(3): risk(pid(3), 1, 1.0, 0, 1),
        pid(4): risk(pid(4), 9, 9.0, 9, 9),  # inactive: not in the practice's means
    }
    hcc = {p: r.hcc for p, r in scores.items() if r.hcc is not None}
    weights = AgeSexWeights(weights={("65-74", "female"): 2.0, ("30-44", "female"): 0.5})
    summary = compute_panels(
        pop, attribute(pop), AS_OF, CAPACITY, weights, hcc_scores=hcc, risk=scores, blend=EVEN
    )
    blend = summary.blend
    assert blend is not None and sorted(blend.patients) == [pid(1), pid(2), pid(3)]
    # age/sex 2.0, 0.5, 0.5 (mean 1.0); HCC 2.0, -, 1.0 (mean 1.5); Charlson 3, 0, 1 (mean 4/3);
    # utilisation 2, 0, 1 (mean 1.0)
    assert blend.means == pytest.approx(
        {"age_sex": 1.0, "hcc": 1.5, "charlson": 4 / 3, "utilisation": 1.0}
    )
    p1 = 0.25 * (2.0 + 2.0 / 1.5 + 3 / (4 / 3) + 2.0)
    p2 = 0.25 * (0.5 + 1.0 + 0.0 + 0.0)
    p3 = 0.25 * (0.5 + 1.0 / 1.5 + 1 / (4 / 3) + 1.0)
    assert blend.factor(pid(1)) == pytest.approx(p1)
    panels = summary.by_practitioner()
    assert panels[doc(1)].blended_size == pytest.approx(p1 + p2)
    assert panels[doc(2)].blended_size == pytest.approx(p3)  # p4 is inactive: no panel place
    assert p1 + p2 + p3 == pytest.approx(3.0)  # the mean factor over active patients is 1.0
    # without blend weights there is no blended size
    plain = compute_panels(pop, attribute(pop), AS_OF, CAPACITY, weights)
    assert plain.blend is None and plain.panels[0].blended_size is None
