"""What every dashboard module shares: the blueprint, its constants, what `create_app` provides
(settings, store, trigger, tokens), the review service, and parsing ids from addresses."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, current_app

from fhirpanel.api.auth import TokenTable
from fhirpanel.config import Settings
from fhirpanel.service.references import reference
from fhirpanel.service.review import ReviewService
from fhirpanel.store import Store
from fhirpanel.vocabulary import RunStatus

# One logger for the whole dashboard: `logsafe` escapes request input on this name.
log = logging.getLogger("fhirpanel.api.dashboard")

# Templates and static files stay in fhirpanel/api/ (package data), beside this package.
bp = Blueprint(
    "dashboard",
    "fhirpanel.api.dashboard",
    root_path=str(Path(__file__).resolve().parent.parent),
    template_folder="templates",
    static_folder="static",
    static_url_path="/assets",
)

SESSION_KEY = "fhirpanel_dashboard"  # the cookie's session id
CSRF_KEY = "fhirpanel_csrf"  # the login form's CSRF nonce, before sign-in
TRIGGER = "dashboard"  # recorded on runs the dashboard starts
MAX_TEXT = 500  # reason and note fields
MAX_RUN_ID = 2**31 - 1
RUN_STATUS = {  # every RunStatus: (label, badge class)
    RunStatus.QUEUED: ("waiting for the worker", "info"),
    RunStatus.RUNNING: ("running", "info"),
    RunStatus.SUCCEEDED: ("succeeded", "ok"),
    RunStatus.PARTIAL: ("partly written", "warn"),
    RunStatus.FAILED: ("failed", "bad"),
    RunStatus.SKIPPED: ("skipped (busy)", "warn"),
    RunStatus.ABANDONED: ("abandoned", "bad"),
    RunStatus.HELD: ("held: needs review", "bad"),
    RunStatus.ACCEPTED: ("held, then accepted", "info"),
    RunStatus.CRASHED: ("crashed (process stopped)", "bad"),
}
VIEW_ONLY = "Your token is view only. Ask an administrator for an admin token to "


@dataclass(frozen=True)
class Viewer:
    name: str
    admin: bool


def settings() -> Settings:
    return current_app.extensions["fhirpanel"].settings  # type: ignore[no-any-return]


def store() -> Store:
    return current_app.extensions["fhirpanel"].store  # type: ignore[no-any-return]


def trigger() -> Callable[[str, str], int | None]:
    return current_app.extensions["fhirpanel"].trigger  # type: ignore[no-any-return]


def tokens() -> TokenTable:
    """The app's token table (the one the JSON API checks bearer tokens against)."""
    return current_app.extensions["fhirpanel"].tokens  # type: ignore[no-any-return]


def review() -> ReviewService:
    return ReviewService.over(store(), trigger(), TRIGGER, settings().review.confirmation_months)


def bare(ref: str | None) -> str:
    return (ref or "").split("/", 1)[-1]


def path_ref(rtype: str, raw: str) -> str:
    """An id from the address as `Type/id` (`pat-1` and `Patient/pat-1` alike, surrounding
    slashes and spaces dropped); anything but a FHIR id is a 404."""
    ref = reference(rtype, raw.strip().strip("/"))
    if ref is None:
        abort(404)
    return ref


def eligible_clinicians() -> list[dict[str, Any]]:
    """The clinicians an override may choose."""
    return review().eligible_clinicians()
