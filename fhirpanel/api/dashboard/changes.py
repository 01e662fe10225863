"""The forms that change something (admin tokens; `signin` checks the scope and CSRF): confirm,
override and remove an override, record and clear a patient's status (through the review
service), accept every placement suggestion shown, start a refresh, accept a held run. Each
answers with a redirect back and a flash message; the service's refusals are worded here for a
person."""

from __future__ import annotations

from flask import abort, flash, redirect, request, url_for
from flask.typing import ResponseReturnValue

from fhirpanel.api import held
from fhirpanel.api.dashboard.base import (
    MAX_RUN_ID,
    MAX_TEXT,
    TRIGGER,
    bare,
    bp,
    log,
    review,
    settings,
    store,
    trigger,
)
from fhirpanel.api.dashboard.pages import stored_patient
from fhirpanel.api.dashboard.render import (
    PERSON_STATUS_WORDS,
    held_figures,
    practitioner_name,
    render,
)
from fhirpanel.api.dashboard.signin import safe_next, signed_in
from fhirpanel.api.refusals import refusal_words
from fhirpanel.errors import FhirpanelError
from fhirpanel.service.errors import (
    AssignmentMoved,
    IneligibleClinician,
    InvalidChoice,
    InvalidInput,
    InvalidReference,
    MissingText,
    NoOverride,
    NoStatus,
    NotUnassigned,
    OverridePending,
    PatientNotFound,
    RecordExcludes,
    ReviewError,
    SuggestionChanged,
    UnknownClinician,
)
from fhirpanel.service.outcomes import Refresh, Refusal
from fhirpanel.store.repository import NotHeld
from fhirpanel.vocabulary import STARTABLE_KINDS, RunStatus

SHOWN_REFUSALS = 5  # refused suggestions named in the message; the rest are counted


def _back(default: str) -> ResponseReturnValue:
    return redirect(safe_next(request.form.get("next"), default), code=303)


def _text(name: str) -> str:
    return " ".join(request.form.get(name, "").split())[:MAX_TEXT]


def _patient_url(ref: str) -> str:
    return url_for("dashboard.patient", patient=bare(ref))


def _refreshed(what: str, refresh: Refresh) -> None:
    """Say the change is stored, and when it shows (a busy lock: at the next refresh)."""
    if refresh.run_id is None:
        flash(f"{what} It will be applied by the next refresh.", "success")
    else:
        flash(f"{what} A refresh (run #{refresh.run_id}) has started to apply it.", "success")


def _confirm_refusal(ref: str, exc: ReviewError) -> str:
    if isinstance(exc, AssignmentMoved) and exc.current is not None:
        return (
            f"Patient {bare(ref)} was moved to {practitioner_name(exc.current)} by a "
            "refresh since this page was loaded: check the new assignment, then confirm."
        )
    if isinstance(exc, AssignmentMoved | InvalidReference):
        return f"Patient {bare(ref)}'s assignment changed a moment ago: reload and confirm again."
    return refusal_words(exc, bare(ref))


def _override_refusal(ref: str, exc: ReviewError) -> str:
    if isinstance(exc, InvalidReference | UnknownClinician):
        return "Choose the clinician the patient should go to."
    return refusal_words(exc, bare(ref))


@bp.post("/patients/<patient_id>/confirm")
def confirm(patient_id: str) -> ResponseReturnValue:
    target, me = stored_patient(patient_id), signed_in()
    default = _patient_url(target.ref)
    # The clinician the page showed: a refresh may have moved the patient since it loaded.
    shown = request.form.get("practitioner", "").strip() or None
    confirmed_by = request.form.get("confirmed_by", "")
    try:
        done = review().confirm(
            target,
            confirmed_by=confirmed_by,
            actor=me.name,
            shown=shown,
            note=_text("note"),
            method=request.form.get("method") or None,
            confirmed_on=request.form.get("confirmed_on") or None,
        )
    except ReviewError as exc:
        flash(_confirm_refusal(target.ref, exc), "error")
        return _back(default)
    who = "the clinician" if confirmed_by == "clinician" else "the patient"
    flash(
        f"Patient {bare(target.ref)}: assignment to "
        f"{practitioner_name(done['practitioner'])} confirmed with {who}.",
        "success",
    )
    return _back(default)


