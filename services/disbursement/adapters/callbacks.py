"""Payout notifications from the provider, over HTTP: signed, fresh, recorded, then applied.

Unsigned, mis-signed and stale callbacks are refused (401), bodies over 1 MiB as they stream in
(413), and each is counted by reason. A notification whose amount or currency is not the
payment's is recorded but never applied (an operator looks at it). A signed one,
or a signed batch `{"notifications": [...]}`, is recorded by one insert into `payout_callbacks`
and answered at once, so that a callback never waits on a payment's row lock; `apply_recorded`
(a worker) then applies what was recorded, many notifications per transaction.
"""

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from services.disbursement import stipends
from services.disbursement.adapters.provider import Payout
from services.runtime import crypto, signing
from services.runtime.db import fetch_all
from services.runtime.http import bounded_body
from services.runtime.uow import ServiceDatabase

logger = structlog.get_logger("homeward.disbursement.callbacks")

BODY_BYTES_MAX = 1024 * 1024
NOTIFICATIONS_PER_CALLBACK_MAX = 500
AMOUNT_MISMATCH = "amount_mismatch"
NOTIFICATION_STATUS = {"payout.settled": "paid", "payout.returned": "returned", "payout.declined": "declined"}


class MalformedNotification(ValueError):
    pass


@dataclass(frozen=True)
class Notification:
    id: str
    payment_id: UUID
    payout: Payout


def _notification(document: Any) -> Notification:
    try:
        payout = Payout(
            key=str(document["key"]), provider_ref=str(document["provider_ref"]),
            status=NOTIFICATION_STATUS[document["type"]], amount=Decimal(document["amount"]),
            currency=str(document["currency"]),
        )  # fmt: skip
        return Notification(str(document["id"]), UUID(document["key"]), payout)
    except (ValueError, KeyError, TypeError, ArithmeticError) as error:
        raise MalformedNotification from error


def parse(body: bytes) -> tuple[list[Notification], bool]:
    """The notifications of a callback body, and whether it was a batch (or one notification alone)."""
    try:
        document = json.loads(body)
    except ValueError as error:
        raise MalformedNotification from error
    if isinstance(document, dict) and isinstance(document.get("notifications"), list):
        listed = document["notifications"]
        if not 0 < len(listed) <= NOTIFICATIONS_PER_CALLBACK_MAX:
            raise MalformedNotification
        return [_notification(item) for item in listed], True
    return [_notification(document)], False


