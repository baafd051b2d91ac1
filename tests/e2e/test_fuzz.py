"""Hostile messages on every inbound topic, through `homeward up`: each one is accounted for (a
dead letter with a known code, an answer to the producer, or the effect a valid message has), no
process dies, and a normal case still goes all the way through afterwards.

The messages are built up front by Hypothesis, deterministically: an inner `@given` function with
`derandomize=True` (a fixed seed derived from its code) and the generate phase only is run for
`ROUNDS` examples, each of which builds one message of every kind for both topics; the messages
are collected and then published by the test. (`max_examples=1` over a list would not do: the
first example Hypothesis tries is always the simplest one, the same minimal message 150 times.)
The shapes are therefore the same on every run; the ids in them are fresh uuid4s, so every
message is unique within the session. Each message travels under a unique Kafka key, which
the dead-letter copy keeps, and is tracked by it.
"""

import asyncio
import copy
import itertools
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import Running, homeward_up
from tests.e2e.test_flow import accepted_case, evidence, submit
from tests.support import (
    Kafka,
    KafkaPump,
    envelope,
    eventually,
    evidence_headers,
    homeward_cli,
    outbound_and_dlq_topics,
    submission,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SUBMITTED = "registration.submitted.v1"
EVIDENCE = "arrival.evidence.v1"
ACCEPTED = "registration.accepted.v1"
REJECTED = "registration.rejected.v1"
INBOUND = (SUBMITTED, EVIDENCE)
KNOWN_CODES = frozenset({"invalid_json", "invalid_envelope", "type_mismatch", "invalid_payload", "handler_error"})
DETAIL_CHARS_MAX = 500

ROUNDS = 6
"""Hypothesis examples; each builds one message of every kind for both topics (2 x 14 x 6 = 168),
and its share of the fixed cases (2 x 24 = 48 in all)."""
HUGE = "HOSTILE-" * 112_500
"""900,000 characters: with the envelope around it, still under the producer's 1 MiB request limit."""
LEAK = b"HOSTILE-HOSTILE"
DEPTH = 200
ACCOUNT_SECONDS_MAX = 120.0
ACCOUNT_POLL_SECONDS = 0.5
STATUS_SECONDS_MAX = 60.0
HEALTHY = frozenset({"ready", "ok", "running"})

ENVELOPE_REQUIRED = (
    "specversion", "id", "type", "source", "time", "subject", "correlationid", "datacontenttype", "data",
)  # fmt: skip
NULLABLE = frozenset({"contact.phone", "contact.email"})
BOOLEANS = frozenset({"consent.data_processing", "document_checked"})
FLOATS = frozenset({"identity_match_score", "latitude", "longitude"})
DATES = frozenset({"person.date_of_birth", "identity_document.expires_on"})
TIMESTAMPS = frozenset({"submitted_at", "observed_at"})
OTHER_TOPICS = (
    "registration.accepted.v1", "registration.rejected.v1", "travel.booked.v1", "travel.booking_failed.v1",
    "arrival.verified.v1", "arrival.rejected.v1", "stipend.held.v1", "stipend.disbursed.v1", "stipend.failed.v1",
    "registration.submitted.v2", "Registration.Submitted.v1", "arrival.evidence.v1.dlq", "registration.submitted.v1 ",
)  # fmt: skip
NOT_UUIDS = ("not-a-uuid", "", "1234", "00000000-0000-0000-0000-00000000000g", "' OR 1=1 --", 42, None, [], {})
IMPOSSIBLE_DATES = ("2023-02-30", "2023-02-29", "2024-13-01", "2024-00-10", "0000-01-01", "2024-1-1", "30/02/2023")
IMPOSSIBLE_TIMES = (
    "2023-02-30T10:00:00+00:00", "2024-02-29T25:00:00Z", "2024-01-01T10:00:00", "2024-01-01T10:00:00+25:00",
    "2024-13-01T00:00:00Z", "yesterday", "", 1_700_000_000, 1.7e9,
)  # fmt: skip
BAD_UTF8 = (
    b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\x28",
    b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"Pe\xf1a",
)  # fmt: skip
ODD_NAMES = (
    "__proto__", "$where", "constructor", "data.person", "application_id ", "ñandú", "名前", "🙂", "\u202egnp",
    "a" * 10_000, "\x00", "\ud800", "\t", "",
)  # fmt: skip
SENTINEL = "FUZZ-SENTINEL-7f3a"

WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=30)
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(WORD, children, max_size=3),
    max_leaves=8,
)


