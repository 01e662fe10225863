"""Calendar arithmetic at its edges (`make mutation` pins): a negative look-back, a birth on the
as-of date or after it, the birthday's eve."""

from __future__ import annotations

from datetime import date

import pytest

from fhirpanel.domain.dates import age_on, months_before

AS_OF = date(2026, 11, 22)


def test_a_negative_number_of_months_is_refused_and_zero_is_the_day_itself() -> None:
    with pytest.raises(ValueError):
        months_before(AS_OF, -1)
    assert months_before(AS_OF, 0) == AS_OF
    assert months_before(date(2026, 12, 31), 11) == date(2026, 1, 31)
    assert months_before(date(2026, 12, 31), 12) == date(2025, 12, 31)


@pytest.mark.parametrize(
    ("birth", "age"),
    [
        (AS_OF, 0),  # born on the as-of date
        (date(2026, 11, 23), None),  # not born yet
        (date(2025, 11, 23), 0),  # first birthday tomorrow
        (date(2025, 11, 22), 1),
        (date(2000, 12, 1), 25),  # birthday later in the year
        (date(2000, 10, 30), 26),  # birthday earlier in the year
    ],
)
def test_completed_years_on_the_as_of_date(birth: date, age: int | None) -> None:
    assert age_on(birth, AS_OF) == age
