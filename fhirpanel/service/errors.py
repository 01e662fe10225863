"""Why the review service refused a change or a read. Each class is one reason, so the JSON API
(`api/problems.py`: a problem document) and the dashboard (a flash message) word it each their
own way from the attributes; the message itself is the API's detail. Messages carry ids only,
never names or birth dates."""

from __future__ import annotations

from collections.abc import Sequence

from fhirpanel.errors import FhirpanelError


class ReviewError(FhirpanelError):
    """A review request refused on purpose."""


class PatientNotFound(ReviewError):
    """No such patient in the last refresh."""

    def __init__(self, patient: str) -> None:
        self.patient = patient
        super().__init__(f"no {patient} in the last refresh")


class InvalidInput(ReviewError):
    """A value the caller sent is missing or wrong; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class InvalidReference(InvalidInput):
    """Not `Type/id` or `id` with a FHIR id."""

    def __init__(self, field: str, rtype: str, raw: str) -> None:
        self.rtype = rtype
        self.raw = raw
        super().__init__(field, f"must be a {rtype} id or reference")


class UnknownClinician(InvalidInput):
    def __init__(self, practitioner: str, field: str = "practitioner") -> None:
        self.practitioner = practitioner
        super().__init__(field, f"{practitioner} is not a clinician in the last refresh")


class IneligibleClinician(InvalidInput):
    """A clinician the last refresh found not eligible for a primary-care panel."""

    def __init__(self, practitioner: str, name: str | None, field: str = "practitioner") -> None:
        self.practitioner = practitioner
        self.name = name
        super().__init__(field, f"{practitioner} is not eligible for a primary-care panel")


class InvalidChoice(InvalidInput):
    def __init__(self, field: str, choices: Sequence[str]) -> None:
        self.choices = tuple(choices)
        super().__init__(field, f"must be one of {', '.join(self.choices)}")


class MissingText(InvalidInput):
    """A free-text field that must say something (an override's reason)."""

    def __init__(self, field: str) -> None:
        super().__init__(field, "must not be empty")


class PatientExcluded(ReviewError):
    """Not an active patient: there is nobody to assign."""

    def __init__(self, patient: str, reason: str | None) -> None:
        self.patient = patient
        self.reason = reason
        super().__init__(
            f"{patient} is not an active patient ({reason or 'excluded'}): "
            "there is nothing to assign"
        )


class NotAssigned(ReviewError):
    """Only an assigned patient's clinician can be confirmed."""

    def __init__(self, patient: str, status: str) -> None:
        self.patient = patient
        self.status = status
        super().__init__(f"{patient} is {status}: only an assigned patient can be confirmed")


class AssignmentMoved(ReviewError):
    """The assignment to confirm no longer holds. `shown` is the clinician the caller saw
    (the page, the request) and `current` the stored one when a refresh moved the patient
    since; `current` is None when the store found the move as it wrote (a refresh committed
    between the read and the confirmation)."""

    def __init__(
        self, patient: str, *, current: str | None, shown: str | None, message: str | None = None
    ) -> None:
        self.patient = patient
        self.current = current
        self.shown = shown
        super().__init__(
            message
            or f"{patient} is assigned to {current}, not {shown}: reload "
            "and confirm the current assignment"
        )


class NoOverride(ReviewError):
    def __init__(self, patient: str) -> None:
        self.patient = patient
        super().__init__(f"{patient} has no override in force")


class NoStatus(ReviewError):
    """No status a person recorded is in force for the patient: nothing to clear."""

    def __init__(self, patient: str) -> None:
        self.patient = patient
        super().__init__(f"{patient} has no status in force")


class RecordExcludes(ReviewError):
    """The patient's own record already excludes them (merged, deceased, inactive): a status
    would change nothing, and clearing it would not bring them back."""

    def __init__(self, patient: str, reason: str | None) -> None:
        self.patient = patient
        self.reason = reason
        super().__init__(
            f"{patient}'s record already excludes them ({reason or 'excluded'}): "
            "no status is needed"
        )


class NotUnassigned(ReviewError):
    """A placement suggestion for a patient a refresh has since assigned (or excluded)."""

    def __init__(self, patient: str, status: str, practitioner: str | None) -> None:
        self.patient = patient
        self.status = status
        self.practitioner = practitioner
        now = f"assigned to {practitioner}" if status == "assigned" and practitioner else status
        super().__init__(f"{patient} is no longer unassigned ({now}): nothing to place")


class SuggestionChanged(ReviewError):
    """The suggestion the caller saw (`shown`) is no longer the stored one (`current`, None
    when no clinician has room now): a refresh placed the patient again since."""

    def __init__(self, patient: str, *, shown: str, current: str | None) -> None:
        self.patient = patient
        self.shown = shown
        self.current = current
        now = f"now {current}" if current else "now none has room"
        super().__init__(
            f"{patient}'s suggested clinician changed since it was shown ({shown}, {now}): "
            "reload and check the new suggestion"
        )


class OverridePending(ReviewError):
    """An override for the patient already waits for the next refresh."""

    def __init__(self, patient: str) -> None:
        self.patient = patient
        super().__init__(
            f"{patient} already has an override waiting for the next refresh: nothing to add"
        )


class MoveNotFound(ReviewError):
    def __init__(self, move_id: int) -> None:
        self.move_id = move_id
        super().__init__(f"no proposed move {move_id}")


class MoveClosed(ReviewError):
    """The proposed move was accepted, dismissed or superseded already."""

    def __init__(self, move_id: int, status: str) -> None:
        self.move_id = move_id
        self.status = status
        super().__init__(f"proposed move {move_id} is {status}: there is nothing to decide")


__all__ = [
    "AssignmentMoved",
    "IneligibleClinician",
    "InvalidChoice",
    "InvalidInput",
    "InvalidReference",
    "MissingText",
    "MoveClosed",
    "MoveNotFound",
    "NoOverride",
    "NoStatus",
    "NotAssigned",
    "NotUnassigned",
    "OverridePending",
    "PatientExcluded",
    "PatientNotFound",
    "RecordExcludes",
    "ReviewError",
    "SuggestionChanged",
    "UnknownClinician",
]
