"""`homeward dlq …`: see dead letters with their reason and age, and send them back to their topic;
see the outbox rows the broker refused for good (parked), and hand them back to the relay; send
again every event published since a given time (after the broker lost its data).

A dead letter is named by `<dlq partition>:<dlq offset>` or by its envelope id. Replaying is safe
to repeat: consumers deduplicate by envelope id, so a letter replayed twice is applied once. The
same holds for an unparked outbox row: it goes out with its original envelope id. A record batch
that a consumer could not read at all (`unreadable`) has no dead letter: its records never arrived.
"""

import asyncio
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.markup import escape
from rich.table import Table

from contracts.registry import PAYLOAD_TYPES, dlq_topic
from services.ops.common import (
    READ_ONLY,
    AsJson,
    Operator,
    OpsSettings,
    StateDir,
    chosen_services,
    emit,
    human_duration,
    locate,
    locate_kafka,
    operator_name,
    record_action,
    record_action_at,
)
from services.runtime.kafka_security import client_options
from services.runtime.messages import KEPT_HEADERS

dlq_app = typer.Typer(
    help="Dead letters, parked outbox rows and unreadable batches.\n\nDead letters (list, replay), parked "
    "outbox rows (parked, unpark), record batches no consumer could read (unreadable), and sending published events "
    "again (republish).",
    no_args_is_help=True,
)

READ_TIMEOUT_MS = 500
AUDIT_LETTERS_LISTED_MAX = 100
"""Letters a replay's audit record names one by one (it counts them all)."""
READ_ROUNDS_MAX = 10_000
REPLAY_WATCH_SECONDS = 10.0
REPLAY_WATCH_SECONDS_MAX = 600.0
LIST_LIMIT_DEFAULT = 100
AGO = re.compile(r"(?P<amount>\d+)(?P<unit>[smhd])")
AGO_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
SINCE_HELP = (
    "Send again what was published since: an age (30m, 6h, 2d) or an ISO 8601 time, UTC unless it names its offset"
)


@dataclass(frozen=True)
class DeadLetter:
    dlq_topic: str
    partition: int
    offset: int
    original_topic: str
    error_code: str
    detail: str
    envelope_id: str | None
    age_seconds: float
    value: bytes
    kept_headers: tuple[tuple[str, bytes], ...] = ()
    """The original's headers the copy carried (its signature), sent again on replay."""
    key: str = ""
    """The original's Kafka key (its case or application id), as the copy carries it."""

    @property
    def name(self) -> str:
        return f"{self.partition}:{self.offset}"


def _topics(topic: str | None) -> list[str]:
    if topic is None:
        return [dlq_topic(name) for name in PAYLOAD_TYPES]
    base = topic.removesuffix(".dlq")
    if base not in PAYLOAD_TYPES:
        raise typer.BadParameter(f"unknown topic {topic!r}; one of: {', '.join(PAYLOAD_TYPES)}")
    return [dlq_topic(base)]


def _envelope_id(value: bytes) -> str | None:
    try:
        document = json.loads(value)
    except ValueError:
        return None
    return str(document.get("id")) if isinstance(document, dict) and document.get("id") else None


