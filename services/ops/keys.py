"""`homeward keys rotate|rewrap`: the program's data keys.

Each holder has its own data key (services/devstack/running.py, DATA_KEYS): travel's and
disbursement's wrap the case keys of the parts of `sealed` they open (services/runtime/casekeys.py),
registration wraps new cases' keys with those two and seals its dead letters with its own.

`rotate` makes a new key for every holder of a running `homeward up` and retires the old ones,
which still open what they sealed; `rewrap` then wraps every stored case key again under its
reader's newest key, so a retired key protects nothing any more. A deployment configured by its
environment rotates by hand: a new HOMEWARD_DATA_KEY per holder (and registration's
HOMEWARD_TRAVEL_DATA_KEY and HOMEWARD_DISBURSEMENT_DATA_KEY), the old one added to the holder's
HOMEWARD_DATA_KEYS_RETIRED, the services restarted; then `keys rewrap --service S` per reader.
"""

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer
from rich.table import Table

from services.devstack.running import DATA_KEYS, SECRETS_FILE, Runtime, retired_name, write_private
from services.ops.common import (
    READ_ONLY,
    AsJson,
    Operator,
    StateDir,
    emit,
    locate,
    not_running,
    on_schema,
    operator_name,
    record_action,
    record_action_at,
    running,
)
from services.runtime import casekeys, crypto
from services.runtime.settings import SealedData, retired_keys

keys_app = typer.Typer(help="The program's data keys: rotate, rewrap.", no_args_is_help=True)

RETIRED_KEYS_MAX = 32
"""A rotation is refused once this many keys are retired: rewrap what they sealed first."""
REWRAP_BATCH_MAX = 500
"""Case keys wrapped again in one transaction."""
REWRAP_PASSES_MAX = 100_000
"""Batches one rewrap runs at most per reader, so it always ends."""
READERS = tuple(casekeys.PURPOSE_OF)
"""The services that keep case keys."""
BY_HAND = (
    "for a deployment configured by its environment: give each holder a new HOMEWARD_DATA_KEY (`openssl rand -hex "
    "32`), add its old one to its HOMEWARD_DATA_KEYS_RETIRED (comma-separated), and restart travel and disbursement "
    "first; then give registration the readers' new keys (HOMEWARD_TRAVEL_DATA_KEY, HOMEWARD_DISBURSEMENT_DATA_KEY) "
    "and restart it (a reader refuses parts wrapped by a key it does not hold yet); then `keys rewrap --service S`"
)


def rotated(secrets: dict[str, str]) -> dict[str, str]:
    """`secrets` with a new data key for every holder, the current one first among its retired."""
    after = dict(secrets)
    for name in DATA_KEYS.values():
        retired = [secrets[name], *retired_keys(secrets.get(retired_name(name)))]
        if len(retired) > RETIRED_KEYS_MAX:
            raise typer.BadParameter(f"{RETIRED_KEYS_MAX} keys of {name} are retired already; rewrap, then rotate")
        after |= {name: crypto.new_key_hex(), retired_name(name): ",".join(retired)}
    return after


def keyring_of(secrets: dict[str, str], holder: str) -> crypto.Keyring:
    """A holder's data keys as `up` keeps them in secrets.json."""
    name = DATA_KEYS[holder]
    retired = tuple(bytes.fromhex(key) for key in retired_keys(secrets.get(retired_name(name))))
    return crypto.Keyring(bytes.fromhex(secrets[name]), retired)


def _secrets(runtime: Runtime) -> dict[str, str]:
    secrets: dict[str, str] = json.loads((Path(runtime.state_dir) / SECRETS_FILE).read_text())
    return secrets


