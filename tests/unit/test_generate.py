"""The synthetic population generator: determinism, shape, realism, bundles, streaming."""

from __future__ import annotations

import re
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhirpanel.errors import ConfigError
from fhirpanel.sandbox.generate import (
    CONDITION_CATALOGUE,
    MALFORMED_ID_SUFFIX,
    RESOURCE_TYPES,
    build_directory,
    generate_population,
    is_valid_npi,
    months_before,
    npi_check_digit,
    pcp_count,
    write_population,
)

AS_OF = date(2026, 11, 22)
ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "sandbox_fixtures" / "population"

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "urn:oid:2.16.840.1.113883.6.285"
NUCC = "http://nucc.org/provider-taxonomy"
LOCAL = "urn:fhirpanel:sandbox:visit-type"
PRIMARY_CARE = {
    "207Q00000X",
    "207R00000X",
    "208000000X",
    "208D00000X",
    "207QG0300X",
    "363LF0000X",
    "363A00000X",
}
PRIMARY_CARE_TEXT = {"family medicine", "internal medicine", "general practice"}
SENTINEL = {
    (SNOMED, "162673000"),
    (SNOMED, "410620009"),
    (HCPCS, "G0402"),
    (HCPCS, "G0438"),
    (HCPCS, "G0439"),
} | {(CPT, str(c)) for c in (*range(99381, 99388), *range(99391, 99398))}
EXCLUDED = {
    (LOCAL, "NURSE"),
    (LOCAL, "LAB"),
    (LOCAL, "VACCINE"),
    (LOCAL, "ANTICOAG"),
    (SNOMED, "82078001"),
    (SNOMED, "33879002"),
}
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def malformed(res: dict[str, Any]) -> bool:
    return str(res["id"]).endswith(MALFORMED_ID_SUFFIX)


def ndjson(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as fh:
        for line in fh:
            yield orjson.loads(line)


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "README.md"
    }


@pytest.fixture(scope="module")
def small() -> list[dict[str, Any]]:
    return list(generate_population(300, 42, AS_OF))


@pytest.fixture(scope="module")
def large() -> list[dict[str, Any]]:
    return list(generate_population(2000, 7, AS_OF))