def nested(depth: int) -> Any:
    """Objects and arrays nested `depth` levels deep, rooted in an object."""
    value: Any = 0
    for level in range(depth):
        value = {"n": value} if level % 2 == 0 else [value]
    return value if isinstance(value, dict) else {"n": value}


@dataclass(frozen=True)
class Fuzzed:
    kind: str
    topic: str
    key: str
    value: bytes | None
    codes: frozenset[str]
    """The dead-letter codes this message may get; empty for a valid message."""
    reference: str
    """application_id of a submission, evidence_id of evidence."""

    @property
    def valid(self) -> bool:
        return not self.codes


Draw = Callable[[st.SearchStrategy[Any]], Any]
TreePath = tuple[str, ...]


# Trees: paths, and reading and writing along them -----------------------------------------------


def paths(tree: dict[str, Any], prefix: TreePath = ()) -> list[TreePath]:
    found = []
    for key, value in tree.items():
        found.append((*prefix, key))
        if isinstance(value, dict):
            found.extend(paths(value, (*prefix, key)))
    return found


def leaves(tree: dict[str, Any]) -> list[TreePath]:
    return [path for path in paths(tree) if not isinstance(get(tree, path), dict)]


def objects(tree: dict[str, Any]) -> list[TreePath]:
    return [(), *(path for path in paths(tree) if isinstance(get(tree, path), dict))]


def get(tree: dict[str, Any], path: TreePath) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def put(tree: dict[str, Any], path: TreePath, value: Any) -> None:
    get(tree, path[:-1])[path[-1]] = value


def drop(tree: dict[str, Any], path: TreePath) -> None:
    del get(tree, path[:-1])[path[-1]]


def dotted(path: TreePath) -> str:
    return ".".join(path)


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


# Valid messages -----------------------------------------------------------------------------


def valid_submission(draw: Draw) -> dict[str, Any]:
    country, airport = draw(st.sampled_from([("HN", "TGU"), ("GT", "GUA"), ("SV", "SAL"), ("MX", "MEX")]))
    state, nearest = draw(st.sampled_from([("TX", "IAH"), ("CA", "LAX"), ("NY", "JFK"), ("PR", "SJU")]))
    # Each person's own wallet or account: one paid to another identity's is held for review (v1.1).
    number = draw(st.integers(min_value=10**7, max_value=10**8 - 1))
    payout = draw(
        st.sampled_from(
            [
                {"method": "mobile_money", "msisdn": f"+504{number}", "provider": "tigo"},
                {"method": "bank_account", "bank_code": "BAC", "account_number": f"2{number}", "account_name": "A R"},
            ]
        )
    )
    contact = draw(
        st.sampled_from(
            [
                {"phone": "+17135550142", "email": None},
                {"phone": None, "email": "someone@example.org"},
                {"phone": "+17135550142", "email": "someone@example.org"},
            ]
        )
    )
    return submission(
        person__given_name=draw(TEXT),
        person__family_name=draw(TEXT),
        identity_document__type=draw(st.sampled_from(["passport", "national_id", "consular_id"])),
        contact=contact,
        current_location={"us_state": state, "city": draw(TEXT), "nearest_airport": nearest},
        destination={"country": country, "city": draw(TEXT), "airport": airport},
        payout=payout,
    )


