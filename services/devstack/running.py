"""What a client needs to find and read a running `homeward up` (its runtime.json and
status.json, its ready line, the names of its processes), apart from the supervisor so that
operator commands do not load what starts PostgreSQL and Kafka."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

READY_PREFIX = "homeward ready"
STATUS_FILE = "status.json"
SECRETS_FILE = "secrets.json"
DATA_KEY = "HOMEWARD_DATA_KEY"
"""How a service reads its own data key; in secrets.json, registration's (it seals its dead letters)."""
RETIRED_DATA_KEYS = "HOMEWARD_DATA_KEYS_RETIRED"
ATTESTATION_KEYS = "HOMEWARD_ATTESTATION_KEYS"
"""The private JWKS arrival signs departure attestations with (`homeward attestation keys`)."""
TRAVEL_DATA_KEY = "HOMEWARD_TRAVEL_DATA_KEY"
DISBURSEMENT_DATA_KEY = "HOMEWARD_DISBURSEMENT_DATA_KEY"
DATA_KEYS = {"registration": DATA_KEY, "travel": TRAVEL_DATA_KEY, "disbursement": DISBURSEMENT_DATA_KEY}
"""Each holder's own data key, by the name secrets.json (and docker-compose) keeps it under: travel's
and disbursement's wrap the case keys of the parts they open; every holder seals its dead-letter
copies with its own. Arrival holds none."""


def retired_name(data_key: str) -> str:
    """Where the keys a rotation retired are kept: HOMEWARD_TRAVEL_DATA_KEY's in
    HOMEWARD_TRAVEL_DATA_KEYS_RETIRED (in secrets.json once `homeward keys rotate` ran)."""
    return data_key.replace("_DATA_KEY", "_DATA_KEYS") + "_RETIRED"


SANDBOX_TOKENS = {"payouts": "HOMEWARD_SANDBOX_PAYOUT_TOKEN", "travel": "HOMEWARD_SANDBOX_TRAVEL_TOKEN"}
"""The bearer tokens `up` makes for its sandbox providers (in secrets.json, under these names): each
sandbox requires its own, the one service that calls it sends it, and so do the commands."""


@dataclass(frozen=True)
class Runtime:
    """What a client (`homeward demo`, an operator) needs to reach a running `homeward up`."""

    pid: int
    kafka: str
    database_url: str
    """The administrator's: `up` creates the roles and migrates with it (and a benchmark its databases)."""
    state_dir: str
    # Base URLs of the sandbox providers; empty in a runtime.json written before they existed.
    payouts: str = ""
    travel: str = ""
    database_urls: dict[str, str] = field(default_factory=dict)
    """Each login role's URL, by service name and `operator` (services/runtime/roles.py)."""

    def secret(self, name: str) -> str | None:
        """A secret `up` generated (secrets.json, the owner's only), for the commands run beside it."""
        try:
            value = json.loads((Path(self.state_dir) / SECRETS_FILE).read_text()).get(name)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, str) else None

    def database_url_of(self, login: str) -> str:
        """The URL `login` (a service, or `operator`) connects with; the administrator's where a
        runtime.json written before the roles existed names none."""
        return self.database_urls.get(login, self.database_url)

    @staticmethod
    def path(state_dir: Path) -> Path:
        return state_dir / "runtime.json"

    @classmethod
    def read(cls, state_dir: Path) -> "Runtime | None":
        """The running instance in `state_dir`, if its process is still alive."""
        try:
            runtime = cls(**json.loads(cls.path(state_dir).read_text()))
            os.kill(runtime.pid, 0)
        except (FileNotFoundError, ProcessLookupError, json.JSONDecodeError, TypeError):
            return None
        return runtime


def process_name(service: str, replica: int, replicas: int) -> str:
    """`travel` when it runs alone, `travel-1`, `travel-2`, … when it has replicas."""
    return service if replicas == 1 else f"{service}-{replica}"


def service_of(process: str) -> str:
    """The service (or sandbox) a supervised process is of: `travel-2` is travel."""
    service, _, replica = process.rpartition("-")
    return service if service and replica.isdigit() else process


def write_private(path: Path, text: str) -> None:
    """Replaces `path` atomically with an owner-only file, so a crash cannot leave it half written.
    A temporary file left by a crash is removed first: opened as it was, it would keep its mode."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
