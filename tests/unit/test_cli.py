"""The command line as a new operator meets it: money typed as it should be or refused by name,
runtime conditions as one line with exit code 1 (usage errors keep 2), no traceback for anything
expected, and readable durations."""

import logging
import secrets
from decimal import Decimal
from typing import Any

import pytest
import typer

from services.ops.common import human_duration
from services.ops.ledger import parse_amount
from services.registration.settings import RegistrationSettings
from services.runtime.logs import OncePerCondition
from services.runtime.service import preflight
from tests.support import homeward_cli

UNREACHABLE_DATABASE = "postgresql://someone:secret@127.0.0.1:1/homeward"


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        ("10.001", "more than 2 decimals"),
        ("0.005", "more than 2 decimals"),
        ("0", "not more than 0.00"),
        ("-5", "is not an amount"),
        ("NaN", "is not an amount"),
        ("Infinity", "is not an amount"),
        ("abc", "is not an amount"),
        ("250000,00", "is not an amount"),
        ("1,000.50", "is not an amount"),
        ("1e3", "is not an amount"),
        ("1e100", "is not an amount"),
        ("1_000", "is not an amount"),
        ("99999999999999999999999", "more than one top-up may add"),
    ],
)
def test_an_amount_that_is_not_money_is_refused_by_name(typed: str, said: str) -> None:
    with pytest.raises(typer.BadParameter, match=said) as refused:
        parse_amount(typed, "USD")
    assert refused.value.param_hint == "--amount"


def test_an_amount_in_whole_cents_is_taken_as_typed() -> None:
    assert parse_amount("250000", "USD") == Decimal("250000.00")
    assert parse_amount(" 1000.50 ", "USD") == Decimal("1000.50")
    assert parse_amount("0.01", "USD") == Decimal("0.01")


def test_durations_read_as_people_say_them() -> None:
    assert [human_duration(s) for s in (0.723, 42.4, 303, 3 * 3600 + 720, 2 * 86400 + 4 * 3600)] == [
        "0.72 s", "42 s", "5m 3s", "3h 12m", "2d 4h",
    ]  # fmt: skip


def test_a_terminal_gets_each_library_warning_once_and_every_line_of_ours() -> None:
    once = OncePerCondition()

    def record(name: str, level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, message, None, None)

    retry = [record("aiokafka.conn", logging.WARNING, "Unable connect to %s") for _ in range(50)]
    assert [once.filter(line) for line in retry].count(True) == 1
    assert not once.filter(record("aiokafka.consumer", logging.INFO, "joined group"))
    assert all(once.filter(record("homeward.ops", logging.INFO, "demo.progress")) for _ in range(3))


def test_a_service_names_every_missing_secret_at_once_before_touching_anything(monkeypatch) -> None:
    for variable in ("HOMEWARD_DATA_KEY", "HOMEWARD_IDENTITY_SECRET", "HOMEWARD_TRAVEL_DATA_KEY",
                     "HOMEWARD_DISBURSEMENT_DATA_KEY", "HOMEWARD_DATABASE_URL"):  # fmt: skip
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(SystemExit) as stopped:
        preflight(RegistrationSettings())
    said = str(stopped.value.code)
    for variable in ("HOMEWARD_DATA_KEY", "HOMEWARD_IDENTITY_SECRET", "HOMEWARD_TRAVEL_DATA_KEY",
                     "HOMEWARD_DISBURSEMENT_DATA_KEY", "HOMEWARD_DATABASE_URL"):  # fmt: skip
        assert variable in said


def test_a_service_whose_database_cannot_be_reached_says_so_in_one_line() -> None:
    keys = {
        name: secrets.token_hex(32)
        for name in (
            "HOMEWARD_DATA_KEY",
            "HOMEWARD_IDENTITY_SECRET",
            "HOMEWARD_TRAVEL_DATA_KEY",
            "HOMEWARD_DISBURSEMENT_DATA_KEY",
        )
    }
    ran = homeward_cli("run", "registration", HOMEWARD_DATABASE_URL=UNREACHABLE_DATABASE,
                       HOMEWARD_KAFKA_BOOTSTRAP="127.0.0.1:1", **keys)  # fmt: skip
    assert ran.returncode == 1
    assert "Traceback" not in ran.stderr
    last = ran.stderr.strip().splitlines()[-1]
    assert last.startswith("registration: cannot reach PostgreSQL at postgresql://someone:***@127.0.0.1:1/homeward")
    assert "secret" not in last, "the password is masked"


def test_a_command_that_finds_nothing_running_exits_1_and_says_where_it_looked(tmp_path) -> None:
    looked = tmp_path / "nothing-here"
    found = homeward_cli("ledger", "balance", "--state-dir", str(looked))
    assert found.returncode == 1 and "Traceback" not in found.stderr
    assert f"no running `homeward up` in {looked}" in found.stderr
    assert f"homeward up --state-dir {looked}" in found.stderr
    assert "pass --state-dir" not in found.stderr, "it was passed"
    unreachable = homeward_cli("payments", "list", HOMEWARD_DATABASE_URL=UNREACHABLE_DATABASE)
    assert unreachable.returncode == 1 and "cannot reach PostgreSQL" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def _commands() -> list[tuple[str, Any]]:
    import typer.main

    from services.ops.cli import app

    found: list[tuple[str, Any]] = []

    def walk(command: Any, path: str) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            found.append((path, command))

    walk(typer.main.get_command(app), "")
    return found


def test_every_command_has_a_one_line_summary_an_example_and_plain_flags() -> None:
    from typer.testing import CliRunner

    from services.ops.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["--help"], prog_name="homeward", env={"COLUMNS": "100"})
    commands = listed.output.split("Commands:")[1].splitlines()
    assert listed.exit_code == 0 and not [line for line in commands if line.endswith("...")], "no summary cut short"
    for path, command in _commands():
        helped = runner.invoke(app, [*path.split(), "--help"], prog_name="homeward", env={"COLUMNS": "100"})
        assert helped.exit_code == 0, path
        assert helped.output.startswith(f"Usage: homeward {path}"), path
        summary = command.get_short_help_str(limit=64)
        assert summary and not summary.endswith("..."), f"{path}: a first sentence of at most 64 characters"
        assert "Example" in (command.help or ""), f"{path} gives no example"
        assert "--no-" not in helped.output, f"{path}: a flag reads as a double negative"
        assert "<bool>" not in helped.output, f"{path}: a flag shows a type tag"
        assert "[/" not in helped.output and "\\[" not in helped.output, f"{path}: markup shows through"


def test_version() -> None:
    from importlib.metadata import version

    from typer.testing import CliRunner

    from services.ops.cli import app

    shown = CliRunner().invoke(app, ["--version"], prog_name="homeward")
    assert shown.exit_code == 0 and shown.output.strip() == f"homeward {version('homeward')}"
