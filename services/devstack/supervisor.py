"""`homeward up`: embedded PostgreSQL and Kafka (unless configured), topics, and one OS process
per service, restarted with backoff if it dies; one ready line once every service consumes."""

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import structlog

from contracts import attestation
from contracts.events import EVIDENCE_TOPIC, RegistrationAccepted, RegistrationSubmitted
from contracts.registry import all_topics, dlq_topic
from services.devstack.embedded import (
    EMBEDDED_BROKER_CLIENT_SETTINGS,
    EmbeddedKafka,
    EmbeddedPostgres,
    create_topics,
    free_port,
    kept_port,
    reserve_port,
)
from services.devstack.running import (
    ATTESTATION_KEYS,
    DATA_KEY,
    DATA_KEYS,
    DISBURSEMENT_DATA_KEY,
    READY_PREFIX,
    RETIRED_DATA_KEYS,
    SANDBOX_TOKENS,
    SECRETS_FILE,
    STATUS_FILE,
    TRAVEL_DATA_KEY,
    Runtime,
    process_name,
    retired_name,
    service_of,
    write_private,
)
from services.devstack.settings import DevstackSettings
from services.runtime import crypto, roles
from services.runtime.migrate import migrate, migrate_audit
from services.runtime.settings import SERVICE_NAMES, masked_url, retired_keys

READY_TIMEOUT_SECONDS = 120.0
READY_POLL_SECONDS = 0.1
PUMP_CHUNK_BYTES = 64 * 1024
STOP_TIMEOUT_SECONDS = 15.0
RESTART_BACKOFF_SECONDS_MAX = 30.0
RESTART_BACKOFF_SECONDS_BASE = 0.5
CRASH_LOOP_SECONDS = 10.0
WATCH_INTERVAL_SECONDS = 0.5
CONSUMING_MARK = '"event": "service.consuming"'
SANDBOX_PAYOUTS = "sandbox-payouts"
SANDBOX_TRAVEL = "sandbox-travel"
SANDBOX_SETTING_NAMES = {"payouts": "PAYOUT", "travel": "TRAVEL"}
SANDBOX_READY_TIMEOUT_SECONDS = 30.0
SANDBOX_PROBE_TIMEOUT_SECONDS = 1.0
# What `homeward sandbox KIND` prints once it accepts connections (its --help says so). The line
# proves this child bound the port; the /health probe then proves it answers.
SANDBOX_LISTENING_MARK = " listening on http://"
SANDBOX_SETTINGS = ("HOMEWARD_LOG_LEVEL", "HOMEWARD_HTTP_HOST")
# `up`'s sandboxes speak plain HTTP on 127.0.0.1 (their token guards them), as `up` reaches them and
# wires the services to them: TLS settings of the environment, meant for another sandbox, stay out.
SANDBOX_TLS_SETTINGS = (
    "HOMEWARD_SANDBOX_TLS_CERT_FILE", "HOMEWARD_SANDBOX_TLS_KEY_FILE", "HOMEWARD_SANDBOX_CLIENT_CA_FILE",
)  # fmt: skip
LOCALHOST = "127.0.0.1"

