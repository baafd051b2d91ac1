"""`homeward case show` and `homeward payments list`: one case's whole story, and the payments an
operator has to look at, from the four services' own records (as the operator's read-only role).

A case's story is told in time order: what each service recorded and published (with the event's
id and the id of the event that caused it), its booking, each piece of evidence with whether it
counted and why not, its payment with the ledger's transfers and the provider's callbacks, the
dead letters keyed by it, how often it was re-driven and where its personal data was erased. It
holds no personal data: no sealed value is read, and nothing of a dead letter but its code.
"""

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer
from aiokafka.errors import KafkaError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.markup import escape
from rich.table import Table

from contracts.registry import PAYLOAD_TYPES, dlq_topic
from services.arrival import domain as arrival_domain
from services.disbursement.domain import HELD_BUDGET_EXHAUSTED
from services.ops.common import (
    READ_ONLY,
    AsJson,
    StateDir,
    console,
    emit,
    human_duration,
    locate,
    locate_kafka,
    on_schema,
)
from services.ops.dlq import DeadLetter, read_dead_letters
from services.runtime import tracing

SQL = Path(__file__).parent / "sql" / "cases.sql"
EVENTS_SHOWN_MAX = 500
EVIDENCE_SHOWN_MAX = 200
TRANSFERS_SHOWN_MAX = 50
CALLBACKS_SHOWN_MAX = 50
PAYMENTS_LISTED_DEFAULT = 100
PAYMENTS_LISTED_MAX = 10_000
SHOWN_FIELDS_DROPPED = frozenset({"sealed", "identity_key", "case_id", "application_id"})
"""Payload fields a timeline does not show: the sealed personal data (ciphertext), the keyed hash
of the person's identity (it links their cases, and is no operator's business), and the ids the
story is about."""

case_app = typer.Typer(help="One case's whole story across the four services.", no_args_is_help=True)
payments_app = typer.Typer(help="Stipend payments: who is held, failed or waiting, and why.", no_args_is_help=True)

PAYMENT_STATES = {
    "held": ("held",),
    "pending": ("reserved",),
    "disbursed": ("disbursed",),
    "failed": ("failed", "returned"),
}
"""What `payments list --state` names, as the payments table records it: `pending` is reserved
budget waiting for the provider; a returned payout counts as failed."""


class EvidenceWindow(BaseSettings):
    """Arrival's evidence window, read as arrival reads it, to say why evidence did not count."""

    model_config = SettingsConfigDict(env_prefix="HOMEWARD_", extra="ignore")
    arrival_window_seconds: int = Field(default=30 * 24 * 3600, ge=0)


@dataclass
class Story:
    """What `case show` prints: the JSON document, built once and rendered as tables for people."""

    document: dict[str, Any]
    timeline: list[dict[str, Any]] = field(default_factory=list)


def _queries() -> Any:
    from services.runtime.db import load_queries

    return load_queries(SQL)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if moment else None


def _plain(value: Any) -> Any:
    """A database value as JSON shows it: RFC 3339 times, ids and amounts as strings."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, UUID | Decimal):
        return str(value)
    return value


def _row(row: Any) -> dict[str, Any]:
    return {name: _plain(value) for name, value in dict(row).items()}


def _event(row: Any) -> dict[str, Any]:
    """An outbox row as a timeline entry: its envelope's ids and its payload, sealed fields dropped."""
    try:
        envelope = json.loads(bytes(row["value"]))
    except ValueError:
        envelope = {}
    data = envelope.get("data") if isinstance(envelope.get("data"), dict) else {}
    state = "parked" if row["parked_at"] else ("published" if row["sent_at"] else "waiting to be published")
    return {
        "at": _iso(row["created_at"]),
        "service": row["service"],
        "what": f"{row['topic']} ({state})",
        "event_id": str(row["event_id"]) if row["event_id"] else envelope.get("id"),
        "causation_id": envelope.get("causationid"),
        "detail": {name: value for name, value in data.items() if name not in SHOWN_FIELDS_DROPPED},
        "rank": 1,
    }


