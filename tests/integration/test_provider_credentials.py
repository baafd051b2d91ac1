"""The providers' credential: with a token set, the sandboxes answer only calls that bear it (as
a real provider's API requires its credential), and Homeward's clients send it on every call; over
HTTPS with a client CA, the sandbox takes only clients whose certificate that CA signed, and
Homeward's clients present theirs (mutual TLS)."""

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from services.disbursement.adapters.provider import HttpPayoutProvider, ProviderUnavailableError
from services.runtime.settings import ProviderTls
from services.travel.adapters.provider import HttpTravelProvider
from tests.support import PayoutSandbox, TravelSandbox

if TYPE_CHECKING:
    import trustme

pytestmark = pytest.mark.integration

TOKEN = "provider-token-of-the-program-4f1c"
CALL_SECONDS = 10.0


@pytest.fixture(scope="module")
def payouts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PayoutSandbox]:
    sandbox = PayoutSandbox(
        tmp_path_factory.mktemp("guarded-payouts") / "p.sqlite3", HOMEWARD_SANDBOX_PAYOUT_TOKEN=TOKEN
    )
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="module")
def travel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TravelSandbox]:
    sandbox = TravelSandbox(
        tmp_path_factory.mktemp("guarded-travel") / "t.sqlite3", HOMEWARD_SANDBOX_TRAVEL_TOKEN=TOKEN
    )
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.mark.parametrize("path", ["/payouts", "/payouts/some-key"])
def test_a_call_without_the_token_is_refused_and_health_stays_open(payouts: PayoutSandbox, path: str):
    assert httpx.get(f"{payouts.url}{path}", timeout=CALL_SECONDS).status_code == 401
    wrong = httpx.get(f"{payouts.url}{path}", headers={"Authorization": "Bearer nope"}, timeout=CALL_SECONDS)
    assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
    assert httpx.get(f"{payouts.url}/health", timeout=CALL_SECONDS).status_code == 200


async def test_the_payout_client_sends_its_token(payouts: PayoutSandbox):
    client = HttpPayoutProvider(
        payouts.url, timeout_seconds=CALL_SECONDS, attempts_max=1, backoff_initial_seconds=0.1, token=TOKEN
    )
    try:
        assert await client.list_payouts() == []
    finally:
        await client.close()


async def test_the_travel_client_sends_its_token(travel: TravelSandbox):
    async with httpx.AsyncClient(timeout=CALL_SECONDS) as anonymous:
        assert (await anonymous.post(f"{travel.url}/bookings", json={})).status_code == 401
    client = HttpTravelProvider(
        travel.url, timeout_seconds=CALL_SECONDS, attempts_max=1, backoff_initial_seconds=0.1, token=TOKEN
    )
    try:
        ticket = await client.book(
            idempotency_key="case-1", traveler_name="A B", origin_airport="IAH", destination_airport="TGU"
        )
    finally:
        await client.close()
    assert ticket.booking_id


def test_a_client_trusts_a_ca_file(tmp_path: Path):
    """An https provider signed by the program's own CA: the client loads that CA (and only
    refuses a file that holds no certificate)."""
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    HttpPayoutProvider("https://provider.example", timeout_seconds=1, attempts_max=1, backoff_initial_seconds=0.1,
                       ca_file=tmp_path / "ca.pem")  # fmt: skip
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(ssl.SSLError):
        HttpPayoutProvider("https://provider.example", timeout_seconds=1, attempts_max=1,
                           backoff_initial_seconds=0.1, ca_file=tmp_path / "empty.pem")  # fmt: skip


@dataclass(frozen=True)
class MutualTls:
    sandbox: PayoutSandbox
    ca_file: Path
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]
    """A client certificate of another CA's."""


def _write_pair(certificate: "trustme.LeafCert", directory: Path, name: str) -> tuple[Path, Path]:
    certificate.cert_chain_pems[0].write_to_path(str(directory / f"{name}.pem"))
    certificate.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    return directory / f"{name}.pem", directory / f"{name}.key"


@pytest.fixture(scope="module")
def mutual_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MutualTls]:
    """A payout sandbox over HTTPS that requires a client certificate signed by the program's CA."""
    import trustme

    tmp = tmp_path_factory.mktemp("mutual-tls")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    server = _write_pair(ca.issue_cert("127.0.0.1"), tmp, "server")
    sandbox = PayoutSandbox(
        tmp / "p.sqlite3", HOMEWARD_SANDBOX_TLS_CERT_FILE=str(server[0]), HOMEWARD_SANDBOX_TLS_KEY_FILE=str(server[1]),
        HOMEWARD_SANDBOX_CLIENT_CA_FILE=str(tmp / "ca.pem"),
    )  # fmt: skip
    sandbox.start()
    client = _write_pair(ca.issue_cert("disbursement.homeward"), tmp, "client")
    stranger = _write_pair(other.issue_cert("disbursement.homeward"), tmp, "stranger")
    yield MutualTls(sandbox, tmp / "ca.pem", client, stranger)
    sandbox.stop()


def _payout_client(tls: MutualTls, client_cert: tuple[Path, Path] | None) -> HttpPayoutProvider:
    return HttpPayoutProvider(
        tls.sandbox.url, timeout_seconds=CALL_SECONDS, attempts_max=1, backoff_initial_seconds=0.1,
        ca_file=tls.ca_file, client_cert=client_cert,
    )  # fmt: skip


async def test_the_payout_client_proves_itself_with_its_certificate(mutual_tls: MutualTls):
    assert mutual_tls.sandbox.url.startswith("https://127.0.0.1:")
    client = _payout_client(mutual_tls, mutual_tls.client)
    try:
        assert await client.list_payouts() == []
    finally:
        await client.close()


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
async def test_a_client_without_a_certificate_the_ca_signed_is_refused(mutual_tls: MutualTls, who: str):
    client = _payout_client(mutual_tls, None if who == "no certificate" else mutual_tls.stranger)
    try:
        with pytest.raises(ProviderUnavailableError):
            await client.list_payouts()
    finally:
        await client.close()


def test_a_client_certificate_needs_its_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOMEWARD_PROVIDER_CERT_FILE", "/run/secrets/client.pem")
    with pytest.raises(ValueError, match="HOMEWARD_PROVIDER_KEY_FILE"):
        ProviderTls()


def test_a_client_certificate_is_refused_for_a_plain_http_provider(mutual_tls: MutualTls):
    """Sent nowhere rather than silently dropped: plain HTTP has no handshake to present it in."""
    with pytest.raises(ValueError, match="https://"):
        HttpPayoutProvider("http://127.0.0.1:1", timeout_seconds=1, attempts_max=1, backoff_initial_seconds=0.1,
                           client_cert=mutual_tls.client)  # fmt: skip
