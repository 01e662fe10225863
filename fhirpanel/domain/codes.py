"""Checks shared by every code list: the SNOMED CT check digit."""

from __future__ import annotations

# Verhoeff dihedral-group D5 tables: SNOMED CT identifiers end in a Verhoeff check digit
# (SNOMED CT Technical Implementation Guide, "Check-digit").
_MULTIPLY = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)


def _positions() -> tuple[tuple[int, ...], ...]:
    """The per-position permutations: the powers 0..7 of one permutation of the digits."""
    step = (1, 5, 7, 6, 2, 8, 3, 0, 9, 4)
    rows = [tuple(range(10))]
    while len(rows) < 8:
        rows.append(tuple(step[n] for n in rows[-1]))
    return tuple(rows)


_PERMUTE = _positions()


def verhoeff_valid(digits: str) -> bool:
    """True when the last digit is the Verhoeff check digit of the others."""
    if not digits.isdigit():
        return False
    check = 0
    for position, char in enumerate(reversed(digits)):
        check = _MULTIPLY[check][_PERMUTE[position % 8][int(char)]]
    return check == 0
