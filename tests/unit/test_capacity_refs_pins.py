"""Capacity settings refuse a Practitioner reference without an id, in the overrides and in the
closed panels alike (domain/capacity.py; found by mutation testing)."""

from __future__ import annotations

import pytest

from fhirpanel.domain.capacity import CapacitySettings, ClinicianCapacity
from fhirpanel.errors import MappingError

DEFAULT = ClinicianCapacity(20.0, 220.0, 3.0)


def test_an_override_without_an_id_is_refused() -> None:
    with pytest.raises(MappingError, match="overrides: 'Practitioner/' is not a Practitioner"):
        CapacitySettings(DEFAULT, overrides={"Practitioner/": DEFAULT})
    assert CapacitySettings(DEFAULT, overrides={"Practitioner/d1": DEFAULT}).overrides


def test_a_closed_panel_without_an_id_is_refused() -> None:
    with pytest.raises(MappingError, match="panels: 'Practitioner/' is not a Practitioner"):
        CapacitySettings(DEFAULT, closed=frozenset({"Practitioner/"}))
