"""`homeward retention run`: erase the personal data of cases whose retention after closing is over.

Every service that keeps personal data (registration, travel, disbursement) erases it on its own
sweep, every HOMEWARD_ERASURE_INTERVAL_MS; this command runs the same erasure now, as each
service's own role, and says what it did. `--dry-run` counts what is due and changes nothing.
"""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from services.ops.common import (
    READ_ONLY,
    AsJson,
    Operator,
    StateDir,
    console,
    emit,
    locate,
    on_schema,
    operator_name,
    record_action,
)
from services.runtime.retention import ERASURE_BATCH_MAX
from services.runtime.settings import SERVICE_NAMES, PiiRetention

retention_app = typer.Typer(
    help="Erase closed cases' personal data once its retention is over.\n\nA case's personal data is erased "
    "HOMEWARD_PII_RETENTION_DAYS after it closed.",
    no_args_is_help=True,
)
SQL = Path(__file__).parent / "sql" / "retention.sql"
ERASURE_PASSES_MAX = 100_000
"""Batches one run erases at most per service (50 million cases), so it always ends."""


def holders() -> dict[str, Any]:
    """The services that keep personal data, with their retention (`RETENTION` of their app)."""
    from services.runtime.service import load_service

    found = {name: load_service(name).retention for name in SERVICE_NAMES}
    return {name: retention for name, retention in found.items() if retention is not None}


@retention_app.command()
def run(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what is due; erase nothing")] = False,
    service: Annotated[
        str | None, typer.Option(help="One service only (registration, travel, disbursement); default: all three")
    ] = None,
    operator: Operator = None,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Erase now the personal data whose retention is over.

    Erase the personal data of every case closed (paid, failed, rejected at arrival, booking
    failed) more than HOMEWARD_PII_RETENTION_DAYS ago (default 90): each service destroys the
    case's keys, so its sealed fields no longer open anywhere, and removes its own copies
    (registration: its `sealed` and the accepted event in its outbox). The ledger, identity keys,
    the case's timeline and its consent record stay; `ledger verify` still passes.

    On a running `homeward up` each service's part runs as that service's role; elsewhere pass
    --service with HOMEWARD_DATABASE_URL naming that service's role. Example:
    `homeward retention run --dry-run`, then `homeward retention run --operator ana`."""
    from services.runtime import retention as erasure
    from services.runtime.db import runtime_queries

    who = None if dry_run else operator_name(operator)
    days = PiiRetention().pii_retention_days
    found = holders()
    if service is not None and service not in found:
        raise typer.BadParameter(f"{service!r} keeps no personal data; one of: {', '.join(found)}")
    chosen = {name: found[name] for name in ([service] if service else found)}
    queries = runtime_queries()
    report: dict[str, dict[str, int]] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console(),
        transient=True, disable=as_json,
    ) as progress:  # fmt: skip
        for name, retention in chosen.items():
            database_url, _ = locate(state_dir, name)

            async def work(connection: Any, name: str = name, retention: Any = retention) -> dict[str, int]:
                before = await erasure.backlog(connection, queries, days=days)
                erased = 0
                if not dry_run:
                    task = progress.add_task(f"erasing {name}", total=before["due"])
                    for _ in range(ERASURE_PASSES_MAX):
                        done = await erasure.erase_due(
                            connection, queries, retention, days=days, limit=ERASURE_BATCH_MAX
                        )
                        erased += done
                        progress.advance(task, done)
                        if done < ERASURE_BATCH_MAX:
                            break
                    assert who is not None
                    arguments = {"service": name, "retention_days": days}
                    await record_action(connection, who, "retention run", arguments, {"erased": erased})
                after = await erasure.backlog(connection, queries, days=days)
                return {"erased_now": erased, **after}

            report[name] = on_schema(database_url, name, work, holds="retention records")
    document = {"retention_days": days, "dry_run": dry_run, "services": report}
    table = Table(title=f"Retention: {days} days after a case closes" + (" (dry run)" if dry_run else ""))
    for column in ("service", "erased now", "due", "closed, not yet due", "erased in all"):
        table.add_column(column, justify="left" if column == "service" else "right")
    for name, counts in report.items():
        table.add_row(
            name, str(counts["erased_now"]), str(counts["due"]), str(counts["waiting"]), str(counts["erased"])
        )
    emit(as_json, document, table)


BACKFILL_BATCH_MAX = 10_000
"""Cases noted closed in one statement."""


@retention_app.command()
def backfill(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count the cases; note nothing")] = False,
    operator: Operator = None,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Note cases closed before this version, for erasure.

    Note the cases that closed before this version noted closings (paid, failed, rejected at
    arrival, booking failed, as the payments, arrival's outcomes and the bookings record them;
    for travel, every booking booked or failed), with the time each closed, in every service that
    keeps personal data, so that the sweep erases them in their turn. Run it once after
    upgrading; again, it changes nothing. On a running `up` it reads as the operator's role and
    writes as each service's; elsewhere HOMEWARD_DATABASE_URL must read every schema and write
    each one's `closed_cases`.
    Example: `homeward retention backfill --dry-run`, then `--operator ana`."""
    from services.runtime.db import fetch_all, load_queries

    who = None if dry_run else operator_name(operator)
    queries = load_queries(SQL)
    read_url, _ = locate(state_dir, READ_ONLY)

    async def closings(connection: Any) -> list[Any]:
        return await fetch_all(queries.closings_before(connection))

    rows = on_schema(read_url, "public", closings, holds="services' records")
    report: dict[str, int] = {}
    noted: set[Any] = set()
    for name, retention in holders().items():
        # Each case's first closing of the kinds this holder's retention counts from.
        counted = retention.decides | retention.consumes
        found: dict[Any, tuple[str, Any]] = {}
        for row in sorted(rows, key=lambda row: row["closed_at"]):
            if row["closed_by"] in counted:
                found.setdefault(row["case_id"], (row["closed_by"], row["closed_at"]))
        noted |= found.keys()
        database_url, _ = locate(state_dir, name)

        async def note(connection: Any, name: str = name, found: dict[Any, tuple[str, Any]] = found) -> int:
            if dry_run:
                return 0
            ids = sorted(found)
            for first in range(0, len(ids), BACKFILL_BATCH_MAX):
                batch = ids[first : first + BACKFILL_BATCH_MAX]
                await queries.note_closed_before(
                    connection, case_ids=batch, topics=[found[case_id][0] for case_id in batch],
                    closed_ats=[found[case_id][1] for case_id in batch],
                )  # fmt: skip
            assert who is not None
            await record_action(connection, who, "retention backfill", {"service": name}, {"cases": len(ids)})
            return len(ids)

        report[name] = on_schema(database_url, name, note, holds="retention records")
    total = len(noted)
    document = {"closed_cases": total, "dry_run": dry_run, "noted": report}
    table = Table(title="Closed cases found" + (" (dry run)" if dry_run else ""))
    table.add_column("service")
    table.add_column("cases noted", justify="right")
    for name, count in report.items():
        table.add_row(name, str(count))
    emit(as_json, document, table)
    if not as_json:
        typer.echo(f"{total} closed cases found; the services' sweeps erase them once their retention is over.")
