"""The sandbox payout provider: pays once per idempotency key, keeps every payout in its own SQLite
file, and tells the payer what happened through signed callbacks.

HTTP API (JSON):
  POST /payouts          header Idempotency-Key; body {amount, currency, method, instrument, reference}
                         201 new payout, 200 the payout already made for that key (never a second one),
                         400 missing key, 422 invalid body or the key reused with another body,
                         503 injected transient error (nothing was recorded)
  POST /payout-batches   body {"items": [{key, amount, currency, method, instrument, reference}, ...]}, at
                         most PAYOUT_BATCH_ITEMS_MAX items, all recorded in one store transaction;
                         200 {"items": [{key, outcome, payout | error}]} in the order sent, where
                         outcome is created, replayed (the payout already made for that key) or
                         rejected (error: invalid_item, idempotency_key_reused, duplicate_key);
                         422 a body that is not a batch, 503 injected transient error (nothing recorded)
  GET  /payouts/{key}    200 the payout, 404 {"error": "not_found"}
  GET  /payouts          {"payouts": [...]} in creation order, optionally ?status=paid|declined|returned,
                         or only the payouts of ?keys=k1,k2,... (at most PAYOUT_LOOKUP_KEYS_MAX keys)
  GET  /health           200

Notifications go out in batches: one signed POST {"notifications": [...]} of up to
NOTIFICATION_BATCH_SIZE_MAX, never two about the same payout in one batch. The receiver answers
{"accepted": [ids]}; the ids it does not accept (or every id, on an error status) are sent again
later with a doubling pause.

Faults (HOMEWARD_SANDBOX_PAYOUT_* settings) apply to the POSTs only: a batch is answered 503 or late
as a whole, and each item is declined or returned on its own draw, so that a client can always resolve
an ambiguous outcome by reading the payout back. Notifications are written to an outbox table in
the same transaction as the change they describe, and a background loop delivers them, so a crash
between the two loses nothing.
"""

import asyncio
import contextlib
import hashlib
import json
import random
import secrets
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, cast

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.runtime import signing
from services.runtime.settings import revealed
from services.sandbox import server
from services.sandbox.settings import PayoutSandboxSettings
from services.sandbox.store import SqliteStore

STATUSES: tuple[str, ...] = ("paid", "declined", "returned")

# Request bounds.
REFERENCE_CHARS_MAX = 200
PAYOUT_LIST_SIZE_MAX = 100_000
PAYOUT_BATCH_ITEMS_MAX = server.BATCH_ITEMS_MAX
PAYOUT_LOOKUP_KEYS_MAX = 200
"""Keys per GET /payouts?keys=: 200 UUIDs keep the request line well under the HTTP server's limit."""

# Background loop: returns and notification delivery.
BACKGROUND_POLL_INTERVAL_SECONDS = 0.05
RETURN_BATCH_SIZE_MAX = 100
NOTIFICATION_BATCH_SIZE_MAX = 100
NOTIFICATIONS_DUE_MAX = 1000
"""Notifications taken per pass of the background loop, sent as batches of NOTIFICATION_BATCH_SIZE_MAX."""
NOTIFICATION_CONCURRENCY_MAX = 16
NOTIFICATION_ATTEMPTS_MAX = 20
NOTIFICATION_BACKOFF_BASE_SECONDS = 0.5
NOTIFICATION_BACKOFF_MAX_SECONDS = 60.0
NOTIFICATION_CONNECT_TIMEOUT_SECONDS = 2.0
NOTIFICATION_TIMEOUT_SECONDS = 5.0


Status = Literal["paid", "declined", "returned"]
NotificationType = Literal["payout.settled", "payout.returned", "payout.declined"]

logger = structlog.get_logger("homeward.sandbox.payouts")

SQL = Path(__file__).parent / "sql" / "payouts.sql"


def rfc3339(unix_seconds: float) -> str:
    """Fixed-width UTC timestamps, so that their text order is their time order."""
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat(timespec="microseconds")


class PayoutRequest(BaseModel):
    """The body of POST /payouts. The instrument is opaque to the sandbox: it is never stored or logged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amount: str = Field(pattern=r"^[0-9]{1,12}\.[0-9]{2}$", description="Decimal string with two places")
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    method: Literal["mobile_money", "bank_account"]
    instrument: dict[str, Any] = Field(min_length=1)
    reference: str = Field(min_length=1, max_length=REFERENCE_CHARS_MAX)

    @field_validator("amount")
    @classmethod
    def _positive(cls, amount: str) -> str:
        if Decimal(amount) <= 0:
            raise ValueError("amount must be greater than zero")
        return amount

    def body_hash(self) -> str:
        """sha256 of the canonical JSON of the body: how a reused key is told from a retry."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class BatchEntry:
    """One readable item of a batch, with the status its draw gave it."""

    index: int
    key: str
    request: PayoutRequest
    status: Status
    return_due_at: float | None


