"""The four Exhibit Two pipelines (MGMA, case studies 1-3) as shipped, each run on the same
hand-built practice whose patients are placed differently by each: a pipeline file that drifts
from its case study, or a step that stops the pipeline early, fails here."""

from __future__ import annotations

from datetime import date

import pytest

from fhirpanel.domain.attribution import (
    ManualAssignment,
    Pipeline,
    PipelineStep,
    attribute_patients,
)
from fhirpanel.domain.records import PatientRecord, Population
from fhirpanel.tables.files import load_mapping_ref
from fhirpanel.tables.loader import parse_pipeline
from tests.unit.test_attribution import RULES, build, days_ago, doc, pid, role, visit

AS_OF = date(2026, 11, 22)
PIPELINES = {
    name: parse_pipeline(load_mapping_ref(f"pipelines/{name}"))
    for name in ("mgma", "case_study_1", "case_study_2", "case_study_3")
}
# The payer's member list of case study 1: p2 is listed with a clinician they never saw, p5
# with one who is not a primary-care clinician (ignored: the pipeline goes on).
MEMBERS = {pid(2): doc(2), pid(5): doc(9)}


def practice() -> Population:
    return build(
        [
            visit("a1", pid(1), doc(1), days_ago(426)),  # 14 months ago, nothing since
            visit("b1", pid(2), doc(3), days_ago(90)),
            visit("c1", pid(3), doc(5), days_ago(60)),
            visit("c2", pid(3), doc(5), days_ago(200)),
            visit("c3", pid(3), doc(4), days_ago(300)),
            visit("d1", pid(4), doc(1), days_ago(900)),  # about 30 months ago
            visit("e1", pid(5), doc(2), days_ago(150)),
            visit("e2", pid(5), doc(9), days_ago(20)),  # a specialist: not a qualifying clinician
        ],
        patients=[PatientRecord(id=pid(3), general_practitioners=(doc(4),))],
        roles=[
            *(role(f"r{n}", doc(n)) for n in (1, 2, 3, 4, 5)),
            role("r9", doc(9), "207RC0000X"),  # cardiology
        ],
    )


def outcome(name: str) -> dict[str, tuple[str | None, str | None]]:
    result = attribute_patients(
        practice(), AS_OF, PIPELINES[name], RULES, risk_product_members=MEMBERS
    )
    return {a.patient: (a.practitioner, a.step) for a in result.assignments}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "mgma",
            {
                pid(1): (doc(1), "four-cut-18m"),
                pid(2): (doc(3), "four-cut-18m"),
                pid(3): (doc(5), "four-cut-18m"),
                pid(4): (None, None),
                pid(5): (doc(2), "four-cut-18m"),
            },
        ),
        (
            "case_study_1",
            {
                pid(1): (doc(1), "four-cut-18m"),  # not seen in 12 months: the second cut
                pid(2): (doc(2), "risk-product"),  # the list wins over the visits
                pid(3): (doc(5), "four-cut-12m"),
                pid(4): (None, None),
                pid(5): (doc(2), "four-cut-12m"),  # listed clinician not eligible: next step
            },
        ),
        (
            "case_study_2",
            {
                pid(1): (None, None),  # seen 14 months ago: outside 12 months
                pid(2): (doc(3), "four-cut-12m"),
                pid(3): (doc(5), "four-cut-12m"),
                pid(4): (None, None),
                pid(5): (doc(2), "four-cut-12m"),
            },
        ),
        (
            "case_study_3",
            {
                pid(1): (doc(1), "four-cut-18m"),
                pid(2): (doc(3), "four-cut-18m"),
                pid(3): (doc(4), "declared-pcp"),  # the declared PCP, active within 18 months
                pid(4): (doc(1), "four-cut-36m"),
                pid(5): (doc(2), "four-cut-18m"),
            },
        ),
    ],
)
def test_each_exhibit_two_pipeline_places_the_practice_its_own_way(
    name: str, expected: dict[str, tuple[str | None, str | None]]
) -> None:
    assert outcome(name) == expected


def test_the_four_pipelines_disagree_on_this_practice() -> None:
    answers = [tuple(sorted(outcome(name).items())) for name in PIPELINES]
    assert len(set(answers)) == len(PIPELINES)


def test_a_manual_step_does_not_stop_the_pipeline_for_the_patients_after_it() -> None:
    # A pipeline that names its manual step: p1 has an override; everyone else goes on to the
    # Four Cut step (a `break` where the step should `continue` would leave them unassigned).
    pipeline = Pipeline("manual-first", (PipelineStep("manual"), PipelineStep("four-cut", 18)))
    manual = {pid(1): ManualAssignment(pid(1), doc(2), reason="patient preference")}
    result = attribute_patients(practice(), AS_OF, pipeline, RULES, manual=manual).by_patient()
    assert (result[pid(1)].practitioner, result[pid(1)].rule) == (doc(2), "manual")
    assert {p: a.practitioner for p, a in result.items() if p != pid(1)} == {
        pid(2): doc(3),
        pid(3): doc(5),
        pid(4): None,
        pid(5): doc(2),
    }
