"""What an operator reads after real traffic: two demo runs on one `homeward up`, then a case's
story (`case show`), the payments (`payments list`) and the program report, as JSON, as tables
and as an HTML page opened in a real headless browser."""

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.conftest import Running, homeward_up
from tests.support import homeward_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEMO_PARTICIPANTS = "1000"
DEMO_SECONDS_MAX = 300.0
CHROMIUM = "/usr/bin/chromium"
CHARTS = {"funnel", "payouts-per-day", "cases-by-destination", "time-to-payment"}


@pytest.fixture(scope="module")
def homeward(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A `homeward up` of this module's own: the demo's cases only, whatever the other tests send."""
    with homeward_up(tmp_path_factory.mktemp("operated")) as running:
        yield running


@pytest.fixture(scope="module")
def demos(homeward: Any) -> list[subprocess.CompletedProcess[str]]:
    """`homeward demo --participants 1000`, twice on the same state dir, as an operator tries it."""
    demo = ("demo", "--participants", DEMO_PARTICIPANTS, "--state-dir", str(homeward.state_dir))
    return [homeward_cli(*demo, timeout_seconds=DEMO_SECONDS_MAX) for _ in range(2)]


def state(homeward: Any) -> list[str]:
    return ["--state-dir", str(homeward.state_dir)]


async def one(homeward: Any, query: str) -> Any:
    """One value from the database, read as its owner (the test looks for a case to show)."""
    runtime = json.loads((homeward.state_dir / "runtime.json").read_text())
    connection = await asyncpg.connect(runtime["database_url"])
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()


def show(homeward: Any, case: str) -> dict[str, Any]:
    shown = homeward_cli("case", "show", case, "--json", *state(homeward))
    assert shown.returncode == 0, shown.stderr
    document: dict[str, Any] = json.loads(shown.stdout)
    assert "sealed" not in shown.stdout and "identity_key" not in shown.stdout, "no personal data, no identity hash"
    return document


def test_the_demo_passes_twice_on_one_state_dir(demos):
    for run in demos:
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert "every eligible participant was paid exactly once" in run.stdout
        # This run's figures and the program's to date are told apart, and the time says what it covers.
        assert "this run" in run.stdout and "all time" in run.stdout
        assert "first registration to last payment" in run.stdout


async def test_case_show_tells_a_paid_case_from_registration_to_payout(homeward, demos):
    case_id = await one(homeward, "SELECT case_id::text FROM disbursement.payments WHERE status = 'disbursed' LIMIT 1")
    story = show(homeward, case_id)
    published = [entry["what"].split(" ")[0] for entry in story["timeline"] if entry["event_id"]]
    for topic in ("registration.accepted.v1", "travel.booked.v1", "arrival.verified.v1", "stipend.disbursed.v1"):
        assert topic in published
    times = [entry["at"] for entry in story["timeline"]]
    assert times == sorted(times), "oldest first"
    by_topic = {entry["what"].split(" ")[0]: entry for entry in story["timeline"] if entry["event_id"]}
    assert by_topic["travel.booked.v1"]["causation_id"] == by_topic["registration.accepted.v1"]["event_id"]
    assert by_topic["stipend.disbursed.v1"]["causation_id"] == by_topic["arrival.verified.v1"]["event_id"]
    payment = story["payment"]
    assert payment["status"] == "disbursed" and payment["amount"] == "1000.00"
    assert [transfer["kind"] for transfer in payment["transfers"]] == ["pending", "post_pending"]
    assert [callback["status"] for callback in payment["callbacks"]] == ["paid"]
    assert story["booking"]["status"] == "booked" and story["booking"]["fare_amount"] is not None
    assert any(piece["counted"] for piece in story["evidence"])
    assert story["dead_letters"] == []
    # Asked by its application id, the same story.
    assert show(homeward, story["application_id"])["case_id"] == case_id
    table = homeward_cli("case", "show", case_id, *state(homeward))
    assert table.returncode == 0 and "stipend.disbursed.v1" in table.stdout, table.stderr


async def test_case_show_tells_a_rejected_application_with_its_codes(homeward, demos):
    application_id = await one(
        homeward,
        "SELECT application_id::text FROM registration.applications "
        "WHERE outcome_topic = 'registration.rejected.v1' AND outcome_data::text LIKE '%ineligible_age%' LIMIT 1",
    )
    story = show(homeward, application_id)
    assert story["case_id"] is None and story["application_id"] == application_id
    assert story["registration"]["outcome"] == "registration.rejected.v1"
    assert story["registration"]["rejection_codes"] == ["ineligible_age"]
    assert [entry["what"] for entry in story["timeline"]][:2] == [
        "registration.submitted.v1 received", "registration.rejected.v1 (published)",
    ]  # fmt: skip


async def test_case_show_says_why_evidence_did_not_count(homeward, demos):
    """The demo's app check-ins sometimes score too low first: that piece did not count, and says why."""
    case_id = await one(homeward, "SELECT case_id::text FROM arrival.evidence WHERE identity_match_score < 0.8 LIMIT 1")
    story = show(homeward, case_id)
    said = {(piece["source"], piece["counted"], piece["why"]) for piece in story["evidence"]}
    assert ("participant_app", False, "score_too_low") in said
    assert ("participant_app", True, "verified_the_case") in said
    assert story["arrival"]["outcome"] == "verified" and story["arrival"]["rule"] == "carrier_and_app"


def test_case_show_of_an_unknown_id_exits_1_and_a_bad_one_2(homeward):
    unknown = homeward_cli("case", "show", "00000000-0000-4000-8000-000000000000", *state(homeward))
    assert unknown.returncode == 1 and "no case or application" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad = homeward_cli("case", "show", "not-an-id", *state(homeward))
    assert bad.returncode == 2 and "not a case or application id" in bad.stderr


def test_payments_list_by_state_with_age_and_reason(homeward, demos):
    listed = homeward_cli("payments", "list", "--state", "disbursed", "--limit", "5", "--json", *state(homeward))
    assert listed.returncode == 0, listed.stderr
    payments = json.loads(listed.stdout)
    assert len(payments) == 5
    for payment in payments:
        assert payment["state"] == "disbursed" and payment["reason"] is None
        assert isinstance(payment["age_ms"], int) and payment["age_ms"] >= 0
        assert payment["created_at"].endswith("Z")
    held = homeward_cli("payments", "list", "--state", "held", *state(homeward))
    assert held.returncode == 0 and "no payments in state held" in held.stdout
    wrong = homeward_cli("payments", "list", "--state", "lost", *state(homeward))
    assert wrong.returncode == 2 and "held, pending, disbursed" in wrong.stderr


def test_the_report_counts_the_program_and_its_html_renders_in_a_browser(homeward, demos, tmp_path: Path):
    page = tmp_path / "report.html"
    made = homeward_cli("report", "--json", "--html", str(page), *state(homeward))
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    totals = report["totals"]
    assert totals["submitted"] >= 2 * int(DEMO_PARTICIPANTS)
    assert totals["submitted"] >= totals["accepted"] >= totals["booked"] >= totals["verified"] >= totals["paid"] > 0
    assert totals["rejected"] == sum(report["rejected_by_code"].values())
    assert sum(totals["verified_by_rule"].values()) == totals["verified"]
    assert sum(row["accepted"] for row in report["by_country"]) == totals["accepted"]
    budget = report["budget"]
    assert float(budget["funded"]) - float(budget["spent"]) - float(budget["reserved"]) == float(budget["left"])
    assert report["time_to_payment"]["p50_seconds"] <= report["time_to_payment"]["p95_seconds"]
    assert float(report["cost_per_return"]["total"]) > float(report["cost_per_return"]["stipend"]) == 1000.0
    text = page.read_text()
    for fetches in ("<script", "<link", "<img", 'src="', "url(http", "@import", 'href="http'):
        assert fetches not in text, f"self-contained: nothing to fetch or run ({fetches})"
    rendered = charts_in_a_browser(page)
    assert set(rendered) == CHARTS
    for chart, (width, height, marks, declared) in rendered.items():
        assert width > 100 and height > 50, chart
        assert marks > 0 and marks == declared, f"{chart}: {marks} data marks drawn, {declared} expected"


def charts_in_a_browser(page: Path) -> dict[str, tuple[float, float, int, int]]:
    """Each chart's size on the page and its data marks that have an area, as Chromium lays it out."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"the report's browser test needs Debian's chromium at {CHROMIUM} (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1300, "height": 900})
            tab.goto(page.as_uri())
            found = tab.evaluate(
                """() => [...document.querySelectorAll('figure.chart')].map(figure => {
                    const box = figure.querySelector('svg').getBoundingClientRect();
                    const marks = [...figure.querySelectorAll('[id^="mark-"]')]
                        .filter(mark => { const area = mark.getBBox(); return area.width > 0 && area.height > 0; });
                    return [figure.id, box.width, box.height, marks.length, Number(figure.dataset.marks)];
                })"""
            )
        finally:
            browser.close()
    return {name: (width, height, marks, declared) for name, width, height, marks, declared in found}
