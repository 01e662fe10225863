"""CMS-HCC scoring behaviour that mutation testing (`make mutation`) showed no test pinned: HCCs
listed in numeric order, and the segment's original reason for entitlement reaching the model."""

from __future__ import annotations

from fhirpanel.domain.hcc import HccScorer
from fhirpanel.tables import Tables


def test_hccs_are_listed_in_numeric_order(tables: Tables) -> None:
    scorer = HccScorer(tables.method.risk.hcc)
    score = scorer.score(["N184", "I509", "F200", "E119", "C7800"], 72, "F")
    # As numbers 17 < 38 < 151 < 226 < 327; as text "151" would come first and "38" last.
    assert score.hcc_names == ("HCC17", "HCC38", "HCC151", "HCC226", "HCC327")
    assert [hcc for hcc, _ in score.dx_by_hcc] == ["17", "38", "151", "226", "327"]


def test_an_originally_disabled_segment_scores_an_aged_patient_higher(tables: Tables) -> None:
    hcc = tables.method.risk.hcc
    aged = HccScorer(hcc, segment="CNA").score(["E119"], 72, "F")
    originally_disabled = HccScorer(hcc, segment="CND").score(["E119"], 72, "F")
    assert originally_disabled.risk_score > aged.risk_score
