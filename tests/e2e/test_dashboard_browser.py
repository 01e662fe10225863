"""The dashboard in headless Chromium (Debian's /usr/bin/chromium driven by Playwright), as a
practice manager uses it: sign in, see the panel bars, confirm one assignment, override another,
run a refresh, and find both reflected; then sign out (a cookie copied before no longer works),
find that an old `?token=` address signs nobody in, and use a single-use sign-in link once.
The app is the real one, served on 127.0.0.1 over a store filled by a full refresh against a
real sandbox FHIR server (with write-back, so CareTeams exist). Screenshots go under the
`output_dir` fixture's folder.

Skipped when /usr/bin/chromium is missing, unless CI is set (then it fails): `.ci/run` installs
it.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from fhirpanel.api.app import create_app
from fhirpanel.config import Settings
from fhirpanel.jobs.refresh import full_refresh, incremental_refresh
from fhirpanel.sandbox.server import SandboxServer
from fhirpanel.store import Store
from fhirpanel.store.sessions import issue_login_link
from fhirpanel.writeback.identity import CARE_TEAM_KIND, identifier_value
from tests.conftest import AS_OF

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AS_OF_DATE = date.fromisoformat(AS_OF)
TOKEN = "browser-test-admin-token"
TIMEOUT_MS = 20_000  # any single wait in the browser


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} is missing (Debian package `chromium`; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@dataclasses.dataclass
class Served:
    base_url: str
    store: Store
    settings: Settings
    runs: list[Any]
    busy: threading.Event  # the refresh lock is "held": changes wait in the queue


@pytest.fixture
def served(sandbox: SandboxServer, population_dir: Path, tmp_path: Path) -> Iterator[Served]:
    from werkzeug.serving import make_server

    sandbox.load_ndjson_dir(population_dir)
    base = Settings.load(env={})
    settings = dataclasses.replace(
        base,
        database_url=f"sqlite:///{tmp_path / 'state.db'}",
        fhir=dataclasses.replace(base.fhir, base_url=sandbox.base_url),
        scheduler=dataclasses.replace(base.scheduler, source=sandbox.base_url),
        api=dataclasses.replace(base.api, admin_tokens=f"manager={TOKEN}"),
    )
    store = Store(settings.database)
    first = full_refresh(settings, store, as_of=AS_OF_DATE, write=True)
    assert first.status == "succeeded", first.error
    runs: list[Any] = []
    busy = threading.Event()

    def trigger(kind: str, by: str) -> int | None:
        # request_run would date the pass today; the committed population is dated AS_OF, so
        # the test runs the same incremental pass in the request, with that date. While
        # `busy` is set it answers as request_run does when another refresh holds the lock.
        if busy.is_set():
            return None
        result = incremental_refresh(settings, store, trigger=by, as_of=AS_OF_DATE)
        runs.append(result)
        return result.run_id if result.status != "skipped" else None

    app = create_app(settings, store=store, trigger=trigger)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, name="dashboard-test-server", daemon=True
    )
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{server.server_port}", store, settings, runs, busy)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        store.close()


def test_manager_confirms_overrides_and_sees_both_after_a_refresh(
    chromium: Path, served: Served, output_dir: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    store = served.store
    clinicians = store.clinicians()
    source = max(
        (c for c in clinicians if c["eligible"] and not c["pediatric"]), key=lambda c: c["size"]
    )
    target = max(
        (
            c
            for c in clinicians
            if c["eligible"] and not c["pediatric"] and c["practitioner"] != source["practitioner"]
        ),
        key=lambda c: c["open_capacity"],
    )
    source_id = source["practitioner"].split("/")[1]
    target_id = target["practitioner"].split("/")[1]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.set_default_timeout(TIMEOUT_MS)

            # Sign in with the token field.
            page.goto(served.base_url + "/")
            expect(page).to_have_url(served.base_url + "/login?next=/")
            page.get_by_label("Access token").fill(TOKEN)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Practice overview")).to_be_visible()

            # The panel bars: one per clinician with a panel, each drawn with a length.
            page.wait_for_function("() => window.fhirpanelChart !== undefined")
            bars = page.evaluate("""() => {
                const chart = window.fhirpanelChart;
                return chart.getDatasetMeta(0).data.map(b => Math.abs(b.x - b.base));
            }""")
            shown = [c for c in clinicians if c["eligible"] or c["size"]]
            assert len(bars) == len(shown)
            assert all(length > 0 for c, length in zip(shown, bars, strict=True) if c["size"])
            page.screenshot(path=str(output_dir / "01-overview.png"), full_page=True)
            page.get_by_label("Zoom to panel sizes (hide capacity)").check()
            assert page.evaluate("() => window.fhirpanelChart.isDatasetVisible(2)") is False
            page.screenshot(path=str(output_dir / "02-overview-zoomed.png"))

            # The biggest panel, from the overview's table.
            page.locator(f'tr[data-practitioner="{source["practitioner"]}"] a').first.click()
            expect(page).to_have_url(served.base_url + f"/panels/{source_id}")
            rows = page.locator("#panel-patients tbody tr")
            expect(rows.first).to_be_visible()
            patients = rows.evaluate_all("rs => rs.map(r => r.dataset.patient)")
            confirmed, moved = patients[0], patients[1]
            page.screenshot(path=str(output_dir / "03-panel.png"))

            # Confirm one assignment with the clinician.
            row = page.locator(f'tr[data-patient="{confirmed}"]')
            row.get_by_role("button", name="Confirm with clinician").click()
            expect(page.locator(".flashes")).to_contain_text("confirmed with the clinician")
            expect(page.locator(f'tr[data-patient="{confirmed}"] td.confirmation')).to_contain_text(
                "Confirmed with clinician"
            )

            # Override another: the family asked for the clinician with the most room. The
            # worker is busy, so the change waits in the queue for the next refresh.
            served.busy.set()
            page.locator(f'tr[data-patient="{moved}"]').get_by_role(
                "link", name="Change clinician…"
            ).click()
            expect(page.get_by_role("heading", name="Change clinician")).to_be_visible()
            page.get_by_label("New clinician").select_option(target["practitioner"])
            page.get_by_label("Family").check()
            page.get_by_label("Reason").fill("family moved nearer this clinic")
            page.screenshot(path=str(output_dir / "04-override-form.png"))
            page.get_by_role("button", name="Save override").click()
            expect(page).to_have_url(served.base_url + f"/panels/{source_id}")
            expect(page.locator(".flashes")).to_contain_text("applied by the next refresh")
            page.screenshot(path=str(output_dir / "05-after-changes.png"))
            assert moved in store.pending_patients() and not served.runs
            expect(page.locator(f'tr[data-patient="{moved}"]')).to_be_visible()  # not yet moved

            served.busy.clear()

            # Run a refresh from the runs page.
            page.get_by_role("link", name="Refresh runs").click()
            page.get_by_role("button", name="Run incremental refresh").click()
            expect(page.locator(".flashes")).to_contain_text("Incremental refresh started")
            newest = page.locator("#runs tbody tr").first
            expect(newest.locator(".run-status")).to_have_text("succeeded")
            page.screenshot(path=str(output_dir / "06-runs.png"))

            # Both are reflected: the override on the new clinician's panel by rule manual,
            # the confirmation still in place.
            page.goto(served.base_url + f"/panels/{target_id}?sort=rule")
            moved_row = page.locator(f'tr[data-patient="{moved}"]')
            expect(moved_row).to_be_visible()
            expect(moved_row).to_contain_text("Override")
            page.screenshot(path=str(output_dir / "07-new-panel.png"))
            page.goto(served.base_url + f"/patients/{moved.split('/')[1]}")
            expect(page.locator("#patient-clinician")).to_contain_text(target["name"] or target_id)
            expect(page.locator("#patient-rule")).to_have_text("Override")
            team = store.ledger_entry("CareTeam", identifier_value(CARE_TEAM_KIND, moved))
            assert team is not None and team["version"] == "2"  # rewritten for the new PCP
            expect(page.locator("#written")).to_contain_text(team["id"])
            page.screenshot(path=str(output_dir / "08-moved-patient.png"), full_page=True)
            page.goto(served.base_url + f"/patients/{confirmed.split('/')[1]}")
            expect(page.locator("#patient-confirmation")).to_contain_text(
                "Confirmed with clinician"
            )
            page.goto(served.base_url + f"/panels/{source_id}")
            expect(page.locator(f'tr[data-patient="{moved}"]')).to_have_count(0)

            # Sign out: the session is revoked in the store, so the cookie copied before
            # signing out opens nothing.
            copied = [c for c in page.context.cookies() if c["name"] == "session"]
            assert len(copied) == 1 and copied[0]["httpOnly"] and copied[0]["sameSite"] == "Lax"
            page.get_by_role("button", name="Sign out").click()
            expect(page.locator(".flashes")).to_contain_text("You are signed out")
            replay = browser.new_context()
            replay.add_cookies(copied)  # type: ignore[arg-type]
            other = replay.new_page()
            other.set_default_timeout(TIMEOUT_MS)
            other.goto(served.base_url + "/")
            expect(other).to_have_url(served.base_url + "/login?next=/")

            # An old sign-in address carrying the token shows the form and signs nobody in.
            other.goto(served.base_url + f"/login?token={TOKEN}")
            expect(other.locator("#login-note")).to_contain_text("no longer sign you in")
            other.goto(served.base_url + "/runs")
            expect(other).to_have_url(served.base_url + "/login?next=/runs")

            # The demo's single-use link: signs in once, then says it has been used.
            link = served.base_url + issue_login_link(store, "manager")
            other.goto(link)
            expect(other).to_have_url(served.base_url + "/")
            expect(other.get_by_role("heading", name="Practice overview")).to_be_visible()
            expect(other.locator(".who")).to_contain_text("manager")
            fresh = browser.new_page()
            fresh.set_default_timeout(TIMEOUT_MS)
            fresh.goto(link)
            expect(
                fresh.get_by_role("heading", name="This sign-in link has been used")
            ).to_be_visible()
            fresh.screenshot(path=str(output_dir / "09-link-used.png"))
        finally:
            browser.close()

    # The refresh started by the button is the one that applied the queued override.
    assert len(served.runs) == 1 and served.runs[0].status == "succeeded"
    assert moved in served.runs[0].patients and served.runs[0].counts["patients_pending"] == 1
    assert store.pending_patients() == []
    state = store.patient_state(moved) or {}
    assert state["practitioner"] == target["practitioner"] and state["rule"] == "manual"
    assert (store.patient_state(confirmed) or {})["confirmation"] == "clinician"


def test_manager_accepts_every_placement_suggestion_at_once(
    chromium: Path, served: Served, output_dir: Path
) -> None:
    """The unassigned page's before/after table and its button: every suggestion becomes an
    override; the refresh it asks for goes through (changes a person made do not count against
    the brake), and then every patient has a clinician and no panel is over capacity."""
    from playwright.sync_api import expect, sync_playwright

    store = served.store
    unassigned = [
        p for p in store.patient_ids() if (store.patient_state(p) or {})["status"] == "unassigned"
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(served.base_url + "/login?next=/unassigned")
            page.get_by_label("Access token").fill(TOKEN)
            page.get_by_role("button", name="Sign in").click()
            expect(
                page.get_by_role("heading", name="If every suggestion is accepted")
            ).to_be_visible()
            rows = page.locator("#placement tbody tr")
            assert rows.count() == sum(1 for c in store.clinicians() if c["eligible"])
            page.screenshot(path=str(output_dir / "10-placement.png"), full_page=True)
            page.get_by_role("button", name=f"Assign all {len(unassigned)} suggested").click()
            expect(page.locator(".flashes")).to_contain_text(
                f"{len(unassigned)} patients will move to the suggested clinician"
            )
            page.screenshot(path=str(output_dir / "11-placement-accepted.png"))
        finally:
            browser.close()

    # One override each, audited; the pass they asked for applies them all, unheld.
    assert len(served.runs) == 1 and served.runs[0].status == "succeeded", served.runs[0].error
    assert store.pending_patients() == []
    states = [store.patient_state(p) or {} for p in unassigned]
    assert {s["status"] for s in states} == {"assigned"} and {s["rule"] for s in states} == {
        "manual"
    }
    for clinician in store.clinicians():
        assert clinician["risk_adjusted_size"] <= clinician["capacity"], clinician
