"""Bad server input is an input error (issue 12, item 6): whatever shape a search Bundle, a Bulk
manifest, an NDJSON line or a compressed file takes, reading it ends in a result, a recorded
Issue or a project error (FhirpanelError: one line, exit 10), never another exception.

Hypothesis drives the pure parsers (`checked_page` and `SearchTally`, `parse_resource`,
`parse_manifest`, `error_file_issues`, `error_for_response`), the real `FhirClient` over a fake
requests transport adapter serving random bodies, and `NdjsonSource` over folders of random bytes,
random JSON lines and cut-off gzip files. Example counts are modest: the module runs in CI in a
few seconds."""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from fhirpanel.config import FhirSettings
from fhirpanel.domain.records import Issue
from fhirpanel.errors import FhirHttpError, FhirpanelError, SourceError
from fhirpanel.fhir.bulk import ExportManifest, error_file_issues, parse_manifest
from fhirpanel.fhir.client import (
    FhirClient,
    SearchPage,
    SearchTally,
    checked_page,
    entry_mode,
    error_for_response,
)
from fhirpanel.fhir.parse import RESOURCE_TYPES, parse_resource
from fhirpanel.fhir.source import NdjsonSource
from fhirpanel.ingest import read_population

BASE = "http://fhir.test/r4"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_IO = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- strategies

# Keys and strings a FHIR server's JSON is made of, so random documents hit the parsers' paths.
KEYS = (
    "resourceType",
    "id",
    "entry",
    "resource",
    "search",
    "mode",
    "link",
    "relation",
    "url",
    "total",
    "type",
    "fullUrl",
    "issue",
    "severity",
    "diagnostics",
    "details",
    "coding",
    "system",
    "code",
    "display",
    "text",
    "subject",
    "reference",
    "period",
    "start",
    "end",
    "status",
    "class",
    "participant",
    "individual",
    "birthDate",
    "gender",
    "active",
    "deceasedBoolean",
    "deceasedDateTime",
    "generalPractitioner",
    "meta",
    "lastUpdated",
    "output",
    "error",
    "count",
    "requiresAccessToken",
    "transactionTime",
    "request",
    "practitioner",
    "organization",
    "specialty",
    "qualification",
    "name",
    "given",
    "family",
    "onsetDateTime",
    "clinicalStatus",
    "category",
    "serviceType",
    "reasonCode",
)
WORDS = (
    "Bundle",
    "searchset",
    "match",
    "include",
    "outcome",
    "next",
    "self",
    "Patient",
    "Encounter",
    "Condition",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "OperationOutcome",
    "Patient/p1",
    "Practitioner/d1",
    "PractitionerRole/r1",
    "2026-11-22",
    "2026-11-22T10:00:00-05:00",
    "0001-01-01T00:00:00+01:00",
    "2025-13-45",
    "9999-12-31T23:59:59-12:00",
    "finished",
    "planned",
    "AMB",
    "PPRF",
    "error",
    f"{BASE}/Patient?page=2",
    "Patient?page=3",
    "?_getpages=x",
    "//evil.test/x",
    "http://[::1",
    "http://fhir.test:99999/x",
    f"{BASE}/files/Patient.ndjson",
    "",
)

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
    | st.sampled_from(WORDS)
)
keys = st.sampled_from(KEYS) | texts
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=16,
)
json_objects = st.dictionaries(keys, json_values, max_size=8)


def entry_like() -> st.SearchStrategy[Any]:
    resource = (
        st.fixed_dictionaries(
            {"resourceType": st.sampled_from(WORDS) | json_values},
            optional={"id": texts | json_values, "issue": json_values},
        )
        | json_values
    )
    search = st.fixed_dictionaries({}, optional={"mode": st.sampled_from(WORDS) | json_values})
    return (
        st.fixed_dictionaries(
            {},
            optional={"resource": resource, "search": search | json_values, "fullUrl": json_values},
        )
        | json_values
    )


link_like = (
    st.fixed_dictionaries(
        {
            "relation": st.sampled_from(("next", "self")) | json_values,
            "url": st.sampled_from(WORDS) | json_values,
        }
    )
    | json_values
)
bundles = st.fixed_dictionaries(
    {"resourceType": st.just("Bundle") | json_values},
    optional={
        "type": st.just("searchset"),
        "total": st.integers(min_value=-2, max_value=6) | json_values,
        "entry": st.lists(entry_like(), max_size=6) | json_values,
        "link": st.lists(link_like, max_size=3) | json_values,
    },
)
documents = bundles | json_values
deep = b"[" * 5000 + b"]" * 5000


def as_body(value: Any) -> bytes:
    return orjson.dumps(value)


bodies = documents.map(as_body) | st.binary(max_size=200) | st.just(deep)


# ---------------------------------------------------------------- search pages (pure)


