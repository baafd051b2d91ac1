"""`homeward bench e2e` says before the run when the budget left cannot pay its whole cohort."""

from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from rich.console import Console

from services.ops.e2e import _warn_if_underfunded
from services.ops.world import LedgerView


def world(eligible: int, ineligible: int = 0) -> Any:
    cohort = [SimpleNamespace(expected="accepted")] * eligible + [SimpleNamespace(expected="rejected")] * ineligible
    return SimpleNamespace(cohort=cohort, console=Console(record=True, width=400))


def test_a_budget_short_of_the_cohort_is_named_with_what_to_do() -> None:
    short = world(eligible=20_000, ineligible=1_000)
    _warn_if_underfunded(short, LedgerView(Decimal("10000000.00"), 0, 0))
    text = short.console.export_text()
    assert "pays 10,000 of 20,000 eligible participants" in text
    assert "HOMEWARD_PROGRAM_BUDGET of at least 20000000.00" in text


def test_a_budget_that_pays_everyone_says_nothing() -> None:
    enough = world(eligible=10_000)
    _warn_if_underfunded(enough, LedgerView(Decimal("10000000.00"), 0, 0))
    assert enough.console.export_text() == ""