def valid_evidence(draw: Draw) -> dict[str, Any]:
    """Evidence for a case nobody opened: arrival keeps it, and nothing is emitted."""
    source = draw(st.sampled_from(["participant_app", "carrier", "partner_office"]))
    data: dict[str, Any] = {
        "evidence_id": str(uuid4()),
        "case_id": str(uuid4()),
        "source": source,
        "observed_at": (datetime.now(UTC) - timedelta(seconds=draw(st.integers(0, 86_400)))).isoformat(),
        "country": draw(st.sampled_from(["HN", "GT", "SV", "MX"])),
    }
    if source == "participant_app":
        data["identity_match_score"] = draw(st.floats(0.0, 1.0))
        data["latitude"] = draw(st.floats(-90.0, 90.0))
        data["longitude"] = draw(st.floats(-180.0, 180.0))
    elif source == "carrier":
        data["flight_number"] = draw(st.text(alphabet="ABCDEFGHJKXZ0123456789", min_size=3, max_size=10))
        data["status"] = draw(st.sampled_from(["boarded", "landed"]))
    else:
        data["office_code"] = draw(TEXT)
        data["officer_id"] = draw(TEXT)
        data["document_checked"] = draw(st.booleans())
    return data


# Mutations: each turns a valid envelope into the bytes to send and the codes they may earn ----

Mutated = tuple[bytes | None, frozenset[str]]
Mutation = Callable[[dict[str, Any], Draw], Mutated]
INVALID_JSON = frozenset({"invalid_json"})
INVALID_ENVELOPE = frozenset({"invalid_envelope"})
INVALID_PAYLOAD = frozenset({"invalid_payload"})


def keep_valid(document: dict[str, Any], draw: Draw) -> Mutated:
    return encode(document), frozenset()


def add_envelope_noise(document: dict[str, Any], draw: Draw) -> Mutated:
    """Unknown envelope fields are ignored: huge, deeply nested or odd, the message stays valid."""
    extras = draw(st.dictionaries(WORD.filter(lambda name: name not in document), JSON_VALUES, min_size=1, max_size=3))
    weight = draw(st.sampled_from(["none", "huge", "deep"]))
    if weight == "huge":
        extras["x_padding"] = HUGE
    elif weight == "deep":
        extras["x_nested"] = nested(DEPTH)
    return encode({**document, **extras}), frozenset()


def insert_bytes(raw: bytes, document: dict[str, Any], draw: Draw) -> Mutated:
    """`raw` inside a string of the envelope or the payload."""
    strings = [("data", *path) for path in leaves(document["data"]) if isinstance(get(document["data"], path), str)]
    put(document, draw(st.sampled_from([("source",), *strings])), SENTINEL)
    return encode(document).replace(SENTINEL.encode(), raw), INVALID_JSON


def break_utf8(document: dict[str, Any], draw: Draw) -> Mutated:
    return insert_bytes(draw(st.sampled_from(BAD_UTF8)), document, draw)


def not_json(document: dict[str, Any], draw: Draw) -> Mutated:
    whole = encode(document)
    choices = ["empty", "tombstone", "brace", "cut", "binary", "quotes", "comma", "trail", "twice", "digits"]
    choice = draw(st.sampled_from(choices))
    if choice == "cut":
        return whole[: draw(st.integers(1, len(whole) - 1))], INVALID_JSON
    if choice == "binary":
        # A leading "{" makes the parser read UTF-8 (not UTF-16 by a BOM), which the next byte breaks.
        return b"{\xff" + draw(st.binary(max_size=64)), INVALID_JSON
    return {
        "empty": b"",
        "tombstone": None,
        "brace": b"{",
        "quotes": b"{'specversion': '1.0'}",
        "comma": whole[:-1] + b",}",
        "trail": whole + b" garbage",
        "twice": whole + whole,
        "digits": b"9" * 5_000,  # more digits than Python converts to an int
    }[choice], INVALID_JSON


def not_an_object(document: dict[str, Any], draw: Draw) -> Mutated:
    choice = draw(st.sampled_from(["list", "wrapped", "string", "number", "null", "true", "nan", "infinity", "deep"]))
    raw = {
        "list": b"[]",
        "wrapped": encode([document]),
        "string": encode("registration"),
        "number": b"42",
        "null": b"null",
        "true": b"true",
        "nan": b"NaN",
        "infinity": b"1e999",
        "deep": encode([nested(DEPTH)]),
    }[choice]
    return raw, INVALID_ENVELOPE


def drop_envelope_field(document: dict[str, Any], draw: Draw) -> Mutated:
    del document[draw(st.sampled_from(ENVELOPE_REQUIRED))]
    return encode(document), INVALID_ENVELOPE


