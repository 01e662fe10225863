"""Charlson index: Quan 2005 categories, both weight sets, the hierarchy and age points."""

from __future__ import annotations

from typing import Any

import pytest

from fhirpanel.domain.charlson import CharlsonTable
from fhirpanel.errors import MappingError
from fhirpanel.tables import Tables
from fhirpanel.tables.loader import parse_charlson


@pytest.fixture(scope="module")
def table(tables: Tables) -> CharlsonTable:
    return tables.method.risk.charlson


def test_diabetes_heart_failure_ckd4_charlson_1987(table: CharlsonTable) -> None:
    # E11.9 diab 1 + I50.9 chf 1 + N18.4 rend 2 = 4 (Charlson 1987 weights)
    result = table.score(["E119", "I509", "N184"], "charlson1987")
    assert result.score == 4
    assert result.scoring_categories == ("chf", "diab", "rend")
    assert {h.key: h.codes for h in result.hits} == {
        "chf": ("I509",),
        "diab": ("E119",),
        "rend": ("N184",),
    }


def test_age_points_at_72(table: CharlsonTable) -> None:
    # 4 comorbidity points + 3 for age 70-79 (Charlson 1994) = 7
    result = table.score(["E119", "I509", "N184"], "charlson1987", age=72, with_age_points=True)
    assert (result.score, result.age_points) == (7, 3)
    # age points are off unless asked for
    assert table.score(["E119", "I509", "N184"], "charlson1987", age=72).score == 4


def test_quan_2011_weights(table: CharlsonTable) -> None:
    # Quan 2011: diab 0 + chf 2 + rend 1 = 3; diab still listed as present but adds nothing
    result = table.score(["E119", "I509", "N184"], "quan2011")
    assert result.score == 3
    assert result.scoring_categories == ("chf", "rend")
    assert "diab" in {h.key for h in result.hits}


def test_complicated_diabetes_drops_plain_diabetes(table: CharlsonTable) -> None:
    # E11.22 diabwc 2; E11.9 diab 1 is dropped by the hierarchy -> 2, not 3
    result = table.score(["E1122", "E119"], "charlson1987")
    assert result.score == 2
    assert result.dropped == ("diab",)
    assert result.scoring_categories == ("diabwc",)


def test_metastasis_drops_primary_cancer(table: CharlsonTable) -> None:
    # C78.00 metacanc 6; C34.90 canc 2 is dropped -> 6, not 8
    result = table.score(["C7800", "C3490"], "charlson1987")
    assert result.score == 6
    assert result.dropped == ("canc",)
    assert table.score(["C7800", "C3490"], "quan2011").score == 6


def test_severe_liver_drops_mild_liver(table: CharlsonTable) -> None:
    # K74.60 mld 1; I85.00 varices msld 3 -> 3 (1987); Quan 2011 msld 4
    assert table.score(["K7460", "I8500"], "charlson1987").score == 3
    assert table.score(["K7460", "I8500"], "quan2011").score == 4
    assert table.score(["K7460"], "charlson1987").score == 1


def test_hiv_weights(table: CharlsonTable) -> None:
    # B20 AIDS/HIV: 6 in Charlson 1987, 4 in Quan 2011 (the reference file, Quan 2011 Table 2)
    assert table.score(["B20"], "charlson1987").score == 6
    assert table.score(["B20"], "quan2011").score == 4


def test_prefix_match_is_on_the_start_of_dotless_codes(table: CharlsonTable) -> None:
    assert table.categories_for_code("I252") == ("ami",)  # old MI: I25.2
    assert table.categories_for_code("I2510") == ()  # coronary atherosclerosis is not Charlson
    assert table.categories_for_code("N1830") == ("rend",)  # N18 prefix
    assert table.categories_for_code("E11") == ()  # shorter than every E11x prefix
    assert table.categories_for_code("J45909") == ("copd",)
    assert table.categories_for_code("C44") == ()  # non-melanoma skin is not "any malignancy"


def test_each_code_counts_once_per_category(table: CharlsonTable) -> None:
    # two CKD codes are still one renal category
    result = table.score(["N184", "N1830", "N186"], "charlson1987")
    assert result.score == 2
    assert result.hits[0].codes == ("N1830", "N184", "N186")


