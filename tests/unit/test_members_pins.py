"""The member list's checks against the population (domain/members.py), one reason at a time,
and `subset` (mutation testing: each reason and the role lookup are pinned)."""

from __future__ import annotations

from fhirpanel.domain.attribution import EligibilityReport
from fhirpanel.domain.members import MemberList, member_issues
from fhirpanel.domain.records import (
    Issue,
    PatientRecord,
    Population,
    PractitionerRecord,
    PractitionerRoleRecord,
)

WHERE = "risk-product list members.csv"


def _population() -> Population:
    patients = {f"Patient/{n}": PatientRecord(f"Patient/{n}") for n in range(1, 8)}
    practitioners = {
        f"Practitioner/{n}": PractitionerRecord(f"Practitioner/{n}") for n in ("ok", "gone", "np")
    }
    roles = {
        "PractitionerRole/ok": PractitionerRoleRecord("PractitionerRole/ok", "Practitioner/ok"),
        "PractitionerRole/empty": PractitionerRoleRecord("PractitionerRole/empty", None),
        "PractitionerRole/gone": PractitionerRoleRecord(
            "PractitionerRole/gone", "Practitioner/gone"
        ),
    }
    return Population(patients=patients, practitioners=practitioners, roles=roles)


ELIGIBILITY = EligibilityReport(
    by_code=("Practitioner/ok",),
    by_text=(),
    not_matched=("Practitioner/gone", "Practitioner/np"),
    fallback_all_on_visits=False,
    departed=("Practitioner/gone",),
)


def test_each_member_the_step_cannot_follow_is_an_issue_with_its_reason() -> None:
    members = MemberList(
        "members.csv",
        {
            "Patient/0": "Practitioner/ok",  # not ours; the members after it are still checked
            "Patient/1": "Practitioner/ok",
            "Patient/2": "PractitionerRole/ok",
            "Patient/3": "PractitionerRole/empty",
            "Patient/4": "PractitionerRole/nobody",
            "Patient/5": "PractitionerRole/gone",
            "Patient/6": "Practitioner/stranger",
            "Patient/7": "Practitioner/np",
        },
    )
    issues = member_issues(members, _population(), ELIGIBILITY)
    assert issues == [
        Issue("Patient/0", f"{WHERE}: not in the population", "skipped"),
        Issue(
            "Patient/3",
            f"{WHERE}: PractitionerRole/empty names no Practitioner: attributed by the next step",
            "skipped",
        ),
        Issue(
            "Patient/4",
            f"{WHERE}: PractitionerRole/nobody is not a known PractitionerRole: "
            "attributed by the next step",
            "skipped",
        ),
        Issue(
            "Patient/5",
            f"{WHERE}: PractitionerRole/gone has left the practice: attributed by the next step",
            "skipped",
        ),
        Issue(
            "Patient/6",
            f"{WHERE}: Practitioner/stranger is not a known clinician: attributed by the next step",
            "skipped",
        ),
        Issue(
            "Patient/7",
            f"{WHERE}: Practitioner/np is not eligible for primary-care attribution: "
            "attributed by the next step",
            "skipped",
        ),
    ]


def test_a_subset_keeps_the_label_and_the_count_read_but_not_the_issues() -> None:
    full = MemberList(
        "Group/atr",
        {"Patient/1": "Practitioner/ok", "Patient/2": "Practitioner/ok"},
        (Issue("Group/atr", "a member without an entity"),),
        entries=5,
    )
    part = full.subset(["Patient/2", "Patient/9"])
    assert part == MemberList("Group/atr", {"Patient/2": "Practitioner/ok"}, (), 5)