# Which program secrets each service holds, by the variable it reads each from: arrival holds only
# the keys that sign departure attestations, only registration derives identities, and a holder of
# a data key reads its own as HOMEWARD_DATA_KEY.
# Registration holds the readers' current data keys to wrap case keys with, not their retired ones.
# The retired data keys exist only after a rotation (`homeward keys rotate`); the rest always.
SECRETS_BY_SERVICE: dict[str, dict[str, str]] = {
    "registration": {
        "HOMEWARD_IDENTITY_SECRET": "HOMEWARD_IDENTITY_SECRET",
        DATA_KEY: DATA_KEY,
        RETIRED_DATA_KEYS: RETIRED_DATA_KEYS,
        TRAVEL_DATA_KEY: TRAVEL_DATA_KEY,
        DISBURSEMENT_DATA_KEY: DISBURSEMENT_DATA_KEY,
    },
    "travel": {DATA_KEY: TRAVEL_DATA_KEY, RETIRED_DATA_KEYS: retired_name(TRAVEL_DATA_KEY)},
    "arrival": {ATTESTATION_KEYS: ATTESTATION_KEYS},
    "disbursement": {
        DATA_KEY: DISBURSEMENT_DATA_KEY,
        RETIRED_DATA_KEYS: retired_name(DISBURSEMENT_DATA_KEY),
        "HOMEWARD_PAYOUT_CALLBACK_SECRET": "HOMEWARD_PAYOUT_CALLBACK_SECRET",
        "HOMEWARD_LEDGER_KEY": "HOMEWARD_LEDGER_KEY",
        "HOMEWARD_INSTRUMENT_SECRET": "HOMEWARD_INSTRUMENT_SECRET",
    },
}
PROGRAM_SECRETS = (
    "HOMEWARD_IDENTITY_SECRET", *DATA_KEYS.values(), "HOMEWARD_PAYOUT_CALLBACK_SECRET", "HOMEWARD_LEDGER_KEY",
    "HOMEWARD_INSTRUMENT_SECRET", ATTESTATION_KEYS,
)  # fmt: skip
"""The secrets `up` generates on its first run."""
HELD_SECRETS = frozenset(name for held in SECRETS_BY_SERVICE.values() for pair in held.items() for name in pair) | {
    retired_name(key) for key in DATA_KEYS.values()
}
"""Kept out of what the services inherit from `up`'s environment: each gets only its own."""
DATABASE_SUPERUSER = "database:superuser"
"""The embedded PostgreSQL's superuser password, in secrets.json; `up` alone uses it (roles, migrations)."""


def database_secret(login: str) -> str:
    """Where secrets.json keeps the password of a service's (or the operator's) database role."""
    return f"database:{login}"


DATABASE_SECRETS = (DATABASE_SUPERUSER, *(database_secret(login) for login in roles.LOGINS))
PROVIDER_TOKENS = {"disbursement": "HOMEWARD_PAYOUT_PROVIDER_TOKEN", "travel": "HOMEWARD_TRAVEL_PROVIDER_TOKEN"}
"""The variable each caller of a sandbox sends its token in (SANDBOX_TOKENS holds the values)."""
CALLED_SANDBOX = {"disbursement": "payouts", "travel": "travel"}
# How the services reach their providers and where callbacks arrive; `up` sets these itself, for
# the one process that needs each.
PROVIDER_WIRING = (
    "HOMEWARD_PAYOUT_PROVIDER_URL",
    "HOMEWARD_PAYOUT_CALLBACK_URL",
    "HOMEWARD_TRAVEL_PROVIDER_URL",
    "HOMEWARD_HTTP_PORT",
    "HOMEWARD_CALLBACK_PORT",
    *PROVIDER_TOKENS.values(),
)

logger = structlog.get_logger("homeward.up")


SECRET_MAKERS: dict[str, Callable[[], str]] = {ATTESTATION_KEYS: attestation.new_key_set_json}
"""How a secret that is not one hex key is made (the others: crypto.new_key_hex)."""


def load_or_create_secrets(state_dir: Path) -> dict[str, str]:
    """Program secrets are generated once, on first run, and kept readable by the owner only."""
    path = state_dir / SECRETS_FILE
    secrets: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [name for name in (*PROGRAM_SECRETS, *DATABASE_SECRETS, *SANDBOX_TOKENS.values()) if name not in secrets]
    if missing:
        # A secrets file from an older version keeps its keys (the data key opens sealed data)
        # and gains the ones it lacks.
        secrets.update({name: SECRET_MAKERS.get(name, crypto.new_key_hex)() for name in missing})
        if path.exists() and DATA_KEY not in missing:
            secrets.update(_readers_inherit(secrets, missing))
        write_private(path, json.dumps(secrets))
    return secrets


def _readers_inherit(secrets: dict[str, str], created: list[str]) -> dict[str, str]:
    """A reader's data key created for a state dir whose one data key sealed everything before:
    that key is among the reader's retired ones, so what it sealed for the reader still opens."""
    shared = ",".join([secrets[DATA_KEY], *retired_keys(secrets.get(RETIRED_DATA_KEYS))])
    return {retired_name(key): shared for key in (TRAVEL_DATA_KEY, DISBURSEMENT_DATA_KEY) if key in created}