async def read_dead_letters(bootstrap: str, topics: list[str]) -> list[DeadLetter]:
    """Every record now on the given dead-letter topics, read without a consumer group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **client_options(OpsSettings())
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in consumer.partitions_for_topic(topic) or ()
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        letters: list[DeadLetter] = []
        for _ in range(READ_ROUNDS_MAX):
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if all(positions[tp] >= ends[tp] for tp in partitions):
                break
            batches = await consumer.getmany(timeout_ms=READ_TIMEOUT_MS)
            letters += [_letter(record) for records in batches.values() for record in records]
        return sorted(letters, key=lambda letter: -letter.age_seconds)
    finally:
        await consumer.stop()


async def letters_returning(
    bootstrap: str, topic: str, since: dict[int, int], values: set[bytes], seconds: float
) -> list[DeadLetter]:
    """The letters with one of `values` that land on `topic` after the offsets `since` (partition →
    offset) within `seconds`: records a replay sent that their consumer dead-lettered again."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **client_options(OpsSettings())
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, partition) for partition in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        for partition in partitions:
            consumer.seek(partition, since.get(partition.partition, 0))
        returned: dict[bytes, DeadLetter] = {}  # the first copy of each replayed value that came back
        deadline = time.monotonic() + seconds
        for _ in range(READ_ROUNDS_MAX):
            if returned.keys() >= values or time.monotonic() >= deadline:
                break
            batches = await consumer.getmany(timeout_ms=READ_TIMEOUT_MS)
            for records in batches.values():
                for record in records:
                    if (record.value or b"") in values:
                        returned.setdefault(record.value or b"", _letter(record))
        return list(returned.values())
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's next offset on `topic` now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **client_options(OpsSettings())
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, partition) for partition in consumer.partitions_for_topic(topic) or ()]
        return {partition.partition: offset for partition, offset in (await consumer.end_offsets(partitions)).items()}
    finally:
        await consumer.stop()


def _letter(record: Any) -> DeadLetter:
    headers = {key: value.decode(errors="replace") for key, value in (record.headers or ())}
    value = record.value or b""
    return DeadLetter(
        dlq_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        original_topic=headers.get("x-original-topic", record.topic.removesuffix(".dlq")),
        error_code=headers.get("x-error-code", "unknown"),
        detail=headers.get("x-error-detail", ""),
        envelope_id=_envelope_id(value),
        age_seconds=max(0.0, time.time() - record.timestamp / 1000),
        value=value,
        kept_headers=tuple((name, headers[name].encode()) for name in KEPT_HEADERS if name in headers),
        key=record.key.decode(errors="replace") if record.key else "",
    )


