"""The sandbox payout provider as a real process: one payout per key, faults injected from the
environment, signed callbacks, and a store that outlives the process."""

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest

from services.devstack.embedded import free_port
from services.disbursement.adapters.provider import HttpPayoutProvider, Payout, PayoutItem, ProviderUnavailableError
from services.runtime import signing
from tests.support import eventually

pytestmark = pytest.mark.integration

LISTEN_SECONDS_MAX = 30.0
STOP_SECONDS_MAX = 15.0
CALLBACK_WAIT_SECONDS_MAX = 20.0
CLIENT_TIMEOUT_SECONDS = 10.0
SECRET = "test-callback-secret-of-32-bytes-or-more"
CANARY_MSISDN = "+50499112233"
LATE_START_SECONDS = 0.5


def payout_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "amount": "1000.00",
        "currency": "USD",
        "method": "mobile_money",
        "instrument": {"msisdn": CANARY_MSISDN, "provider": "tigo"},
        "reference": str(uuid4()),
    }
    return {**body, **overrides}


class Sandbox:
    """`homeward sandbox payouts` as a child process, with every line it writes kept."""

    def __init__(self, store: Path, env: dict[str, str]) -> None:
        self.store = store
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.lines: list[str] = []
        self.listening = threading.Event()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> "Sandbox":
        self.listening.clear()
        command = ["sandbox", "payouts", "--port", str(self.port), "--store", str(self.store)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.ops.cli", *command],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        if not self.listening.wait(LISTEN_SECONDS_MAX):
            self.stop()
            raise RuntimeError("the sandbox did not listen:\n" + "\n".join(self.lines[-30:]))
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(f"sandbox payouts listening on {self.url}"):
                self.listening.set()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_SECONDS_MAX)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class CallbackReceiver:
    """An HTTP endpoint that records every callback; it fails the first `failures` of them with 500."""

    def __init__(self, failures: int = 0) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                failing = receiver.failures > 0
                if failing:
                    receiver.failures -= 1
                else:
                    receiver.received.append(({key.lower(): value for key, value in self.headers.items()}, body))
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callbacks/payouts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def notifications(self, key: str) -> list[dict[str, Any]]:
        """The notifications about `key`, in the order received (the sandbox sends them in batches)."""
        sent = [notification for _, body in self.received for notification in json.loads(body)["notifications"]]
        return [notification for notification in sent if notification["key"] == key]

    def signed_with(self, secret: str) -> bool:
        return all(
            signing.verify(
                secret.encode(),
                headers.get(signing.TIMESTAMP_HEADER.lower()),
                headers.get(signing.SIGNATURE_HEADER.lower()),
                body,
                now=time.time(),
            )
            is None
            for headers, body in self.received
        )


StartSandbox = Callable[..., Sandbox]