@keys_app.command()
def rotate(operator: Operator = None, state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """Make new data keys for the three holders of a running up.

    Make a new data key for each holder (registration, travel, disbursement) of a running
    `homeward up`. New cases use them once `up` restarts; the old keys are retired and still open
    what they sealed, until `homeward keys rewrap` moves the stored case keys to the new ones.
    Example: `homeward keys rotate --operator ana`, restart `up`, `homeward keys rewrap --operator ana`."""
    who = operator_name(operator)
    runtime = running(state_dir)
    if runtime is None:
        not_running(state_dir, "the keys", elsewhere=BY_HAND)
    after = rotated(_secrets(runtime))
    outcome = {
        holder: {
            "key_id": crypto.key_id(bytes.fromhex(after[name])),
            "retired_key_ids": [crypto.key_id(bytes.fromhex(key)) for key in retired_keys(after[retired_name(name)])],
        }
        for holder, name in DATA_KEYS.items()
    }
    # Recorded before the file changes: a rotation the trail cannot hold does not happen.
    asyncio.run(record_action_at(runtime.database_url_of(READ_ONLY), who, "keys rotate", {}, outcome))
    write_private(Path(runtime.state_dir) / SECRETS_FILE, json.dumps(after))
    emit(as_json, outcome, None)
    if not as_json:
        for holder, keys in outcome.items():
            typer.echo(f"{holder}: new data key {keys['key_id']}; retired {', '.join(keys['retired_key_ids'])}")
        typer.echo(
            "Restart `homeward up` so that the services use them (until then they use the old ones, which stay "
            "readable), then run `homeward keys rewrap`."
        )


def _rotated_since_start(runtime: Runtime) -> bool:
    """secrets.json changed after `up` started: its services do not hold the newest keys yet."""
    state = Path(runtime.state_dir)
    return (state / SECRETS_FILE).stat().st_mtime > Runtime.path(state).stat().st_mtime


async def _rewrap(
    connection: Any, keyring: crypto.Keyring, purpose: str, *, dry_run: bool, who: str | None, reader: str
) -> dict[str, Any]:
    """Every live case key of one reader wrapped by a retired key, wrapped again by the current one."""
    from services.runtime.db import fetch_all, runtime_queries

    queries = runtime_queries()
    retired_ids = [crypto.key_id(key) for key in keyring.retired]
    by_key = {row["key_id"]: row["cases"] for row in await fetch_all(queries.case_keys_by_program_key(connection))}
    report: dict[str, Any] = {"key_id": keyring.current_id, "before": by_key, "rewrapped": 0, "unopened": 0, "left": 0}
    if dry_run:
        return report
    after = UUID(int=0)
    for _ in range(REWRAP_PASSES_MAX):
        async with connection.transaction():
            rows = await fetch_all(queries.case_keys_to_rewrap(
                connection, retired_key_ids=retired_ids, after=after, limit=REWRAP_BATCH_MAX
            ))  # fmt: skip
            moved: list[tuple[UUID, str, str]] = []
            for row in rows:
                case_id = str(row["case_id"])
                try:
                    case_key = casekeys.unwrap(keyring, row["key_id"], row["wrapped"], case_id=case_id, purpose=purpose)
                except crypto.UNSEAL_ERRORS:
                    report["unopened"] += 1  # left as it is: a damaged or foreign row, for an operator
                    continue
                moved.append((row["case_id"], *casekeys.wrap(keyring, case_key, case_id=case_id, purpose=purpose)))
            if moved:
                await queries.rewrap_case_keys(
                    connection,
                    case_ids=[case_id for case_id, _, _ in moved],
                    key_ids=[key_id for _, key_id, _ in moved],
                    wrapped=[wrapped for _, _, wrapped in moved],
                )
        report["rewrapped"] += len(moved)
        if len(rows) < REWRAP_BATCH_MAX:
            break
        after = rows[-1]["case_id"]
    after_run = {row["key_id"]: row["cases"] for row in await fetch_all(queries.case_keys_by_program_key(connection))}
    # Left under a retired key: those it could not open, and any a concurrent erasure held locked.
    report["left"] = sum(cases for key_id, cases in after_run.items() if key_id in retired_ids)
    assert who is not None
    outcome = {key: report[key] for key in ("key_id", "rewrapped", "unopened", "left")}
    await record_action(connection, who, "keys rewrap", {"service": reader}, outcome)
    return report


@keys_app.command()
def rewrap(
    service: Annotated[str | None, typer.Option(help="One reader only (travel, disbursement); default: both")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count case keys per data key; change nothing")] = False,
    operator: Operator = None,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Wrap stored case keys again under the current data keys.

    Wrap every stored case key that a retired data key wraps again under its reader's current
    key, a batch at a time (each batch one transaction), so that the retired key protects
    nothing any more. Run it after `keys rotate` and a restart of `up`. On a running `up` the keys
    come from its secrets; elsewhere pass --service with that service's HOMEWARD_DATABASE_URL,
    HOMEWARD_DATA_KEY and HOMEWARD_DATA_KEYS_RETIRED. Example: `homeward keys rewrap --operator ana`."""
    who = None if dry_run else operator_name(operator)
    if service is not None and service not in READERS:
        raise typer.BadParameter(f"{service!r} keeps no case keys; one of: {', '.join(READERS)}")
    runtime = running(state_dir)
    if runtime is None and service is None:
        not_running(state_dir, "the keys", elsewhere="for a deployment, name the reader with --service")
    if runtime is not None and not dry_run and _rotated_since_start(runtime):
        raise typer.BadParameter(
            "the keys were rotated after `homeward up` started: restart it first, so that the services hold the "
            "keys the case keys are wrapped with"
        )
    secrets = _secrets(runtime) if runtime is not None else None
    report: dict[str, Any] = {}
    for reader in [service] if service else READERS:
        keyring = keyring_of(secrets, reader) if secrets is not None else SealedData().require_data_key()
        database_url, _ = locate(state_dir, reader)

        async def work(connection: Any, keyring: crypto.Keyring = keyring, reader: str = reader) -> dict[str, Any]:
            return await _rewrap(
                connection, keyring, casekeys.PURPOSE_OF[reader], dry_run=dry_run, who=who, reader=reader
            )

        report[reader] = on_schema(database_url, reader, work, holds="case keys")
    table = Table(title="Case keys" + (" (dry run)" if dry_run else ""))
    for column in ("service", "current key", "case keys by key before", "rewrapped", "not opened", "left retired"):
        table.add_column(column)
    for reader, counts in report.items():
        before = ", ".join(f"{key_id}: {cases}" for key_id, cases in counts["before"].items()) or "none"
        row = (counts["rewrapped"], counts["unopened"], counts["left"])
        table.add_row(reader, counts["key_id"], before, *(str(count) for count in row))
    emit(as_json, report, table)
    if left := sum(counts["left"] for counts in report.values()):
        typer.echo(
            f"error: {left} case keys are still wrapped by a retired key (damaged, or locked by an erasure): "
            "run `homeward keys rewrap` again; keep the retired keys until it reports none left",
            err=True,
        )
        raise typer.Exit(1)
