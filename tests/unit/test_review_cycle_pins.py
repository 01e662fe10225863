"""The panel review cycle (domain/review_cycle.py) at its bounds: zero months is the same day,
negative months are refused, and a review's state keeps the day it was last reviewed."""

from __future__ import annotations

from datetime import date

import pytest

from fhirpanel.domain.review_cycle import CURRENT, months_after, review_due


def test_zero_months_after_is_the_day_itself_and_negative_months_are_refused() -> None:
    assert months_after(date(2026, 1, 31), 0) == date(2026, 1, 31)
    with pytest.raises(ValueError, match="months"):
        months_after(date(2026, 1, 31), -1)


def test_a_review_due_keeps_when_the_panel_was_last_reviewed() -> None:
    due = review_due("Practitioner/d1", date(2026, 6, 30), 6, date(2026, 12, 1))
    assert due.last_reviewed == date(2026, 6, 30)
    assert (due.due_on, due.state) == (date(2026, 12, 30), CURRENT)
