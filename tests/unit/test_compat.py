"""The compatibility guard: the models stay compatible with the released v1 schemas, and the guard
names (topic and field) each deliberately breaking change while letting compatible ones pass."""

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from contracts.compat import RELEASED_DIR, breaks, check_released
from contracts.registry import PAYLOAD_TYPES

Schema = dict[str, Any]


def released(topic: str) -> Schema:
    schema: Schema = json.loads((RELEASED_DIR / f"{topic}.json").read_text())
    return schema


def changed(topic: str, change: Callable[[Schema], None]) -> list[str]:
    """The breaks the guard finds after `change` is made to a copy of the released schema."""
    before = released(topic)
    after = copy.deepcopy(before)
    change(after)
    return [str(found) for found in breaks(topic, before, after)]


def model(schema: Schema, name: str) -> Schema:
    found: Schema = schema["$defs"][name]
    return found


def field(schema: Schema, name: str, field_name: str) -> Schema:
    found: Schema = model(schema, name)["properties"][field_name]
    return found


def test_every_topic_is_released_and_the_models_still_fit_them() -> None:
    assert {path.name.removesuffix(".json") for path in RELEASED_DIR.glob("*.json")} == set(PAYLOAD_TYPES)
    assert check_released() == [], "a change to the models breaks v1: make it a new topic version"


def _rename_given_name(schema: Schema) -> None:
    person = model(schema, "Person")
    person["properties"]["first_name"] = person["properties"].pop("given_name")
    person["required"] = ["first_name" if name == "given_name" else name for name in person["required"]]


def _require_nickname(schema: Schema) -> None:
    person = model(schema, "Person")
    person["properties"]["nickname"] = {"type": "string"}
    person["required"].append("nickname")


def _drop_app_check_ins(schema: Schema) -> None:
    schema["properties"]["data"]["oneOf"].remove({"$ref": "#/$defs/AppCheckIn"})


BREAKING: list[tuple[str, Callable[[Schema], None], str]] = [
    ("stipend.disbursed.v1", lambda s: model(s, "StipendDisbursed")["properties"].pop("amount"),
     "stipend.disbursed.v1: data.amount: removed (or renamed)"),
    ("registration.submitted.v1", _rename_given_name,
     "registration.submitted.v1: data.person.given_name: removed (or renamed)"),
    ("registration.submitted.v1", _require_nickname,
     "registration.submitted.v1: data.person.nickname: newly required: v1 producers do not send it"),
    ("travel.booked.v1", lambda s: field(s, "TravelBooked", "flight_number").update(type="integer"),
     "travel.booked.v1: data.flight_number: type changed from string to integer"),
    ("arrival.verified.v1", lambda s: field(s, "ArrivalVerified", "rule")["enum"].remove("partner_office"),
     "arrival.verified.v1: data.rule: the value 'partner_office' was removed"),
    ("arrival.evidence.v1", lambda s: field(s, "CarrierRecord", "flight_number").update(maxLength=8),
     "arrival.evidence.v1: data.flight_number: maxLength tightened from 10 to 8"),
    ("registration.submitted.v1", lambda s: field(s, "Person", "nationality").update(pattern="^[A-Z]{3}$"),
     "registration.submitted.v1: data.person.nationality: pattern changed from '^[A-Z]{2}$' to '^[A-Z]{3}$'"),
    ("stipend.disbursed.v1", lambda s: model(s, "StipendDisbursed")["required"].remove("amount"),
     "stipend.disbursed.v1: data.amount: no longer required: v1 consumers read it"),
    ("arrival.evidence.v1", _drop_app_check_ins, "arrival.evidence.v1: data: the variant AppCheckIn was removed"),
    ("registration.submitted.v1", lambda s: field(s, "Person", "given_name").update(enum=["Ana"]),
     "registration.submitted.v1: data.person.given_name: now limited to ['Ana']: v1 producers send other values"),
    ("travel.booked.v1", lambda s: field(s, "TravelBooked", "scheduled_departure").update(format="date"),
     "travel.booked.v1: data.scheduled_departure: format changed from 'date-time' to 'date'"),
]  # fmt: skip

COMPATIBLE: list[tuple[str, Callable[[Schema], None]]] = [
    ("registration.submitted.v1", lambda s: model(s, "Person")["properties"].update(nickname={"type": "string"})),
    ("arrival.evidence.v1", lambda s: field(s, "CarrierRecord", "flight_number").update(maxLength=12)),
    ("arrival.evidence.v1", lambda s: field(s, "CarrierRecord", "status")["enum"].append("diverted")),
    ("stipend.disbursed.v1", lambda s: model(s, "StipendDisbursed")["properties"].update(note={"type": "string"})),
    ("travel.booked.v1", lambda s: field(s, "TravelBooked", "flight_number").update(maxLength=6)),
]  # fmt: skip


@pytest.mark.parametrize(("topic", "change", "named"), BREAKING, ids=[named for _, _, named in BREAKING])
def test_a_breaking_change_is_named_by_topic_and_field(
    topic: str, change: Callable[[Schema], None], named: str
) -> None:
    assert named in changed(topic, change)


@pytest.mark.parametrize(
    ("topic", "change"), COMPATIBLE, ids=[f"{topic}-{n}" for n, (topic, _) in enumerate(COMPATIBLE)]
)
def test_a_compatible_change_passes(topic: str, change: Callable[[Schema], None]) -> None:
    assert changed(topic, change) == []