ENVELOPE_BAD_VALUES: dict[str, tuple[Any, ...]] = {
    "id": NOT_UUIDS,
    "correlationid": NOT_UUIDS,
    "causationid": ("not-a-uuid", "", 42, []),
    "time": IMPOSSIBLE_TIMES,
    "specversion": ("0.3", "2.0", 1.0, None, ""),
    "datacontenttype": ("text/plain", "application/xml", "", None),
    "type": ("", HUGE, 42, None, []),
    "source": ("", HUGE, 42, None),
    "subject": ("", HUGE, 42, None),
    "data": ([], "data", 42, None, True, [nested(DEPTH)]),
}


def spoil_envelope_field(document: dict[str, Any], draw: Draw) -> Mutated:
    field = draw(st.sampled_from(sorted(ENVELOPE_BAD_VALUES)))
    document[field] = draw(st.sampled_from(ENVELOPE_BAD_VALUES[field]))
    return encode(document), INVALID_ENVELOPE


def mismatch_type(document: dict[str, Any], draw: Draw) -> Mutated:
    other = st.sampled_from([*OTHER_TOPICS, *(topic for topic in INBOUND if topic != document["type"])])
    document["type"] = draw(other | WORD.filter(lambda word: word != document["type"]))
    return encode(document), frozenset({"type_mismatch"})


def drop_payload_field(document: dict[str, Any], draw: Draw) -> Mutated:
    drop(document["data"], draw(st.sampled_from(paths(document["data"]))))
    return encode(document), INVALID_PAYLOAD


def add_named_field(name: str, document: dict[str, Any], draw: Draw) -> Mutated:
    target = get(document["data"], draw(st.sampled_from(objects(document["data"]))))
    target[name] = draw(JSON_VALUES | st.just(HUGE) | st.just(nested(DEPTH)))
    return encode(document), INVALID_PAYLOAD


def add_payload_field(document: dict[str, Any], draw: Draw) -> Mutated:
    return add_named_field(draw(WORD.map(lambda word: f"x_{word}")), document, draw)


def wrong_values(path: TreePath) -> list[Any]:
    """Values that no field at `path` accepts (pydantic's lax mode takes 1 for a bool, 0 for a date)."""
    name = dotted(path)
    values: list[Any] = [[], {}, "", HUGE, nested(DEPTH), [nested(DEPTH)]]
    if name not in NULLABLE:
        values.append(None)
    if name not in FLOATS | BOOLEANS | DATES:
        values.extend([0, 12345, -1.5])
    if name in FLOATS:
        values.extend(["abc", "NaN?"])
    if name in BOOLEANS:
        values.extend([2, "maybe"])
    return values


def mistype_payload_field(document: dict[str, Any], draw: Draw) -> Mutated:
    data = document["data"]
    path = draw(st.sampled_from(paths(data)))
    replacement = draw(st.sampled_from(wrong_values(path) if path in leaves(data) else [[], "", 0, None, HUGE]))
    put(data, path, replacement)
    return encode(document), INVALID_PAYLOAD


def impossible_date(document: dict[str, Any], draw: Draw) -> Mutated:
    data = document["data"]
    path = draw(st.sampled_from([path for path in leaves(data) if dotted(path) in DATES | TIMESTAMPS]))
    put(data, path, draw(st.sampled_from(IMPOSSIBLE_DATES if dotted(path) in DATES else IMPOSSIBLE_TIMES)))
    return encode(document), INVALID_PAYLOAD


OUT_OF_RANGE = st.one_of(
    st.floats(min_value=1.0, exclude_min=True),
    st.floats(max_value=0.0, exclude_max=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1.0000001, -1e-9, 1e308]),
)
BAD_SUBMISSION_VALUES: dict[str, tuple[Any, ...]] = {
    "person.nationality": ("hn", "HND", "H1", "XX1"),
    "identity_document.number": ("AB!", "ABC", "A" * 21, "12345678901234567890X", "12_34"),
    "identity_document.issuing_country": ("hn", "H"),
    "identity_document.type": ("driver_license", "PASSPORT"),
    "contact.phone": ("5551234", "+0123456789", "+1 713 555 0142", "+1234567890123456"),
    "contact.email": ("no-at-sign", "a@b", "a b@example.org"),
    "current_location.us_state": ("ZZ", "tx", "TEX"),
    "current_location.nearest_airport": ("iah", "IA", "IAHX"),
    "destination.country": ("hn", "HND"),
    "destination.airport": ("tgu", "T6U"),
    "payout.method": ("cash", "MOBILE_MONEY"),
    "consent.data_processing": ("maybe", 2, None),
    "person.given_name": ("", "x" * 101),
}


