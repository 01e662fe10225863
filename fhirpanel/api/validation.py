"""`GET /api/validation` (the latest `fhirpanel validate`: the risk metrics against the next
year's utilisation) and `GET /api/snapshots[/{month}]` (the frozen monthly snapshots), read from
the store. Their part of the OpenAPI document is `fhirpanel.api.openapi.validation`."""

from __future__ import annotations

import json
import re

from flask import Blueprint, Response, current_app, jsonify

from fhirpanel.api.problems import not_found
from fhirpanel.store import Store
from fhirpanel.store.validation import get_snapshot, latest_validation, list_snapshots

bp = Blueprint("validation", __name__, url_prefix="/api")

MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
MONTH_PATTERN = MONTH.pattern


def _store() -> Store:
    return current_app.extensions["fhirpanel"].store  # type: ignore[no-any-return]


@bp.get("/validation")
def validation() -> Response:
    """The latest validation: its statistics (`result`) and calibration plot (`svg`)."""
    latest = latest_validation(_store())
    if latest is None:
        raise not_found("no validation stored yet: run `fhirpanel validate`")
    return jsonify(latest)


@bp.get("/snapshots")
def snapshots() -> Response:
    """Every stored month, newest first (without the content)."""
    return jsonify(items=list_snapshots(_store()))


@bp.get("/snapshots/<month>")
def snapshot(month: str) -> Response:
    """One month's snapshot: its summary and the frozen `content`."""
    found = get_snapshot(_store(), month) if MONTH.match(month) else None
    if found is None:
        raise not_found(f"no snapshot of {month[:20]!r} stored")
    return jsonify({**found, "content": json.loads(found["content"])})
