"""Payout notifications from the provider, over HTTP: signed, fresh, deduplicated, then applied.

Unsigned, mis-signed and stale callbacks are refused (401) and counted by reason.
"""

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from services.disbursement import stipends
from services.disbursement.adapters.provider import Payout
from services.runtime import signing
from services.runtime.db import fetch_all
from services.runtime.uow import UnitOfWork

logger = structlog.get_logger("homeward.disbursement.callbacks")

CALLBACK_CONSUMER = "payout-callbacks"
BODY_BYTES_MAX = 64 * 1024
NOTIFICATION_STATUS = {"payout.settled": "paid", "payout.returned": "returned", "payout.declined": "declined"}


@dataclass
class CallbackEndpoint:
    pool: asyncpg.Pool
    queries: stipends.Queries
    runtime_queries: Any
    secret: bytes
    data_key: bytes
    tolerance_seconds: int
    refused: Counter[str] = field(default_factory=Counter)
    applied: int = 0

    def routes(self) -> list[BaseRoute]:
        return [Route("/callbacks/payouts", self.receive, methods=["POST"])]

    def stats(self) -> dict[str, Any]:
        """Shown at the service's /health: what came in, and what was refused, by reason."""
        return {"callbacks_applied": self.applied, "callbacks_refused": dict(self.refused)}

    async def receive(self, request: Request) -> JSONResponse:
        body = await request.body()
        reason = "body_too_large" if len(body) > BODY_BYTES_MAX else signing.verify(
            self.secret,
            request.headers.get(signing.TIMESTAMP_HEADER),
            request.headers.get(signing.SIGNATURE_HEADER),
            body,
            now=time.time(),
            tolerance_seconds=self.tolerance_seconds,
        )  # fmt: skip
        if reason is not None:
            self.refused[reason] += 1
            logger.warning("callback.refused", reason=reason, refused_total=sum(self.refused.values()))
            return JSONResponse({"error": reason}, status_code=401)
        try:
            notification = json.loads(body)
            kind, payment_id = notification["type"], UUID(notification["key"])
            payout = Payout(
                key=notification["key"], provider_ref=notification["provider_ref"], status=NOTIFICATION_STATUS[kind],
                amount=Decimal(notification["amount"]), currency=notification["currency"],
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            self.refused["malformed_notification"] += 1
            return JSONResponse({"error": "malformed_notification"}, status_code=400)
        if not await self._apply(str(notification["id"]), payment_id, payout):
            # Not claimed: the provider keeps the notification and sends it again later.
            return JSONResponse({"error": "unknown_payment"}, status_code=404)
        return JSONResponse({"status": "accepted"})

    async def _apply(self, notification_id: str, payment_id: UUID, payout: Payout) -> bool:
        """Applies a notification once; False if its payment is unknown here (nothing is recorded)."""
        async with self.pool.acquire() as connection, connection.transaction():
            payment = await self.queries.payments.lock_payment(connection, payment_id=payment_id)
            if payment is None:
                logger.warning("callback.unknown_payment", payment_id=str(payment_id))
                return False
            fresh = await fetch_all(
                self.runtime_queries.claim_events(connection, consumer=CALLBACK_CONSUMER, event_ids=[notification_id])
            )
            if not fresh:
                return True
            uow = UnitOfWork(connection, "disbursement", self.runtime_queries)
            with structlog.contextvars.bound_contextvars(
                case_id=str(payment["case_id"]),
                correlationid=str(payment["correlationid"]),
                event_type="payout.callback",
            ):
                method = stipends.method_of(payment, self.data_key)
                await stipends.apply_provider_status(uow, self.queries, payment, method, payout)
            await uow.flush()
        self.applied += 1
        return True