@dataclass(frozen=True)
class StoredPayout:
    key: str
    provider_ref: str
    body_hash: str
    amount: str
    currency: str
    method: str
    reference: str
    status: Status
    created_at: str
    updated_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "StoredPayout":
        # The queries select the columns in the order of the fields.
        return cls(*tuple(row))

    def public(self) -> dict[str, str]:
        """The payout as the API shows it: the body hash is the sandbox's own business."""
        shown = asdict(self)
        del shown["body_hash"]
        return shown


@dataclass(frozen=True)
class PendingNotification:
    id: str
    key: str
    type: NotificationType
    body: str
    attempts: int


def notification_body(notification_id: str, kind: NotificationType, payout: StoredPayout, occurred_at: str) -> str:
    return json.dumps(
        {
            "id": notification_id,
            "type": kind,
            "key": payout.key,
            "provider_ref": payout.provider_ref,
            "status": payout.status,
            "amount": payout.amount,
            "currency": payout.currency,
            "occurred_at": occurred_at,
        },
        separators=(",", ":"),
    )


class PayoutStore(SqliteStore):
    """The payout sandbox's durable state (see SqliteStore)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SQL)

    def record(
        self, *, key: str, request: PayoutRequest, status: Status, return_due_at: float | None, now: float
    ) -> tuple[StoredPayout, bool]:
        """The payout for `key`: the one already stored (False), or a new one with its notification (True)."""
        with self._transaction() as connection:
            return self._record(connection, key, request, status, return_due_at, now)

    def record_batch(self, items: list["BatchEntry"], *, now: float) -> list[tuple[StoredPayout, bool]]:
        """`record` for every item, in one transaction (one fsync for the whole batch)."""
        with self._transaction() as connection:
            return [
                self._record(connection, item.key, item.request, item.status, item.return_due_at, now) for item in items
            ]

    def _record(
        self,
        connection: sqlite3.Connection,
        key: str,
        request: PayoutRequest,
        status: Status,
        return_due_at: float | None,
        now: float,
    ) -> tuple[StoredPayout, bool]:
        row = self._queries.payout(connection, key=key)
        if row is not None:
            return StoredPayout.from_row(row), False
        self._queries.insert_payout(
            connection,
            key=key,
            provider_ref=f"SBXPAY-{secrets.token_hex(8).upper()}",
            body_hash=request.body_hash(),
            amount=request.amount,
            currency=request.currency,
            method=request.method,
            reference=request.reference,
            status=status,
            created_at=rfc3339(now),
            return_due_at=return_due_at,
        )
        payout = StoredPayout.from_row(self._queries.payout(connection, key=key))
        kind: NotificationType = "payout.settled" if status == "paid" else "payout.declined"
        self._notify(connection, kind, payout, now)
        return payout, True

    def _notify(self, connection: sqlite3.Connection, kind: NotificationType, payout: StoredPayout, now: float) -> None:
        notification_id = str(uuid.uuid4())
        self._queries.insert_notification(
            connection,
            id=notification_id,
            key=payout.key,
            type=kind,
            created_at=rfc3339(now),
            body=notification_body(notification_id, kind, payout, payout.updated_at),
            next_attempt_at=now,
        )

    def get(self, key: str) -> StoredPayout | None:
        with self._lock:
            row = self._queries.payout(self._connection, key=key)
        return None if row is None else StoredPayout.from_row(row)

    def list_payouts(self, status: Status | None) -> list[StoredPayout]:
        with self._lock:
            rows = list(self._queries.list_payouts(self._connection, status=status, limit=PAYOUT_LIST_SIZE_MAX))
        return [StoredPayout.from_row(row) for row in rows]

    def get_many(self, keys: list[str]) -> list[StoredPayout]:
        """The stored payouts among `keys`, in the order asked (unknown keys are left out)."""
        with self._lock:
            found = [self._queries.payout(self._connection, key=key) for key in keys]
        return [StoredPayout.from_row(row) for row in found if row is not None]

    def return_due(self, *, now: float) -> list[StoredPayout]:
        """Marks paid payouts whose return is due as returned, each with its notification."""
        returned: list[StoredPayout] = []
        # Looking first, outside a write transaction, keeps the idle loop from taking the write lock.
        with self._lock:
            if not list(self._queries.due_returns(self._connection, now=now, limit=1)):
                return returned
        with self._transaction() as connection:
            keys = [row["idempotency_key"] for row in self._queries.due_returns(
                connection, now=now, limit=RETURN_BATCH_SIZE_MAX
            )]  # fmt: skip
            for key in keys:
                self._queries.mark_returned(connection, key=key, updated_at=rfc3339(now))
                payout = StoredPayout.from_row(self._queries.payout(connection, key=key))
                self._notify(connection, "payout.returned", payout, now)
                returned.append(payout)
        return returned

    def due_notifications(self, *, now: float) -> list[PendingNotification]:
        with self._lock:
            rows = list(self._queries.due_notifications(
                self._connection, now=now, attempts_max=NOTIFICATION_ATTEMPTS_MAX, limit=NOTIFICATIONS_DUE_MAX
            ))  # fmt: skip
        return [
            PendingNotification(row["id"], row["payout_key"], row["type"], row["body"], row["attempts"]) for row in rows
        ]

    def mark_delivered(self, sent: list[str], failed: list[tuple[str, int, float]], *, now: float) -> None:
        """One batch's outcome in one transaction: the ids sent, and (id, attempts, next attempt) of the rest."""
        with self._transaction() as connection:
            for notification_id in sent:
                self._queries.mark_notification_sent(connection, id=notification_id, sent_at=rfc3339(now))
            for notification_id, attempts, next_attempt_at in failed:
                self._queries.mark_notification_failed(
                    connection, id=notification_id, attempts=attempts, next_attempt_at=next_attempt_at
                )


