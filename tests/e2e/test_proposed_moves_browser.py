"""A proposed move accepted on the dashboard, in headless Chromium (issue 17, item 2): a practice
manager confirms a patient's assignment with the clinician (by phone), the patient then sees
another clinician more often, a refresh keeps them and proposes the move, and the manager
accepts it on the Proposed moves page; the refresh it starts moves the patient. The app, the
store and the sandbox FHIR server are real, as in `test_dashboard_browser.py` (whose fixtures
this reuses). Screenshots go under the `output_dir` fixture's folder."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_dashboard_browser import (
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    TOKEN,
    Served,
    chromium,
    served,
)
from tests.integration.test_refresh import add_visits, pick_moves

__all__ = ["chromium", "served"]  # the fixtures, used by name


def test_manager_accepts_a_proposed_move_and_sees_it_applied(
    chromium: Path, served: Served, output_dir: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    store = served.store
    patient, target = next(iter(pick_moves(store, 1).items()))
    first = (store.patient_state(patient) or {})["practitioner"]
    names = {
        c["practitioner"]: c["name"] or c["practitioner"].split("/")[1] for c in store.clinicians()
    }
    bare = patient.split("/")[1]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(served.base_url + "/login")
            page.get_by_label("Access token").fill(TOKEN)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Practice overview")).to_be_visible()

            # Confirm with the clinician, by phone, on the patient's page.
            page.goto(served.base_url + f"/patients/{bare}")
            page.get_by_label("How clinician confirmed").select_option("phone")
            page.get_by_role("button", name="Confirm with clinician").click()
            expect(page.locator(".flashes")).to_contain_text("confirmed with the clinician")
            clinician_row = page.locator('#current-confirmations tr[data-side="clinician"]')
            expect(clinician_row).to_contain_text("phone")
            expect(clinician_row).to_contain_text("manager")
            page.screenshot(path=str(output_dir / "01-confirmed.png"), full_page=True)

            # The patient then sees another clinician more often; a refresh keeps them.
            add_visits(served.settings.fhir.base_url, {patient: target}, store)
            page.get_by_role("link", name="Refresh runs").click()
            page.get_by_role("button", name="Run incremental refresh").click()
            expect(page.locator("#runs tbody tr").first.locator(".run-status")).to_have_text(
                "succeeded"
            )
            assert (store.patient_state(patient) or {})["practitioner"] == first

            # The proposed move, with its evidence, accepted.
            page.get_by_role("link", name="Proposed moves").click()
            expect(page.get_by_role("heading", name="Proposed moves")).to_be_visible()
            row = page.locator(f'tr[data-patient="{patient}"]')
            expect(row).to_contain_text(names[target])
            expect(row).to_contain_text("clinician confirmation")
            page.screenshot(path=str(output_dir / "02-proposed-moves.png"), full_page=True)
            row.get_by_role("button", name="Accept").click()
            expect(page.locator(".flashes")).to_contain_text("Move accepted")
            expect(page.locator("#no-moves")).to_be_visible()
            expect(page.locator("#decided")).to_contain_text("accepted")

            # Applied by the refresh the acceptance started.
            page.goto(served.base_url + f"/patients/{bare}")
            expect(page.locator("#patient-clinician")).to_contain_text(names[target])
            expect(page.locator("#patient-rule")).to_have_text("Override")
            page.screenshot(path=str(output_dir / "03-moved.png"), full_page=True)
        finally:
            browser.close()

    state = store.patient_state(patient) or {}
    assert (state["practitioner"], state["rule"]) == (target, "manual")
    assert [c["ended_reason"] for c in store.confirmations(patient)] == ["move accepted"]
    assert [r.status for r in served.runs] == ["succeeded", "succeeded"]