def topic_configs(settings: DevstackSettings) -> dict[str, dict[str, str]]:
    """What differs from the broker's defaults: the intake topic and its dead letters carry
    personal data, and the accepted topic each case's sealed parts with their wrapped keys, so
    they are kept only `HOMEWARD_INTAKE_RETENTION_MS`; evidence is stamped with the
    broker's own time, which is when signed evidence counts as received (docker-compose's `topics`
    job sets the same)."""
    intake = {"retention.ms": str(settings.intake_retention_ms)}
    return {
        RegistrationSubmitted.TOPIC: intake,
        dlq_topic(RegistrationSubmitted.TOPIC): intake,
        # Each case's parts with their wrapped keys: kept days, not the months before erasure.
        RegistrationAccepted.TOPIC: intake,
        dlq_topic(RegistrationAccepted.TOPIC): intake,
        EVIDENCE_TOPIC: {"message.timestamp.type": "LogAppendTime"},
    }


def crashed_on_its_own(returncode: int | None, *, became_ready: bool, lived_seconds: float) -> bool:
    """A death that counts toward a crash loop: an exit of its own (not a signal from outside),
    before the process became ready, soon after it started."""
    killed_from_outside = returncode is not None and returncode < 0
    return not killed_from_outside and not became_ready and lived_seconds < CRASH_LOOP_SECONDS