@FUZZ
@given(pages=st.lists(documents, min_size=1, max_size=4), rtype=st.sampled_from(RESOURCE_TYPES))
@example(pages=[{"resourceType": "Bundle", "entry": "abc"}], rtype="Patient")
@example(pages=[{"resourceType": "Bundle", "entry": ["a", "b"]}], rtype="Patient")
@example(
    pages=[{"resourceType": "Bundle", "entry": [{"fullUrl": "x"}], "link": "next"}], rtype="Patient"
)
@example(pages=[{"resourceType": "Bundle", "total": 300, "entry": []}], rtype="Encounter")
@example(pages=[{"resourceType": "Bundle", "total": True}, [1], 5, "s"], rtype="Patient")
def test_search_pages_end_in_a_page_or_a_source_error(pages: list[Any], rtype: str) -> None:
    tally = SearchTally(rtype)
    try:
        for number, document in enumerate(pages, start=1):
            page = checked_page(document, f"{rtype} search page {number}")
            assert isinstance(page, SearchPage)
            assert all(isinstance(e, dict) for e in page.entries)
            assert page.total is None or (isinstance(page.total, int) and page.total >= 0)
            assert page.next is None or isinstance(page.next, str)
            for entry in page.entries:
                assert entry_mode(entry, rtype) in (None, "match", "include", "outcome")
            tally.add_page(page, number)
        tally.finish()
    except SourceError as exc:
        assert "\n" not in str(exc)
        return
    # No error: then the pages made up the total they gave. Never a silent short read.
    assert tally.total is None or tally.delivered == tally.total


# ---------------------------------------------------------------- the real client, fake HTTP


class ScriptedTransport(requests.adapters.BaseAdapter):
    """Answers request n with `bodies[n]` (status 200, FHIR JSON); an empty Bundle after."""

    def __init__(self, bodies: list[bytes]) -> None:
        super().__init__()
        self.bodies = list(bodies)
        self.sent = 0

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        body = (
            self.bodies[self.sent] if self.sent < len(self.bodies) else b'{"resourceType":"Bundle"}'
        )
        self.sent += 1
        response = requests.Response()
        response.status_code = 200
        response._content = body
        response.headers = CaseInsensitiveDict({"Content-Type": "application/fhir+json"})
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        return None


def scripted_client(bodies: list[bytes]) -> tuple[FhirClient, ScriptedTransport]:
    transport = ScriptedTransport(bodies)
    session = requests.Session()
    client = FhirClient(FhirSettings(base_url=BASE, max_pages=6, max_retries=0), session=session)
    for prefix in ("http://", "https://", "http://fhir.test/"):
        session.mount(prefix, transport)
    return client, transport


@FUZZ_IO
@given(bodies=st.lists(bodies, min_size=1, max_size=4))
@example(bodies=[b'{"resourceType":"Bundle","entry":"abc"}'])
@example(bodies=[b'{"resourceType":"Bundle","entry":["a","b"]}'])
@example(bodies=[b'{"resourceType":"Bundle","entry":[{"resource":"x"}]}'])
@example(bodies=[b'{"resourceType":"Bundle","link":{"relation":"next","url":"?p=2"}}'])
@example(bodies=[b'{"resourceType":"Bundle","total":"300"}'])
@example(bodies=[b"[]"])
@example(bodies=[b"42"])
@example(bodies=[b'"Bundle"'])
@example(bodies=[b"\xff\xfe\x00{"])
@example(bodies=[deep])
@example(bodies=[b'{"resourceType":"Bundle","link":[{"relation":"next","url":"http://[::1"}]}'])
def test_the_client_raises_nothing_but_project_errors(bodies: list[bytes]) -> None:
    client, transport = scripted_client(bodies)
    got: list[dict[str, Any]] = []
    try:
        got.extend(client.search("Patient"))
    except FhirpanelError as exc:
        assert isinstance(exc, SourceError) and "\n" not in str(exc)
    assert all(isinstance(r, dict) for r in got)
    assert transport.sent <= 6  # fhir.max_pages bounds the loop whatever the links say


@FUZZ
@given(
    status=st.integers(min_value=400, max_value=599),
    body=bodies,
    content_type=st.sampled_from(("application/fhir+json", "application/json", "text/html", "")),
)
def test_any_error_answer_maps_to_an_http_error(
    status: int, body: bytes, content_type: str
) -> None:
    error = error_for_response(status, body, content_type, f"{BASE}/Patient", "Reason")
    assert isinstance(error, FhirHttpError) and error.status == status


# ---------------------------------------------------------------- resources


@FUZZ
@given(
    rtype=st.sampled_from(RESOURCE_TYPES),
    fields=json_objects,
    expected=st.sampled_from((None, *RESOURCE_TYPES)),
)
def test_parse_resource_gives_a_record_or_an_issue(
    rtype: str, fields: dict[str, Any], expected: str | None
) -> None:
    out = parse_resource({**fields, "resourceType": rtype}, expected_type=expected, where="x:1")
    if isinstance(out, Issue):
        assert out.problem and "\n" not in out.problem
    else:
        assert out.id.startswith(f"{rtype}/")