@pytest.fixture
def start_sandbox(tmp_path: Path) -> Iterator[StartSandbox]:
    """Starts sandboxes with the given HOMEWARD_* variables (default store: one per test); stops them all."""
    started: list[Sandbox] = []

    def start(store: Path | None = None, **env: str) -> Sandbox:
        sandbox = Sandbox(store or tmp_path / "payouts.sqlite3", {"HOMEWARD_LOG_LEVEL": "INFO", **env})
        started.append(sandbox)
        return sandbox.start()

    yield start
    for sandbox in started:
        sandbox.stop()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One fault-free sandbox shared by the tests of the plain API; every test uses its own keys."""
    running = Sandbox(tmp_path_factory.mktemp("sandbox") / "payouts.sqlite3", {}).start()
    yield running
    running.stop()


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    listening = CallbackReceiver()
    yield listening
    listening.close()


async def _post(client: httpx.AsyncClient, url: str, body: dict[str, Any], key: str | None) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return await client.post(f"{url}/payouts", json=body, headers=headers)


async def test_a_payout_without_an_idempotency_key_is_refused(sandbox: Sandbox) -> None:
    body = payout_body()
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        response = await _post(client, sandbox.url, body, None)
        listed = (await client.get(f"{sandbox.url}/payouts")).json()["payouts"]
    assert response.status_code == 400
    assert response.json()["error"] == "missing_idempotency_key"
    assert all(payout["reference"] != body["reference"] for payout in listed)


async def test_a_payout_is_made_once_per_key(sandbox: Sandbox) -> None:
    key, body = str(uuid4()), payout_body()
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        first = await _post(client, sandbox.url, body, key)
        again = await _post(client, sandbox.url, body, key)
        fetched = await client.get(f"{sandbox.url}/payouts/{key}")
        listed = (await client.get(f"{sandbox.url}/payouts")).json()["payouts"]
    assert first.status_code == 201
    payout = first.json()
    assert payout["status"] == "paid"
    assert payout["provider_ref"].startswith("SBXPAY-")
    assert {k: payout[k] for k in ("key", "amount", "currency", "method", "reference")} == {
        "key": key, "amount": "1000.00", "currency": "USD", "method": "mobile_money", "reference": body["reference"],
    }  # fmt: skip
    assert again.status_code == 200
    assert again.json() == payout
    assert fetched.status_code == 200
    assert fetched.json() == payout
    assert [listed_payout for listed_payout in listed if listed_payout["key"] == key] == [payout]
    assert CANARY_MSISDN not in first.text


async def test_concurrent_requests_with_one_key_make_one_payout(sandbox: Sandbox) -> None:
    key, body = str(uuid4()), payout_body()
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        responses = await asyncio.gather(*(_post(client, sandbox.url, body, key) for _ in range(20)))
    assert sorted(response.status_code for response in responses) == [200] * 19 + [201]
    assert len({response.json()["provider_ref"] for response in responses}) == 1


async def test_a_key_reused_with_another_body_is_refused(sandbox: Sandbox) -> None:
    key, body = str(uuid4()), payout_body()
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        first = await _post(client, sandbox.url, body, key)
        reused = await _post(client, sandbox.url, {**body, "amount": "999.00"}, key)
        fetched = await client.get(f"{sandbox.url}/payouts/{key}")
    assert reused.status_code == 422
    assert reused.json()["error"] == "idempotency_key_reused"
    assert fetched.json() == first.json()
    assert fetched.json()["amount"] == "1000.00"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 1000}, "amount"),
        ({"amount": "0.00"}, "amount"),
        ({"currency": "usd"}, "currency"),
        ({"method": "cash"}, "method"),
        ({"instrument": {}}, "instrument"),
        ({"reference": ""}, "reference"),
        ({"surprise": CANARY_MSISDN}, "surprise"),
    ],
)
async def test_an_invalid_body_names_the_field_without_echoing_values(
    sandbox: Sandbox, change: dict[str, Any], field: str
) -> None:
    key = str(uuid4())
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        response = await _post(client, sandbox.url, payout_body(**change), key)
        fetched = await client.get(f"{sandbox.url}/payouts/{key}")
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert response.json()["field"] == field
    assert CANARY_MSISDN not in response.text
    assert fetched.status_code == 404


async def test_an_unknown_key_is_not_found_and_the_list_filters_by_status(sandbox: Sandbox) -> None:
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        missing = await client.get(f"{sandbox.url}/payouts/{uuid4()}")
        key = str(uuid4())
        await _post(client, sandbox.url, payout_body(), key)
        paid = (await client.get(f"{sandbox.url}/payouts", params={"status": "paid"})).json()["payouts"]
        declined = (await client.get(f"{sandbox.url}/payouts", params={"status": "declined"})).json()["payouts"]
        invalid = await client.get(f"{sandbox.url}/payouts", params={"status": "lost"})
        health = await client.get(f"{sandbox.url}/health")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert key in {payout["key"] for payout in paid}
    assert key not in {payout["key"] for payout in declined}
    assert [payout["created_at"] for payout in paid] == sorted(payout["created_at"] for payout in paid)
    assert invalid.status_code == 422
    assert health.status_code == 200


async def test_a_batch_pays_each_key_once_and_refuses_a_bad_item_alone(sandbox: Sandbox) -> None:
    keys = [str(uuid4()) for _ in range(3)]
    good = [{"key": key, **payout_body()} for key in keys]
    bad = {"key": str(uuid4()), **payout_body(currency="usd")}
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        first = await client.post(f"{sandbox.url}/payout-batches", json={"items": [*good, bad, good[0]]})
        again = await client.post(f"{sandbox.url}/payout-batches", json={"items": good})
        reused = await client.post(f"{sandbox.url}/payout-batches", json={"items": [{**good[1], "amount": "1.00"}]})
        looked_up = await client.get(f"{sandbox.url}/payouts", params={"keys": ",".join([*keys, bad["key"]])})
        too_many = await client.get(f"{sandbox.url}/payouts", params={"keys": ",".join(["k"] * 201)})
        empty = await client.post(f"{sandbox.url}/payout-batches", json={"items": []})
    assert first.status_code == 200
    answers = first.json()["items"]
    assert [(answer["key"], answer["outcome"]) for answer in answers] == [
        *((key, "created") for key in keys), (bad["key"], "rejected"), (keys[0], "rejected"),
    ]  # fmt: skip
    assert (answers[3]["error"], answers[3]["message"]) == ("invalid_item", "currency: string_pattern_mismatch")
    assert answers[4]["error"] == "duplicate_key"
    assert [answer["outcome"] for answer in again.json()["items"]] == ["replayed"] * 3
    assert [answer["payout"] for answer in again.json()["items"]] == [answer["payout"] for answer in answers[:3]]
    assert reused.json()["items"][0]["error"] == "idempotency_key_reused"
    assert [payout["key"] for payout in looked_up.json()["payouts"]] == keys
    assert too_many.status_code == 422
    assert empty.status_code == 422
    assert CANARY_MSISDN not in first.text


async def test_an_ambiguous_batch_is_looked_up_before_anything_is_sent_again(start_sandbox: StartSandbox) -> None:
    slow = start_sandbox(HOMEWARD_SANDBOX_PAYOUT_AMBIGUOUS_RATE="1", HOMEWARD_SANDBOX_PAYOUT_AMBIGUOUS_DELAY_MS="3000")
    items = [
        PayoutItem(str(uuid4()), Decimal("1000.00"), "USD", "mobile_money", {"msisdn": CANARY_MSISDN}) for _ in range(5)
    ]
    provider = HttpPayoutProvider(slow.url, timeout_seconds=0.5, attempts_max=3, backoff_initial_seconds=0.05)
    try:
        outcomes = await provider.pay_batch(items, resolve_first=set())
    finally:
        await provider.close()
    assert {key: (outcome.status if isinstance(outcome, Payout) else outcome) for key, outcome in outcomes.items()} == {
        item.key: "paid" for item in items
    }
    batches = [line for line in slow.lines if '"payout.batch"' in line]
    assert len(batches) == 1, "the batch was sent once; the second try found every key already paid"


async def test_an_injected_error_records_nothing(start_sandbox: StartSandbox) -> None:
    failing = start_sandbox(HOMEWARD_SANDBOX_PAYOUT_ERROR_RATE="1")
    key = str(uuid4())
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        response = await _post(client, failing.url, payout_body(), key)
        fetched = await client.get(f"{failing.url}/payouts/{key}")
        listed = (await client.get(f"{failing.url}/payouts")).json()["payouts"]
    assert response.status_code == 503
    assert fetched.status_code == 404
    assert listed == []


async def test_an_ambiguous_payout_exists_although_the_client_timed_out(start_sandbox: StartSandbox) -> None:
    slow = start_sandbox(HOMEWARD_SANDBOX_PAYOUT_AMBIGUOUS_RATE="1", HOMEWARD_SANDBOX_PAYOUT_AMBIGUOUS_DELAY_MS="3000")
    key = str(uuid4())
    async with httpx.AsyncClient(timeout=0.5) as client:
        with pytest.raises(httpx.TimeoutException):
            await _post(client, slow.url, payout_body(), key)
        fetched = await eventually(
            lambda: _paid(client, f"{slow.url}/payouts/{key}"), timeout=5, what="the ambiguous payout"
        )
    assert fetched["status"] == "paid"


async def _paid(client: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
    response = await client.get(url)
    return response.json() if response.status_code == 200 else None


async def test_a_declined_payout_stays_declined(start_sandbox: StartSandbox, receiver: CallbackReceiver) -> None:
    declining = start_sandbox(
        HOMEWARD_SANDBOX_PAYOUT_DECLINE_RATE="1",
        HOMEWARD_PAYOUT_CALLBACK_URL=receiver.url,
        HOMEWARD_PAYOUT_CALLBACK_SECRET=SECRET,
    )
    key, body = str(uuid4()), payout_body()
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        first = await _post(client, declining.url, body, key)
        again = await _post(client, declining.url, body, key)
    assert first.status_code == 201
    assert first.json()["status"] == "declined"
    assert again.status_code == 200
    assert again.json() == first.json()
    await eventually(lambda: receiver.notifications(key), timeout=CALLBACK_WAIT_SECONDS_MAX, what="payout.declined")
    assert [notification["type"] for notification in receiver.notifications(key)] == ["payout.declined"]
    assert receiver.signed_with(SECRET)


async def test_a_returned_payout_is_settled_then_returned_with_signed_callbacks(
    start_sandbox: StartSandbox, receiver: CallbackReceiver
) -> None:
    returning = start_sandbox(
        HOMEWARD_SANDBOX_PAYOUT_RETURN_RATE="1",
        HOMEWARD_SANDBOX_PAYOUT_RETURN_DELAY_MS="200",
        HOMEWARD_PAYOUT_CALLBACK_URL=receiver.url,
        HOMEWARD_PAYOUT_CALLBACK_SECRET=SECRET,
    )
    key = str(uuid4())
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        created = (await _post(client, returning.url, payout_body(), key)).json()
        await eventually(
            lambda: len(receiver.notifications(key)) >= 2, timeout=CALLBACK_WAIT_SECONDS_MAX, what="two callbacks"
        )
        fetched = (await client.get(f"{returning.url}/payouts/{key}")).json()
    assert created["status"] == "paid"
    settled, returned = receiver.notifications(key)
    assert (settled["type"], settled["status"]) == ("payout.settled", "paid")
    assert (returned["type"], returned["status"]) == ("payout.returned", "returned")
    for notification in (settled, returned):
        assert notification["provider_ref"] == created["provider_ref"]
        assert (notification["amount"], notification["currency"]) == ("1000.00", "USD")
    assert settled["id"] != returned["id"]
    assert receiver.signed_with(SECRET)
    assert not receiver.signed_with("another-secret")
    assert fetched["status"] == "returned"


async def test_a_refused_callback_is_retried(start_sandbox: StartSandbox) -> None:
    flaky = CallbackReceiver(failures=2)
    try:
        retrying = start_sandbox(HOMEWARD_PAYOUT_CALLBACK_URL=flaky.url, HOMEWARD_PAYOUT_CALLBACK_SECRET=SECRET)
        key = str(uuid4())
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
            await _post(client, retrying.url, payout_body(), key)
        await eventually(lambda: flaky.notifications(key), timeout=CALLBACK_WAIT_SECONDS_MAX, what="a retried callback")
        assert [notification["type"] for notification in flaky.notifications(key)] == ["payout.settled"]
        assert flaky.failures == 0
    finally:
        flaky.close()


async def test_payouts_and_unsent_callbacks_survive_a_restart(
    start_sandbox: StartSandbox, receiver: CallbackReceiver, tmp_path: Path
) -> None:
    store = tmp_path / "durable.sqlite3"
    key, body = str(uuid4()), payout_body()
    # Without a callback URL the notification is recorded but not sent.
    first_run = start_sandbox(store)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        created = (await _post(client, first_run.url, body, key)).json()
    first_run.stop()
    assert first_run.process is not None and first_run.process.returncode is not None

    second_run = start_sandbox(store, HOMEWARD_PAYOUT_CALLBACK_URL=receiver.url, HOMEWARD_PAYOUT_CALLBACK_SECRET=SECRET)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        fetched = await client.get(f"{second_run.url}/payouts/{key}")
        again = await _post(client, second_run.url, body, key)
    assert fetched.json() == created
    assert again.status_code == 200
    assert again.json()["provider_ref"] == created["provider_ref"]
    await eventually(lambda: receiver.notifications(key), timeout=CALLBACK_WAIT_SECONDS_MAX, what="the kept callback")
    assert [notification["type"] for notification in receiver.notifications(key)] == ["payout.settled"]
    assert receiver.signed_with(SECRET)


async def test_logs_carry_ids_but_never_the_instrument(start_sandbox: StartSandbox) -> None:
    logged = start_sandbox()
    key = str(uuid4())
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        await _post(client, logged.url, payout_body(), key)
    lines = await eventually(
        lambda: [line for line in logged.lines if key in line], timeout=5, what="the payout's log line"
    )
    assert json.loads(lines[0])["event"] == "payout.created"
    assert not [line for line in logged.lines if CANARY_MSISDN in line]


async def test_the_payout_list_is_asked_again_while_the_provider_restarts(tmp_path: Path) -> None:
    """`ledger reconcile` and the chaos audit may ask just after the provider was killed: a read
    changes nothing, so it waits (bounded) for the provider to come back instead of failing."""
    late = Sandbox(tmp_path / "payouts.sqlite3", {})
    provider = HttpPayoutProvider(late.url, timeout_seconds=CLIENT_TIMEOUT_SECONDS, attempts_max=10,
                                  backoff_initial_seconds=0.2)  # fmt: skip

    def start_late() -> None:
        time.sleep(LATE_START_SECONDS)
        late.start()

    starting = asyncio.create_task(asyncio.to_thread(start_late))
    try:
        payouts = await provider.list_payouts()
    finally:
        await starting
        late.stop()
        await provider.close()
    assert payouts == []


async def test_a_provider_that_never_answers_is_reported_unavailable() -> None:
    provider = HttpPayoutProvider(f"http://127.0.0.1:{free_port()}", timeout_seconds=CLIENT_TIMEOUT_SECONDS,
                                  attempts_max=2, backoff_initial_seconds=0.05)  # fmt: skip
    try:
        with pytest.raises(ProviderUnavailableError):
            await provider.list_payouts()
    finally:
        await provider.close()


async def test_callbacks_pass_over_a_receiver_that_refuses_connections(
    start_sandbox: StartSandbox, receiver: CallbackReceiver
) -> None:
    """With replicas of disbursement and no load balancer, the sandbox is given each one's URL; a
    killed replica refuses connections, and its share of the callbacks goes to the other at once."""
    dead = f"http://127.0.0.1:{free_port()}/callbacks/payouts"
    sandbox = start_sandbox(
        HOMEWARD_PAYOUT_CALLBACK_URL=f"{dead},{receiver.url}", HOMEWARD_PAYOUT_CALLBACK_SECRET=SECRET
    )
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS) as client:
        # One at a time, so that each callback is its own delivery and the turns alternate.
        for _ in range(4):
            key = str(uuid4())
            assert (await _post(client, sandbox.url, payout_body(), key)).status_code == 201
            await eventually(lambda key=key: receiver.notifications(key), timeout=CALLBACK_WAIT_SECONDS_MAX, what=key)
    # None was put off for a retry: each batch the dead receiver's turn fell on went to the other.
    assert not [line for line in sandbox.lines if "notification.failed" in line]
