"""`homeward signers …`: who may sign arrival evidence (contract v1.1, "Signed evidence").

Evidence counts only when a registered signer for its source signed its exact bytes. Register a
signer with the PEM of its Ed25519 public key; revoke it when its key is lost or its holder
leaves: evidence received from then on is dead-lettered (`evidence_unauthenticated`), what it
signed earlier still counts. Signers are never deleted, and an id never changes its key.
"""

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from contracts.signing import SIGNER_SOURCES
from services.ops.common import (
    READ_ONLY,
    AsJson,
    Operator,
    StateDir,
    emit,
    locate,
    on_schema,
    operator_name,
    record_action,
)

signers_app = typer.Typer(help="Evidence signers' public keys: add, revoke, list.", no_args_is_help=True)

T = TypeVar("T")


def _run(state_dir: Path | None, work: Callable[[Any], Awaitable[T]], *, login: str = READ_ONLY) -> T:
    from services.arrival.adapters.signers import SignerRefused

    database_url, _ = locate(state_dir, login)
    return on_schema(database_url, "arrival", work, holds="signer registry", refusals=(SignerRefused,))


@signers_app.command()
def add(
    signer_id: Annotated[str, typer.Option("--id", help="The signer's id, as producers put it in `x-signer`")],
    source: Annotated[str, typer.Option(help=f"The evidence it may sign: {', '.join(SIGNER_SOURCES)}")],
    public_key: Annotated[
        Path,
        typer.Option(help="PEM file of its Ed25519 public key (SPKI)", exists=True, dir_okay=False),
    ],
    office_code: Annotated[
        str | None, typer.Option(help="partner_office only: the one office whose evidence it may sign")
    ] = None,
    operator: Operator = None,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Register an evidence signer's public key for a source.

    Register an evidence signer. The same id with the same key again is a no-op; another key is refused.

    Example: `homeward signers add --id carrier-xh --source carrier --public-key xh.pem --operator ana`."""
    from services.arrival.adapters import signers

    who, pem = operator_name(operator), public_key.read_bytes()

    async def work(connection: Any) -> tuple[Any, bool]:
        async with connection.transaction():
            entry, added = await signers.add(connection, signer_id, source, pem, office_code)
            arguments = {"id": signer_id, "source": source, "office_code": office_code,
                         "public_key": str(public_key), "fingerprint": entry.fingerprint}  # fmt: skip
            await record_action(connection, who, "signers add", arguments, {"added": added})
        return entry, added

    entry, added = _run(state_dir, work, login="arrival")
    emit(as_json, {**asdict(entry), "added": added}, None)
    if not as_json:
        verb = "registered" if added else "already registered, unchanged:"
        office = f" for office {entry.office_code}" if entry.office_code else ""
        typer.echo(f"{verb} {entry.signer_id} ({entry.source}{office}, key {entry.fingerprint})")


@signers_app.command()
def revoke(
    signer_id: Annotated[str, typer.Option("--id", help="The signer to revoke")],
    operator: Operator = None,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Revoke a signer from now on.

    Revoke a signer now: evidence received from now on does not count; what it signed before still does.

    Example: `homeward signers revoke --id carrier-xh --operator ana`."""
    from services.arrival.adapters import signers

    who = operator_name(operator)

    async def work(connection: Any) -> datetime:
        async with connection.transaction():
            revoked_at = await signers.revoke(connection, signer_id)
            await record_action(connection, who, "signers revoke", {"id": signer_id}, {"revoked_at": revoked_at})
        return revoked_at

    revoked_at = _run(state_dir, work, login="arrival")
    emit(as_json, {"signer_id": signer_id, "revoked_at": revoked_at}, None)
    if not as_json:
        typer.echo(f"revoked {signer_id} from {revoked_at.isoformat()}")


@signers_app.command("list")
def list_signers(state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """List the registered signers, revoked ones included.

    List the registered signers, revoked ones included, oldest first.

    Example: `homeward signers list --json`."""
    from services.arrival.adapters import signers

    entries = _run(state_dir, signers.listed)
    table = Table(title="Evidence signers")
    for column in ("id", "source", "office", "key", "added", "revoked"):
        table.add_column(column)
    for entry in entries:
        table.add_row(
            entry.signer_id, entry.source, entry.office_code or "", entry.fingerprint,
            _when(entry.added_at), _when(entry.revoked_at),
        )  # fmt: skip
    emit(
        as_json,
        [asdict(entry) for entry in entries],
        table,
        empty="no signers registered: `homeward signers add` registers one",
    )


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else ""
