"""CMS-HCC through hccinfhir: published figures, the cache against per-patient calls, settings."""

from __future__ import annotations

import random
from typing import Any

import pytest

from fhirpanel.domain.hcc import HccScorer, HccSettings, calculate_raf
from fhirpanel.errors import MappingError
from fhirpanel.tables import Tables
from fhirpanel.tables.files import load_mapping_ref
from fhirpanel.tables.loader import parse_hcc_settings


@pytest.fixture(scope="module")
def settings(tables: Tables) -> HccSettings:
    return tables.method.risk.hcc


def test_v28_72_year_old_woman(settings: HccSettings) -> None:
    # CNA, V28, 72F, E11.9 + I50.9 + N18.4:
    # F70-74 0.395 + HCC38 0.166 + HCC226 0.360 + HCC327 0.514
    #   + DIABETES_HF_V28 0.112 + HF_KIDNEY_V28 0.176 = 1.723
    score = HccScorer(settings).score(["E119", "I509", "N184"], 72, "F")
    assert score.risk_score == 1.723
    assert score.demographic_cell == "F70_74"
    assert [(h.name, h.coefficient) for h in score.hccs] == [
        ("HCC38", 0.166),
        ("HCC226", 0.36),
        ("HCC327", 0.514),
    ]
    assert score.hccs[1].label == "Heart Failure, Except End-Stage and Acute"
    assert score.interactions == (("DIABETES_HF_V28", 0.112), ("HF_KIDNEY_V28", 0.176))
    parts = 0.395 + sum(h.coefficient for h in score.hccs) + sum(v for _, v in score.interactions)
    assert round(parts, 3) == 1.723
    assert dict(score.dx_by_hcc) == {"38": ("E119",), "226": ("I509",), "327": ("N184",)}


def test_v24_same_patient(settings: HccSettings) -> None:
    # V24: F70-74 0.386 + HCC19 0.105 + HCC85 0.331 + HCC137 0.289
    #   + DIABETES_CHF 0.121 + HCC85_gRenal_V24 0.156 = 1.388
    score = HccScorer(settings, model="V24").score(["E119", "I509", "N184"], 72, "F")
    assert score.risk_score == 1.388
    assert score.hcc_names == ("HCC19", "HCC85", "HCC137")


def test_codes_without_an_hcc_do_not_change_the_key(settings: HccSettings) -> None:
    scorer = HccScorer(settings)
    # I10 and E78.5 map to no V28 HCC; they fall out of the canonical input
    assert scorer.relevant_codes(["I10", "E119", "E785", "E119"]) == ("E119",)
    first = scorer.score(["E119", "I10"], 72, "F")
    second = scorer.score(["E785", "E119"], 72, "F")
    assert first is second
    assert (scorer.hits, scorer.misses, scorer.cache_size) == (1, 1, 1)


def test_no_hcc_codes_scores_demographics_only(settings: HccSettings) -> None:
    score = HccScorer(settings).score(["I10"], 72, "F")
    assert score.risk_score == 0.395  # the F70-74 cell alone
    assert score.hccs == () and score.interactions == ()


def test_under_65_gets_a_score_from_the_disabled_cell(settings: HccSettings) -> None:
    # The model is for Medicare; fhirpanel still scores everyone as a relative index.
    score = HccScorer(settings).score([], 30, "M")
    assert score.demographic_cell == "M0_34"
    assert score.risk_score > 0


def test_segment_changes_the_cell_coefficients(settings: HccSettings) -> None:
    community = HccScorer(settings, segment="CNA").score(["E119"], 72, "F")
    full_dual = HccScorer(settings, segment="CFA").score(["E119"], 72, "F")
    assert community.demographic_cell == full_dual.demographic_cell == "F70_74"
    assert community.risk_score != full_dual.risk_score


def test_matches_a_direct_library_call(settings: HccSettings) -> None:
    direct = calculate_raf(
        ["E1122", "I4891", "J449"],
        model_name="CMS-HCC Model V28",
        age=81,
        sex="M",
        dual_elgbl_cd="00",
        orec="0",
        crec="0",
        new_enrollee=False,
    )
    ours = HccScorer(settings).score(["J449", "E1122", "I4891"], 81, "M")
    assert ours.risk_score == round(direct.risk_score, 6)
    assert {h.hcc for h in ours.hccs} == {h for h in direct.hcc_list if direct.coefficients.get(h)}


# Codes across the catalogue and beyond: HCC and non-HCC, hierarchies (E11.22 over E11.9,
# N18.6 over N18.4), age/sex edits, interactions.
CODE_POOL = (
    "I10",
    "E785",
    "E119",
    "E1122",
    "E109",
    "I509",
    "N1830",
    "N184",
    "N186",
    "J449",
    "J45909",
    "I4891",
    "I2510",
    "I252",
    "F329",
    "F331",
    "G309",
    "M069",
    "M179",
    "E669",
    "E6601",
    "I639",
    "I739",
    "E039",
    "C3490",
    "C7800",
    "C50919",
    "C61",
    "B20",
    "B182",
    "K7460",
    "K279",
    "J069",
    "F1020",
    "F209",
    "G20A1",
    "O0900",
    "Z3400",
    "D571",
)


def test_cache_gives_identical_scores_to_per_patient_calls(settings: HccSettings) -> None:
    rng = random.Random(2026)
    for model in ("V28", "V24"):
        scorer = HccScorer(settings, model=model)
        patients = []
        for _ in range(600):
            codes = rng.sample(CODE_POOL, rng.randint(0, 7))
            patients.append((codes, rng.randint(0, 100), rng.choice("MF")))
        patients += patients[:200]  # repeats hit the cache
        for codes, age, sex in patients:
            assert scorer.score(codes, age, sex) == scorer.score_uncached(codes, age, sex), (
                model,
                codes,
                age,
                sex,
            )
        assert scorer.hits >= 200
        assert scorer.cache_size == scorer.misses


def _risk(**changes: Any) -> dict[str, Any]:
    """risk.toml's data with its [hcc] table changed."""
    data = load_mapping_ref("risk")
    return {**data, "hcc": {**data["hcc"], **changes}}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # what the settings check (HccSettings)
        ({"model": "V99"}, r"unknown HCC model 'V99'; configured: \['V24', 'V28'\]"),
        ({"segment": "XYZ"}, r"unknown HCC segment 'XYZ'"),
        ({"payment_year": 2025}, r"hcc\.payment_year: 2025 not available"),
        (
            {"models": {"V28": "RxHCC Model V08"}},
            r"hcc\.models\.V28: must name a CMS-HCC model: 'RxHCC Model V08'",
        ),
        # the file's shape (schemas)
        ({"sex": {"male": "1"}}, r"hcc\.sex\.male: Input should be 'M' or 'F' \(got '1'\)"),
        (
            {"segments": {"CNA": {"label": "x", "dual_elgbl_cd": "00"}}},
            r"hcc\.segments\.CNA\.orec: Field required; hcc\.segments\.CNA\.crec: Field required",
        ),
        ({"payment_year": "2026"}, r"hcc\.payment_year: Input should be a valid integer"),
    ],
)
def test_invalid_hcc_settings_are_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(MappingError, match=rf"^risk: {message}"):
        parse_hcc_settings(_risk(**changes))


def test_sex_codes(settings: HccSettings) -> None:
    assert settings.sex_code("female") == "F"
    assert settings.sex_code("male") == "M"
    assert settings.sex_code("other") is None
    assert settings.sex_code("unknown") is None
    assert settings.sex_code(None) is None