@bp.post("/patients/<patient_id>/override")
def override(patient_id: str) -> ResponseReturnValue:
    target, me = stored_patient(patient_id), signed_in()
    default = _patient_url(target.ref)
    try:
        done = review().override(
            target,
            request.form.get("practitioner", "").strip(),
            reason=_text("reason"),
            requested_by=request.form.get("requested_by", ""),
            actor=me.name,
        )
    except ReviewError as exc:
        flash(_override_refusal(target.ref, exc), "error")
        return _back(default)
    name = done.clinician.get("name") or bare(done.override["practitioner"])
    _refreshed(f"Patient {bare(target.ref)} will move to {name}.", done.refresh)
    return _back(default)


@bp.post("/unassigned/assign-suggested")
def assign_suggested() -> ResponseReturnValue:
    """Accept the suggestions the unassigned page showed (its `pairs`: `Patient/a
    Practitioner/b`, comma-separated): one override each, unless the suggestion changed."""
    me = signed_in()
    default = url_for("dashboard.unassigned")
    items = request.form.get("pairs", "").split(",")
    pairs = [tuple(item.split()) for item in items if item.strip()]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        flash("No suggestions to accept: reload the page and try again.", "error")
        return _back(default)
    try:
        done = review().assign_suggested([(a, b) for a, b in pairs], actor=me.name)
    except ReviewError:  # a pair that is no reference: the form was altered
        flash("The list of suggestions was damaged: reload the page and try again.", "error")
        return _back(default)
    if done.refused:
        named = "; ".join(_suggestion_refusal(r) for r in done.refused[:SHOWN_REFUSALS])
        more = len(done.refused) - SHOWN_REFUSALS
        flash(
            f"{len(done.refused)} suggestion{'s' if len(done.refused) != 1 else ''} not "
            f"accepted: {named}{f'; and {more} more' if more > 0 else ''}.",
            "error",
        )
    if done.refresh is not None:
        n = len(done.overrides)
        _refreshed(
            f"{n} patient{'s' if n != 1 else ''} will move to the suggested clinician "
            "(one override each, in the audit log).",
            done.refresh,
        )
    return _back(default)


def _suggestion_refusal(refused: Refusal) -> str:
    """Why one suggestion was not accepted, for a person."""
    who, exc = f"patient {bare(refused.patient)}", refused.error
    if isinstance(exc, SuggestionChanged):
        now = practitioner_name(exc.current) if exc.current else "nobody has room"
        return f"{who}'s suggestion changed since the page was loaded (now: {now})"
    if isinstance(exc, NotUnassigned):
        return f"{who} is no longer unassigned"
    if isinstance(exc, OverridePending):
        return f"{who} already has a change waiting for the next refresh"
    if isinstance(exc, PatientNotFound):
        return f"{who} is not in the last refresh"
    if isinstance(exc, IneligibleClinician | UnknownClinician):
        return f"{who}: {practitioner_name(exc.practitioner)} takes no primary-care patients now"
    if isinstance(exc, InvalidInput):
        return f"{who} is listed twice"
    return f"{who}: {exc}"


@bp.post("/patients/<patient_id>/override/remove")
def remove_override(patient_id: str) -> ResponseReturnValue:
    target, me = stored_patient(patient_id), signed_in()
    default = _patient_url(target.ref)
    try:
        done = review().remove_override(target, actor=me.name)
    except NoOverride as exc:
        flash(refusal_words(exc, bare(target.ref)), "error")
        return _back(default)
    _refreshed(
        f"Override of patient {bare(target.ref)} removed: the usual rules decide again.",
        done.refresh,
    )
    return _back(default)