BAD_EVIDENCE_VALUES: dict[str, list[tuple[str, st.SearchStrategy[Any]]]] = {
    "participant_app": [
        ("identity_match_score", OUT_OF_RANGE),
        ("latitude", st.sampled_from([90.000001, -90.5, 1e308, float("nan")])),
        ("longitude", st.sampled_from([180.5, -181.0, float("-inf")])),
    ],
    "carrier": [
        ("status", st.sampled_from(["arrived", "LANDED", "cancelled"])),
        ("flight_number", st.sampled_from(["X1", "X" * 11])),
        ("country", st.sampled_from(["hn", "HND", "H"])),
    ],
    "partner_office": [
        ("office_code", st.sampled_from(["", "o" * 201])),
        ("officer_id", st.sampled_from(["", "o" * 201])),
        ("document_checked", st.sampled_from(["maybe", 2, None])),
    ],
}


def out_of_range(document: dict[str, Any], draw: Draw) -> Mutated:
    """Values of the right type that break a rule of the contract: ranges, codes, formats."""
    data = document["data"]
    if document["type"] == SUBMITTED:
        name = draw(st.sampled_from(sorted(BAD_SUBMISSION_VALUES)))
        put(data, tuple(name.split(".")), draw(st.sampled_from(BAD_SUBMISSION_VALUES[name])))
        return encode(document), INVALID_PAYLOAD
    field, values = draw(st.sampled_from(BAD_EVIDENCE_VALUES[data["source"]]))
    data[field] = draw(values)
    return encode(document), INVALID_PAYLOAD


def not_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return True
    return False


def not_a_uuid(document: dict[str, Any], draw: Draw) -> Mutated:
    data = document["data"]
    field = "application_id" if document["type"] == SUBMITTED else draw(st.sampled_from(["evidence_id", "case_id"]))
    data[field] = draw(st.sampled_from(NOT_UUIDS) | st.text(alphabet="0123456789abcdef-", max_size=40).filter(not_uuid))
    return encode(document), INVALID_PAYLOAD


KINDS: dict[str, Mutation] = {
    "valid": keep_valid,
    "valid, unknown envelope fields": add_envelope_noise,
    "invalid UTF-8": break_utf8,
    "not JSON": not_json,
    "JSON but not an object": not_an_object,
    "envelope field missing": drop_envelope_field,
    "envelope field invalid": spoil_envelope_field,
    "envelope type of another topic": mismatch_type,
    "payload field missing": drop_payload_field,
    "payload field unknown": add_payload_field,
    "payload field of the wrong type": mistype_payload_field,
    "impossible date": impossible_date,
    "value out of range": out_of_range,
    "id not a UUID": not_a_uuid,
}

FIXED: list[tuple[str, Mutation]] = [
    *((f"unknown field named {name[:12]!r}", partial(add_named_field, name)) for name in ODD_NAMES),
    *((f"invalid UTF-8 {raw!r}", partial(insert_bytes, raw)) for raw in BAD_UTF8),
]
"""Hostile cases worth having every time rather than by chance: each is built once per topic,
spread over the rounds."""


def build(kind: str, mutation: Mutation, topic: str, draw: Draw) -> Fuzzed:
    if topic == SUBMITTED:
        data = valid_submission(draw)
        reference = key = data["application_id"]
        document = envelope(SUBMITTED, data, source="participant-app")
    else:
        data = valid_evidence(draw)
        reference, key = data["evidence_id"], data["case_id"]
        document = envelope(EVIDENCE, data, source=data["source"].replace("_", "-"))
    value, codes = mutation(copy.deepcopy(document), draw)
    assert value is None or len(value) < 1_000_000, f"{kind}: {len(value)} bytes would not fit one request"
    return Fuzzed(kind, topic, key, value, codes, reference)