def by_type(resources: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for res in resources:
        out[res["resourceType"]].append(res)
    return out


def codes(concepts: Any) -> set[tuple[str, str]]:
    if isinstance(concepts, dict):
        concepts = [concepts]
    return {
        (c["system"], c["code"]) for concept in concepts or () for c in concept.get("coding", ())
    }


def defect_of(res: dict[str, Any], patients: int) -> str | None:
    """Which deliberate defect a malformed record has (None for a good one)."""
    if not malformed(res):
        return None
    if "subject" not in res:
        return "no-subject"
    if int(res["subject"]["reference"].split("-")[1]) > patients:
        return "unknown-subject"
    if "2025-13-45" in (res.get("onsetDateTime"), res.get("period", {}).get("start")):
        return "bad-date"
    if "participant" not in res:
        return "no-participant"
    if all("individual" not in p for p in res["participant"]):
        return "participant-no-individual"
    return "none"


def refused_by_servers(res: dict[str, Any], patients: int) -> bool:
    defect = defect_of(res, patients)
    return defect in ("unknown-subject", "bad-date") or (
        defect == "no-subject" and res["resourceType"] == "Condition"
    )


# ---------------------------------------------------------------- a reference Four Cut


class Practice:
    """Just enough of docs/methods.md s.1-2 to see which attribution case each patient is."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        typed = by_type(resources)
        self.patients = {p["id"]: p for p in typed["Patient"]}
        self.role_to_practitioner = {
            f"PractitionerRole/{r['id']}": r["practitioner"]["reference"]
            for r in typed["PractitionerRole"]
        }
        self.pcps = set()
        for role in typed["PractitionerRole"]:
            specialties = role.get("specialty", [])
            texts = {s.get("text", "").lower() for s in specialties}
            if {c for _, c in codes(specialties)} & PRIMARY_CARE or texts & PRIMARY_CARE_TEXT:
                self.pcps.add(role["practitioner"]["reference"])
        self.encounters: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for enc in typed["Encounter"]:
            if not malformed(enc):
                self.encounters[enc["subject"]["reference"][len("Patient/") :]].append(enc)
        self.window_start = months_before(AS_OF, 18)
        self.history_start = months_before(AS_OF, 36)

    def clinician(self, enc: dict[str, Any]) -> str | None:
        best = None
        for position, part in enumerate(enc.get("participant", ())):
            if "individual" not in part:
                continue
            kinds = {c for _, c in codes(part.get("type", []))}
            rank = 0 if "PPRF" in kinds else 1 if "ATND" in kinds else 2
            if best is None or (rank, position) < best[:2]:
                best = (rank, position, part["individual"]["reference"])
        if best is None:
            return None
        ref = str(best[2])
        return str(self.role_to_practitioner.get(ref, ref))

    @staticmethod
    def start(enc: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(enc["period"]["start"]).astimezone(UTC)

    @staticmethod
    def all_codes(enc: dict[str, Any]) -> set[tuple[str, str]]:
        return codes(enc.get("type")) | codes(enc.get("serviceType")) | codes(enc.get("reasonCode"))

    def qualifying(self, enc: dict[str, Any]) -> bool:
        return (
            enc["status"] == "finished"
            and enc["class"]["code"] in ("AMB", "VR")
            and not self.all_codes(enc) & EXCLUDED
            and self.clinician(enc) in self.pcps
        )

    def visits(self, pid: str, since: date, test: Any = None) -> list[dict[str, Any]]:
        test = test or self.qualifying
        return [
            e
            for e in self.encounters.get(pid, ())
            if test(e) and since <= self.start(e).date() <= AS_OF
        ]

    def excluded(self, pid: str) -> bool:
        p = self.patients[pid]
        return (
            p.get("active") is False
            or p.get("deceasedBoolean") is True
            or "deceasedDateTime" in p
            or any(link["type"] == "replaced-by" for link in p.get("link", ()))
        )

    def case(self, pid: str) -> str:
        """Which Four Cut case decides the patient (or why none does)."""
        if self.excluded(pid):
            return "excluded"
        visits = self.visits(pid, self.window_start)
        if not visits:
            if self.visits(pid, self.history_start):
                return "lapsed"
            return "no-encounters" if not self.encounters.get(pid) else "no-qualifying-visit"
        counts = Counter(self.clinician(v) for v in visits)
        if len(counts) == 1:
            return "single-provider"
        top = max(counts.values())
        tied = {c for c, n in counts.items() if n == top}
        if len(tied) == 1:
            return "plurality"
        sentinels = [v for v in visits if self.all_codes(v) & SENTINEL]
        if any(self.clinician(v) in tied for v in sentinels):
            return f"tie{len(tied)}-sentinel-tied"
        last_day = max(self.start(v).date() for v in visits if self.clinician(v) in tied)
        on_last_day = [
            v for v in visits if self.clinician(v) in tied and self.start(v).date() == last_day
        ]
        if len({self.clinician(v) for v in on_last_day}) > 1:
            same_instant = len({self.start(v) for v in on_last_day}) == 1
            return "tie-same-instant" if same_instant else "tie-same-day"
        if sentinels:
            return f"tie{len(tied)}-sentinel-other"
        return f"tie{len(tied)}-last-visit"

    def winner(self, pid: str, test: Any) -> str | None:
        counts = Counter(self.clinician(v) for v in self.visits(pid, self.window_start, test))
        ranked = counts.most_common()
        if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
            return None
        return ranked[0][0]


# ---------------------------------------------------------------- determinism


def test_same_arguments_give_byte_identical_files(tmp_path: Path) -> None:
    first = write_population(tmp_path / "a", 120, 5, AS_OF, bundle_size=100)
    second = write_population(tmp_path / "b", 120, 5, AS_OF, bundle_size=100)
    assert first == second
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    # A rerun into the same folder with bigger bundles leaves no stale bundles behind.
    before = bundle_entries(tmp_path / "a")
    write_population(tmp_path / "a", 120, 5, AS_OF, bundle_size=1000)
    assert len(list((tmp_path / "a" / "bundles").glob("*.json"))) < len(before)
    after = bundle_entries(tmp_path / "a")
    assert [url for b in before for url in b] == [url for b in after for url in b]


def bundle_entries(directory: Path) -> list[list[str]]:
    return [
        [e["request"]["url"] for e in orjson.loads(path.read_bytes())["entry"]]
        for path in sorted((directory / "bundles").glob("transaction-*.json"))
    ]


def test_another_seed_gives_another_population() -> None:
    one = [orjson.dumps(r) for r in generate_population(60, 1, AS_OF)]
    two = [orjson.dumps(r) for r in generate_population(60, 2, AS_OF)]
    assert one != two
    assert one == [orjson.dumps(r) for r in generate_population(60, 1, AS_OF)]


def test_committed_population_matches_its_recorded_command(tmp_path: Path) -> None:
    # sandbox_fixtures/README.md: --patients 300 --seed 42 --as-of 2026-11-22, default rate.
    assert (COMMITTED / "Patient.ndjson").is_file(), "regenerate sandbox_fixtures/population"
    write_population(tmp_path, 300, 42, AS_OF)
    assert tree_bytes(COMMITTED) == tree_bytes(tmp_path)


# ---------------------------------------------------------------- shape


def test_counts_ids_and_references(tmp_path: Path) -> None:
    counts = write_population(tmp_path, 300, 42, AS_OF)
    resources = []
    for rtype in RESOURCE_TYPES:
        lines = list(ndjson(tmp_path / f"{rtype}.ndjson"))
        assert len(lines) == counts[rtype]
        assert all(r["resourceType"] == rtype for r in lines)
        resources += lines
    assert counts["Patient"] == 300 and counts["Organization"] == 4
    ids = [f"{r['resourceType']}/{r['id']}" for r in resources]
    assert len(ids) == len(set(ids))
    assert all(FHIR_ID.fullmatch(r["id"]) for r in resources)

    known = set(ids)
    dangling = []
    for res in resources:
        for ref in references(res):
            if ref not in known:
                dangling.append((res["id"], ref))
    # Only the deliberately broken records point at nothing.
    assert dangling
    assert all(rid.endswith(MALFORMED_ID_SUFFIX) for rid, _ in dangling)


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def test_malformed_records_at_the_requested_rate(large: list[dict[str, Any]]) -> None:
    records = [r for r in large if r["resourceType"] in ("Encounter", "Condition")]
    broken = [r for r in records if malformed(r)]
    assert 0.006 < len(broken) / len(records) < 0.014
    defects = Counter(defect_of(res, 2000) for res in broken)
    assert set(defects) == {
        "no-subject",
        "unknown-subject",
        "bad-date",
        "no-participant",
        "participant-no-individual",
    }
    assert not [r for r in generate_population(200, 7, AS_OF, malformed_rate=0.0) if malformed(r)]


def test_every_visit_pattern_occurs(small: list[dict[str, Any]]) -> None:
    practice = Practice(small)
    cases = Counter(practice.case(pid) for pid in practice.patients)
    for case in (
        "single-provider",
        "plurality",
        "tie2-sentinel-tied",
        "tie2-sentinel-other",
        "tie2-last-visit",
        "tie3-last-visit",
        "tie-same-day",
        "tie-same-instant",
        "no-qualifying-visit",
        "lapsed",
        "no-encounters",
        "excluded",
    ):
        assert cases[case] >= 1, (case, cases)
    # Most active patients are assigned by a single provider or a plurality.
    assert cases["single-provider"] + cases["plurality"] > 0.5 * len(practice.patients)
    ties = sum(n for case, n in cases.items() if case.startswith("tie"))
    assert 0.03 * 300 < ties < 0.2 * 300

    # Unassigned patients include specialist-only, ED-only and excluded-visit-only ones.
    unassigned = [pid for pid in practice.patients if practice.case(pid) == "no-qualifying-visit"]
    classes = {pid: {e["class"]["code"] for e in practice.encounters[pid]} for pid in unassigned}
    assert any(c <= {"EMER", "IMP"} for c in classes.values())
    assert any(
        all(practice.clinician(e) not in practice.pcps for e in practice.encounters[pid])
        and classes[pid] == {"AMB"}
        for pid in unassigned
    )

    # Excluded visit types with a PCP: dropping the exclusion changes who wins.
    def counting_everything(enc: dict[str, Any]) -> bool:
        return practice.clinician(enc) in practice.pcps

    flips = [
        pid
        for pid in practice.patients
        if not practice.excluded(pid)
        and practice.winner(pid, practice.qualifying) != practice.winner(pid, counting_everything)
    ]
    assert flips
    with_pcp = [
        e
        for es in practice.encounters.values()
        for e in es
        if practice.all_codes(e) & EXCLUDED and practice.clinician(e) in practice.pcps
    ]
    assert len(with_pcp) >= 10


def test_patient_statuses_and_declared_pcps(small: list[dict[str, Any]]) -> None:
    patients = {p["id"]: p for p in by_type(small)["Patient"]}
    assert 1 <= sum(p.get("active") is False for p in patients.values()) <= 6
    dated = [p for p in patients.values() if "deceasedDateTime" in p]
    assert dated and all(
        datetime.fromisoformat(p["deceasedDateTime"]).date() < AS_OF for p in dated
    )
    assert any(p.get("deceasedBoolean") is True for p in patients.values())
    assert any("active" not in p for p in patients.values())  # absent means active

    merged = [
        p
        for p in patients.values()
        if any(link["type"] == "replaced-by" for link in p.get("link", ()))
    ]
    assert merged
    for old in merged:
        survivor = patients[old["link"][0]["other"]["reference"][len("Patient/") :]]
        assert survivor["link"] == [
            {"other": {"reference": f"Patient/{old['id']}"}, "type": "replaces"}
        ]
        assert (survivor["name"], survivor["birthDate"]) == (old["name"], old["birthDate"])

    declared = [p for p in patients.values() if "generalPractitioner" in p]
    assert 0.05 * 300 < len(declared) < 0.16 * 300
    kinds = {p["generalPractitioner"][0]["reference"].split("/")[0] for p in declared}
    assert kinds == {"Practitioner", "PractitionerRole"}
    practice = Practice(small)
    differs = 0
    for p in declared:
        seen = Counter(
            practice.clinician(v) for v in practice.visits(p["id"], practice.window_start)
        )
        ref = p["generalPractitioner"][0]["reference"]
        ref = practice.role_to_practitioner.get(ref, ref)
        differs += bool(seen) and seen.most_common(1)[0][0] != ref
    assert differs >= 1


def test_age_mix_and_prevalence(large: list[dict[str, Any]]) -> None:
    typed = by_type(large)
    ages = {
        p["id"]: (AS_OF - date.fromisoformat(p["birthDate"])).days / 365.25
        for p in typed["Patient"]
    }
    assert 0.16 < sum(a < 18 for a in ages.values()) / len(ages) < 0.24
    assert 0.16 < sum(a >= 65 for a in ages.values()) / len(ages) < 0.24
    has: dict[str, set[str]] = defaultdict(set)
    for cond in typed["Condition"]:
        if not malformed(cond):
            has[cond["subject"]["reference"][len("Patient/") :]].add(cond["code"]["text"])
    seniors = [pid for pid, age in ages.items() if age >= 65]

    def share(display: str, group: list[str]) -> float:
        return sum(display in has[pid] for pid in group) / len(group)

    expected = {
        "Essential hypertension": 0.60,
        "Hyperlipidemia": 0.50,
        "Type 2 diabetes mellitus": 0.22,
        "Heart failure": 0.08,
        "Chronic obstructive lung disease": 0.10,
        "Atrial fibrillation": 0.09,
        "Coronary arteriosclerosis": 0.15,
        "Depressive disorder": 0.12,
        "Chronic kidney disease stage 3": 0.14,
    }
    for display, target in expected.items():
        assert abs(share(display, seniors) - target) < max(0.06, target * 0.45), display
    children = [pid for pid, age in ages.items() if age < 18]
    assert 0.04 < share("Asthma", children) < 0.12
    assert share("Essential hypertension", children) < 0.03
    # Multimorbidity rises with age.
    adults = [pid for pid, age in ages.items() if 18 <= age < 40]
    chronic = {c.display for c in CONDITION_CATALOGUE if c.chronic}
    assert sum(len(has[p] & chronic) for p in seniors) / len(seniors) > 2 * sum(
        len(has[p] & chronic) for p in adults
    ) / len(adults)


def test_condition_coding_and_status_mix(large: list[dict[str, Any]]) -> None:
    conditions = [c for c in by_type(large)["Condition"] if not malformed(c)]
    mix = Counter(tuple(sorted(c["system"] for c in cond["code"]["coding"])) for cond in conditions)
    total = len(conditions)
    assert abs(mix[(ICD10CM, SNOMED)] / total - 0.60) < 0.05
    assert abs(mix[(SNOMED,)] / total - 0.30) < 0.05
    assert abs(mix[(ICD10CM,)] / total - 0.10) < 0.04
    catalogue = {(c.icd10cm, c.snomed) for c in CONDITION_CATALOGUE}
    icd = {c.icd10cm for c in CONDITION_CATALOGUE}
    for cond in conditions:
        for coding in cond["code"]["coding"]:
            if coding["system"] == ICD10CM:
                assert coding["code"] in icd
                assert len(coding["code"]) == 3 or "." in coding["code"]
    assert len(catalogue) == len(CONDITION_CATALOGUE)

    verification = Counter(c["verificationStatus"]["coding"][0]["code"] for c in conditions)
    assert 0.01 < verification["refuted"] / total < 0.035
    assert 0.003 < verification["entered-in-error"] / total < 0.02
    clinical = Counter(
        c.get("clinicalStatus", {"coding": [{"code": None}]})["coding"][0]["code"]
        for c in conditions
    )
    assert {"active", "resolved", "remission", None} <= set(clinical)
    for cond in conditions:
        category = cond["category"][0]["coding"][0]["code"]
        acute = cond["code"]["text"] in (
            "Upper respiratory infection",
            "Sprain of ankle",
            "Sinusitis",
        )
        assert category == ("encounter-diagnosis" if acute else "problem-list-item")
        assert ("encounter" in cond) == acute
        if "abatementDateTime" in cond:
            assert cond["clinicalStatus"]["coding"][0]["code"] in ("resolved", "remission")
        status = cond["verificationStatus"]["coding"][0]["code"]
        if status == "entered-in-error":
            assert "clinicalStatus" not in cond
        assert cond["onsetDateTime"] <= cond["recordedDate"] <= AS_OF.isoformat()


def test_encounter_mix(large: list[dict[str, Any]]) -> None:
    practice = Practice(large)
    encounters = [e for es in practice.encounters.values() for e in es]
    classes = Counter(e["class"]["code"] for e in encounters)
    assert {"AMB", "VR", "EMER", "IMP", "HH"} == set(classes)
    office = [
        e
        for e in encounters
        if codes(e["type"]) & {(LOCAL, "OFFICE"), (LOCAL, "WELLNESS")}
        and e["status"] == "finished"
        and practice.clinician(e) in practice.pcps
    ]
    assert 0.06 < sum(e["class"]["code"] == "VR" for e in office) / len(office) < 0.14
    statuses = Counter(e["status"] for e in encounters)
    assert statuses["finished"] > 0.85 * len(encounters)
    assert statuses["cancelled"] > 0 and statuses["in-progress"] > 0 and statuses["planned"] > 0
    for enc in encounters:
        if enc["class"]["code"] == "EMER":
            assert codes(enc["type"]) == {(SNOMED, "50849002")}
            assert enc["serviceProvider"]["reference"] == "Organization/org-hospital"
        if enc["class"]["code"] == "IMP":
            assert codes(enc["type"]) == {(SNOMED, "32485007")}
        if enc["status"] != "planned":
            assert practice.start(enc).date() <= AS_OF
        assert practice.start(enc).date() >= months_before(AS_OF, 36)
    starts = [e["period"]["start"] for e in encounters]
    assert any(s.endswith("Z") for s in starts) and any(s.endswith("-05:00") for s in starts)

    wellness = [e for e in encounters if practice.all_codes(e) & SENTINEL]
    placement = Counter(
        "type"
        if codes(e["type"]) & SENTINEL
        else "serviceType"
        if "serviceType" in e
        else "reasonCode"
        for e in wellness
    )
    off_type = (placement["serviceType"] + placement["reasonCode"]) / len(wellness)
    assert 0.08 < off_type < 0.22 and placement["serviceType"] and placement["reasonCode"]
    systems = Counter(system for e in wellness for system, _ in practice.all_codes(e) & SENTINEL)
    assert systems[SNOMED] and systems[CPT] and systems[HCPCS]
    # "Encounter for check up" marks symptom visits, never together with a sentinel code.
    checkups = [e for e in encounters if (SNOMED, "185349003") in codes(e["type"])]
    assert checkups
    assert not any(practice.all_codes(e) & SENTINEL for e in checkups)
    assert all((LOCAL, "OFFICE") in codes(e["type"]) for e in checkups)
    participants = [p for e in encounters for p in e["participant"]]
    refs = Counter(p["individual"]["reference"].split("/")[0] for p in participants)
    assert 0.05 < refs["PractitionerRole"] / len(participants) < 0.15
    types = Counter(c for p in participants for _, c in codes(p.get("type", [])))
    assert types["PPRF"] and types["ATND"] and types["SPRF"]
    assert any("type" not in p for p in participants)


def test_clinicians_and_roles(small: list[dict[str, Any]]) -> None:
    typed = by_type(small)
    for prac in typed["Practitioner"]:
        npi = prac["identifier"][0]
        assert npi["system"] == "http://hl7.org/fhir/sid/us-npi" and is_valid_npi(npi["value"])
        assert prac["qualification"][0]["code"]["coding"][0]["code"] in (
            "MD",
            "DO",
            "NP",
            "PA",
            "RN",
        )
    assert npi_check_digit("123456789") == "3"  # CMS's worked example: 1234567893
    specialties: Counter[str] = Counter()
    text_only = 0
    for role in typed["PractitionerRole"]:
        for concept in role["specialty"]:
            if "coding" in concept:
                specialties.update(c["code"] for c in concept["coding"] if c["system"] == NUCC)
            else:
                text_only += 1
    assert PRIMARY_CARE <= set(specialties)
    assert {"207RC0000X", "207RE0101X", "207RN0300X", "207P00000X", "208M00000X"} <= set(
        specialties
    )
    assert text_only >= 1
    assert sum(specialties[c] for c in PRIMARY_CARE) + text_only >= 6
    # Clinicians scale with the population: about one PCP per 1,500 patients, at least 8.
    assert pcp_count(300) == 8 and pcp_count(100_000) == 67
    directory = build_directory(30_000, 1)
    assert len(directory.pcps) == 20
    assert sum(c.text_only for c in directory.pcps) == 3  # 15%


# ---------------------------------------------------------------- validation and bundles


def test_a_sample_validates_against_r4b(small: list[dict[str, Any]]) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    good = [r for r in small if not malformed(r)]
    sample = [r for r in good if r["resourceType"] not in ("Encounter", "Condition")]
    sample = sample[:120] + good[:: len(good) // 250][:250]
    assert len(sample) > 300
    for res in sample:
        get_fhir_model_class(res["resourceType"]).model_validate(res)
    bad_dates = [
        r
        for r in small
        if malformed(r)
        and (
            r.get("period", {}).get("start") == "2025-13-45"
            or r.get("onsetDateTime") == "2025-13-45"
        )
    ]
    assert bad_dates
    for res in bad_dates:
        with pytest.raises(ValueError):
            get_fhir_model_class(res["resourceType"]).model_validate(res)


def test_bundles_are_ordered_transactions_within_the_size_limit(tmp_path: Path) -> None:
    counts = write_population(tmp_path, 150, 3, AS_OF, malformed_rate=0.05, bundle_size=40)
    bundles = sorted((tmp_path / "bundles").glob("transaction-*.json"))
    assert [b.name for b in bundles[:2]] == ["transaction-0001.json", "transaction-0002.json"]
    seen: set[str] = set()
    total = 0
    refused = sum(
        refused_by_servers(res, 150)
        for rtype in RESOURCE_TYPES
        for res in ndjson(tmp_path / f"{rtype}.ndjson")
    )
    assert refused
    for path in bundles:
        bundle = orjson.loads(path.read_bytes())
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
        assert 1 <= len(bundle["entry"]) <= 40
        here = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
        for entry in bundle["entry"]:
            res = entry["resource"]
            assert entry["request"] == {
                "method": "PUT",
                "url": f"{res['resourceType']}/{res['id']}",
            }
            # Referenced resources are in this bundle or an earlier one.
            assert set(references(res)) <= seen | here, res["id"]
        seen |= here
        total += len(bundle["entry"])
    assert total == sum(counts.values()) - refused
    first = orjson.loads(bundles[0].read_bytes())["entry"]
    assert [e["resource"]["resourceType"] for e in first[:4]] == ["Organization"] * 4


def test_a_bundle_validates_against_r4b(tmp_path: Path) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    write_population(tmp_path, 20, 11, AS_OF, malformed_rate=0.0, bundle_size=60)
    bundle = orjson.loads((tmp_path / "bundles" / "transaction-0002.json").read_bytes())
    get_fhir_model_class("Bundle").model_validate(bundle)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        list(generate_population(-1, 1, AS_OF))
    with pytest.raises(ConfigError):
        list(generate_population(10, 1, AS_OF, malformed_rate=0.9))
    with pytest.raises(ConfigError):
        write_population(tmp_path, 10, 1, AS_OF, bundle_size=0)
    # No patients still gives the practice itself.
    assert {r["resourceType"] for r in generate_population(0, 1, AS_OF)} == {
        "Organization",
        "Practitioner",
        "PractitionerRole",
    }


# ---------------------------------------------------------------- streaming


def _peak_while_streaming(patients: int) -> int:
    tracemalloc.start()
    try:
        for _ in generate_population(patients, 9, AS_OF):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_population() -> None:
    small_peak = _peak_while_streaming(200)
    large_peak = _peak_while_streaming(2000)
    # Ten times the patients (same clinician count): the peak is about the same.
    assert large_peak < small_peak * 1.3 + 100_000, (small_peak, large_peak)


# ---------------------------------------------------------------- the catalogue as data


def test_the_catalogue_ships_as_package_data() -> None:
    from importlib import resources

    from fhirpanel.sandbox.catalogue import CATALOGUE, CATALOGUE_FILE, load_catalogue

    shipped = resources.files("fhirpanel.sandbox").joinpath(CATALOGUE_FILE)
    assert shipped.is_file()
    assert load_catalogue(shipped.read_text(encoding="utf-8")) == CATALOGUE
    assert CONDITION_CATALOGUE == CATALOGUE.conditions
    assert [key for key, _ in CATALOGUE.pattern_deck][:2] == ["none", "lapsed"]  # file order


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("hiv = [0.0, 0.003", "hiv_typo = [0.0, 0.003"), "prevalence names unknown hiv_typo"),
        (("pa = 0.4", 'pa = "often"'), "preference.senior.pa: expected a number"),
        (
            ('nephrology = ["ckd4", "t2dm_ckd"]', 'nephrology = ["ckd5"]'),
            "specialist_for names unknown ckd5",
        ),
        (("merge = 1", "merge = 0"), "visit_patterns.merge: expected a number of cards"),
        (('state = "IL"', "state = 17"), "places.state: expected a string"),
        (("[prevalence]", "[prevalence"), "not valid TOML"),
    ],
)
def test_a_broken_catalogue_is_refused_by_name(edit: tuple[str, str], message: str) -> None:
    from importlib import resources

    from fhirpanel.sandbox.catalogue import CATALOGUE_FILE, CatalogueError, load_catalogue

    text = resources.files("fhirpanel.sandbox").joinpath(CATALOGUE_FILE).read_text("utf-8")
    assert edit[0] in text
    with pytest.raises(CatalogueError, match=re.escape(message)):
        load_catalogue(text.replace(edit[0], edit[1], 1))


def test_utilisation_modes_change_only_acute_visits() -> None:
    """`utilisation` decides emergency visits and inpatient stays only: the same patients and
    chronic problem lists; `independent` gives everyone the same rates, `risk` more to the
    multimorbid; an unknown mode is a usage error."""

    def acute_by_patient(mode: str) -> tuple[list[str], dict[str, int], dict[str, int]]:
        patients, acute, chronic = [], Counter[str](), Counter[str]()
        for res in generate_population(400, 5, AS_OF, 0.0, utilisation=mode):
            if res["resourceType"] == "Patient":
                patients.append(res["id"])
            elif res["resourceType"] == "Encounter" and res["class"]["code"] in ("EMER", "IMP"):
                acute[res["subject"]["reference"]] += 1
            elif res["resourceType"] == "Condition" and "abatementDateTime" not in res:
                chronic[res["subject"]["reference"]] += 1
        return patients, acute, chronic

    mild = acute_by_patient("mild")
    assert mild[0] == acute_by_patient("independent")[0] == acute_by_patient("risk")[0]
    assert list(generate_population(60, 5, AS_OF, 0.0)) == list(
        generate_population(60, 5, AS_OF, 0.0, utilisation="mild")
    )

    def sick_to_well_ratio(mode: str) -> float:
        _, acute, chronic = acute_by_patient(mode)
        sick = [p for p in chronic if chronic[p] >= 3]
        well = [f"Patient/{p}" for p in mild[0] if chronic[f"Patient/{p}"] == 0]
        return (sum(acute[p] for p in sick) / len(sick)) / (
            max(sum(acute[p] for p in well), 1) / len(well)
        )

    assert sick_to_well_ratio("independent") < 2 < 10 < sick_to_well_ratio("risk")
    with pytest.raises(ConfigError, match="utilisation"):
        list(generate_population(1, 5, AS_OF, utilisation="sometimes"))
