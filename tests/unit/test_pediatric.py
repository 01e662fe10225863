"""Adult and pediatric frameworks (issue 18, item 5): a child is scored with the Pediatric Medical
Complexity Algorithm and never with CMS-HCC, tiers follow the child's framework, the blend drops
the HCC part for a child, and pediatric-only clinicians are compared with pediatric peers."""

from __future__ import annotations

import dataclasses
from datetime import date
from typing import Any

import pytest

from fhirpanel.domain.blend import BlendWeights, blend_factors
from fhirpanel.domain.panels import ADULT, PEDIATRIC, relative_to_peers
from fhirpanel.domain.pediatric import (
    COMPLEX,
    NO_CHRONIC,
    NON_COMPLEX,
    PediatricComplexity,
    body_system,
)
from fhirpanel.domain.tiers import TierMetrics
from fhirpanel.errors import MappingError
from fhirpanel.tables.files import load_mapping_ref
from fhirpanel.tables.loader import parse_pediatric, parse_tier_rules
from tests.unit.test_attribution import doc
from tests.unit.test_panels import sized
from tests.unit.test_risk import BORN_72, DEFAULT, encounter, icd, patient, score_one

BORN_10 = date(2016, 5, 1)  # 10 on the as-of date
PMCA = parse_pediatric(load_mapping_ref("pediatric_complexity"))
TIERS = parse_tier_rules(load_mapping_ref("tiers"))
DIABETES_ASTHMA = [icd("Condition/c1", "E10.9"), icd("Condition/c2", "J45.909")]


def child(**kwargs: Any) -> Any:
    return score_one(kwargs.pop("conditions"), pat=patient(born=BORN_10), **kwargs)


# --------------------------------------------------------------------------- PMCA


def test_a_ten_year_old_with_diabetes_and_asthma_is_complex_chronic_with_no_hcc() -> None:
    result = child(conditions=DIABETES_ASTHMA)
    assert result.framework == PEDIATRIC
    assert result.hcc is None and result.hccs == ()
    assert result.hcc_note == "pediatric framework: no CMS-HCC under 18"
    assert result.complexity is not None
    assert result.complexity.category == COMPLEX  # two body systems
    assert result.complexity.systems == ("endo", "pulresp")
    report = result.as_report()
    assert (report["framework"], report["complexity"], report["complexity_systems"]) == (
        "pediatric",
        "complex-chronic",
        ["endo", "pulresp"],
    )
    assert report["hcc"] is None
    assert (result.tier, result.tier_rule) == (3, "pediatric-high: pmca>=2")


def test_asthma_alone_is_non_complex_and_nothing_listed_is_no_chronic_disease() -> None:
    asthma = child(conditions=[icd("Condition/c2", "J45.909")])
    assert asthma.complexity is not None and asthma.complexity.category == NON_COMPLEX
    assert (asthma.tier, asthma.tier_rule) == (2, "pediatric-rising: pmca>=1")
    cold = child(conditions=[icd("Condition/c3", "J06.9")])
    assert cold.complexity is not None and cold.complexity.category == NO_CHRONIC
    assert (cold.tier, cold.tier_rule) == (1, "default")


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (["E84.0"], COMPLEX),  # cystic fibrosis: progressive, one system
        (["C91.00"], COMPLEX),  # leukaemia: a malignancy
        (["Q25"], COMPLEX),  # a whole code listed as progressive
        (["Q25.1"], NON_COMPLEX),  # Q25.1 is a prefix of the non-progressive list
        (["F90.0"], NON_COMPLEX),  # ADHD: mental health, one system
        (["J45.909", "J45.20"], NON_COMPLEX),  # one system twice
        ([], NO_CHRONIC),
    ],
)
def test_pmca_categories(codes: list[str], expected: str) -> None:
    normalised = [c.replace(".", "") for c in codes]
    assert PMCA.classify(normalised).category == expected


def test_an_adult_is_unchanged_and_scored_with_hcc() -> None:
    adult = score_one(DIABETES_ASTHMA, pat=patient(born=BORN_72))
    assert adult.framework == ADULT
    assert adult.complexity is None
    assert adult.hcc is not None and "HCC38" in adult.hccs
    no_framework = score_one(
        DIABETES_ASTHMA, pat=patient(born=BORN_72), cfg=dataclasses.replace(DEFAULT, pediatric=None)
    )
    assert dataclasses.replace(no_framework) == adult  # the framework changes nothing for adults
    assert "complexity" not in adult.as_report()


def test_age_18_on_the_as_of_date_is_an_adult_and_17_a_child() -> None:
    eighteen = score_one(DIABETES_ASTHMA, pat=patient(born=date(2008, 11, 22)))
    seventeen = score_one(DIABETES_ASTHMA, pat=patient(born=date(2008, 11, 23)))
    assert (eighteen.framework, seventeen.framework) == (ADULT, PEDIATRIC)
    assert eighteen.hcc is not None and seventeen.hcc is None
    assert PMCA.framework(None) == ADULT  # no birth date: adult, and HCC says why it has none


# --------------------------------------------------------------------------- tiers per framework


