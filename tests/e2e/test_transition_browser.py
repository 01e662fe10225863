"""A panel transition in headless Chromium (the pattern and the served app of
test_dashboard_browser.py: the real app on 127.0.0.1 over a store filled by a full refresh
against a sandbox FHIR server, with write-back): a practice manager opens the biggest panel,
follows "Transition this panel", reads the plan, presses "Accept all", and the refresh that
asks for moves every planned patient to the planned clinician; their new panels list them, and
the old panel keeps only the patients nobody had room for.

Skipped when /usr/bin/chromium is missing, unless CI is set (then it fails)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_dashboard_browser import (  # noqa: F401 - pytest fixtures
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    TOKEN,
    Served,
    chromium,
    served,
)


def test_manager_transitions_a_panel_and_sees_the_patients_moved(
    chromium: Path,  # noqa: F811 - the fixture
    served: Served,  # noqa: F811 - the fixture
    output_dir: Path,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    store = served.store
    leaving = max(
        (c for c in store.clinicians() if c["eligible"] and not c["pediatric"]),
        key=lambda c: c["size"],
    )
    ref = leaving["practitioner"]
    leaving_id = ref.split("/")[1]
    before = [
        p for p in store.patient_ids() if (store.patient_state(p) or {}).get("practitioner") == ref
    ]
    assert len(before) == leaving["size"] > 10

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(served.base_url + f"/login?next=/panels/{leaving_id}")
            page.get_by_label("Access token").fill(TOKEN)
            page.get_by_role("button", name="Sign in").click()
            expect(page).to_have_url(served.base_url + f"/panels/{leaving_id}")

            page.get_by_role("link", name="Transition this panel…").click()
            expect(page).to_have_url(served.base_url + f"/panels/{leaving_id}/transition")
            expect(page.get_by_role("heading", name="Transition the panel of")).to_be_visible()
            rows = page.locator("#transition-moves tbody tr")
            assert rows.count() == len(before)
            plan = rows.evaluate_all("rs => rs.map(r => [r.dataset.patient, r.dataset.to])")
            planned = {patient: to for patient, to in plan if to}
            assert planned and all(to != ref for to in planned.values())
            assert page.locator("#transition-panels tbody tr").count() == sum(
                1 for c in store.clinicians() if c["eligible"] and c["practitioner"] != ref
            )
            page.screenshot(path=str(output_dir / "20-transition-plan.png"), full_page=True)

            page.get_by_role("button", name=f"Accept all {len(planned)} moves").click()
            expect(page.locator(".flashes")).to_contain_text(
                f"{len(planned)} patients of {leaving['name'] or leaving_id} will move"
            )
            expect(page.locator(".flashes")).to_contain_text("has started to apply it")
            page.screenshot(path=str(output_dir / "21-transition-accepted.png"), full_page=True)

            # The refresh moved them: each is on the planned clinician's panel, as an override.
            patient, to = next(iter(sorted(planned.items())))
            page.goto(served.base_url + f"/panels/{to.split('/')[1]}?sort=rule&page=1")
            page.goto(served.base_url + f"/patients/{patient.split('/')[1]}")
            expect(page.locator("#patient-rule")).to_have_text("Override")
            page.goto(served.base_url + f"/panels/{leaving_id}")
            expect(page.locator("#panel-size")).to_have_text(str(len(before) - len(planned)))
            for moved in list(planned)[:5]:
                expect(page.locator(f'tr[data-patient="{moved}"]')).to_have_count(0)
            page.goto(served.base_url + f"/panels/{leaving_id}/transition")
            assert page.locator("#transition-moves tbody tr").count() == len(before) - len(planned)
            page.screenshot(path=str(output_dir / "22-after-transition.png"), full_page=True)
        finally:
            browser.close()

    # One refresh applied every override; each patient is where the plan said.
    assert len(served.runs) == 1 and served.runs[0].status == "succeeded", served.runs[0].error
    assert store.pending_patients() == []
    for patient, to in planned.items():
        state = store.patient_state(patient) or {}
        assert (state["status"], state["practitioner"], state["rule"]) == ("assigned", to, "manual")
    for clinician in store.clinicians():
        grew = any(to == clinician["practitioner"] for to in planned.values())
        assert not grew or clinician["risk_adjusted_size"] <= clinician["capacity"] + 0.05, (
            clinician
        )
