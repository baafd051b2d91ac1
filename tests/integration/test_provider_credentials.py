"""The providers' credential: with a token set, the sandboxes answer only calls that bear it (as
a real provider's API requires its credential), and Homeward's clients send it on every call."""

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.disbursement.adapters.provider import HttpPayoutProvider
from services.travel.adapters.provider import HttpTravelProvider
from tests.support import PayoutSandbox, TravelSandbox

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