@dataclass
class ServiceProcess:
    name: str
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    consuming: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    crash_streak: int = 0
    started_at: float = 0.0
    pump: asyncio.Task[None] | None = None
    http_port: int = 0

    def status(self) -> dict[str, object]:
        """What `homeward status` shows of this process."""
        alive = self.process is not None and self.process.returncode is None
        return {
            "name": self.name,
            "pid": self.process.pid if self.process is not None else None,
            "alive": alive,
            "started_at": self.started_at,
            "restarts": self.restarts,
            "health_url": f"http://{LOCALHOST}:{self.http_port}" if self.http_port else None,
        }

    def command(self) -> tuple[str, ...]:
        return ("-m", "services.runtime", service_of(self.name))

    def ready_mark(self) -> str:
        """What the process writes once it is ready."""
        return CONSUMING_MARK

    async def start(self) -> None:
        self.consuming.clear()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, *self.command(),
            env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        self.started_at = time.time()
        self.pump = asyncio.create_task(self._pump(self.process))

    async def _pump(self, process: asyncio.subprocess.Process) -> None:
        """Copies the process's output to its log file, in chunks (a line may be any length), and
        notices its ready mark. It never stops draining: a full pipe would freeze the process."""
        assert process.stdout is not None
        marker, window = self.ready_mark().encode(), b""
        with self.log_path.open("ab") as log:
            while chunk := await process.stdout.read(PUMP_CHUNK_BYTES):
                log.write(chunk)
                log.flush()
                if not self.consuming.is_set():
                    window = (window + chunk)[-(len(chunk) + len(marker)) :]
                    if marker in window:
                        self.consuming.set()

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@dataclass
class SandboxProcess(ServiceProcess):
    """A sandbox provider (`python -m services.sandbox KIND`), supervised like a service. It is
    ready once it says it listens and its /health answers, as a load balancer would see it.

    Its port and store are in its environment (HOMEWARD_SANDBOX_*_PORT and _STORE), so a restart
    reuses both and the services keep reaching the same provider state."""

    kind: str = ""
    port: int = 0

    def command(self) -> tuple[str, ...]:
        return ("-m", "services.sandbox", self.kind)

    def ready_mark(self) -> str:
        return SANDBOX_LISTENING_MARK

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def status(self) -> dict[str, object]:
        return {**super().status(), "health_url": self.url}

    async def answers(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=SANDBOX_PROBE_TIMEOUT_SECONDS) as client:
                response = await client.get(f"{self.url}/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def _for_sandboxes(variable: str) -> bool:
    """What a sandbox provider is handed of `up`'s environment: its own HOMEWARD_SANDBOX_* settings,
    the log level and listening interface, and nothing else of Homeward's (no database URL, no secret)."""
    return (
        not variable.startswith("HOMEWARD_")
        or (variable.startswith("HOMEWARD_SANDBOX_") and variable not in SANDBOX_TLS_SETTINGS)
        or (variable in SANDBOX_SETTINGS)
    )


NEW_DATABASE_CLAIM = "postgres.new"
"""Held (as a file in the state dir) by the start that makes the database, until it is up."""


class Supervisor:
    def __init__(
        self, settings: DevstackSettings, *, state_dir: Path, kafka_port: int, partitions: int, replicas: int = 1
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir.resolve()
        self.kafka_port = kafka_port
        reserve_port(kafka_port)
        self.partitions = partitions
        self.replicas = replicas
        """Processes of each service, in one consumer group (`travel-1`, `travel-2`, … when more than one)."""
        self.postgres: EmbeddedPostgres | None = None
        self.kafka: EmbeddedKafka | None = None
        self.services: list[ServiceProcess] = []
        self.sandboxes: list[SandboxProcess] = []
        self.stopping = asyncio.Event()
        self.drills: list[asyncio.Task[None]] = []
        self.announced = False
        self.began = time.monotonic()

    def step(self, done: str) -> None:
        """One line on stderr per step of the start and the stop (stdout keeps the ready line alone)."""
        print(f"homeward up: {done} ({time.monotonic() - self.began:.1f} s)", file=sys.stderr, flush=True)

    async def run(self) -> int:
        self.began = time.monotonic()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        # Fault drills (used by `homeward chaos`): restart the embedded database, or the embedded
        # broker with empty storage, while everything else keeps running.
        loop.add_signal_handler(signal.SIGUSR1, self._drill, self.restart_postgres)
        loop.add_signal_handler(signal.SIGUSR2, self._drill, self.restart_broker_empty)
        database_dir = self.state_dir / "postgres"
        made_here = self._claim_new_database(database_dir)
        try:
            await self._start()
            await self._watch()
            return 0
        except RuntimeError as error:
            print(f"homeward up: {error}", file=sys.stderr, flush=True)
            return 1
        finally:
            await self._stop()
            if made_here:
                if not self.announced and database_dir.exists():
                    # A first start that failed leaves no half-made database for the next one to trip on.
                    shutil.rmtree(database_dir, ignore_errors=True)
                    self.step(f"removed the database this failed start had made in {database_dir}")
                (self.state_dir / NEW_DATABASE_CLAIM).unlink(missing_ok=True)

    def _claim_new_database(self, database_dir: Path) -> bool:
        """Whether this start makes the state dir's database: only then may a failure remove it.
        The claim is a file created exclusively, so of two starts on one new state dir only one
        holds it (the other's failure never removes what the first made)."""
        if database_dir.exists():
            return False
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.state_dir / NEW_DATABASE_CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return False
        return True

    async def _start(self) -> None:
        running = Runtime.read(self.state_dir)
        if running is not None:
            raise RuntimeError(
                f"homeward up is already running (pid {running.pid}) with state dir {self.state_dir}; "
                "stop it or choose another --state-dir"
            )
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        secrets = load_or_create_secrets(self.state_dir)
        # Nothing here waits for what it does not need: the sandboxes, the database and the
        # broker start together, and the services start before the sandboxes answer. Each
        # process's HTTP port is chosen first, and each disbursement's callback port (apart from
        # its /health and /metrics): where the payout sandbox sends its callbacks, taken in turn.
        ports = {name: [free_port() for _ in range(self.replicas)] for name in SERVICE_NAMES}
        callback_ports = [free_port() for _ in range(self.replicas)]
        payouts, travel = await self._start_sandboxes(secrets, callback_ports)
        self.step("sandbox payout and travel providers starting")
        database_url, bootstrap = await asyncio.gather(self._database(secrets[DATABASE_SUPERUSER]), self._broker())
        self.step(f"database at {masked_url(database_url)}, broker at {bootstrap}")
        await self._create_topics(bootstrap)
        self.step(f"{len(all_topics())} topics ready")
        database_urls = await asyncio.to_thread(self._provision, database_url, secrets)
        self.step("roles and schemas migrated")
        wiring = {
            "disbursement": {"HOMEWARD_PAYOUT_PROVIDER_URL": payouts.url},
            "travel": {"HOMEWARD_TRAVEL_PROVIDER_URL": travel.url},
        }
        base_env = {
            **os.environ,
            "HOMEWARD_KAFKA_BOOTSTRAP": bootstrap,
            # Migrated above, before any service started.
            "HOMEWARD_MIGRATE_ON_START": "false",
        }
        if self.kafka is not None:
            for name, value in EMBEDDED_BROKER_CLIENT_SETTINGS.items():
                base_env.setdefault(name, value)
        for secret in (*HELD_SECRETS, *PROVIDER_WIRING):
            base_env.pop(secret, None)
        for name in SERVICE_NAMES:
            for replica, port in enumerate(ports[name], start=1):
                # Each service logs in as its own role, which sees its own schema only.
                own = {"HOMEWARD_DATABASE_URL": database_urls[name], "HOMEWARD_HTTP_PORT": str(port)}
                own.update(wiring.get(name, {}))
                if name in PROVIDER_TOKENS:  # the token its sandbox requires
                    own[PROVIDER_TOKENS[name]] = secrets[SANDBOX_TOKENS[CALLED_SANDBOX[name]]]
                if name == "disbursement":
                    own["HOMEWARD_CALLBACK_PORT"] = str(callback_ports[replica - 1])
                held = {variable: secrets[key] for variable, key in SECRETS_BY_SERVICE[name].items() if key in secrets}
                env = {**base_env, **held, **own}
                named = process_name(name, replica, self.replicas)
                log = self.state_dir / "logs" / f"{named}.log"
                process = ServiceProcess(named, env, log, http_port=port)
                await process.start()
                self.services.append(process)
        self.step(f"{len(self.services)} service processes started")
        await asyncio.gather(*(self._wait_until_listening(sandbox) for sandbox in (payouts, travel)))
        self.step(f"providers answering at {payouts.url} and {travel.url}")
        await self._wait_until_consuming()
        self.step("every service consuming")
        self._write_status()
        runtime = Runtime(
            os.getpid(), bootstrap, database_url, str(self.state_dir), payouts.url, travel.url, database_urls
        )
        # It holds the database URLs (and so their passwords): the owner's only.
        write_private(Runtime.path(self.state_dir), json.dumps(runtime.__dict__))
        self.announced = True
        ready = f"{READY_PREFIX} kafka={bootstrap} database={masked_url(database_url)} state_dir={self.state_dir}"
        print(f"{ready} payouts={payouts.url} travel={travel.url}", flush=True)

    async def _create_topics(self, bootstrap: str) -> None:
        # Imported here: FastStream's security classes are needed only to create the topics.
        from services.runtime.kafka_security import client_options

        await create_topics(
            bootstrap, all_topics(), self.partitions, topic_configs(self.settings), client_options(self.settings)
        )

    async def _start_sandboxes(
        self, secrets: dict[str, str], callback_ports: list[int]
    ) -> tuple[SandboxProcess, SandboxProcess]:
        """Starts the sandbox payout and travel providers; `_start` waits until both answer, while
        the services start. They inherit the environment, so HOMEWARD_SANDBOX_* fault settings
        reach them, but no program secret: the payout sandbox holds only the key that signs its
        callbacks."""
        base = {key: value for key, value in os.environ.items() if _for_sandboxes(key)}
        callbacks = {
            "HOMEWARD_PAYOUT_CALLBACK_SECRET": secrets["HOMEWARD_PAYOUT_CALLBACK_SECRET"],
            "HOMEWARD_PAYOUT_CALLBACK_URL": ",".join(
                f"http://{LOCALHOST}:{port}/callbacks/payouts" for port in callback_ports
            ),
        }
        sandbox_dir = self.state_dir / "sandbox"
        payouts = self._sandbox(
            SANDBOX_PAYOUTS, "payouts", {**base, **callbacks, **self._token(secrets, "payouts")},
            self.settings.sandbox_payout_port, self.settings.sandbox_payout_store or sandbox_dir / "payouts.sqlite3",
        )  # fmt: skip
        travel = self._sandbox(
            SANDBOX_TRAVEL, "travel", {**base, **self._token(secrets, "travel")},
            self.settings.sandbox_travel_port, self.settings.sandbox_travel_store or sandbox_dir / "travel.sqlite3",
        )  # fmt: skip
        for sandbox in (payouts, travel):
            await sandbox.start()
            self.services.append(sandbox)
        return payouts, travel

    @staticmethod
    def _token(secrets: dict[str, str], kind: str) -> dict[str, str]:
        """The bearer token the sandbox of `kind` requires of every call but /health."""
        return {SANDBOX_TOKENS[kind]: secrets[SANDBOX_TOKENS[kind]]}

    def _sandbox(self, name: str, kind: str, env: dict[str, str], port: int, store: Path) -> SandboxProcess:
        log = self.state_dir / "logs" / f"{name}.log"
        port, store = port or free_port(), store.resolve()
        # `python -m services.sandbox KIND` reads where it listens and stores from its settings.
        prefix = f"HOMEWARD_SANDBOX_{SANDBOX_SETTING_NAMES[kind]}"
        env = {**env, f"{prefix}_PORT": str(port), f"{prefix}_STORE": str(store)}
        sandbox = SandboxProcess(name, env, log, kind=kind, port=port)
        self.sandboxes.append(sandbox)
        return sandbox

    async def _wait_until_listening(self, sandbox: SandboxProcess) -> None:
        deadline = time.monotonic() + SANDBOX_READY_TIMEOUT_SECONDS
        while not (sandbox.consuming.is_set() and await sandbox.answers()):
            assert sandbox.process is not None
            if sandbox.process.returncode is not None:
                raise RuntimeError(
                    f"{sandbox.name} exited with code {sandbox.process.returncode} before listening; "
                    f"see {sandbox.log_path}"
                )
            if time.monotonic() > deadline or self.stopping.is_set():
                raise RuntimeError(f"{sandbox.name} not listening after {SANDBOX_READY_TIMEOUT_SECONDS:.0f} s")
            await asyncio.sleep(READY_POLL_SECONDS)

    @staticmethod
    def _provision(database_url: str, secrets: dict[str, str]) -> dict[str, str]:
        """Creates the roles (a login per service and the operator's, an owner per schema), migrates
        every schema as its owner, and returns the URL each login connects with."""
        passwords = {login: secrets[database_secret(login)] for login in roles.LOGINS}
        try:
            roles.provision(database_url, passwords)
        except psycopg.errors.InsufficientPrivilege as error:
            raise RuntimeError(
                f"cannot create the services' database roles as {masked_url(database_url)} ({error}); "
                "HOMEWARD_DATABASE_URL must name a superuser, or a role with CREATEROLE that owns the database"
            ) from error
        for service in SERVICE_NAMES:
            migrate(database_url, service)
        migrate_audit(database_url)
        return {login: roles.role_url(database_url, login, passwords[login]) for login in roles.LOGINS}

    async def _database(self, superuser_password: str) -> str:
        if self.settings.database_url:
            return self.settings.database_url
        port = kept_port(self.state_dir / "postgres.port")
        self.postgres = EmbeddedPostgres(self.state_dir / "postgres", port, superuser_password)
        await asyncio.to_thread(self.postgres.start)
        return self.postgres.url

    async def _broker(self) -> str:
        if self.settings.kafka_bootstrap:
            return self.settings.kafka_bootstrap
        self.kafka = EmbeddedKafka(self.kafka_port, self.state_dir / "logs" / "kafka.log")
        await asyncio.to_thread(self.kafka.start)
        return self.kafka.bootstrap

    async def _wait_until_consuming(self) -> None:
        """Waits for every service's `service.consuming` line; a service that exits first fails the start."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not all(service.consuming.is_set() for service in self.services):
            for service in self.services:
                assert service.process is not None
                if service.process.returncode is not None:
                    raise RuntimeError(
                        f"{service.name} exited with code {service.process.returncode} before consuming; "
                        f"see {service.log_path}"
                    )
            if time.monotonic() > deadline or self.stopping.is_set():
                late = [service.name for service in self.services if not service.consuming.is_set()]
                raise RuntimeError(f"not consuming after {READY_TIMEOUT_SECONDS:.0f} s: {', '.join(late)}; see logs")
            await asyncio.sleep(READY_POLL_SECONDS)

    async def _watch(self) -> None:
        """Restarts each process that died, independently, until asked to stop; keeps status.json fresh."""
        restarting: dict[str, asyncio.Task[None]] = {}
        while not self.stopping.is_set():
            for service in self.services:
                assert service.process is not None
                busy = service.name in restarting and not restarting[service.name].done()
                if service.process.returncode is not None and not busy:
                    restarting[service.name] = asyncio.create_task(self._restart(service))
            self._write_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), WATCH_INTERVAL_SECONDS)

    async def _restart(self, service: ServiceProcess) -> None:
        """Backs off exponentially only while a process keeps failing on its own before it becomes
        ready (a crash loop). One killed from outside (a signal: a chaos drill, an operator, the OOM
        killer), one that became ready, or one that ran a while comes back at once."""
        assert service.process is not None
        lived = time.time() - service.started_at
        service.crash_streak = service.crash_streak + 1 if crashed_on_its_own(
            service.process.returncode, became_ready=service.consuming.is_set(), lived_seconds=lived
        ) else 0  # fmt: skip
        delay = min(RESTART_BACKOFF_SECONDS_MAX, RESTART_BACKOFF_SECONDS_BASE * 2**service.crash_streak)
        logger.warning("up.service_died", service=service.name, exit_code=service.process.returncode, restart_in=delay)
        service.restarts += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)
        if not self.stopping.is_set():
            await service.start()

    def _drill(self, drill: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.drills.append(asyncio.create_task(drill()))

    async def restart_postgres(self) -> None:
        if self.postgres is None:
            logger.warning("up.drill_skipped", reason="PostgreSQL is not embedded")
            return
        logger.warning("up.postgres_restarting")
        await asyncio.to_thread(self.postgres.stop)
        await asyncio.to_thread(self.postgres.start)
        self._write_status()
        logger.warning("up.postgres_restarted")

    async def restart_broker_empty(self) -> None:
        """The embedded broker keeps data in memory only: a restart loses every topic and offset."""
        if self.kafka is None:
            logger.warning("up.drill_skipped", reason="the broker is not embedded")
            return
        logger.warning("up.broker_restarting_empty")
        await asyncio.to_thread(self.kafka.stop)
        await asyncio.to_thread(self.kafka.start)
        await self._create_topics(self.kafka.bootstrap)
        self._write_status()
        logger.warning("up.broker_restarted_empty")

    def _write_status(self) -> None:
        """Each supervised process, for `homeward status`; the embedded servers too."""
        processes = [service.status() for service in self.services]
        for name, server in (("postgres", self.postgres), ("kafka", self.kafka)):
            if server is not None and server.process is not None:
                alive = server.process.poll() is None
                processes.append({"name": name, "pid": server.process.pid, "alive": alive, "embedded": True})
        status = {"supervisor_pid": os.getpid(), "written_at": time.time(), "processes": processes}
        write_private(self.state_dir / STATUS_FILE, json.dumps(status))

    async def _stop(self) -> None:
        # The providers stop last, so that a payout or booking in flight at shutdown still gets its answer.
        services = [service for service in self.services if service not in self.sandboxes]
        if self.announced:
            self.step("stopping")
        await asyncio.gather(*(service.stop() for service in services), return_exceptions=True)
        await asyncio.gather(*(sandbox.stop() for sandbox in self.sandboxes), return_exceptions=True)
        stopped = [f"{len(services)} service processes"] if services else []
        stopped += ["the sandbox providers"] if self.sandboxes else []
        for name, server in (("the broker (its topics were in memory)", self.kafka), ("PostgreSQL", self.postgres)):
            if server is not None:
                await asyncio.to_thread(server.stop)
                stopped.append(name)
        if self.announced:
            Runtime.path(self.state_dir).unlink(missing_ok=True)
        if stopped:
            self.step(f"stopped {', '.join(stopped)}; the data stays in {self.state_dir}")