@dataclass(frozen=True)
class Faults:
    latency_seconds: float
    error_rate: float
    ambiguous_rate: float
    ambiguous_delay_seconds: float
    decline_rate: float
    return_rate: float
    return_delay_seconds: float

    @classmethod
    def from_settings(cls, settings: PayoutSandboxSettings) -> "Faults":
        return cls(
            latency_seconds=settings.sandbox_payout_latency_ms / 1000,
            error_rate=settings.sandbox_payout_error_rate,
            ambiguous_rate=settings.sandbox_payout_ambiguous_rate,
            ambiguous_delay_seconds=settings.sandbox_payout_ambiguous_delay_ms / 1000,
            decline_rate=settings.sandbox_payout_decline_rate,
            return_rate=settings.sandbox_payout_return_rate,
            return_delay_seconds=settings.sandbox_payout_return_delay_ms / 1000,
        )


@dataclass(frozen=True)
class Draw:
    """The faults one POST gets. All four are drawn every time, so a seed gives a repeatable run."""

    error: bool
    decline: bool
    returned: bool
    ambiguous: bool


class PayoutSandbox:
    def __init__(self, settings: PayoutSandboxSettings, store_path: Path) -> None:
        self.store_path = store_path
        self.faults = Faults.from_settings(settings)
        self.random = random.Random(settings.sandbox_payout_seed)
        # Several receivers (replicas with no load balancer in front) are taken in turn.
        self.callback_urls = [url.strip() for url in (settings.payout_callback_url or "").split(",") if url.strip()]
        self.callback_turn = 0
        secret = settings.payout_callback_secret
        self.callback_secret = None if secret is None else secret.get_secret_value().encode()
        self.token = revealed(settings.sandbox_payout_token)
        self._store: PayoutStore | None = None

    @property
    def store(self) -> PayoutStore:
        assert self._store is not None, "the store opens in the app's lifespan"
        return self._store

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        self._store = await asyncio.to_thread(PayoutStore, self.store_path)
        if self.callback_urls and self.callback_secret is None:
            logger.warning("sandbox.callbacks_unsigned", reason="HOMEWARD_PAYOUT_CALLBACK_SECRET is not set")
        timeout = httpx.Timeout(NOTIFICATION_TIMEOUT_SECONDS, connect=NOTIFICATION_CONNECT_TIMEOUT_SECONDS)
        limits = httpx.Limits(max_connections=NOTIFICATION_CONCURRENCY_MAX)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False) as client:
            background = asyncio.create_task(self._background(client))
            try:
                yield
            finally:
                background.cancel()
                await asyncio.gather(background, return_exceptions=True)
                self.store.close()

    def app(self) -> Starlette:
        return server.application(
            [
                Route("/payouts", self.create_payout, methods=["POST"]),
                Route("/payout-batches", self.create_batch, methods=["POST"]),
                Route("/payouts", self.list_payouts, methods=["GET"]),
                Route("/payouts/{key}", self.get_payout, methods=["GET"]),
            ],
            self.lifespan,
            token=self.token,
        )

    def _draw(self) -> Draw:
        faults = self.faults
        return Draw(
            error=self.random.random() < faults.error_rate,
            decline=self.random.random() < faults.decline_rate,
            returned=self.random.random() < faults.return_rate,
            ambiguous=self.random.random() < faults.ambiguous_rate,
        )

    async def create_payout(self, request: Request) -> JSONResponse:
        parsed = await server.keyed_request(request, PayoutRequest)
        if isinstance(parsed, JSONResponse):
            return parsed
        key, payout_request = parsed
        if self.faults.latency_seconds:
            await asyncio.sleep(self.faults.latency_seconds)
        draw = self._draw()
        if draw.error:
            logger.info("payout.fault_injected", key=key, fault="error")
            return server.injected_unavailable("nothing was paid")
        return await self._pay(key, payout_request, draw)

    async def _pay(self, key: str, payout_request: PayoutRequest, draw: Draw) -> JSONResponse:
        now = time.time()
        status: Status = "declined" if draw.decline else "paid"
        return_due_at = now + self.faults.return_delay_seconds if status == "paid" and draw.returned else None
        payout, created = await asyncio.to_thread(
            self.store.record, key=key, request=payout_request, status=status, return_due_at=return_due_at, now=now
        )
        if payout.body_hash != payout_request.body_hash():
            logger.warning("payout.idempotency_key_reused", key=key, provider_ref=payout.provider_ref)
            return server.error(422, "idempotency_key_reused", "this Idempotency-Key was used with a different body")
        event = "payout.created" if created else "payout.replayed"
        logger.info(event, key=key, provider_ref=payout.provider_ref, status=payout.status)
        if draw.ambiguous:
            # The payout exists now; answering late makes the client time out without knowing that.
            logger.info("payout.fault_injected", key=key, provider_ref=payout.provider_ref, fault="ambiguous")
            await asyncio.sleep(self.faults.ambiguous_delay_seconds)
        return JSONResponse(payout.public(), status_code=201 if created else 200)

    async def create_batch(self, request: Request) -> JSONResponse:
        batch = await server.parsed_body(request, server.Batch, bytes_max=server.BATCH_BODY_BYTES_MAX)
        if isinstance(batch, JSONResponse):
            return batch
        if self.faults.latency_seconds:
            await asyncio.sleep(self.faults.latency_seconds)
        draw = self._draw()
        if draw.error:
            logger.info("payout.fault_injected", items=len(batch.items), fault="error")
            return server.injected_unavailable("nothing in the batch was paid")
        items, answers = server.batch_items(batch, PayoutRequest)
        entries = [self._entry(item, now=time.time()) for item in items]
        stored = await asyncio.to_thread(self.store.record_batch, entries, now=time.time())
        for entry, (payout, created) in zip(entries, stored, strict=True):
            if payout.body_hash != entry.request.body_hash():
                logger.warning("payout.idempotency_key_reused", key=entry.key, provider_ref=payout.provider_ref)
                answers[entry.index] = server.rejected(
                    entry.key, "idempotency_key_reused", "this key was used with a different body"
                )
                continue
            answers[entry.index] = server.answered(entry.key, created, "payout", payout.public())
            logger.debug("payout.created" if created else "payout.replayed", key=entry.key, status=payout.status)
        outcomes = Counter(answer["outcome"] for answer in answers)
        logger.info("payout.batch", items=len(answers), **outcomes)
        if draw.ambiguous:
            logger.info("payout.fault_injected", items=len(answers), fault="ambiguous")
            await asyncio.sleep(self.faults.ambiguous_delay_seconds)
        return JSONResponse({"items": answers})

    def _entry(self, item: server.Item[PayoutRequest], *, now: float) -> BatchEntry:
        """A readable item with the status its own draw gives it."""
        draw = self._draw()
        status: Status = "declined" if draw.decline else "paid"
        return_due_at = now + self.faults.return_delay_seconds if status == "paid" and draw.returned else None
        return BatchEntry(item.index, item.key, item.body, status, return_due_at)

    async def get_payout(self, request: Request) -> JSONResponse:
        payout = await asyncio.to_thread(self.store.get, request.path_params["key"])
        if payout is None:
            return server.error(404, "not_found", "no payout with this Idempotency-Key")
        return JSONResponse(payout.public())

    async def list_payouts(self, request: Request) -> JSONResponse:
        if (asked := request.query_params.get("keys")) is not None:
            keys = [key for key in asked.split(",") if key]
            if len(keys) > PAYOUT_LOOKUP_KEYS_MAX:
                return server.error(422, "too_many_keys", f"keys: at most {PAYOUT_LOOKUP_KEYS_MAX} per request")
            found = await asyncio.to_thread(self.store.get_many, keys)
            return JSONResponse({"payouts": [payout.public() for payout in found]})
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            return server.error(422, "invalid_status", f"status: one of {', '.join(STATUSES)}")
        payouts = await asyncio.to_thread(self.store.list_payouts, cast(Status | None, status))
        return JSONResponse({"payouts": [payout.public() for payout in payouts]})

    async def _background(self, client: httpx.AsyncClient) -> None:
        """Executes due returns and delivers due notifications, until cancelled at shutdown."""
        while True:
            try:
                for payout in await asyncio.to_thread(self.store.return_due, now=time.time()):
                    logger.info(
                        "payout.returned", key=payout.key, provider_ref=payout.provider_ref, status=payout.status
                    )
                if self.callback_urls:
                    await self._deliver_due(client)
            except sqlite3.Error as error:
                logger.warning("sandbox.store_error", error=type(error).__name__)
            await asyncio.sleep(BACKGROUND_POLL_INTERVAL_SECONDS)

    async def _deliver_due(self, client: httpx.AsyncClient) -> None:
        due = await asyncio.to_thread(self.store.due_notifications, now=time.time())
        batches = [
            due[first : first + NOTIFICATION_BATCH_SIZE_MAX]
            for first in range(0, len(due), NOTIFICATION_BATCH_SIZE_MAX)
        ]
        semaphore = asyncio.Semaphore(NOTIFICATION_CONCURRENCY_MAX)

        async def deliver(batch: list[PendingNotification]) -> None:
            async with semaphore:
                await self._deliver(client, batch)

        await asyncio.gather(*(deliver(batch) for batch in batches))

    async def _deliver(self, client: httpx.AsyncClient, batch: list[PendingNotification]) -> None:
        """Sends one batch; the receiver's `accepted` ids are done, the rest are tried again later.
        Receivers take batches in turn; one that refuses the connection is passed over at once,
        as a load balancer would, so a dead replica delays nothing while another answers."""
        body = ('{"notifications":[' + ",".join(notification.body for notification in batch) + "]}").encode()
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json"}
        if self.callback_secret is not None:
            headers[signing.TIMESTAMP_HEADER] = str(timestamp)
            headers[signing.SIGNATURE_HEADER] = signing.sign(self.callback_secret, timestamp, body)
        outcome = "not sent"
        accepted: set[str] = set()
        self.callback_turn += 1
        for offset in range(len(self.callback_urls)):
            url = self.callback_urls[(self.callback_turn + offset) % len(self.callback_urls)]
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.ConnectError as error:
                outcome = type(error).__name__
                continue
            except httpx.HTTPError as error:
                outcome = type(error).__name__
                break
            outcome = str(response.status_code)
            if response.is_success:
                accepted = _accepted(response, batch)
            break
        sent = [notification.id for notification in batch if notification.id in accepted]
        failed: list[tuple[str, int, float]] = []
        for notification in batch:
            if notification.id in accepted:
                continue
            attempts = notification.attempts + 1
            delay = min(NOTIFICATION_BACKOFF_MAX_SECONDS, NOTIFICATION_BACKOFF_BASE_SECONDS * 2 ** (attempts - 1))
            failed.append((notification.id, attempts, time.time() + delay))
            log = logger.bind(notification_id=notification.id, type=notification.type, key=notification.key)
            if attempts >= NOTIFICATION_ATTEMPTS_MAX:
                log.error("notification.abandoned", attempts=attempts, outcome=outcome)
            else:
                log.warning("notification.failed", attempts=attempts, outcome=outcome, retry_in_seconds=delay)
        await asyncio.to_thread(self.store.mark_delivered, sent, failed, now=time.time())
        logger.info("notification.batch", notifications=len(batch), delivered=len(sent), outcome=outcome)


def _accepted(response: httpx.Response, batch: list[PendingNotification]) -> set[str]:
    """The ids a 2xx answer accepted: those it lists, or all of them if it lists none (a bare 204)."""
    try:
        listed = response.json().get("accepted") if response.content else None
    except (ValueError, AttributeError):
        listed = None
    if not isinstance(listed, list):
        return {notification.id for notification in batch}
    return {str(notification_id) for notification_id in listed}


async def serve(settings: PayoutSandboxSettings, *, port: int, store_path: Path) -> None:
    """Runs the sandbox on `HOMEWARD_HTTP_HOST`:`port` (0: a free port) until SIGINT or SIGTERM."""
    app = PayoutSandbox(settings, store_path).app()
    await server.serve(app, name="payouts", host=settings.http_host, port=port, tls=settings)