@dataclass
class CallbackEndpoint:
    database: ServiceDatabase
    queries: stipends.Queries
    secret: bytes
    data_key: crypto.Keyring
    tolerance_seconds: int
    batch_size_max: int
    refused: Counter[str] = field(default_factory=Counter)
    applied: int = 0

    def routes(self) -> list[BaseRoute]:
        return [Route("/callbacks/payouts", self.receive, methods=["POST"])]

    def stats(self) -> dict[str, Any]:
        """Shown at the service's /health: what came in, and what was refused, by reason."""
        return {"callbacks_applied": self.applied, "callbacks_refused": dict(self.refused)}

    async def receive(self, request: Request) -> JSONResponse:
        body = await bounded_body(request, BODY_BYTES_MAX)
        if body is None:
            self.refused["body_too_large"] += 1
            logger.warning("callback.refused", reason="body_too_large", refused_total=sum(self.refused.values()))
            return JSONResponse({"error": "body_too_large"}, status_code=413)
        reason = signing.verify(
            self.secret,
            request.headers.get(signing.TIMESTAMP_HEADER),
            request.headers.get(signing.SIGNATURE_HEADER),
            body,
            now=time.time(),
            tolerance_seconds=self.tolerance_seconds,
        )
        if reason is not None:
            self.refused[reason] += 1
            logger.warning("callback.refused", reason=reason, refused_total=sum(self.refused.values()))
            return JSONResponse({"error": reason}, status_code=401)
        try:
            notifications, batch = parse(body)
        except MalformedNotification:
            self.refused["malformed_notification"] += 1
            return JSONResponse({"error": "malformed_notification"}, status_code=400)
        recorded = await self._record(notifications)
        unknown = [notification.id for notification in notifications if notification.id not in recorded]
        if unknown:
            # Not recorded: the provider keeps these and sends them again later.
            logger.warning("callback.unknown_payment", notifications=len(unknown))
        if batch:
            accepted = [notification.id for notification in notifications if notification.id in recorded]
            return JSONResponse({"accepted": accepted, "unknown": unknown})
        if unknown:
            return JSONResponse({"error": "unknown_payment"}, status_code=404)
        return JSONResponse({"status": "accepted"})

    async def _record(self, notifications: list[Notification]) -> set[str]:
        """Records the notifications of known payments (once each); returns the ids on record."""
        rows = await fetch_all(
            self.queries.payments.record_callbacks(
                self.database.pool,
                notification_ids=[notification.id for notification in notifications],
                payment_ids=[notification.payment_id for notification in notifications],
                statuses=[notification.payout.status for notification in notifications],
                provider_refs=[notification.payout.provider_ref for notification in notifications],
                amounts=[notification.payout.amount for notification in notifications],
                currencies=[notification.payout.currency for notification in notifications],
            )
        )
        return {row["notification_id"] for row in rows}

    async def apply_recorded(self) -> int:
        """Applies recorded notifications, oldest first, in one transaction; safe to repeat."""
        async with self.database.unit() as uow:
            connection = uow.connection
            callbacks = await fetch_all(self.queries.payments.claim_callbacks(connection, limit=self.batch_size_max))
            if not callbacks:
                return 0
            locked = await fetch_all(
                self.queries.payments.lock_payments(
                    connection, payment_ids=[callback["payment_id"] for callback in callbacks], lease_id=None
                )
            )
            payments = {payment["payment_id"]: payment for payment in locked}
            applied: list[str] = []
            refused: list[str] = []
            changes: list[stipends.Change] = []
            for callback in callbacks:
                payment = payments[callback["payment_id"]]
                if (callback["amount"], callback["currency"]) != (payment["amount"], payment["currency"]):
                    # Not what Homeward asked the provider to pay: never applied as if it were, and
                    # set aside (with its reason) so the payment's next notification is not held up.
                    refused.append(callback["notification_id"])
                    logger.error(
                        "callback.amount_mismatch", payment_id=payment["payment_id"], case_id=payment["case_id"],
                        notification_id=callback["notification_id"], amount=callback["amount"],
                        currency=callback["currency"], payment_amount=payment["amount"],
                    )  # fmt: skip
                    continue
                change = self._change(payment, callback)
                if change is not False:
                    applied.append(callback["notification_id"])
                    if change is not None:
                        changes.append(change)
            await stipends.apply(uow, self.queries, changes)
            await self.queries.payments.mark_callbacks_applied(connection, notification_ids=applied)
            if refused:
                await self.queries.payments.refuse_callbacks(
                    connection, notification_ids=refused, reason=AMOUNT_MISMATCH
                )
        self.applied += len(applied)
        if refused:
            self.refused[AMOUNT_MISMATCH] += len(refused)
        logger.info("callback.applied", notifications=len(applied), left=len(callbacks) - len(applied))
        return len(callbacks)

    def _change(self, payment: Any, callback: Any) -> stipends.Change | Literal[False] | None:
        """What a recorded notification changes (None: nothing, it was applied before); False if it
        cannot be applied now, and stays recorded for an operator."""
        log = logger.bind(
            payment_id=payment["payment_id"], case_id=payment["case_id"],
            correlationid=payment["correlationid"],
        )  # fmt: skip
        try:
            method = payment["method"] or stipends.method_of(payment, self.data_key)
        except crypto.UNSEAL_ERRORS:
            # Left unapplied (and counted as waiting): an operator must look at this payment.
            log.error("callback.instrument_unreadable")
            return False
        payout = Payout(
            key=str(callback["payment_id"]), provider_ref=callback["provider_ref"], status=callback["status"],
            amount=callback["amount"], currency=callback["currency"],
        )  # fmt: skip
        log.debug("callback.applied", notification_id=callback["notification_id"], status=callback["status"])
        return stipends.provider_status(payment, method, payout)