@FUZZ
@given(value=json_values)
def test_parse_resource_takes_any_json_value(value: Any) -> None:
    assert parse_resource(value) is not None


# ---------------------------------------------------------------- Bulk manifests and errors


manifests = (
    st.fixed_dictionaries(
        {},
        optional={
            "transactionTime": json_values,
            "request": json_values,
            "requiresAccessToken": st.booleans() | json_values,
            "output": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "type": st.sampled_from(WORDS) | json_values,
                        "url": st.sampled_from(WORDS) | json_values,
                        "count": st.integers(-1, 5) | json_values,
                    },
                )
                | json_values,
                max_size=4,
            )
            | json_values,
            "error": st.lists(json_values, max_size=2) | json_values,
        },
    )
    | json_values
)


@FUZZ
@given(data=manifests)
def test_a_manifest_parses_or_is_a_source_error(data: Any) -> None:
    try:
        manifest = parse_manifest(data)
    except SourceError as exc:
        assert str(exc).startswith("Bulk export manifest") and "\n" not in str(exc)
        return
    assert isinstance(manifest, ExportManifest)
    assert all(f.count is None or isinstance(f.count, int) for f in manifest.output)


@FUZZ
@given(lines=st.lists(bodies, max_size=5))
def test_error_file_lines_become_issues(lines: list[bytes]) -> None:
    issues = error_file_issues(lines, "error.0001.ndjson")
    assert all(isinstance(i, Issue) and i.action == "recorded" for i in issues)


# ---------------------------------------------------------------- NDJSON folders


def line_of(value: Any) -> bytes:
    return orjson.dumps(value).replace(b"\n", b" ")


ndjson_bodies = (
    st.binary(max_size=300)
    | st.lists(
        json_objects.map(line_of) | json_values.map(line_of) | st.binary(max_size=40), max_size=6
    ).map(b"\n".join)
    | st.lists(
        st.fixed_dictionaries(
            {"resourceType": st.sampled_from(("Patient", "Encounter")), "id": texts},
            optional={"birthDate": json_values, "subject": json_values, "period": json_values},
        ),
        max_size=5,
    ).map(lambda rs: b"\n".join(map(line_of, rs)))
)


@st.composite
def gzip_files(draw: st.DrawFn) -> bytes:
    """A gzip of some NDJSON: whole, cut off anywhere, or with bytes flipped."""
    packed = gzip.compress(draw(ndjson_bodies))
    damage = draw(st.sampled_from(("none", "cut", "flip")))
    if damage == "cut":
        return packed[: draw(st.integers(0, max(0, len(packed) - 1)))]
    if damage == "flip":
        at = draw(st.integers(0, len(packed) - 1))
        return packed[:at] + bytes([packed[at] ^ 0xFF]) + packed[at + 1 :]
    return packed


def folder(files: dict[str, bytes]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        for file_name, body in files.items():
            (directory / file_name).write_bytes(body)
        yield directory


@FUZZ_IO
@given(
    patients=ndjson_bodies | gzip_files(),
    encounters=ndjson_bodies | gzip_files(),
    gzipped=st.booleans(),
)
def test_an_ndjson_folder_reads_or_fails_as_a_source_error(
    patients: bytes, encounters: bytes, gzipped: bool
) -> None:
    names = {
        "Patient.ndjson.gz" if gzipped else "patient.ndjson": patients,
        "ENCOUNTER.ndjson.gz" if gzipped else "Encounter.ndjson": encounters,
    }
    for directory in folder(names):
        try:
            population = read_population(NdjsonSource(directory))
        except SourceError as exc:
            assert "\n" not in str(exc)
            assert ".ndjson" in str(exc)  # names the file it could not read
            continue
        assert all(isinstance(i, Issue) for i in population.issues)
        assert all(key.startswith("Patient/") for key in population.patients)


@FUZZ_IO
@given(body=gzip_files())
def test_a_damaged_gzip_is_never_read_as_a_short_file(body: bytes) -> None:
    """Whole: every line is read. Damaged: a SourceError, or (a flip the gzip checksum cannot
    see before the end, which gzip then reports) the same: never a silent partial read."""
    for directory in folder({"Patient.ndjson.gz": body, "Encounter.ndjson": b""}):
        source = NdjsonSource(directory)
        try:
            items = list(source.read("Patient"))
        except SourceError as exc:
            assert "Patient.ndjson.gz could not be read to its end" in str(
                exc
            ) or "cannot read" in str(exc)
            continue
        # NDJSON lines end at \n only (a \r inside a line is not a break): count them so.
        expected = gzip.decompress(body).split(b"\n")
        assert len(items) == sum(1 for line in expected if line.strip())
