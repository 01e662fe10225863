"""Rendering pages: the helpers templates call (names, times, the rule and tier texts, run
figures), the banner's context every page gets, and 4xx errors as pages."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from flask import current_app, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from fhirpanel.api import held
from fhirpanel.api.dashboard.base import RUN_STATUS, bare, bp, settings, store
from fhirpanel.api.dashboard.signin import csrf_token, viewer
from fhirpanel.domain import texts
from fhirpanel.domain.confirmations import METHODS
from fhirpanel.store import reads
from fhirpanel.vocabulary import RunKind

STATUS_WORDS = {
    "assigned": "Assigned",
    "unassigned": "Unassigned",
    "excluded": "Excluded (not an active patient)",
}
# The statuses a person may record (store STATUSES), as the patient page words them.
PERSON_STATUS_WORDS = {
    "moved-away": "moved away",
    "transferred-care": "transferred their care",
    "dismissed": "dismissed from the practice",
    "deceased": "died (not yet in the record)",
}


@lru_cache(maxsize=8)
def tier_labels() -> dict[int, str]:
    """The `[tiers]` labels of the configured tiers table (`mappings/tiers.toml`, the one place
    they are written), from the tables the app loaded at start."""
    return dict(current_app.extensions["fhirpanel"].tables.method.risk.tiers.labels)


def tier_label(tier: Any) -> str:
    if not tier:
        return ""
    return tier_labels().get(int(tier), f"Tier {tier}")


def tiers() -> list[dict[str, Any]]:
    return [
        {"tier": t, "label": label, "short": label.split(":", 1)[0]}
        for t, label in sorted(tier_labels().items())
    ]


def with_figures(c: dict[str, Any]) -> dict[str, Any]:
    """A clinician with the share of capacity used and the tier mix, for the bars."""
    capacity = float(c.get("capacity") or 0)
    c = dict(c, used_pct=round(100 * c["risk_adjusted_size"] / capacity, 1) if capacity else 0.0)
    counts = {int(k): int(v) for k, v in (c.get("tiers") or {}).items()}
    total = sum(counts.values())
    c["tier_mix"] = [
        {
            "tier": t,
            "n": counts.get(t, 0),
            "pct": round(100 * counts.get(t, 0) / total, 1) if total else 0,
        }
        for t in sorted(set(tier_labels()) | set(counts))
    ]
    return c


def held_figures(run: Mapping[str, Any]) -> list[held.Figure]:
    return held.figures(run, settings().safety.min_count)


def when(iso: str | None) -> str:
    """`2026-11-23T11:58:30.123Z` → `2026-11-23 11:58 UTC`."""
    if not iso:
        return "–"
    day, _, clock = iso.partition("T")
    return f"{day} {clock[:5]} UTC" if clock else day


def run_summary(run: Mapping[str, Any]) -> str:
    counts = run.get("counts") or {}
    parts = []
    if "assigned" in counts:
        parts.append(f"{counts['assigned']} assigned, {counts.get('unassigned', 0)} unassigned")
    if "patients" in counts and run.get("kind") == RunKind.INCREMENTAL:
        parts.append(f"{counts['patients']} patient(s) redone")
    if "assignments_changed" in counts:
        parts.append(f"{counts['assignments_changed']} changed")
    if "written" in counts:
        parts.append(f"{counts['written']} written to the record")
    if counts.get("writeback_failed"):
        parts.append(f"{counts['writeback_failed']} writes failed (retried next time)")
    return "; ".join(parts) or "–"


def practitioner_name(ref: str) -> str:
    row = store().clinician(ref)
    return (row or {}).get("name") or bare(ref)


@bp.context_processor
def _helpers() -> dict[str, Any]:
    names: dict[str, str] = {}

    def doc(ref: str | None) -> str:
        if not ref:
            return "–"
        if not names:
            names.update(
                {
                    c["practitioner"]: c["name"] or bare(c["practitioner"])
                    for c in store().clinicians()
                }
            )
        return names.get(ref) or bare(ref)

    return {
        "me": viewer(),
        "csrf_token": csrf_token,
        "bare": bare,
        "when": when,
        "doc": doc,
        "tier_label": tier_label,
        "rule_name": texts.rule_label,
        "rule_text": texts.rule_text,
        "step_text": texts.step_text,
        "outreach_text": texts.outreach_text,
        "confirmation_methods": METHODS,
        "run_summary": run_summary,
        "held_figures": held_figures,
        "status_text": lambda s: RUN_STATUS.get(s, (s, ""))[0],
        "status_class": lambda s: RUN_STATUS.get(s, (s, "info"))[1],
        "status_word": lambda s: STATUS_WORDS.get(s, s),
    }


def render(template: str, **context: Any) -> str:
    """A page with the banner's context: the run in progress, held runs waiting."""
    context.setdefault("running", reads.running_run(store()))
    context.setdefault("held_runs", held.awaiting(store()))
    context.setdefault("here_url", request.full_path.rstrip("?"))
    return render_template(template, **context)


def int_arg(name: str, default: int, low: int = 1, high: int = 1_000_000) -> int:
    """A whole-number query parameter, clamped; anything else gives the default."""
    raw = request.args.get(name, "")
    try:
        return min(max(int(raw), low), high) if raw else default
    except ValueError:
        return default


def _error_page(exc: HTTPException) -> ResponseReturnValue:
    titles = {
        400: "That did not work",
        401: "Please sign in",
        403: "View only",
        404: "Not found",
        405: "Not here",
        413: "Too much at once",
    }
    code = exc.code or 500
    return render_template(
        "error.html", title=titles.get(code, exc.name), message=exc.description or exc.name
    ), code


for _code in (400, 401, 403, 404, 405, 413):
    bp.register_error_handler(_code, _error_page)
