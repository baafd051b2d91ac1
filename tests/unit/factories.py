"""Builders for the unit tier: contract-shaped documents with unique ids, and Kafka records.

Everything here is pure: no broker, no database, no clock beyond fixed dates.
"""

import json
from typing import Any
from uuid import UUID, uuid4

from contracts.events import RegistrationSubmitted
from services.runtime.messages import Record

SUBMITTED_AT = "2026-11-22T10:00:00+00:00"
"""A fixed submission moment, so age and expiry boundaries are exact days."""


def _apply(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Sets `a__b__c=value` overrides on nested dicts; a value of `...` deletes the key."""
    for dotted, value in overrides.items():
        target = data
        *parents, leaf = dotted.split("__")
        for parent in parents:
            target = target[parent]
        if value is ...:
            del target[leaf]
        else:
            target[leaf] = value
    return data


def submission(**overrides: Any) -> dict[str, Any]:
    """A valid registration.submitted.v1 payload with a unique application id and document number."""
    data: dict[str, Any] = {
        "application_id": str(uuid4()),
        "submitted_at": SUBMITTED_AT,
        "person": {"given_name": "Ana", "family_name": "Reyes", "date_of_birth": "1991-03-14", "nationality": "HN"},
        "identity_document": {
            "type": "passport",
            "number": f"F {uuid4().hex[:6].upper()}-{uuid4().hex[:4].upper()}",
            "issuing_country": "HN",
            "expires_on": "2030-06-30",
        },
        "contact": {"phone": "+17135550142", "email": None},
        "current_location": {"us_state": "TX", "city": "Houston", "nearest_airport": "IAH"},
        "destination": {"country": "HN", "city": "Tegucigalpa", "airport": "TGU"},
        "payout": {"method": "mobile_money", "msisdn": "+50499887766", "provider": "tigo"},
        "consent": {"data_processing": True, "version": "2025-05"},
    }
    return _apply(data, overrides)


def application(**overrides: Any) -> RegistrationSubmitted:
    return RegistrationSubmitted.model_validate(submission(**overrides))


def evidence_data(source: str = "carrier", /, **overrides: Any) -> dict[str, Any]:
    """A valid arrival.evidence.v1 payload of the given source."""
    data: dict[str, Any] = {
        "evidence_id": str(uuid4()),
        "case_id": str(uuid4()),
        "source": source,
        "observed_at": "2026-11-23T18:40:00Z",
        "country": "HN",
    }
    shapes: dict[str, dict[str, Any]] = {
        "participant_app": {"identity_match_score": 0.94, "latitude": 14.07, "longitude": -87.19},
        "carrier": {"flight_number": "XH123", "status": "landed"},
        "partner_office": {"office_code": "TGU-01", "officer_id": "officer-1", "document_checked": True},
    }
    data.update(shapes.get(source, {}))
    return _apply(data, overrides)


def envelope(
    topic: str,
    data: Any,
    /,
    *,
    event_id: UUID | None = None,
    correlationid: UUID | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A CloudEvents envelope document around `data`, with unique ids unless given."""
    subject = (data.get("application_id") or data.get("case_id")) if isinstance(data, dict) else None
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(event_id or uuid4()),
        "type": topic,
        "source": "unit-test",
        "time": "2026-11-22T10:00:01Z",
        "subject": str(subject or uuid4()),
        "correlationid": str(correlationid or uuid4()),
        "datacontenttype": "application/json",
        "data": data,
    }
    return _apply(document, overrides)


def record(topic: str, value: Any, *, partition: int = 0, offset: int = 0, key: bytes | None = None) -> Record:
    """A Kafka record; a dict or list is serialized as JSON, bytes are kept as they are."""
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return Record(topic=topic, partition=partition, offset=offset, key=key, value=raw)
