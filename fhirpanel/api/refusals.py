"""How the review service's refusals (`service/errors.py`) are answered: one table, read by the
JSON API (`problems.review_problem`: the status, title and problem type) and by the dashboard
(`dashboard/changes.py`: the words a person sees in the flash message). A refusal without words
of its own is shown as the service's message, which the API also gives as its `detail`.

The dashboard words only what does not depend on the form: where the same refusal means
something else on one form (a clinician reference on the confirm form is the one the page
showed), `changes.py` says so itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fhirpanel.service.errors import (
    AssignmentMoved,
    IneligibleClinician,
    InvalidChoice,
    InvalidInput,
    MissingText,
    MoveClosed,
    MoveNotFound,
    NoOverride,
    NoStatus,
    NotAssigned,
    PatientExcluded,
    PatientNotFound,
    RecordExcludes,
    ReviewError,
)

# (the refusal, the patient's bare id) -> a sentence for a person
Words = Callable[[Any, str], str]


@dataclass(frozen=True)
class RefusalAnswer:
    status: int
    title: str
    kind: str  # the problem type: urn:fhirpanel:problem:<kind>
    words: Words | None = None  # None: the service's message


# What the choice is about, by the field the service names (`InvalidChoice.field`).
CHOICE_WORDS: Mapping[str, str] = {
    "confirmed_by": "Choose who confirmed: the clinician or the patient.",
    "requested_by": "Say who asked for the change: the clinician, the patient or the family.",
    "status": "Choose what happened: moved away, transferred care, dismissed or died.",
}


def _choice(exc: InvalidChoice, patient: str) -> str:
    return CHOICE_WORDS.get(exc.field, str(exc))


def _ineligible(exc: IneligibleClinician, patient: str) -> str:
    name = exc.name or exc.practitioner.split("/", 1)[-1]
    return f"{name} is not a primary-care clinician here: choose another."


_INVALID = (422, "Invalid request body", "invalid-body")
_NOT_FOUND = (404, "Not Found", "not-found")

# Looked up along the refusal's class hierarchy, so a subclass without a row answers as its base.
REFUSAL_ANSWERS: Mapping[type[ReviewError], RefusalAnswer] = {
    InvalidInput: RefusalAnswer(*_INVALID),
    InvalidChoice: RefusalAnswer(*_INVALID, _choice),
    MissingText: RefusalAnswer(
        *_INVALID, lambda exc, patient: "Give a short reason (it goes into the audit log)."
    ),
    IneligibleClinician: RefusalAnswer(*_INVALID, _ineligible),
    PatientNotFound: RefusalAnswer(*_NOT_FOUND),
    MoveNotFound: RefusalAnswer(*_NOT_FOUND),
    NoOverride: RefusalAnswer(
        *_NOT_FOUND, lambda exc, patient: f"Patient {patient} has no override to remove."
    ),
    NoStatus: RefusalAnswer(
        *_NOT_FOUND, lambda exc, patient: f"Patient {patient} has no status to clear."
    ),
    PatientExcluded: RefusalAnswer(
        409,
        "Conflict",
        "patient-excluded",
        lambda exc, patient: f"Patient {patient} is not an active patient: nothing to assign.",
    ),
    NotAssigned: RefusalAnswer(
        409,
        "Conflict",
        "patient-not-assigned",
        lambda exc, patient: f"Patient {patient} has no clinician to confirm yet.",
    ),
    AssignmentMoved: RefusalAnswer(409, "Conflict", "assignment-changed"),
    RecordExcludes: RefusalAnswer(
        409,
        "Conflict",
        "record-excludes",
        lambda exc, patient: (
            f"Patient {patient}'s record already excludes them ({exc.reason}): no status is needed."
        ),
    ),
    MoveClosed: RefusalAnswer(409, "Conflict", "move-decided"),
}
OTHER_REFUSAL = RefusalAnswer(409, "Conflict", "conflict")


def refusal_answer(exc: ReviewError) -> RefusalAnswer:
    for cls in type(exc).__mro__:
        answer = REFUSAL_ANSWERS.get(cls)
        if answer is not None:
            return answer
    return OTHER_REFUSAL


def refusal_words(exc: ReviewError, patient: str) -> str:
    """The refusal in a person's words; `patient` is the bare id the page shows."""
    words = refusal_answer(exc).words
    return words(exc, patient) if words is not None else str(exc)