def hostile_messages() -> list[Fuzzed]:
    built: list[Fuzzed] = []
    rounds = itertools.count()

    @settings(
        max_examples=ROUNDS,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def one_of_each(data: st.DataObject) -> None:
        round_index = next(rounds)
        built.extend(build(kind, KINDS[kind], topic, data.draw) for topic in INBOUND for kind in KINDS)
        fixed = FIXED[round_index::ROUNDS]
        built.extend(build(kind, mutation, topic, data.draw) for topic in INBOUND for kind, mutation in fixed)

    one_of_each()
    return built


# What came back ---------------------------------------------------------------------------------


class Tracker(KafkaPump):
    """Reads dead letters and registration outcomes from the beginning, without a consumer group,
    indexed by key (dead letters) and by application id (outcomes)."""

    def __init__(self, bootstrap: str, *, max_request_size: int = 1_048_576) -> None:
        topics = [f"{SUBMITTED}.dlq", f"{EVIDENCE}.dlq", ACCEPTED, REJECTED]
        super().__init__(bootstrap, topics, max_request_size=max_request_size)
        self.dead: dict[tuple[str, str], list[tuple[dict[str, str], bytes]]] = defaultdict(list)
        self.outcomes: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)

    def on_record(self, record: Any) -> None:
        key = record.key.decode(errors="replace") if record.key else ""
        if record.topic.endswith(".dlq"):
            headers = {name: value.decode(errors="replace") for name, value in record.headers or ()}
            self.dead[(record.topic.removesuffix(".dlq"), key)].append((headers, record.value or b""))
        else:
            document = json.loads(record.value)
            self.outcomes[(record.topic, str(document["data"]["application_id"]))].append(document)

    async def publish(self, messages: list[Fuzzed]) -> list[Any]:
        """Sends every message at once and returns where each landed."""
        sent = [
            await self.producer.send(m.topic, m.value, key=m.key.encode(), headers=evidence_headers(m.topic, m.value))
            for m in messages
        ]
        return list(await asyncio.gather(*sent))


def names_application(message: Fuzzed) -> bool:
    """Whether a producer could still read the application id out of the message (so it is owed an answer)."""
    if message.topic != SUBMITTED or message.value is None:
        return False
    try:
        # As the contract reads: a value that is not strict UTF-8 is not JSON, so it names nothing.
        document = json.loads(message.value.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    data = document.get("data") if isinstance(document, dict) else None
    return isinstance(data, dict) and data.get("application_id") == message.reference


Problem = tuple[bool, str]
"""Whether it is final (waiting longer cannot fix it), and what it is."""


def problems_with(message: Fuzzed, landed: Any, tracker: Tracker, stored: set[str]) -> list[Problem]:
    """What is wrong with one message's outcome so far; [] once it is fully accounted for."""
    dead = tracker.dead.get((message.topic, message.key), [])
    where = f"{message.topic} {message.kind!r} key={message.key}"
    if message.valid:
        if dead:
            return [(True, f"{where}: valid but dead-lettered ({dead[0][0].get('x-error-code')})")]
        if message.topic == SUBMITTED and not tracker.outcomes.get((ACCEPTED, message.reference)):
            return [(False, f"{where}: valid but not accepted")]
        if message.topic == EVIDENCE and message.reference not in stored:
            return [(False, f"{where}: valid evidence not stored")]
        return []
    if not dead:
        return [(False, f"{where}: no dead letter")]
    found = []
    for headers, value in dead:
        code = headers.get("x-error-code")
        if code not in message.codes or code not in KNOWN_CODES:
            found.append(f"{where}: x-error-code {code!r}, expected one of {sorted(message.codes)}")
        if value != (message.value or b""):
            found.append(f"{where}: dead letter is not the bytes sent")
        expected = {"x-original-topic": message.topic, "x-original-partition": str(landed.partition),
                    "x-original-offset": str(landed.offset)}  # fmt: skip
        if {name: headers.get(name) for name in expected} != expected:
            found.append(f"{where}: dead-letter headers {headers} do not name {expected}")
        detail = headers.get("x-error-detail", "")
        if not detail or len(detail) > DETAIL_CHARS_MAX or LEAK.decode() in detail:
            found.append(f"{where}: x-error-detail missing, too long or quoting a value")
    settled: list[Problem] = [(True, problem) for problem in found]
    if names_application(message):
        rejected = tracker.outcomes.get((REJECTED, message.reference), [])
        if not rejected:
            # Written with the dead letter, so it follows it; after a handler error it never comes.
            never = any(headers.get("x-error-code") == "handler_error" for headers, _ in dead)
            settled.append((never, f"{where}: readable application_id but no registration.rejected.v1"))
        elif rejected[0]["data"]["reasons"][0]["code"] != "invalid_payload":
            code = rejected[0]["data"]["reasons"][0]["code"]
            settled.append((True, f"{where}: rejected with {code}, not invalid_payload"))
        elif LEAK.decode() in json.dumps(rejected[0]):
            settled.append((True, f"{where}: the rejection quotes a value"))
    return settled


async def stored_evidence(database_url: str, messages: list[Fuzzed]) -> set[str]:
    ids = [m.reference for m in messages if m.topic == EVIDENCE and m.valid]
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT evidence_id::text FROM arrival.evidence WHERE evidence_id = ANY($1::uuid[])", ids
        )
    finally:
        await connection.close()
    return {row["evidence_id"] for row in rows}


