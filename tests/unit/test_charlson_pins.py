"""Charlson behaviour that mutation testing (`make mutation`) showed no test pinned: age bands that
share a boundary year, one-year bands, a prefix listed twice, a code as long as its prefix, a
prefix in two categories, and what a result reports."""

from __future__ import annotations

from typing import Any

import pytest

from fhirpanel.domain.charlson import AgeBand, CharlsonCategory, CharlsonTable
from fhirpanel.errors import MappingError


def _table(
    bands: tuple[AgeBand, ...] = (),
    *,
    categories: tuple[tuple[str, tuple[str, ...], int], ...] = (
        ("chf", ("I50",), 1),
        ("diab", ("E11",), 1),
        ("diabwc", ("E112",), 2),
        ("zero", ("Z99",), 0),
    ),
    hierarchy: tuple[tuple[str, str], ...] = (("diab", "diabwc"),),
) -> CharlsonTable:
    return CharlsonTable.create(
        weight_sets=["w"],
        categories=[
            (CharlsonCategory(key, key.upper(), prefixes), {"w": weight})
            for key, prefixes, weight in categories
        ],
        hierarchy=hierarchy,
        age_bands=bands,
    )


@pytest.mark.parametrize(
    "bands",
    [
        (AgeBand(50, 60, 1), AgeBand(60, 69, 2)),  # 60 in both
        (AgeBand(60, 69, 2), AgeBand(50, 60, 1)),  # the same, listed in the other order
        (AgeBand(50, None, 1), AgeBand(90, None, 2)),  # an open band before another
    ],
)
def test_age_bands_that_share_a_year_are_refused(bands: tuple[AgeBand, ...]) -> None:
    with pytest.raises(MappingError):
        _table(bands)


def test_adjacent_and_one_year_bands_are_accepted_and_sorted() -> None:
    table = _table((AgeBand(60, 69, 2), AgeBand(50, 59, 1), AgeBand(70, 70, 3)))
    assert [b.min_age for b in table.age_bands] == [50, 60, 70]
    assert [table.age_points(age) for age in (49, 50, 59, 60, 69, 70, 71)] == [0, 1, 1, 2, 2, 3, 0]


def test_a_band_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(MappingError):
        _table((AgeBand(50, 49, 1),))


def test_a_prefix_listed_twice_in_a_category_is_refused() -> None:
    with pytest.raises(MappingError):
        _table(categories=(("chf", ("I50", "I50"), 1),), hierarchy=())


def test_a_hierarchy_naming_an_unknown_category_is_refused_on_either_side() -> None:
    with pytest.raises(MappingError):
        _table(hierarchy=(("diab", "nope"),))
    with pytest.raises(MappingError):
        _table(hierarchy=(("nope", "diab"),))


def test_a_code_exactly_as_long_as_its_prefix_matches() -> None:
    table = _table()
    assert table.categories_for_code("I50") == ("chf",)
    assert table.categories_for_code("I5") == ()
    # The same code twice (the cache) gives the same answer.
    assert table.categories_for_code("E1122") == ("diab", "diabwc")
    assert table.categories_for_code("E1122") == ("diab", "diabwc")


def test_a_prefix_in_two_categories_counts_for_both() -> None:
    table = _table(
        categories=(("a", ("I50",), 1), ("b", ("I50", "J44"), 2)),
        hierarchy=(),
    )
    result = table.score(["I509"], "w")
    assert result.score == 3
    assert [(h.key, h.weight, h.codes) for h in result.hits] == [
        ("a", 1, ("I509",)),
        ("b", 2, ("I509",)),
    ]


def test_the_result_reports_hits_in_table_order_dropped_categories_and_codes() -> None:
    table = _table()
    result = table.score(["Z991", "E1122", "I509", "E119", "I500"], "w")
    # diab is dropped next to diabwc; zero weighs nothing but is still a hit.
    assert [h.key for h in result.hits] == ["chf", "diabwc", "zero"]
    assert result.hits[0].codes == ("I500", "I509")
    assert result.dropped == ("diab",)
    assert result.score == 3
    assert result.scoring_categories == ("chf", "diabwc")
    assert result.codes == frozenset({"I500", "I509", "E1122"})


def test_age_points_only_when_asked() -> None:
    table = _table((AgeBand(50, 59, 1),))
    kwargs: dict[str, Any] = {"age": 55}
    assert table.score(["I50"], "w", **kwargs).score == 1
    with_age = table.score(["I50"], "w", with_age_points=True, **kwargs)
    assert (with_age.score, with_age.age_points) == (2, 1)
    assert table.score(["I50"], "w", age=None, with_age_points=True).age_points == 0
