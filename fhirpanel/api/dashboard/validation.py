"""The Validation page: the latest `fhirpanel validate` (each risk metric scored a year back
against the next year's emergency visits and inpatient stays: c-statistics, calibration by
decile, tiers 3-4's share) with its plot, and the stored monthly snapshots."""

from __future__ import annotations

import base64

from flask.typing import ResponseReturnValue

from fhirpanel.api.dashboard.base import bp, store
from fhirpanel.api.dashboard.render import render
from fhirpanel.store.validation import latest_validation, list_snapshots


@bp.get("/validation")
def validation() -> ResponseReturnValue:
    latest = latest_validation(store())
    plot = None
    if latest is not None:
        # As an image: an SVG in <img> cannot run anything, whatever the store holds.
        plot = "data:image/svg+xml;base64," + base64.b64encode(latest["svg"].encode()).decode()
    return render("validation.html", latest=latest, plot=plot, snapshots=list_snapshots(store()))