@dlq_app.command("list")
def list_letters(
    topic: Annotated[str | None, typer.Option(help="Only this topic's dead letters (default: every topic)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many")] = LIST_LIMIT_DEFAULT,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Dead letters with their reason and age, oldest first.

    Example: `homeward dlq list --topic arrival.evidence.v1`."""
    letters = asyncio.run(read_dead_letters(locate_kafka(state_dir), _topics(topic)))[:limit]
    rows = [letter_row(letter) for letter in letters]
    table = Table(title=f"Dead letters ({len(letters)} shown, oldest first)", title_justify="left")
    for column in ("topic", "name", "case or application", "code", "age", "detail"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        # What a producer chose (a key, the signer id inside a detail) is shown as text, never as markup.
        table.add_row(letter.original_topic, letter.name, escape(_shown_key(letter.key)), escape(letter.error_code),
                      human_duration(letter.age_seconds), escape(letter.detail))  # fmt: skip
    emit(
        as_json,
        rows,
        table,
        empty="no dead letters" + (f" on {dlq_topic(topic.removesuffix('.dlq'))}" if topic else ""),
    )


def _shown_key(key: str) -> str:
    """A letter's key as `dlq list` shows it: the case or application id the contract keys by; a
    key that is no id (an upstream app's mistake) is not echoed, as it might hold anything."""
    try:
        return str(UUID(key))
    except ValueError:
        return "(not an id)" if key else "-"


def letter_row(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as `dlq list --json` shows it: where it is, what it was, why, how old (whole
    milliseconds); never its bytes, which may hold personal data on the intake topic."""
    return {
        "name": letter.name,
        "dlq_topic": letter.dlq_topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "original_topic": letter.original_topic,
        "key": _shown_key(letter.key) if letter.key else None,
        "error_code": letter.error_code,
        "detail": letter.detail,
        "envelope_id": letter.envelope_id,
        "age_ms": int(letter.age_seconds * 1000),
    }


@dlq_app.command()
def replay(
    topic: Annotated[str, typer.Option(help="The original topic whose dead letters to send back")],
    letter_id: Annotated[
        str | None, typer.Option("--id", help="One letter: its envelope id or <partition>:<offset> (default: all)")
    ] = None,
    watch_seconds: Annotated[
        float,
        typer.Option(
            min=0,
            max=REPLAY_WATCH_SECONDS_MAX,
            help="How long to watch whether a replayed letter comes back to the .dlq (0: do not)",
        ),
    ] = REPLAY_WATCH_SECONDS,
    operator: Operator = None,
    state_dir: StateDir = None,
) -> None:
    """Send dead letters back to their topic (safe to repeat).

    Send dead letters back to their original topic, bytes and key unchanged (safe to repeat:
    consumers deduplicate by envelope id), then watch the dead-letter topic for a while: a letter
    whose cause is still there (it is still not JSON, its signer is still unknown) comes straight
    back, and the command names it and exits 1.

    Example: `homeward dlq replay --topic registration.submitted.v1 --id 0:42 --operator ana`."""
    who, settings = operator_name(operator), OpsSettings()
    bootstrap = locate_kafka(state_dir)
    # The change is on the broker: only the audit trail is written, which the operator's role may append to.
    database_url, _ = locate(state_dir, READ_ONLY)
    letters_topic = dlq_topic(topic.removesuffix(".dlq"))

    async def main() -> tuple[list[DeadLetter], list[DeadLetter]]:
        letters = await read_dead_letters(bootstrap, _topics(topic))
        chosen = [letter for letter in letters if letter_id in (None, letter.name, letter.envelope_id)]
        if letter_id is not None and not chosen:
            raise typer.BadParameter(f"no dead letter {letter_id!r} on {letters_topic}", param_hint="--id")
        # Recorded before anything is sent (a replay the trail cannot hold does not start), and
        # again with its outcome once sent.
        await record_action_at(database_url, who, "dlq replay", {"topic": topic, "id": letter_id},
                               {"status": "starting", "letters": len(chosen)})  # fmt: skip
        since = await end_offsets(bootstrap, letters_topic)
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=False, acks="all",
            compression_type=settings.kafka_compression_type, **client_options(settings),
        )  # fmt: skip
        await producer.start()
        try:
            for letter in chosen:
                provenance = f"{letter.dlq_topic}:{letter.name}".encode()
                await producer.send_and_wait(
                    letter.original_topic, letter.value, key=(letter.key or letter.envelope_id or letter.name).encode(),
                    headers=[*letter.kept_headers, ("x-replayed-from", provenance)],
                )  # fmt: skip
        finally:
            await producer.stop()
        back = []
        if chosen and watch_seconds > 0:
            back = await letters_returning(bootstrap, letters_topic, since, {letter.value for letter in chosen},
                                           watch_seconds)  # fmt: skip
        # And once sent, with what was sent and what came back.
        replayed = [f"{letter.dlq_topic}:{letter.name}" for letter in chosen]
        await record_action_at(database_url, who, "dlq replay", {"topic": topic, "id": letter_id},
                               {"status": "done", "replayed": len(chosen), "came_back": len(back),
                                "letters": replayed[:AUDIT_LETTERS_LISTED_MAX]})  # fmt: skip
        return chosen, back

    chosen, back = asyncio.run(main())
    if not chosen:
        typer.echo(f"no dead letters on {letters_topic}: nothing replayed")
        return
    typer.echo(f"replayed {len(chosen)} dead letter(s) to {topic.removesuffix('.dlq')}")
    if back:
        for letter in back:
            typer.echo(f"came back to {letters_topic} as {letter.name}: {letter.error_code} {letter.detail}", err=True)
        typer.echo(f"error: {len(back)} of them were dead-lettered again; fix their cause first.", err=True)
        raise typer.Exit(1)
    if watch_seconds > 0:
        typer.echo(f"none came back to {letters_topic} within {watch_seconds:g} s (a consumer that is down or "
                   "behind would not have read them yet: `homeward status` shows its events)")  # fmt: skip


async def read_each_service(
    database_url: str, services: tuple[str, ...], query: str, limit: int
) -> list[dict[str, Any]]:
    """The rows one runtime query returns in each service's schema, labelled with the service."""
    from services.runtime.db import connect, fetch_all, runtime_queries

    rows: list[dict[str, Any]] = []
    for service in services:
        connection = await connect(database_url, schema=service)
        try:
            found = await fetch_all(getattr(runtime_queries(), query)(connection, limit=limit))
        finally:
            await connection.close()
        rows += [{"service": service, **dict(row)} for row in found]
    return rows


async def read_parked(database_url: str, services: tuple[str, ...], limit: int) -> list[dict[str, Any]]:
    """Parked outbox rows of each service, oldest first."""
    rows = await read_each_service(database_url, services, "parked_outbox", limit)
    return sorted(rows, key=lambda row: row["parked_at"])[:limit]


@dlq_app.command()
def parked(
    service: Annotated[str | None, typer.Option(help="Only this service's outbox (default: all four)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many")] = LIST_LIMIT_DEFAULT,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Outbox rows the broker refused for good.

    Outbox rows the broker refused for good (e.g. larger than it accepts), oldest first: their
    events were never published, so their cases wait. Fix the cause, then `homeward dlq unpark`.

    Example: `homeward dlq parked --service travel`."""
    database_url, _ = locate(state_dir, READ_ONLY)
    rows = asyncio.run(read_parked(database_url, chosen_services(service), limit))
    table = Table(title=f"Parked outbox rows ({len(rows)} shown)")
    for column in ("service", "id", "topic", "key", "parked at", "reason"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["service"], str(row["id"]), row["topic"], row["key"],
                      f"{row['parked_at']:%Y-%m-%d %H:%M:%S}", row["park_reason"] or "")  # fmt: skip
    emit(as_json, rows, table, empty="no parked outbox rows: every event was published")


@dlq_app.command()
def unreadable(
    service: Annotated[str | None, typer.Option(help="Only this service's consumer (default: all four)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many")] = LIST_LIMIT_DEFAULT,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Record batches a consumer could not read and stepped over.

    Record batches a service's consumer stepped over because it could not read them (a codec
    whose library it lacks, damaged bytes), newest first. Their records were never decoded, so
    they have no dead letter: ask their producer to send them again, or read those offsets with a
    client that has the codec (they stay on the broker until its retention) and publish them anew.

    Example: `homeward dlq unreadable --json`."""
    database_url, _ = locate(state_dir, READ_ONLY)
    rows = asyncio.run(read_each_service(database_url, chosen_services(service), "unreadable_batches", limit))
    rows = sorted(rows, key=lambda row: row["last_seen_at"], reverse=True)[:limit]
    table = Table(title=f"Unreadable record batches ({len(rows)} shown)")
    for column in ("service", "topic", "partition", "offsets", "codec", "reason", "last seen", "times"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["service"], row["topic"], str(row["partition"]),
                      f"{row['first_offset']}-{row['last_offset']}", row["codec"], row["reason"],
                      f"{row['last_seen_at']:%Y-%m-%d %H:%M:%S}", str(row["times_seen"]))  # fmt: skip
    emit(as_json, rows, table, empty="no unreadable record batches")


@dlq_app.command()
def unpark(
    service: Annotated[str, typer.Option(help="The service whose outbox holds the rows")],
    row_id: Annotated[int | None, typer.Option("--id", help="One row, by the id `dlq parked` shows")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every parked row of the service")] = False,
    operator: Operator = None,
    state_dir: StateDir = None,
) -> None:
    """Hand parked outbox rows back to the relay.

    Hand parked outbox rows back to the relay, which publishes them on its next pass (consumers
    deduplicate by envelope id, so this is safe to repeat). A row the broker still refuses is parked
    again, with the new reason.

    Example: `homeward dlq unpark --service travel --all --operator ana`."""
    if (row_id is None) == (not every):
        raise typer.BadParameter("name one row with --id, or pass --all")
    who = operator_name(operator)
    (schema,) = chosen_services(service)
    database_url, _ = locate(state_dir, schema)

    async def main() -> int:
        from services.runtime.db import connect, fetch_all, runtime_queries

        connection = await connect(database_url, schema=schema)
        try:
            async with connection.transaction():
                released = len(await fetch_all(runtime_queries().unpark(connection, id=row_id)))
                arguments = {"service": schema, "id": row_id, "all": every}
                await record_action(connection, who, "dlq unpark", arguments, {"unparked": released})
            return released
        finally:
            await connection.close()

    released = asyncio.run(main())
    if row_id is not None and not released:
        raise typer.BadParameter(f"no parked row {row_id} in {schema}'s outbox; `homeward dlq parked` lists them")
    typer.echo(f"unparked {released} outbox row(s) of {schema}; its relay publishes them on its next pass")


def since_moment(since: str, now: datetime) -> datetime:
    """`--since`: an ISO 8601 time (UTC unless it names its offset) or an age such as 90m, 6h, 2d."""
    if match := AGO.fullmatch(since.strip()):
        return now - timedelta(**{AGO_UNITS[match["unit"]]: int(match["amount"])})
    try:
        moment = datetime.fromisoformat(since.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{since!r} is neither an age (30m, 6h, 2d) nor an ISO 8601 time (2026-11-29T10:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dlq_app.command()
def republish(
    since: Annotated[str, typer.Option(help=SINCE_HELP)],
    service: Annotated[str | None, typer.Option(help="Only this service's events (default: all four)")] = None,
    topic: Annotated[str | None, typer.Option(help="Only this topic's events (default: every topic)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be sent; change nothing")] = False,
    operator: Operator = None,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Send again every event published since a time.

    After the broker lost its data (or a consumer lost its place), hand every event the services
    published since a time back to their relays, which publish them again on their next pass: same
    bytes and envelope ids, so consumers that already have an event deduplicate it, and those that
    lost it (integrators reading stipend outcomes, say) get it back. Reaches back as far as the
    outbox retention (HOMEWARD_OUTBOX_RETENTION_HOURS) keeps rows of closed cases.

    Example: `homeward dlq republish --since 6h --dry-run`, then without --dry-run and with --operator."""
    if topic is not None and topic not in PAYLOAD_TYPES:
        raise typer.BadParameter(f"unknown topic {topic!r}; one of: {', '.join(PAYLOAD_TYPES)}")
    moment = since_moment(since, datetime.now(UTC))
    who = None if dry_run else operator_name(operator)  # a dry run changes nothing, so names no one
    services = chosen_services(service)
    # Each service's outbox is changed with that service's role (a dry run only reads, but alike).
    database_urls = {schema: locate(state_dir, schema)[0] for schema in services}

    notes: list[str] = []

    async def main() -> list[dict[str, Any]]:
        from services.runtime.db import connect, fetch_all, runtime_queries

        queries, counted = runtime_queries(), []
        for schema in services:
            connection = await connect(database_urls[schema], schema=schema)
            try:
                async with connection.transaction():
                    select = queries.sent_since if dry_run else queries.republish_since
                    rows = await fetch_all(select(connection, since=moment, topic=topic))
                    oldest = await queries.oldest_sent(connection)
                    if who is not None:
                        arguments = {"since": moment, "service": schema, "topic": topic}
                        outcome = {"events": sum(row["events"] for row in rows)}
                        await record_action(connection, who, "dlq republish", arguments, outcome)
            finally:
                await connection.close()
            counted += [{"service": schema, "topic": row["topic"], "events": row["events"],
                         "oldest_still_held": oldest} for row in rows]  # fmt: skip
            if oldest is not None and oldest > moment:
                notes.append(f"note: {schema}'s outbox holds nothing sent before {oldest:%Y-%m-%d %H:%M:%S %Z}")
        return counted

    counted = asyncio.run(main())
    total = sum(row["events"] for row in counted)
    table = Table(
        title=f"{'Would republish' if dry_run else 'Republishing'} events sent since {moment:%Y-%m-%d %H:%M:%S %Z}"
    )
    for column in ("service", "topic", "events"):
        table.add_column(column)
    for row in counted:
        table.add_row(row["service"], row["topic"], f"{row['events']:,}")
    emit(as_json, {"since": moment, "dry_run": dry_run, "events": total, "by_topic": counted}, table)
    if as_json:
        return
    for note in notes:
        typer.echo(note, err=True)
    verb = "would hand" if dry_run else "handed"
    typer.echo(
        f"{verb} {total:,} event(s) back to the relays" + ("" if dry_run else "; they publish them on their next pass")
    )