def _entry(at: datetime | None, service: str, what: str, *, first: bool = False, **detail: Any) -> dict[str, Any]:
    """A timeline entry from a service's records; `first` puts it before the events published in
    the same transaction (what came in before what went out)."""
    kept = {name: _plain(value) for name, value in detail.items() if value is not None}
    return {"at": _iso(at), "service": service, "what": what, "event_id": None, "causation_id": None,
            "detail": kept, "rank": 0 if first else 2}  # fmt: skip


def _in_order(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Oldest first; at one moment, what came in, then what was published, then the rest."""
    ordered = sorted(timeline, key=lambda entry: (entry["at"] or "", entry["rank"]))
    return [{name: value for name, value in entry.items() if name != "rank"} for entry in ordered]


VERIFIED_THE_CASE = "verified_the_case"
NOT_NEEDED = "not_needed"
AWAITING_BOOKING = "awaiting_booking"
AWAITING_THE_REST = "awaiting_the_rest_of_the_rule"


def explain_evidence(
    evidence: list[arrival_domain.Evidence], facts: arrival_domain.CaseFacts | None, used: set[UUID] | None,
    window: timedelta,
) -> dict[UUID, tuple[bool, str]]:  # fmt: skip
    """Whether each piece counted, and why (not): the policy's reason where it cannot serve, else
    whether the verdict used it. `used` is the verdict's evidence, None while undecided."""
    said: dict[UUID, tuple[bool, str]] = {}
    for piece in evidence:
        if used is not None and piece.evidence_id in used:
            said[piece.evidence_id] = (True, VERIFIED_THE_CASE)
        elif facts is None:
            said[piece.evidence_id] = (False, AWAITING_BOOKING)
        elif (reason := arrival_domain.not_counted(piece, facts, window)) is not None:
            said[piece.evidence_id] = (False, reason)
        else:
            said[piece.evidence_id] = (False, NOT_NEEDED if used is not None else AWAITING_THE_REST)
    return said


def _said(counted: bool, why: str) -> str:
    return f"counted ({why.replace('_', ' ')})" if counted else f"not counted: {why}"


async def read_story(connection: Any, named: UUID, *, window: timedelta) -> Story | None:
    """Everything the services' records say of the case (or application) `named`; None if none does."""
    from services.runtime.db import fetch_all

    queries = _queries()
    case = await queries.case_named(connection, id=named)
    case_id: UUID | None = case["case_id"] if case else None
    application_id: UUID | None = case["application_id"] if case else None
    if case is None:
        if await queries.application(connection, id=named) is not None:
            application_id = named
        elif await queries.known_elsewhere(connection, id=named) is not None:
            case_id = named
        else:
            return None
    keys = [str(key) for key in (case_id, application_id) if key is not None]
    story = Story({"case_id": _plain(case_id), "application_id": _plain(application_id)})
    timeline = story.timeline

    application = await queries.application(connection, id=application_id) if application_id else None
    if application is not None:
        timeline.append(
            _entry(application["received_at"], "registration", "registration.submitted.v1 received", first=True)
        )
        outcome = json.loads(application["outcome_data"]) if application["outcome_data"] else {}
        reasons = outcome.get("reasons") if isinstance(outcome, dict) else None
        story.document["registration"] = {
            "received_at": _iso(application["received_at"]),
            "decided_at": _iso(application["decided_at"]),
            "outcome": application["outcome_topic"],
            "rejection_codes": [reason.get("code") for reason in reasons or () if isinstance(reason, dict)],
        }
    if application is not None:
        # The case's trace in a tracing backend, where tracing is on (services/runtime/tracing.py).
        story.document["trace_id"] = f"{tracing.case_trace_id(application['correlationid']):032x}"
    if case is not None:
        story.document["registration"] = story.document.get("registration", {}) | {
            "opened_at": _iso(case["opened_at"]), "consent_version": case["consent_version"],
            "consented_at": _iso(case["consented_at"]),
        }  # fmt: skip
    events = [_event(row) for row in await fetch_all(queries.events_about(connection, keys=keys,
                                                                          limit=EVENTS_SHOWN_MAX))]  # fmt: skip
    timeline += events
    if case_id is not None:
        await _read_case_records(connection, queries, story, case_id, events, window)
    progress = [_row(row) for row in await fetch_all(queries.progress(connection, keys=keys))]
    story.document["redrives"] = progress
    for row in progress:
        if row["redrives"]:
            timeline.append(_entry(_parsed(row["progressed_at"]), row["service"],
                                   f"re-driven {row['redrives']} time(s), the last at this time"))  # fmt: skip
    return story


def _parsed(moment: str | None) -> datetime | None:
    return datetime.fromisoformat(moment) if moment else None


async def _read_case_records(
    connection: Any, queries: Any, story: Story, case_id: UUID, events: list[dict[str, Any]], window: timedelta
) -> None:
    from services.runtime.db import fetch_all

    timeline, document = story.timeline, story.document
    booking = await queries.booking(connection, case_id=case_id)
    document["booking"] = _row(booking) if booking else None
    if booking is not None:
        timeline.append(_entry(booking["created_at"], "travel", "booking asked of the travel provider", first=True))
        if booking["status"] != "pending":
            timeline.append(_entry(booking["updated_at"], "travel", f"booking {booking['status']}",
                                   attempts=booking["attempts"], flight_number=booking["flight_number"],
                                   reason=booking["last_error"]))  # fmt: skip

    facts_row = await queries.arrival_facts(connection, case_id=case_id)
    facts = None
    if facts_row is not None and facts_row["flight_number"] is not None:
        facts = arrival_domain.CaseFacts(
            destination_country=facts_row["destination_country"], flight_number=facts_row["flight_number"],
            scheduled_departure=facts_row["scheduled_departure"], scheduled_arrival=facts_row["scheduled_arrival"],
        )  # fmt: skip
    verified = next((event["detail"] for event in events if event["what"].startswith("arrival.verified.v1")), None)
    decided = facts_row is not None and facts_row["outcome"] is not None
    used = {UUID(str(evidence_id)) for evidence_id in (verified or {}).get("evidence_ids", [])} if decided else None
    pieces = [arrival_domain.Evidence(**dict(row)) for row in
              await fetch_all(queries.evidence(connection, case_id=case_id, limit=EVIDENCE_SHOWN_MAX))]  # fmt: skip
    said = explain_evidence(pieces, facts, used, window)
    document["arrival"] = {
        "destination_country": facts_row["destination_country"] if facts_row else None,
        "outcome": facts_row["outcome"] if facts_row else None,
        "rule": facts_row["rule"] if facts_row else None,
        "decided_at": _iso(facts_row["decided_at"]) if facts_row else None,
    }
    document["evidence"] = []
    for piece in pieces:
        counted, why = said[piece.evidence_id]
        shown = {name: _plain(value) for name, value in piece.__dict__.items()} | {"counted": counted, "why": why}
        document["evidence"].append(shown)
        timeline.append(_entry(piece.received_at, "arrival", f"evidence from {piece.source}: {_said(counted, why)}",
                               first=True, evidence_id=piece.evidence_id, country=piece.country))  # fmt: skip

    payment = await queries.payment(connection, case_id=case_id)
    refusal = await queries.payment_refusal(connection, case_id=case_id)
    document["payment"] = None
    if refusal is not None:
        document["payment_refused"] = _row(refusal)
        timeline.append(_entry(refusal["created_at"], "disbursement", f"no stipend: {refusal['reason']}"))
    if payment is not None:
        transfers = [
            _row(row)
            for row in await fetch_all(
                queries.transfers(connection, payment_id=payment["payment_id"], limit=TRANSFERS_SHOWN_MAX)
            )
        ]
        callbacks = [
            _row(row)
            for row in await fetch_all(
                queries.callbacks(connection, payment_id=payment["payment_id"], limit=CALLBACKS_SHOWN_MAX)
            )
        ]
        reason = HELD_BUDGET_EXHAUSTED if payment["status"] == "held" else payment["last_error"]
        document["payment"] = _row(payment) | {"reason": reason, "transfers": transfers, "callbacks": callbacks}
        for transfer in transfers:
            timeline.append(_entry(_parsed(transfer["created_at"]), "disbursement",
                                   f"ledger: {transfer['kind']} {transfer['amount']} {transfer['currency']}",
                                   debit=transfer["debit_account"], credit=transfer["credit_account"],
                                   transfer_id=transfer["transfer_id"]))  # fmt: skip
        for callback in callbacks:
            timeline.append(_entry(_parsed(callback["received_at"]), "disbursement",
                                   f"payout provider says {callback['status']}",
                                   refused=callback["refused_reason"]))  # fmt: skip
    erasure = [_row(row) for row in await fetch_all(queries.erasure(connection, case_id=case_id))]
    document["personal_data"] = erasure
    for row in erasure:
        if row["erased_at"]:
            timeline.append(_entry(_parsed(row["erased_at"]), row["service"], "personal data erased (key destroyed)"))


def letters_about(letters: list[DeadLetter], keys: set[str]) -> list[dict[str, Any]]:
    """The dead letters keyed by the case or its application: where, which code, why (never their bytes)."""
    return [
        {"topic": letter.original_topic, "name": letter.name, "code": letter.error_code, "detail": letter.detail,
         "envelope_id": letter.envelope_id, "age_ms": int(letter.age_seconds * 1000)}
        for letter in letters if letter.key in keys
    ]  # fmt: skip


async def _dead_letters(bootstrap: str, keys: set[str]) -> list[dict[str, Any]]:
    letters = await read_dead_letters(bootstrap, [dlq_topic(topic) for topic in PAYLOAD_TYPES])
    return letters_about(letters, keys)


def _render(story: Story) -> None:
    document = story.document
    title = f"case {document['case_id'] or '-'} · application {document['application_id'] or '-'}"
    if document.get("trace_id"):
        title += f" · trace {document['trace_id']}"
    table = Table(title=title, title_justify="left")
    for column in ("time (UTC)", "service", "what", "event id / caused by"):
        table.add_column(column, overflow="fold")
    for entry in story.timeline:
        ids = "\n".join(
            filter(None, [entry["event_id"], f"← {entry['causation_id']}" if entry["causation_id"] else None])
        )
        detail = ", ".join(f"{name}={value}" for name, value in entry["detail"].items())
        at = (entry["at"] or "-").replace("T", " ").removesuffix("Z")
        what = escape(entry["what"]) + (f"\n[dim]{escape(detail)}[/dim]" if detail else "")
        table.add_row(at, entry["service"], what, ids or "-")
    out = console()
    out.print(table)
    payment = document.get("payment")
    if payment:
        out.print(f"payment {payment['payment_id']}: {payment['status']} {payment['amount']} {payment['currency']}"
                  + (f" ({payment['reason']})" if payment["reason"] else ""))  # fmt: skip
    letters = document.get("dead_letters")
    if letters is None:
        out.print(f"dead letters: not read ({document.get('dead_letters_unread')})")
    elif letters:
        for letter in letters:
            out.print(
                escape(f"dead letter on {letter['topic']}.dlq {letter['name']}: {letter['code']} {letter['detail']}")
            )
    else:
        out.print("dead letters: none keyed by this case")


@case_app.command("show")
def show(
    case: Annotated[str, typer.Argument(help="A case id, or the application id it was registered under")],
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """A case's story across the four services, no personal data.

    A case's timeline across the four services, oldest first, with no personal data.

    Example: `homeward case show 0192f4c2-…` or `homeward case show <application id> --json`."""
    try:
        named = UUID(case)
    except ValueError:
        raise typer.BadParameter(f"{case!r} is not a case or application id (a UUID)", param_hint="CASE") from None
    database_url, _ = locate(state_dir, READ_ONLY)
    window = timedelta(seconds=EvidenceWindow().arrival_window_seconds)

    async def read(connection: Any) -> Story | None:
        return await read_story(connection, named, window=window)

    story = on_schema(database_url, "public", read, holds="services' records")
    if story is None:
        typer.echo(f"error: no case or application {named} in the services' records.", err=True)
        typer.echo("Check the id (`homeward payments list` shows case ids), or --state-dir.", err=True)
        raise typer.Exit(1)
    keys = {str(story.document[name]) for name in ("case_id", "application_id") if story.document[name]}
    try:
        story.document["dead_letters"] = asyncio.run(_dead_letters(locate_kafka(state_dir), keys))
    except (typer.BadParameter, KafkaError, OSError, TimeoutError) as error:  # the story does not need the broker
        story.document["dead_letters"] = None
        story.document["dead_letters_unread"] = f"the broker could not be read: {type(error).__name__}"
    for letter in story.document["dead_letters"] or ():
        moment = datetime.now(UTC) - timedelta(milliseconds=letter["age_ms"])
        story.timeline.append(_entry(moment, "-", f"dead letter on {letter['topic']}.dlq: {letter['code']}",
                                     detail=letter["detail"]))  # fmt: skip
    story.timeline = _in_order(story.timeline)
    story.document["timeline"] = story.timeline
    if as_json:
        emit(True, story.document, None)
    else:
        _render(story)


@payments_app.command("list")
def list_payments(
    state: Annotated[
        str | None, typer.Option(help="Only payments in this state: held, pending, disbursed or failed")
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="Only those with this reason, e.g. budget_exhausted, payout_declined")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=PAYMENTS_LISTED_MAX, help="Show at most this many, oldest first")
    ] = PAYMENTS_LISTED_DEFAULT,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Payments with their case, state, age and reason.

    Payments with their case, state, age and reason, oldest first.

    Example: `homeward payments list --state held` (waiting for budget: `homeward ledger fund`)."""
    from services.runtime.db import fetch_all

    if state is not None and state not in PAYMENT_STATES:
        raise typer.BadParameter(f"one of: {', '.join(PAYMENT_STATES)}", param_hint="--state")
    statuses = list(PAYMENT_STATES[state]) if state else None
    database_url, _ = locate(state_dir, READ_ONLY)

    async def read(connection: Any) -> list[Any]:
        return await fetch_all(_queries().payments(connection, statuses=statuses, reason=reason,
                                                   held_reason=HELD_BUDGET_EXHAUSTED, limit=limit))  # fmt: skip

    rows = on_schema(database_url, "public", read, holds="payments")
    now = datetime.now(UTC)
    payments = [
        {"payment_id": str(row["payment_id"]), "case_id": str(row["case_id"]), "state": _state_of(row["status"]),
         "status": row["status"], "amount": str(row["amount"]), "currency": row["currency"],
         "created_at": _iso(row["created_at"]), "age_ms": int((now - row["created_at"]).total_seconds() * 1000),
         "reason": HELD_BUDGET_EXHAUSTED if row["status"] == "held" else row["last_error"],
         "attempts": row["reserve_attempts"] + row["payout_attempts"]}
        for row in rows
    ]  # fmt: skip
    if as_json:
        emit(True, payments, None)
        return
    if not payments:
        typer.echo(
            "no payments" + (f" in state {state}" if state else "") + (f" with reason {reason}" if reason else "")
        )
        return
    table = Table(title=f"Payments ({len(payments)} shown, oldest first)", title_justify="left")
    for column in ("case", "state", "amount", "age", "reason"):
        table.add_column(column, overflow="fold")
    for payment in payments:
        table.add_row(payment["case_id"], payment["state"], f"{payment['amount']} {payment['currency']}",
                      human_duration(payment["age_ms"] / 1000), payment["reason"] or "-")  # fmt: skip
    console().print(table)


def _state_of(status: str) -> str:
    return next(state for state, statuses in PAYMENT_STATES.items() if status in statuses)