# The running system ---------------------------------------------------------------------------


def processes(state_dir: Path) -> dict[str, dict[str, Any]]:
    done = homeward_cli("status", "--json", "--state-dir", str(state_dir))
    return {entry["name"]: entry for entry in json.loads(done.stdout)["processes"]}


def all_healthy(state_dir: Path) -> dict[str, dict[str, Any]] | None:
    report = processes(state_dir)
    return report if all(entry["health"] in HEALTHY for entry in report.values()) else None


def database_url(state_dir: Path) -> str:
    url: str = json.loads((state_dir / "runtime.json").read_text())["database_url"]
    return url


async def a_case_is_paid(bootstrap: str) -> None:
    """A normal application goes all the way: accepted, booked, proven, paid."""
    async with Kafka(bootstrap, outbound_and_dlq_topics()) as kafka:
        sent = await submit(kafka, submission())
        case_id = (await accepted_case(kafka, sent["data"]["application_id"]))["data"]["case_id"]
        await eventually(lambda: kafka.events("travel.booked.v1", case_id=case_id), what="booking")
        office = evidence(case_id, "partner_office", "HN", office_code="TGU-01", officer_id="o-9",
                          document_checked=True, observed_at=datetime.now(UTC) + timedelta(minutes=1))  # fmt: skip
        await kafka.send(EVIDENCE, office, case_id)
        await eventually(lambda: kafka.events("stipend.disbursed.v1", case_id=case_id), what="stipend")


async def test_hostile_messages_are_all_accounted_for_and_nothing_falls_over(homeward):
    started = time.monotonic()
    messages = hostile_messages()
    assert len({m.key for m in messages}) == len(messages) == 2 * (len(KINDS) * ROUNDS + len(FIXED))
    before = await eventually(lambda: asyncio.to_thread(all_healthy, homeward.state_dir), timeout=STATUS_SECONDS_MAX,
                              what="every process healthy before the fuzz")  # fmt: skip
    url = database_url(homeward.state_dir)
    async with Tracker(homeward.kafka) as tracker:
        landed = await tracker.publish(messages)
        deadline = time.monotonic() + ACCOUNT_SECONDS_MAX
        while True:
            stored = await stored_evidence(url, messages)
            outstanding = [problems_with(m, at, tracker, stored) for m, at in zip(messages, landed, strict=True)]
            waiting = any(not settled for found in outstanding for settled, _ in found)
            if not waiting or time.monotonic() > deadline:
                break
            await asyncio.sleep(ACCOUNT_POLL_SECONDS)
    accounted = sum(not found for found in outstanding)
    print(f"\nfuzzed {len(messages)} messages ({sum(m.valid for m in messages)} valid, "
          f"{sum(m.value is not None and len(m.value) > 100_000 for m in messages)} over 100 kB) in "
          f"{time.monotonic() - started:.1f} s; accounted for {accounted}")  # fmt: skip
    problems = [problem for found in outstanding for _, problem in found]
    assert accounted == len(messages), f"{len(problems)} problems, e.g.:\n" + "\n".join(problems[:40])

    after = await asyncio.to_thread(processes, homeward.state_dir)
    for name, entry in before.items():
        assert after[name]["health"] in HEALTHY, f"{name} is {after[name]['health']} after the fuzz"
        assert (after[name].get("restarts"), after[name]["pid"]) == (entry.get("restarts"), entry["pid"]), (
            f"{name} was restarted during the fuzz"
        )
    await a_case_is_paid(homeward.kafka)


