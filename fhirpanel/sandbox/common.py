"""What the generator's modules share: the seeded random streams and the FHIR coding helpers."""

from __future__ import annotations

import random
from typing import Any

Resource = dict[str, Any]


def seeded(label: str) -> random.Random:
    """The random stream named `label` ("fhirpanel-sandbox/<seed>/..."): every draw the generator
    makes comes from one, so the same arguments give the same population. A simulation, not
    security."""
    return random.Random(label)  # noqa: S311 - seeded on purpose: reproducible output


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display is not None:
        out["display"] = display
    return out


def concept(*codings: dict[str, str], text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": list(codings)}
    if text is not None:
        out["text"] = text
    return out