def test_tiers_follow_the_framework() -> None:
    metrics = TierMetrics(hcc=None, charlson=0, ed=0, inpatient=1, chronic=0, pmca=2)
    assert TIERS.assign(metrics, PEDIATRIC) == (4, "pediatric-complex: inpatient>=1 & pmca>=2")
    # the same figures through the adult rules: the stay makes it high, pmca is never read
    assert TIERS.assign(metrics, ADULT) == (3, "high: inpatient>=1")
    adult = TierMetrics(hcc=2.0, charlson=0, ed=0, inpatient=0, chronic=0)
    assert TIERS.assign(adult, ADULT) == (3, "high: hcc>=1.6")
    child_with_hcc = dataclasses.replace(adult, pmca=0)
    assert TIERS.assign(child_with_hcc, PEDIATRIC) == (1, "default")  # hcc is no pediatric metric


def test_a_child_with_emergency_visits_rises_a_tier() -> None:
    visits = [encounter(f"e{n}", "EMER", date(2026, 6, n + 1)) for n in range(2)]
    result = child(conditions=[], encounters=visits)
    assert (result.tier, result.tier_rule) == (3, "pediatric-high: ed>=2")


def test_without_pediatric_rules_children_go_through_the_adult_rules() -> None:
    plain = dataclasses.replace(TIERS, pediatric_rules=())
    metrics = TierMetrics(hcc=None, charlson=0, ed=0, inpatient=1, chronic=0, pmca=2)
    assert plain.assign(metrics, PEDIATRIC) == (3, "high: inpatient>=1")


def test_pediatric_tier_rules_are_checked_like_the_adult_ones() -> None:
    data = load_mapping_ref("tiers")
    bad = {
        **data,
        "pediatric": {
            **data["pediatric"],
            "rules": [{"tier": 7, "name": "x", "any": [{"ed_gte": 1}]}],
        },
    }
    with pytest.raises(MappingError, match=r"pediatric.rules\[1\].tier: must be one of"):
        parse_tier_rules(bad)
    twice = {"tier": 2, "name": "same", "any": [{"pmca_gte": 1}]}
    dup = {**data, "pediatric": {**data["pediatric"], "rules": [twice, twice]}}
    with pytest.raises(MappingError, match=r"pediatric.rules: rule names must be unique"):
        parse_tier_rules(dup)


# --------------------------------------------------------------------------- the mapping file


def test_the_pmca_file_is_checked() -> None:
    data = load_mapping_ref("pediatric_complexity")
    assert len(PMCA.systems) == 18 and PMCA.adult_age == 18
    malign = next(s for s in PMCA.systems if s.key == "malign")
    assert malign.malignant and sum(s.malignant for s in PMCA.systems) == 1
    wrong = {**data, "framework": {**data["framework"], "malignancy": "cancer"}}
    with pytest.raises(MappingError, match=r"framework.malignancy: 'cancer' is not"):
        parse_pediatric(wrong)
    with pytest.raises(MappingError, match=r"is not a dot-less ICD-10-CM code"):
        PediatricComplexity((body_system("x", "X", ["E11.9"]),))
    with pytest.raises(MappingError, match=r"lists a code twice"):
        PediatricComplexity((body_system("x", "X", ["E11", "E11"]),))
    with pytest.raises(MappingError, match=r"appears twice"):
        PediatricComplexity((body_system("x", "X", ["E11"]), body_system("x", "Y", ["J45"])))
    with pytest.raises(MappingError, match=r"lists no code"):
        PediatricComplexity((body_system("x", "X"),))


# --------------------------------------------------------------------------- blend and peers


def test_a_childs_blend_drops_hcc_and_renormalises_the_other_weights() -> None:
    weights = BlendWeights(age_sex=0.25, hcc=0.5, charlson=0.25, utilisation=0.0)
    metrics: dict[str, dict[str, float | None]] = {
        "age_sex": {"a": 1.0, "c": 3.0},
        "hcc": {"a": 2.0, "c": None},
        "charlson": {"a": 1.0, "c": 1.0},
        "utilisation": {"a": 0.0, "c": 0.0},
    }
    blend = blend_factors(["a", "c"], metrics, weights, without_hcc={"c"})
    # means: age_sex 2, hcc 2 (the adult only), charlson 1
    assert blend.patients["a"].factor == pytest.approx(0.25 * 0.5 + 0.5 * 1.0 + 0.25 * 1.0)
    # the child: (0.25 * 1.5 + 0.25 * 1.0) / 0.5, no HCC part at all
    assert blend.patients["c"].factor == pytest.approx(1.25)
    assert "hcc" not in blend.patients["c"].as_dict()
    assert "hcc" in blend.patients["a"].as_dict()
    only_hcc = BlendWeights(age_sex=0.0, hcc=1.0, charlson=0.0, utilisation=0.0)
    assert blend_factors(["a", "c"], metrics, only_hcc, without_hcc={"c"}).factor("c") == 1.0


def test_pediatric_clinicians_are_compared_with_pediatric_peers() -> None:
    panels = [sized(1, 10.0), sized(2, 30.0), sized(5, 4.0), sized(6, 8.0)]
    eligible = [doc(n) for n in (1, 2, 5, 6)]
    got = relative_to_peers(panels, eligible, pediatric_only=[doc(5), doc(6)])
    assert (got[doc(5)].framework, got[doc(5)].peers) == (PEDIATRIC, 2)
    assert got[doc(5)].risk_adjusted_ratio == pytest.approx(4.0 / 6.0)  # pediatric median 6
    assert got[doc(1)].risk_adjusted_ratio == pytest.approx(10.0 / 20.0)  # adult median 20