# Shapes that take a service down with them, on a private `homeward up` ------------------------

UP_STOP_SECONDS_MAX = 20.0
WEDGE_SECONDS_MAX = 30.0
NEAR_LIMIT_BYTES = 1_048_400
"""A record the broker takes (value, key and batch overhead just under 1 MiB), whose dead-letter
copy gains five headers."""


@pytest.fixture(scope="module")
def private_homeward(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A `homeward up` of this module's own, so that a message that wedges a service cannot take the
    session's instance down for the tests after this one."""
    with homeward_up(tmp_path_factory.mktemp("homeward-fuzz-private"), UP_STOP_SECONDS_MAX) as running:
        yield running


def wedges() -> list[Fuzzed]:
    deep = b'{"a":' * 5_000 + b"1" + b"}" * 5_000
    messages = []
    for topic in INBOUND:
        data = submission() if topic == SUBMITTED else {
            "evidence_id": str(uuid4()), "case_id": str(uuid4()), "source": "partner_office",
            "observed_at": datetime.now(UTC).isoformat(), "country": "HN",
            "office_code": "TGU-01", "officer_id": "o-1", "document_checked": True,
        }  # fmt: skip
        key = data["application_id"] if topic == SUBMITTED else data["case_id"]
        reference = data["application_id"] if topic == SUBMITTED else data["evidence_id"]
        messages.append(Fuzzed("nested 5,000 levels deep", topic, f"deep-{uuid4()}", deep,
                               frozenset({"invalid_json", "invalid_envelope"}), reference))  # fmt: skip
        wide = envelope(topic, {**data, "f" * 100_000: 1})
        messages.append(Fuzzed("a field name of 100,000 characters", topic, key, encode(wide), INVALID_PAYLOAD,
                               reference))  # fmt: skip
    near = submission()
    document = envelope(SUBMITTED, {**near, "padding": ""})
    document["data"]["padding"] = "p" * (NEAR_LIMIT_BYTES - len(encode(document)))
    messages.append(Fuzzed("a record just under the broker's limit", SUBMITTED, near["application_id"],
                           encode(document), INVALID_PAYLOAD, near["application_id"]))  # fmt: skip
    return messages


async def test_messages_that_could_wedge_a_service_are_dead_lettered_too(private_homeward):
    """Nesting deeper than Python's recursion limit, a field name longer than a log pipe's line
    limit, and a record whose dead-letter copy outgrows the producer's request limit: each is still
    just a bad message, dead-lettered, and the services go on."""
    messages = wedges()
    async with Tracker(private_homeward.kafka, max_request_size=2 * NEAR_LIMIT_BYTES) as tracker:
        landed = await tracker.publish(messages)
        deadline = time.monotonic() + WEDGE_SECONDS_MAX
        while True:
            outstanding = [problems_with(m, at, tracker, set()) for m, at in zip(messages, landed, strict=True)]
            if all(settled for found in outstanding for settled, _ in found) or time.monotonic() > deadline:
                break
            await asyncio.sleep(ACCOUNT_POLL_SECONDS)
    problems = [problem for found in outstanding for _, problem in found]
    report = await asyncio.to_thread(processes, private_homeward.state_dir)
    unhealthy = {name: entry["health"] for name, entry in report.items() if entry["health"] not in HEALTHY}
    assert not problems and not unhealthy, "\n".join([*problems, f"unhealthy: {unhealthy}"])
    await a_case_is_paid(private_homeward.kafka)