def test_maximum_quan_2011_score_is_24(table: CharlsonTable) -> None:
    one_code_per_category = [c.prefixes[0] + "0" for c in table.categories]
    assert len(one_code_per_category) == 17
    # after the hierarchy (diab, mld, canc dropped) Quan 2011 sums to 24
    assert table.score(one_code_per_category, "quan2011").score == 24
    # Charlson 1987: all weights sum to 33; minus the dropped diab 1, mld 1, canc 2 = 29
    weights = table.weights["charlson1987"]
    expected = sum(weights.values()) - weights["diab"] - weights["mld"] - weights["canc"]
    assert table.score(one_code_per_category, "charlson1987").score == expected == 29


@pytest.mark.parametrize(
    ("age", "points"),
    [
        (None, 0),
        (0, 0),
        (49, 0),
        (50, 1),
        (59, 1),
        (60, 2),
        (69, 2),
        (70, 3),
        (79, 3),
        (80, 4),
        (104, 4),
    ],
)
def test_age_point_bands(table: CharlsonTable, age: int | None, points: int) -> None:
    assert table.age_points(age) == points


def test_no_codes_scores_zero(table: CharlsonTable) -> None:
    result = table.score([], "quan2011", age=85, with_age_points=True)
    assert (result.score, result.hits, result.age_points) == (4, (), 4)
    assert table.score(["I10", "E785"], "charlson1987").score == 0


def test_unknown_weight_set_is_a_mapping_error(table: CharlsonTable) -> None:
    with pytest.raises(MappingError, match="unknown weight set"):
        table.score(["E119"], "elixhauser")


def _minimal(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "meta": {"source": "test", "version": "1"},
        "weight_sets": {"a": "A"},
        "categories": [
            {"key": "x", "label": "X", "icd10_prefixes": ["E11"], "weights": {"a": 1}},
            {"key": "y", "label": "Y", "icd10_prefixes": ["E112"], "weights": {"a": 2}},
        ],
        "hierarchy": [{"drop": "x", "when": "y"}],
        "age_points": [{"min_age": 50, "max_age": 59, "points": 1}],
    }
    data.update(changes)
    return data


def test_minimal_table_loads() -> None:
    table = parse_charlson(_minimal())
    # E11.22 hits both x (E11) and y (E112); x is dropped -> 2
    assert table.score(["E1122"], "a").score == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"weight_sets": {}}, r"weight_sets: Dictionary should have at least 1 item"),
        ({"categories": []}, r"categories: List should have at least 1 item"),
        (
            {
                "categories": [
                    {"key": "x", "label": "X", "icd10_prefixes": ["E11"], "weights": {"b": 1}}
                ]
            },
            r"categories\[1\]\.weights: x needs a weight for each of \['a'\]",
        ),
        (
            {
                "categories": [
                    {"key": "x", "label": "X", "icd10_prefixes": ["E1.1"], "weights": {"a": 1}}
                ]
            },
            r"categories\[1\]\.icd10_prefixes: 'E1\.1' is not a dot-less ICD-10 prefix",
        ),
        (
            {
                "categories": [
                    {"key": "x", "label": "X", "icd10_prefixes": ["E11"], "weights": {"a": -1}}
                ]
            },
            r"categories\[1\]\.weights\.a: Input should be greater than or equal to 0",
        ),
        (
            {"hierarchy": [{"drop": "x", "when": "zz"}]},
            r"hierarchy\[1\]: unknown category in x / zz",
        ),
        (
            {
                "age_points": [
                    {"min_age": 50, "max_age": 59, "points": 1},
                    {"min_age": 55, "points": 2},
                ]
            },
            r"age_points: bands overlap",
        ),
        (
            {"age_points": [{"min_age": 50, "max_age": 40, "points": 1}]},
            r"age_points\[1\]: max_age 40 is below min_age",
        ),
    ],
)
def test_invalid_tables_are_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(MappingError, match=rf"^charlson_quan2005: {message}"):
        parse_charlson(_minimal(**changes))


def test_duplicate_category_is_rejected() -> None:
    category = {"key": "x", "label": "X", "icd10_prefixes": ["E11"], "weights": {"a": 1}}
    with pytest.raises(MappingError, match=r"categories\[2\]: category 'x' appears twice"):
        parse_charlson(_minimal(categories=[category, category], hierarchy=[]))
