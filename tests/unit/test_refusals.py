"""One table answers the review service's refusals: the JSON API's problem (status, title, type,
the field at fault) and the dashboard's words for a person come from `api/refusals.py`."""

from __future__ import annotations

import inspect

import pytest

from fhirpanel.api.problems import review_problem
from fhirpanel.api.refusals import OTHER_REFUSAL, refusal_answer, refusal_words
from fhirpanel.service import errors
from fhirpanel.service.errors import (
    AssignmentMoved,
    IneligibleClinician,
    InvalidChoice,
    InvalidReference,
    MissingText,
    NoOverride,
    NoStatus,
    NotAssigned,
    NotUnassigned,
    OverridePending,
    PatientExcluded,
    PatientNotFound,
    RecordExcludes,
    ReviewError,
    SuggestionChanged,
    UnknownClinician,
)

P = "Patient/p-1"

# (refusal, API status, title, problem type, the dashboard's words)
CASES: list[tuple[ReviewError, int, str, str, str]] = [
    (
        InvalidChoice("confirmed_by", ("clinician", "patient")),
        422,
        "Invalid request body",
        "invalid-body",
        "Choose who confirmed: the clinician or the patient.",
    ),
    (
        InvalidChoice("requested_by", ("clinician", "patient", "family")),
        422,
        "Invalid request body",
        "invalid-body",
        "Say who asked for the change: the clinician, the patient or the family.",
    ),
    (
        InvalidChoice("status", ("moved",)),
        422,
        "Invalid request body",
        "invalid-body",
        "Choose what happened: moved away, transferred care, dismissed or died.",
    ),
    (
        MissingText("reason"),
        422,
        "Invalid request body",
        "invalid-body",
        "Give a short reason (it goes into the audit log).",
    ),
    (
        IneligibleClinician("Practitioner/d-9", None),
        422,
        "Invalid request body",
        "invalid-body",
        "d-9 is not a primary-care clinician here: choose another.",
    ),
    (
        IneligibleClinician("Practitioner/d-9", "Dr Nine"),
        422,
        "Invalid request body",
        "invalid-body",
        "Dr Nine is not a primary-care clinician here: choose another.",
    ),
    (
        UnknownClinician("Practitioner/d-8"),
        422,
        "Invalid request body",
        "invalid-body",
        "practitioner: Practitioner/d-8 is not a clinician in the last refresh",
    ),
    (PatientNotFound(P), 404, "Not Found", "not-found", "no Patient/p-1 in the last refresh"),
    (NoOverride(P), 404, "Not Found", "not-found", "Patient p-1 has no override to remove."),
    (NoStatus(P), 404, "Not Found", "not-found", "Patient p-1 has no status to clear."),
    (
        PatientExcluded(P, "deceased"),
        409,
        "Conflict",
        "patient-excluded",
        "Patient p-1 is not an active patient: nothing to assign.",
    ),
    (
        NotAssigned(P, "unassigned"),
        409,
        "Conflict",
        "patient-not-assigned",
        "Patient p-1 has no clinician to confirm yet.",
    ),
    (
        RecordExcludes(P, "deceased"),
        409,
        "Conflict",
        "record-excludes",
        "Patient p-1's record already excludes them (deceased): no status is needed.",
    ),
    (
        AssignmentMoved(P, current=None, shown="Practitioner/d-1", message="moved meanwhile"),
        409,
        "Conflict",
        "assignment-changed",
        "moved meanwhile",
    ),
    (
        OverridePending(P),
        409,
        "Conflict",
        "conflict",
        "Patient/p-1 already has an override waiting for the next refresh: nothing to add",
    ),
]


@pytest.mark.parametrize("exc, status, title, kind, words", CASES, ids=lambda c: str(c)[:40])
def test_the_api_and_the_dashboard_read_one_answer(
    exc: ReviewError, status: int, title: str, kind: str, words: str
) -> None:
    problem = review_problem(exc)
    assert (problem.status, problem.title, problem.type) == (
        status,
        title,
        f"urn:fhirpanel:problem:{kind}",
    )
    assert problem.detail == str(exc)
    assert refusal_words(exc, "p-1") == words


def test_a_wrong_body_member_is_named_in_the_problem() -> None:
    problem = review_problem(InvalidReference("practitioner", "Practitioner", "a/b/c"))
    assert problem.status == 422
    assert problem.errors == [
        {"field": "practitioner", "message": "must be a Practitioner id or reference"}
    ]
    assert review_problem(NoOverride(P)).errors == []


def test_every_refusal_has_a_deliberate_answer() -> None:
    """A new refusal gets a row (or answers as its base class): only the placement refusals,
    which the dashboard words per suggestion, fall through to a plain 409."""
    classes = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, ReviewError) and cls is not ReviewError
    ]
    unanswered = {cls for cls in classes if refusal_answer(_sample(cls)) is OTHER_REFUSAL}
    assert unanswered == {NotUnassigned, SuggestionChanged, OverridePending}


def _sample(cls: type[ReviewError]) -> ReviewError:
    samples: dict[type[ReviewError], ReviewError] = {type(exc): exc for exc, *_ in CASES} | {
        InvalidReference: InvalidReference("practitioner", "Practitioner", "x/y"),
        NotUnassigned: NotUnassigned(P, "assigned", "Practitioner/d-1"),
        SuggestionChanged: SuggestionChanged(P, shown="Practitioner/d-1", current=None),
    }
    if cls in samples:
        return samples[cls]
    return cls.__new__(cls)
