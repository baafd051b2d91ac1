"""`homeward audit list`: the audit trail of operator commands that changed state.

Every such command (`ledger fund`, `dlq replay|unpark|republish`, `signers add|revoke`) names its
operator (`--operator` or HOMEWARD_OPERATOR) and appends who, when, what and with which arguments
to `audit.operator_actions`, in the same transaction as its change where the change is in the
database. The table refuses every UPDATE, DELETE and TRUNCATE.
"""

from typing import Annotated, Any

import typer
from rich.table import Table

from services.ops.common import READ_ONLY, AsJson, StateDir, emit, locate, on_schema

audit_app = typer.Typer(help="The audit trail of operator commands that changed state.", no_args_is_help=True)

LIST_LIMIT_DEFAULT = 100


@audit_app.command("list")
def list_actions(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, newest first")] = LIST_LIMIT_DEFAULT,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """What operators changed with which command, newest first.

    List what operators did, newest first: who, when, which command, its arguments and outcome.

    Example: `homeward audit list --limit 20`."""
    from services.runtime.db import audit_queries, fetch_all

    database_url, _ = locate(state_dir, READ_ONLY)

    async def work(connection: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in await fetch_all(audit_queries().actions(connection, limit=limit))]

    actions = on_schema(database_url, "audit", work, holds="audit trail")
    table = Table(title="Operator actions")
    for column in ("at", "operator", "command", "arguments", "outcome"):
        table.add_column(column, overflow="fold")
    for action in actions:
        table.add_row(
            action["at"].isoformat(timespec="seconds"), action["operator"], action["command"],
            _compact(action["arguments"]), _compact(action["outcome"]),
        )  # fmt: skip
    emit(as_json, actions, table, empty="no operator actions recorded yet")


def _compact(values: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in values.items() if value is not None)
