"""Calendar arithmetic every method uses: look-back windows and ages on the as-of date."""

from __future__ import annotations

import calendar
from datetime import date
from functools import lru_cache


# Called per visit with few distinct inputs: memoized (same results, less time).
@lru_cache(maxsize=4096)
def months_before(day: date, months: int) -> date:
    """`day` minus `months` calendar months; the day of month is clamped to the month's end
    (2026-08-31 minus 6 months is 2026-02-28; 2024-02-29 minus 12 is 2023-02-28)."""
    if months < 0:
        raise ValueError("months must be >= 0")
    year, month_index = divmod(day.year * 12 + (day.month - 1) - months, 12)
    last = calendar.monthrange(year, month_index + 1)[1]
    return date(year, month_index + 1, min(day.day, last))


def age_on(birth_date: date | None, as_of: date) -> int | None:
    """Completed years on the as-of date; None without a birth date or when born later."""
    if birth_date is None or birth_date > as_of:
        return None
    years = as_of.year - birth_date.year
    if (as_of.month, as_of.day) < (birth_date.month, birth_date.day):
        years -= 1
    return years
