"""PMCA body systems (domain/pediatric.py) on hand-built systems: a code matches by its whole
code or a prefix, progressive lists win over plain ones, and the category follows (mutation
testing found `BodySystem.match` pinned only through the shipped file)."""

from __future__ import annotations

import pytest

from fhirpanel.domain.pediatric import (
    COMPLEX,
    NO_CHRONIC,
    NON_COMPLEX,
    Complexity,
    PediatricComplexity,
    body_system,
)
from fhirpanel.errors import MappingError

LUNG = body_system(
    "lung", "Respiratory", prefixes=["J45"], codes=["E840"], progressive_codes=["J84"]
)
HEART = body_system("heart", "Cardiac", progressive_prefixes=["I27"], codes=["Q21"])


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("J45", (True, False)),  # a prefix, itself
        ("J4520", (True, False)),  # a prefix's child code
        ("E840", (True, False)),  # a whole code
        ("E8401", (False, False)),  # a whole code is not a prefix
        ("J84", (True, True)),  # a progressive whole code
        ("J841", (False, False)),
        ("Z00", (False, False)),
    ],
)
def test_a_code_matches_by_whole_code_or_prefix(code: str, expected: tuple[bool, bool]) -> None:
    assert LUNG.match(code) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("I270", (True, True)),
        ("I27", (True, True)),
        ("Q21", (True, False)),
        ("I26", (False, False)),
    ],
)
def test_a_progressive_prefix_marks_the_code_progressive(
    code: str, expected: tuple[bool, bool]
) -> None:
    assert HEART.match(code) == expected


def test_a_progressive_listing_wins_over_a_plain_one_in_the_same_system() -> None:
    both = body_system("b", "Both", prefixes=["G40"], progressive_codes=["G401"])
    assert both.match("G401") == (True, True)
    assert both.match("G402") == (True, False)


def test_the_category_of_codes_in_hand_built_systems() -> None:
    pmca = PediatricComplexity((LUNG, HEART))
    assert pmca.classify([]) == Complexity(NO_CHRONIC)
    assert pmca.classify(["Z00", "E8401"]) == Complexity(NO_CHRONIC)
    assert pmca.classify(["J4520"]) == Complexity(NON_COMPLEX, ("lung",))
    assert pmca.classify(["J84"]) == Complexity(COMPLEX, ("lung",), progressive=True)
    assert pmca.classify(["Q21", "J45"]) == Complexity(COMPLEX, ("lung", "heart"))
    # Asked twice (the second time from its cache), a code gives the same answer.
    assert (
        pmca.classify(["I270"])
        == pmca.classify(["I270"])
        == Complexity(COMPLEX, ("heart",), progressive=True)
    )


def test_a_malignancy_alone_is_complex_and_says_so() -> None:
    cancer = body_system("cancer", "Malignancy", prefixes=["C91"], malignant=True)
    pmca = PediatricComplexity((LUNG, cancer))
    assert pmca.classify(["C910"]) == Complexity(COMPLEX, ("cancer",), malignant=True)
    assert pmca.classify(["C910"]).malignant is True
    # A malignant system that is not involved makes nothing malignant.
    assert pmca.classify(["J45"]) == Complexity(NON_COMPLEX, ("lung",))


def test_a_body_system_built_without_flags_is_not_malignant_and_keeps_its_label() -> None:
    system = body_system("k", "Kidney", prefixes=["N18"])
    assert (system.key, system.label, system.malignant) == ("k", "Kidney", False)


def test_the_pmca_systems_are_checked_with_their_place_named() -> None:
    with pytest.raises(MappingError, match="systems: at least one body system is needed"):
        PediatricComplexity(())
    with pytest.raises(MappingError, match=r"framework\.adult_age: must be at least 1"):
        PediatricComplexity((LUNG,), adult_age=0)
    assert PediatricComplexity((LUNG,), adult_age=1).framework(0) == "pediatric"
    bad_code = body_system("x", "X", codes=["E84.0"])
    with pytest.raises(MappingError, match=r"^systems\[2\]\.codes: 'E84\.0' is not"):
        PediatricComplexity((LUNG, bad_code))
    bad_progressive = body_system("y", "Y", progressive_codes=["j84"])
    with pytest.raises(MappingError, match=r"^systems\[1\]\.progressive_codes: 'j84' is not"):
        PediatricComplexity((bad_progressive,))
