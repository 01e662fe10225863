"""The pages that only read: the overview, a panel, a patient's explanation, the override form,
the unassigned and outreach lists, and the runs."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote_plus, urlsplit

from flask import abort, flash, redirect, request, url_for
from flask.typing import ResponseReturnValue

from fhirpanel.api import held
from fhirpanel.api.dashboard.base import (
    VIEW_ONLY,
    bare,
    bp,
    eligible_clinicians,
    path_ref,
    review,
    settings,
    store,
)
from fhirpanel.api.dashboard.render import (
    PERSON_STATUS_WORDS,
    int_arg,
    render,
    tiers,
    with_figures,
)
from fhirpanel.api.dashboard.signin import safe_next, viewer
from fhirpanel.domain.placement import PanelChange
from fhirpanel.service.errors import PatientNotFound
from fhirpanel.service.explanation import Patient
from fhirpanel.store import queries, reads
from fhirpanel.vocabulary import RunStatus

SORT_CHOICES = (
    ("patient", "Patient id"),
    ("-tier", "Highest risk first"),
    ("tier", "Lowest risk first"),
    ("last_visit", "Longest since last visit"),
    ("-last_visit", "Most recent visit"),
    ("rule", "Rule"),
)
COLUMNS = (
    ("patient", "Patient"),
    ("tier", "Tier"),
    ("rule", "Rule"),
    ("last_visit", "Last visit"),
    ("confirmation", "Confirmation"),
)
RUNS_PER_PAGE = 25
FORM_SPARE_BYTES = 1024  # the assign-all form's other fields, and the encoding's margin


def stored_patient(raw: str) -> Patient:
    """The patient an address names, as the last refresh stored them (else a 404 page)."""
    ref = path_ref("Patient", raw)
    try:
        return review().patient(ref)
    except PatientNotFound:
        abort(404, description=f"No patient {bare(ref)} in the last refresh.")


@bp.get("/")
def overview() -> ResponseReturnValue:
    st = store()
    clinicians = [with_figures(c) for c in st.clinicians()]
    clinicians = [c for c in clinicians if c["eligible"] or c["size"]]
    for c in clinicians:
        c["link"] = url_for("dashboard.panel", practitioner=bare(c["practitioner"]))
        c["vs_peers"] = vs_peers(c.get("relative"))
    chart = {
        "labels": [c["name"] or bare(c["practitioner"]) for c in clinicians],
        "size": [c["size"] for c in clinicians],
        "risk_adjusted": [c["risk_adjusted_size"] for c in clinicians],
        "capacity": [c["capacity"] for c in clinicians],
        "used_pct": [c["used_pct"] for c in clinicians],
        "unconfirmed": [c["unconfirmed"] for c in clinicians],
        "links": [c["link"] for c in clinicians],
    }
    return render(
        "overview.html",
        clinicians=clinicians,
        chart=chart,
        counts=dict(queries.practice_totals(st), outreach=reads.outreach_count(st)),
        last_run=st.last_run(),
        as_of=st.context("as_of"),
        tiers=tiers(),
    )


def vs_peers(relative: dict[str, Any] | None) -> str | None:
    """The panel against its peers in words: "1.17× median, 64th pct" (None: not eligible)."""
    if not relative:
        return None
    ratio = relative.get("risk_adjusted_ratio")
    rank = ordinal(round(relative["percentile"]))
    if ratio is None:
        return f"{rank} pct"
    return f"{ratio:.2f}× median, {rank} pct"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@bp.get("/panels/<path:practitioner>")
def panel(practitioner: str) -> ResponseReturnValue:
    st = store()
    ref = path_ref("Practitioner", practitioner)
    clinician = st.clinician(ref)
    if clinician is None:
        abort(
            404, description=f"No panel for {bare(ref)}: the clinician is not in the last refresh."
        )
    tier_raw = request.args.get("tier", "")
    tier = int(tier_raw) if re.fullmatch(r"[0-9]{1,2}", tier_raw) else None
    sort = request.args.get("sort", "patient")
    if sort not in queries.SORT_VALUES:
        sort = "patient"
    wanted = request.args.get("unconfirmed", "")
    filters = {
        "tier": tier,
        # "1": no current confirmation; clinician / patient: none by that side.
        "unconfirmed": wanted if wanted in ("1", "clinician", "patient") else "",
        "overdue": request.args.get("overdue") == "1",
        "sort": sort,
    }
    filters["active"] = bool(tier or filters["unconfirmed"] or filters["overdue"])
    page_size = settings().api.page_size
    result = queries.panel_patients(
        st,
        ref,
        tier=tier,
        unconfirmed=True if filters["unconfirmed"] == "1" else str(filters["unconfirmed"] or ""),
        overdue=bool(filters["overdue"]),
        sort=sort,
        page=int_arg("page", 1),
        page_size=page_size,
        clamp=True,
    )
    link_args: dict[str, Any] = {"practitioner": bare(ref), "sort": sort}
    if tier:
        link_args["tier"] = tier
    if filters["unconfirmed"]:
        link_args["unconfirmed"] = filters["unconfirmed"]
    if filters["overdue"]:
        link_args["overdue"] = 1
    return render(
        "panel.html",
        clinician=with_figures(clinician),
        rows=result.rows,
        total=result.total,
        page=result.page,
        pages=result.pages,
        page_size=page_size,
        filters=filters,
        sorts=SORT_CHOICES,
        columns=COLUMNS,
        link_args=link_args,
        tiers=tiers(),
        eligible=eligible_clinicians(),
    )


@bp.get("/patients/<path:patient>")
def patient(patient: str) -> ResponseReturnValue:
    ref = path_ref("Patient", patient)
    try:
        explained = review().explain(ref)
    except PatientNotFound:
        abort(404, description=f"No patient {bare(ref)} in the last refresh.")
    state = explained.state
    return render(
        "patient.html",
        p=state,
        detail=explained.detail,
        risk=explained.risk or {},
        blend=explained.blend,
        visits=[
            {"practitioner": p, "count": n, "chosen": p == state["practitioner"]}
            for p, n in explained.visits_ranked
        ],
        evidence=explained.evidence,
        written=list(explained.written.items()),
        history=explained.history,
        overrides=explained.overrides,
        confirmations=explained.confirmations,
        current_confirmations=explained.current_confirmations,
        open_moves=review().proposed_moves(patient=ref),
        active_override=explained.active_override,
        active_status=explained.active_status,
        status_words=PERSON_STATUS_WORDS,
        eligible=eligible_clinicians(),
        pending="applied at the next refresh" if explained.pending else None,
    )


@bp.get("/patients/<patient_id>/override")
def override_page(patient_id: str) -> ResponseReturnValue:
    """The override form on its own page (a panel lists many patients: one form each would
    repeat the clinician list on every row)."""
    target = stored_patient(patient_id)
    found = viewer()
    if found is None or not found.admin:
        abort(403, description=VIEW_ONLY + "change assignments.")
    back = safe_next(
        request.args.get("next"), url_for("dashboard.patient", patient=bare(target.ref))
    )
    return render("override.html", p=target.state, back_url=back, eligible=eligible_clinicians())


@bp.get("/find")
def find_patient() -> ResponseReturnValue:
    raw = request.args.get("patient", "").strip()
    if not raw:
        return redirect(url_for("dashboard.overview"))
    try:
        target = review().patient(raw)
    except PatientNotFound:
        flash(f"No patient with id {raw!r} in the last refresh.", "error")
        return redirect(
            safe_next(
                request.referrer and urlsplit(request.referrer).path, url_for("dashboard.overview")
            )
        )
    return redirect(url_for("dashboard.patient", patient=bare(target.ref)))


@bp.get("/unassigned")
def unassigned() -> ResponseReturnValue:
    st = store()
    result = queries.unassigned_patients(
        st, page=int_arg("page", 1), page_size=settings().api.page_size, clamp=True
    )
    pending = reads.pending_among(st, [r["patient"] for r in result.rows])
    rows = [dict(r, pending=r["patient"] in pending) for r in result.rows]
    preview = review().placement_preview()
    # The form sends the pairs it shows, to be checked; as many as a request body holds.
    pairs = _sendable(list(preview.pairs), settings().api.max_body_bytes - FORM_SPARE_BYTES)
    return render(
        "unassigned.html",
        rows=rows,
        total=result.total,
        page=result.page,
        pages=result.pages,
        link_args={},
        preview=preview,
        changes=[_change(c) for c in preview.changes],
        pairs=",".join(f"{p} {c}" for p, c in pairs),
        pairs_sent=len(pairs),
    )


def _sendable(pairs: list[tuple[str, str]], budget: int) -> list[tuple[str, str]]:
    """The leading pairs whose form encoding (`Patient/a Practitioner/b`, comma-separated)
    fits in `budget` bytes."""
    used = 0
    for n, (patient, practitioner) in enumerate(pairs):
        used += len(quote_plus(f"{patient} {practitioner},"))
        if used > budget:
            return pairs[:n]
    return pairs


def _change(c: PanelChange) -> dict[str, Any]:
    """A panel before and after, in the figures the table shows (shares in %)."""

    def pct(share: float | None) -> float | None:
        return round(100 * share, 1) if share is not None else None

    return {
        "practitioner": c.practitioner,
        "size": c.size,
        "size_after": c.size_after,
        "added": c.added,
        "load": round(c.load, 1),
        "load_after": round(c.load_after, 1),
        "capacity": round(c.capacity),
        "used_pct": pct(c.share),
        "used_pct_after": pct(c.share_after),
        "over_after": c.load_after > c.capacity,
    }


@bp.get("/outreach")
def outreach() -> ResponseReturnValue:
    st, configured = store(), settings()
    raw = request.args.get("practitioner", "").strip()
    practitioner = path_ref("Practitioner", raw) if raw else None
    result = queries.outreach_patients(
        st,
        practitioner=practitioner,
        page=int_arg("page", 1),
        page_size=configured.api.page_size,
        clamp=True,
    )
    link_args = {"practitioner": bare(practitioner)} if practitioner else {}
    return render(
        "outreach.html",
        rows=result.rows,
        total=result.total,
        page=result.page,
        pages=result.pages,
        link_args=link_args,
        filters={"practitioner": practitioner},
        clinicians=[c for c in st.clinicians() if c["size"]],
        not_seen_months=configured.attribution.outreach_not_seen_months,
        sentinel_months=configured.attribution.outreach_sentinel_months,
    )


@bp.get("/runs")
def runs() -> ResponseReturnValue:
    """Every run, newest first; a held run with its figures in words and, for admins, the
    button that leads to accepting it."""
    st = store()
    total = st.count_runs()
    pages = max(1, -(-total // RUNS_PER_PAGE))
    page = min(int_arg("page", 1), pages)
    rows = st.runs(limit=RUNS_PER_PAGE, offset=(page - 1) * RUNS_PER_PAGE)
    return render(
        "runs.html",
        rows=rows,
        total=total,
        page=page,
        pages=pages,
        superseded=held.superseded(st, [r for r in rows if r["status"] == RunStatus.HELD]),
    )