@bp.post("/patients/<patient_id>/status")
def set_status(patient_id: str) -> ResponseReturnValue:
    target, me = stored_patient(patient_id), signed_in()
    default = _patient_url(target.ref)
    try:
        done = review().set_status(
            target, request.form.get("status", ""), reason=_text("reason"), actor=me.name
        )
    except (InvalidChoice, MissingText, RecordExcludes) as exc:
        flash(refusal_words(exc, bare(target.ref)), "error")
        return _back(default)
    words = PERSON_STATUS_WORDS[done.status["status"]]
    _refreshed(f"Patient {bare(target.ref)} recorded as {words}: off every panel.", done.refresh)
    return _back(default)


@bp.post("/patients/<patient_id>/status/clear")
def clear_status(patient_id: str) -> ResponseReturnValue:
    target, me = stored_patient(patient_id), signed_in()
    default = _patient_url(target.ref)
    try:
        done = review().clear_status(target, actor=me.name)
    except NoStatus as exc:
        flash(refusal_words(exc, bare(target.ref)), "error")
        return _back(default)
    _refreshed(f"Status of patient {bare(target.ref)} cleared: they count again.", done.refresh)
    return _back(default)


@bp.post("/runs/start")
def start_run() -> ResponseReturnValue:
    me = signed_in()
    kind = request.form.get("kind", "")
    if kind not in STARTABLE_KINDS:
        flash("Choose an incremental or a full refresh.", "error")
        return redirect(url_for("dashboard.runs"), code=303)
    try:
        run_id = trigger()(kind, TRIGGER)
    except FhirpanelError as exc:
        flash(f"The refresh could not start: {exc}", "error")
        return redirect(url_for("dashboard.runs"), code=303)
    if run_id is None:
        flash("A refresh is already running. Try again when it has finished.", "error")
    else:
        log.info("dashboard: %s started %s refresh %s", me.name, kind, run_id)
        flash(
            f"{kind.capitalize()} refresh started (run #{run_id}). Reload this page to follow it.",
            "success",
        )
    return redirect(url_for("dashboard.runs"), code=303)


@bp.route("/runs/<int:run_id>/accept", methods=["GET", "POST"])
def accept_run(run_id: int) -> ResponseReturnValue:
    """Accept a held run in two steps: the runs page's button (a POST) or this address (a GET)
    shows the figures again with a confirmation form; that form (POST with `confirm=yes`)
    accepts. Admins only, CSRF-checked like every POST."""
    st, me = store(), signed_in()
    if not me.admin:
        abort(
            403,
            description="Your token is view only. Ask an administrator to review and "
            "accept a held run.",
        )
    run = st.run(run_id) if run_id <= MAX_RUN_ID else None
    if run is None:
        abort(404, description=f"No run #{run_id}.")
    runs_url = url_for("dashboard.runs")
    if run["status"] != RunStatus.HELD:
        flash(f"Nothing to accept: {held.not_held_reason(run)}.", "error")
        return redirect(runs_url, code=303)
    later = held.superseded(st, [run]).get(run_id)
    if later is not None:
        flash(f"Nothing to accept: {held.superseded_reason(run, later)}.", "error")
        return redirect(runs_url, code=303)
    if request.method == "GET" or request.form.get("confirm") != "yes":
        return render("accept.html", run=run, figures=held_figures(run))
    try:
        result = held.accept(settings(), st, run_id, me.name)
    except held.Superseded as exc:
        flash(f"Nothing to accept: {exc}.", "error")
        return redirect(runs_url, code=303)
    except NotHeld:
        now = st.run(run_id)
        flash(f"Nothing to accept: {held.not_held_reason(now) if now else 'no such run'}.", "error")
        return redirect(runs_url, code=303)
    log.info("dashboard: %s accepted held run %s (next run %s)", me.name, run_id, result.next_run)
    flash(f"Run #{run_id} accepted: {result.detail}.", "success")
    return redirect(runs_url, code=303)
