"""`homeward keys rotate`: a new data key for a running `homeward up`, the old one retired but still
opening what it sealed. A deployment configured by its environment rotates the same way by hand:
a new HOMEWARD_DATA_KEY, the old one added to HOMEWARD_DATA_KEYS_RETIRED, the services restarted."""

import asyncio
import json
from pathlib import Path

import typer

from services.devstack.running import DATA_KEY, RETIRED_DATA_KEYS, SECRETS_FILE, write_private
from services.ops.common import READ_ONLY, AsJson, Operator, StateDir, emit, operator_name, record_action_at, running
from services.runtime import crypto
from services.runtime.settings import retired_keys

keys_app = typer.Typer(help="The program's data keys: rotate.", no_args_is_help=True)

RETIRED_KEYS_MAX = 32
"""A rotation is refused once this many keys are retired: rewrap what they sealed first."""
BY_HAND = (
    "for a deployment configured by its environment: set HOMEWARD_DATA_KEY to a new key (`openssl rand -hex 32`), "
    "add the old one to HOMEWARD_DATA_KEYS_RETIRED (comma-separated), and restart registration, travel and "
    "disbursement"
)


def rotated(secrets: dict[str, str]) -> dict[str, str]:
    """`secrets` with a new data key, the current one first among the retired."""
    retired = [secrets[DATA_KEY], *retired_keys_of(secrets)]
    if len(retired) > RETIRED_KEYS_MAX:
        raise typer.BadParameter(f"{RETIRED_KEYS_MAX} data keys are retired already; no rotation before a rewrap")
    return {**secrets, DATA_KEY: crypto.new_key_hex(), RETIRED_DATA_KEYS: ",".join(retired)}


def retired_keys_of(secrets: dict[str, str]) -> list[str]:
    return retired_keys(secrets.get(RETIRED_DATA_KEYS))


@keys_app.command()
def rotate(operator: Operator = None, state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """Make a new data key for a running `homeward up`: new sealed data uses it once `up` restarts,
    and the old key is retired (HOMEWARD_DATA_KEYS_RETIRED), so that what it sealed stays readable.
    Every sealed value names the key that sealed it."""
    who = operator_name(operator)
    runtime = running(state_dir)
    if runtime is None:
        raise typer.BadParameter(f"no running `homeward up` (--state-dir); {BY_HAND}")
    path = Path(runtime.state_dir) / SECRETS_FILE
    secrets: dict[str, str] = json.loads(path.read_text())
    after = rotated(secrets)
    outcome = {
        "key_id": crypto.key_id(bytes.fromhex(after[DATA_KEY])),
        "retired_key_ids": [crypto.key_id(bytes.fromhex(key)) for key in retired_keys_of(after)],
    }
    # Recorded before the file changes: a rotation the trail cannot hold does not happen.
    asyncio.run(record_action_at(runtime.database_url_of(READ_ONLY), who, "keys rotate", {}, outcome))
    write_private(path, json.dumps(after))
    emit(as_json, outcome, None)
    if not as_json:
        typer.echo(
            f"new data key {outcome['key_id']}; retired {', '.join(outcome['retired_key_ids'])}. "
            "Restart `homeward up` so that the services seal with it; until then they seal with the old "
            "one, which stays readable."
        )
