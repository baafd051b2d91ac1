"""`homeward attestation …`: the program's departure attestations (contract v1.1).

Arrival signs one compact JWS (EdDSA) per verified case with the newest program key; these
commands publish the public keys as a JWKS, verify a token offline, and rotate the keys of a
running `homeward up` (old keys stay, so every token they signed still verifies).
"""

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from contracts import attestation
from services.devstack.running import ATTESTATION_KEYS, SECRETS_FILE, write_private
from services.ops.common import (
    READ_ONLY,
    AsJson,
    Operator,
    StateDir,
    emit,
    not_running,
    operator_name,
    record_action_at,
    running,
)

attestation_app = typer.Typer(help="Signed departure records: keys, verify.",
                              no_args_is_help=True)  # fmt: skip
keys_app = typer.Typer(help="The program's attestation keys: print them as a JWKS, rotate them.",
                       invoke_without_command=True)  # fmt: skip
attestation_app.add_typer(keys_app, name="keys")

BY_HAND = "set HOMEWARD_ATTESTATION_KEYS (or _FILE), or pass the --state-dir of a running `homeward up`"


def _private_key_set(state_dir: Path | None) -> str:
    """The private key set: HOMEWARD_ATTESTATION_KEYS, else the one a running `up` generated."""
    from services.arrival.settings import AttestationKeys

    given = AttestationKeys().attestation_keys
    if given is not None:
        return given.get_secret_value()
    runtime = running(state_dir)
    document = runtime.secret(ATTESTATION_KEYS) if runtime is not None else None
    if not document:
        not_running(state_dir, "the attestation keys", elsewhere=BY_HAND)
    return document


@keys_app.callback()
def keys(context: typer.Context, state_dir: StateDir = None) -> None:
    """Print the program's public attestation keys as a JWKS.

    Print the public keys that verify departure attestations, as a JSON Web Key Set (RFC 7517):
    publish it to whoever checks attestations (`homeward attestation verify --jwks FILE`). It holds
    no private part.

    Example: `homeward attestation keys > homeward-attestation.jwks.json`."""
    if context.invoked_subcommand is not None:
        return
    typer.echo(json.dumps(attestation.public_jwks(_private_key_set(state_dir)), indent=2))


@keys_app.command()
def generate() -> None:
    """Print a new private attestation key set (deployments by hand).

    Print a new private key set of one Ed25519 key, as one line of JSON: the value of
    HOMEWARD_ATTESTATION_KEYS for a deployment that is not `homeward up` (docker-compose). Keep it
    secret; `homeward attestation keys` prints the public half to publish. `up` makes its own.

    Example: `echo "HOMEWARD_ATTESTATION_KEYS='$(homeward attestation keys generate)'" >> .env`."""
    typer.echo(attestation.new_key_set_json())


@keys_app.command()
def rotate(operator: Operator = None, state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """Add a new attestation key to a running up; the old ones stay.

    Add a new program key to the attestation keys of a running `homeward up`: arrival signs with it
    once `up` restarts; tokens the older keys signed stay verifiable, as the keys stay in the set.
    Publish the new JWKS (`homeward attestation keys`) before the restart.

    Example: `homeward attestation keys rotate --operator ana`, then restart `homeward up`."""
    who = operator_name(operator)
    runtime = running(state_dir)
    if runtime is None:
        not_running(state_dir, "the attestation keys", elsewhere="rotate the JWKS in HOMEWARD_ATTESTATION_KEYS by hand")
    path = Path(runtime.state_dir) / SECRETS_FILE
    secrets: dict[str, str] = json.loads(path.read_text())
    try:
        after = attestation.rotated(secrets[ATTESTATION_KEYS])
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    key_ids = [key["kid"] for key in attestation.public_jwks(after)["keys"]]
    outcome: dict[str, Any] = {"key_id": key_ids[-1], "key_ids": key_ids}
    # Recorded before the file changes: a rotation the trail cannot hold does not happen.
    asyncio.run(record_action_at(runtime.database_url_of(READ_ONLY), who, "attestation keys rotate", {}, outcome))
    write_private(path, json.dumps({**secrets, ATTESTATION_KEYS: after}))
    emit(as_json, outcome, None)
    if not as_json:
        typer.echo(f"new attestation key {key_ids[-1]}; {len(key_ids) - 1} older key(s) kept for verifying")
        typer.echo("Publish `homeward attestation keys`, then restart `homeward up` so that arrival signs with it.")


@attestation_app.command()
def verify(
    token: Annotated[str, typer.Argument(help="The compact JWS of arrival.attested.v1's `attestation`")],
    jwks: Annotated[
        Path | None,
        typer.Option(
            help="A JWKS file of the program's public keys (default: the running up's own keys)",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Verify a departure attestation offline and print its claims.

    Verify a departure attestation against the program's public keys (a JWKS file, or those of the
    running `homeward up`), with nothing but the keys: no database, no network. Prints the claims;
    exits 1 when the token is malformed, its signature does not verify, or its key is unknown.

    Example: `homeward attestation verify eyJhbGciOiJFZERTQSIs... --jwks homeward-attestation.jwks.json`."""
    try:
        document = jwks.read_text(encoding="utf-8") if jwks is not None else _private_key_set(state_dir)
        keys = attestation.public_key_set(document)
    except (ValueError, UnicodeDecodeError) as error:
        raise typer.BadParameter(f"not a JWKS of attestation keys: {error}", param_hint="--jwks") from error
    try:
        claims = attestation.verify(token, keys)
    except attestation.AttestationInvalid as error:
        typer.echo(f"invalid attestation: {error}", err=True)
        raise typer.Exit(1) from error
    shown = {"key_id": attestation.key_id_of(token.strip()), **claims.model_dump(mode="json")}
    table = Table(title="Departure attestation: valid", title_justify="left", show_header=False)
    for name, value in shown.items():
        table.add_row(name, str(value))
    emit(as_json, shown, table)
